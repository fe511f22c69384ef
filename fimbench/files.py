"""Atomic file writing: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    """``0o666`` less the process umask: what ``open()`` would have given (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_unnamed(path: Path, data: bytes) -> bool:
    """Write ``data`` to an unnamed file in ``path``'s folder (Linux ``O_TMPFILE``), then name it beside
    ``path`` and rename it into place: a kill during the write (a large checkpoint, say) leaves no file
    behind. False, having written nothing, where the file system or the platform cannot."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return False
    try:
        descriptors = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            fd = os.open(path.parent, flag | os.O_WRONLY, _default_mode())
        except OSError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            # linkat(…, AT_SYMLINK_FOLLOW) through /proc: a plain link() of that entry fails across devices
            os.link(str(handle.fileno()), tmp, src_dir_fd=descriptors, follow_symlinks=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(descriptors)
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _write_unnamed(path, data):
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON, newline-terminated."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row with a single write call, flushed, so an interruption loses at most that row."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
