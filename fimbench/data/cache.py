"""The processed cache of a data directory (``default_data_dir()`` unless given)::

    raw/<file name>          downloaded files, renamed into place only once complete and checked
    <name>.pt                processed tensors {"format", "train", "test"} (MNIST uint8, others float32);
                             "train" is the pool that :func:`fimbench.data.load_dataset` splits into train/val
    <name>.json              manifest: source, sha256 of every raw file and of <name>.pt, shapes, version

Every file is written atomically, and a cache is read only once it matches its manifest's size and sha256:
a corrupt or truncated ``<name>.pt`` is rebuilt from the raw files (or, when they are gone, the error
names ``fimbench download-data NAME --force``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import platformdirs
import torch

from fimbench.data.parse import MNIST_IDX_FILES, RawFile, parse_raw
from fimbench.errors import FimbenchError
from fimbench.files import atomic_write_bytes, atomic_write_json
from fimbench.names import DOWNLOADABLE, check_dataset

PROCESSED_FORMAT = 1


def default_data_dir() -> Path:
    """``$FIMBENCH_DATA`` if set, else the per-user cache directory (``platformdirs``) of fimbench.

    Returns:
        The data directory's path (it may not exist yet).
    """
    env = os.environ.get("FIMBENCH_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fimbench"))


def data_root(data_dir: Path | str | None) -> Path:
    """``data_dir`` with ``~`` expanded, or :func:`default_data_dir` when it is ``None``."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def check_downloadable(name: str) -> str:
    """``name`` if it is a dataset that is downloaded; else a one-line error (unknown, or generated locally)."""
    if check_dataset(name) not in DOWNLOADABLE:
        raise FimbenchError(f"{name} is generated locally; there is nothing to download")
    return name


def processed_path(root: Path, name: str) -> Path:
    """``<root>/<name>.pt``, the processed tensors."""
    return root / f"{name}.pt"


def manifest_path(root: Path, name: str) -> Path:
    """``<root>/<name>.json``, the manifest."""
    return root / f"{name}.json"


def read_manifest(name: str, data_dir: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a downloaded dataset, or ``None``.

    ``None`` if the manifest is absent or its processed file is not the one the manifest describes (an
    interrupted or foreign write; checked by size).

    Args:
        name: A downloadable dataset: ``"curves"``, ``"mnist"`` or ``"faces"``.
        data_dir: The data directory; ``None`` (default): :func:`default_data_dir`.

    Returns:
        The manifest (source, sha256 of every raw file and of ``<name>.pt``, shapes, version), or ``None``.

    Raises:
        FimbenchError: If ``name`` is not a downloadable dataset (unknown, or curves-synth).
    """
    root = data_root(data_dir)
    try:
        manifest = json.loads(manifest_path(root, check_downloadable(name)).read_text(encoding="utf-8"))
        processed = processed_path(root, name)
        if (
            manifest.get("format") == PROCESSED_FORMAT
            and processed.is_file()
            and processed.stat().st_size == manifest["processed"]["bytes"]
        ):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def is_present(name: str, data_dir: Path | None = None) -> bool:
    """Whether ``name`` is downloaded and processed in ``data_dir`` (curves-synth: always).

    Args:
        name: A dataset name (:data:`~fimbench.names.DATASETS`).
        data_dir: The data directory; ``None`` (default): :func:`default_data_dir`.

    Returns:
        True for curves-synth, or when :func:`read_manifest` finds a manifest matching its processed file.

    Raises:
        FimbenchError: If ``name`` is not a known dataset.
    """
    return check_dataset(name) == "curves-synth" or read_manifest(name, data_dir) is not None


def require_present(name: str, data_dir: Path | None = None) -> None:
    """Raise the one-line error that names the fetch command when ``name`` is not in ``data_dir``.

    A processed cache that no longer matches its manifest is rebuilt from the raw files first.

    Args:
        name: A dataset name (curves-synth is always present).
        data_dir: The data directory; ``None`` (default): :func:`default_data_dir`.

    Raises:
        FimbenchError: If ``name`` is unknown, is not in ``data_dir`` (the message names ``fimbench
            download-data``), or its cache does not match its manifest and cannot be rebuilt.
    """
    root = data_root(data_dir)
    if is_present(name, root):
        return
    manifest = stored_manifest(root, name)
    if manifest is None:
        raise FimbenchError(f"dataset '{name}' is not in {root}; fetch it with: {fetch_command(name, root)}")
    rebuild(name, root, manifest, "does not match its manifest")


def fetch_command(name: str, root: Path, force: bool = False) -> str:
    """``fimbench download-data NAME`` with ``--force`` and ``--data-dir`` where they are needed."""
    data_dir = "" if root.resolve() == default_data_dir().resolve() else f" --data-dir {root}"
    return f"fimbench download-data {name}{' --force' if force else ''}{data_dir}"


def stored_manifest(root: Path, name: str) -> dict[str, Any] | None:
    """The manifest file of ``name`` as written, whatever state its processed file is in (``None`` if it
    is absent, unreadable or of another format)."""
    try:
        manifest = json.loads(manifest_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != PROCESSED_FORMAT:
        return None
    raw_files = manifest.get("raw_files")
    if not isinstance(manifest.get("processed"), dict) or not isinstance(raw_files, list):
        return None
    if not all(isinstance(entry, dict) and {"name", "origin", "sha256"} <= entry.keys() for entry in raw_files):
        return None
    return manifest


def read_processed(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The tensors in ``path`` if it is the file ``expected`` describes (its ``bytes`` and ``sha256``;
    caches written before hashes were recorded are checked by size and by loading), else ``None``."""
    try:
        content = path.read_bytes()
    except OSError:
        return None
    if len(content) != expected.get("bytes"):
        return None
    if "sha256" in expected and hashlib.sha256(content).hexdigest() != expected["sha256"]:
        return None
    try:
        blob = torch.load(io.BytesIO(content), weights_only=True)
    except Exception:  # a damaged file makes torch.load raise RuntimeError, pickle or zip errors, ...
        return None
    if not isinstance(blob, dict) or not all(isinstance(blob.get(key), torch.Tensor) for key in ("train", "test")):
        return None
    return blob


def rebuild(name: str, root: Path, manifest: dict[str, Any], why: str) -> dict[str, Any]:
    """Rebuild the processed cache of ``name`` from the raw files its manifest lists (checked against
    their sha256), rewrite the manifest, and return the tensors; without them, the error names the
    command that fetches the dataset again."""
    path = processed_path(root, name)
    again = f"fetch it again with: {fetch_command(name, root, force=True)}"
    raw: dict[str, RawFile] = {}
    for entry in manifest["raw_files"]:
        candidates = [root / "raw" / entry["name"], Path(entry["origin"])]  # downloaded, or imported from
        found = next((c for c in candidates if c.is_file() and file_sha256(c) == entry["sha256"]), None)
        if found is None:
            raise FimbenchError(f"the cache {path} of '{name}' {why}, and its raw file {entry['name']} is gone or changed; {again}")
        key = entry["name"] if entry["name"] in MNIST_IDX_FILES else "mat"
        raw[key] = RawFile(path=found, origin=entry["origin"], sha256=entry["sha256"], downloaded=False)
    try:
        pool, test = parse_raw(name, raw)
    except FimbenchError as error:
        raise FimbenchError(f"the cache {path} of '{name}' {why}, and rebuilding it failed ({error}); {again}") from None
    blob = {"format": PROCESSED_FORMAT, "train": pool, "test": test}
    processed = dict(manifest["processed"])
    processed.update(save_tensors(path, blob))
    atomic_write_json(manifest_path(root, name), {**manifest, "processed": processed})
    return blob


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_tensors(path: Path, blob: dict[str, Any]) -> dict[str, Any]:
    """Write ``blob`` atomically; returns the ``bytes`` and ``sha256`` a manifest records of it."""
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    content = buffer.getvalue()
    atomic_write_bytes(path, content)
    return {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
