"""Fetching or importing the raw files of CURVES, FACES and MNIST, with retries and checks: downloads go
to ``raw/`` through a temporary file renamed only when complete; MNIST idx files are checked against
torchvision's MD5s. The processed tensors and a manifest are then written to the cache."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from fimbench import __version__
from fimbench.data.cache import PROCESSED_FORMAT, check_downloadable, data_root, is_present, manifest_path, processed_path, save_tensors
from fimbench.data.parse import CURVES_FILE, FACES_FILE, MNIST_IDX_FILES, MNIST_MAT_FILE, RawFile, parse_raw
from fimbench.data.splits import VAL_FRACTION
from fimbench.errors import FimbenchError
from fimbench.files import atomic_write_json

MARTENS_URL = "http://www.cs.toronto.edu/~jmartens/"
"""Base URL of the CURVES and FACES .mat files (no checksums are published for them)."""
MNIST_MIRRORS: tuple[str, ...] | None = None
"""Base URLs tried in order for the idx files; ``None`` = ``torchvision.datasets.MNIST.mirrors``."""
MNIST_MD5: dict[str, str] | None = None
"""MD5 of each idx file; ``None`` = ``torchvision.datasets.MNIST.resources`` (torchvision is imported
only when MNIST is fetched: importing it costs more than a second)."""
RETRY_BACKOFF = 1.0
"""Seconds before the first retry of a failed transfer; doubled for each further retry."""
CHUNK_BYTES = 1 << 16


class DownloadProgress(Protocol):
    """Receives the progress of each transfer attempt: ``start``, any number of ``advance``, ``finish``."""

    def start(self, name: str, total: int | None) -> None:
        """A transfer of ``name`` begins; ``total`` bytes if the server announced a length.

        Args:
            name: The name of the file being transferred.
            total: Its length in bytes if the server announced one (``Content-Length``), else ``None``.
        """

    def advance(self, n: int) -> None:
        """``n`` more bytes arrived.

        Args:
            n: The bytes received since the last call.
        """

    def finish(self) -> None:
        """The transfer ended (completed or failed)."""


class _Retryable(Exception):
    """A transfer failure worth trying again (connection error, timeout, short read, HTTP 5xx)."""


class _MirrorFailed(Exception):
    """A transfer failure that retrying the same URL will not fix (HTTP 404, MD5 mismatch)."""


def download_dataset(
    name: str,
    data_dir: Path | None = None,
    source: str | None = None,
    force: bool = False,
    progress: DownloadProgress | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch (or import) ``name``, validate it, and cache its processed tensors; return the ``.pt`` path.

    Downloads go to ``raw/`` via a temporary file renamed only when complete, with ``retries`` retries
    (exponential backoff) on connection errors and short reads; MNIST idx files are checked against
    torchvision's MD5s, .mat files by structure. The manifest (``<name>.json``) is written last.

    Args:
        name: A downloadable dataset: ``"curves"``, ``"mnist"`` or ``"faces"``.
        data_dir: The data directory; ``None`` (default): :func:`~fimbench.data.cache.default_data_dir`.
        source: ``None`` (canonical URLs: :data:`MARTENS_URL`, torchvision's MNIST mirrors), a local file (the
            .mat file; ``mnist_all.mat`` for MNIST), a local folder holding the original file names (MNIST: the
            four idx ``.gz`` files or ``mnist_all.mat``), an http(s) URL of one ``.mat`` file (or of one MNIST
            idx file: its folder is used), or the base URL of a mirror.
        force: Fetch and process again a dataset already present (else it is returned at once).
        progress: Receives the progress of each transfer attempt; ``None`` (default): nothing is reported.
        retries: Retries of each URL after a failed transfer, waiting :data:`RETRY_BACKOFF` seconds, doubled
            for each further retry.
        timeout: Seconds a connection may block (``urllib``'s ``timeout``) before the attempt fails.

    Returns:
        The path of the processed ``<name>.pt`` in the data directory.

    Raises:
        FimbenchError: If ``name`` is not downloadable, ``source`` does not exist or lacks the files, every URL
            fails, or a raw file fails its checks (MD5, structure; a file it downloaded is then removed).
    """
    root = data_root(data_dir)
    target = processed_path(root, check_downloadable(name))
    if not force and is_present(name, root):
        return target
    raw = _acquire(name, root, source, progress, retries, timeout)
    try:
        pool, test = parse_raw(name, raw)
    except FimbenchError:
        for item in raw.values():
            if item.downloaded:
                item.path.unlink(missing_ok=True)
        raise
    written = save_tensors(target, {"format": PROCESSED_FORMAT, "train": pool, "test": test})
    n_val = round(pool.shape[0] * VAL_FRACTION[name])
    atomic_write_json(
        manifest_path(root, name),
        {
            "dataset": name,
            "format": PROCESSED_FORMAT,
            "fimbench_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source if source is not None else "canonical",
            "raw_files": [
                {"name": item.path.name, "origin": item.origin, "sha256": item.sha256, "bytes": item.path.stat().st_size}
                for item in raw.values()
            ],
            "processed": {
                "file": target.name,
                **written,
                "dtype": str(pool.dtype).removeprefix("torch."),
                "pool_shape": list(pool.shape),
                "test_shape": list(test.shape),
            },
            "splits": {"train": pool.shape[0] - n_val, "val": n_val, "test": test.shape[0], "input_dim": pool.shape[1]},
        },
    )
    return target


def _mnist_sources() -> tuple[tuple[str, ...], dict[str, str]]:
    """MNIST mirrors and idx MD5s: the module constants, or torchvision's where those are ``None``."""
    mirrors, md5 = MNIST_MIRRORS, MNIST_MD5
    if mirrors is None or md5 is None:
        from torchvision.datasets import MNIST

        mirrors = tuple(MNIST.mirrors) if mirrors is None else mirrors
        md5 = dict(MNIST.resources) if md5 is None else md5
    return mirrors, md5


def _canonical_file(name: str) -> str:
    return CURVES_FILE if name == "curves" else FACES_FILE


def _acquire(
    name: str, root: Path, source: str | None, progress: DownloadProgress | None, retries: int, timeout: float
) -> dict[str, RawFile]:
    """The raw files of ``name``: keyed by file name for the MNIST idx files, else one ``"mat"`` entry."""
    if source is None or source.startswith(("http://", "https://")):
        return _acquire_url(name, root, source, progress, retries, timeout)
    path = Path(source).expanduser()
    if not path.exists():
        raise FimbenchError(f"source '{source}' does not exist")
    if path.is_dir():
        if name != "mnist":
            path = path / _canonical_file(name)
            if not path.is_file():
                raise FimbenchError(f"folder '{source}' has no {_canonical_file(name)}")
        elif all((path / f).is_file() for f in MNIST_IDX_FILES):
            md5 = _mnist_sources()[1]
            return {f: _local_file(path / f, md5.get(f)) for f in MNIST_IDX_FILES}
        elif (path / MNIST_MAT_FILE).is_file():
            path = path / MNIST_MAT_FILE
        else:
            raise FimbenchError(
                f"folder '{source}' holds neither the four MNIST idx files ({', '.join(MNIST_IDX_FILES)}) nor {MNIST_MAT_FILE}"
            )
    elif name == "mnist" and path.suffix != ".mat":
        raise FimbenchError(f"a single-file MNIST source must be {MNIST_MAT_FILE}; for the idx files give their folder")
    return {"mat": _local_file(path, None)}


def _acquire_url(
    name: str, root: Path, source: str | None, progress: DownloadProgress | None, retries: int, timeout: float
) -> dict[str, RawFile]:
    """Download the raw files of ``name`` from the canonical places (``source=None``) or from a URL:
    a ``.mat`` file URL, one MNIST idx file's URL (its folder is used), or a mirror's base URL."""

    def fetch(urls: list[str], file_name: str, md5: str | None = None) -> RawFile:
        return _download(urls, root / "raw" / file_name, md5, progress, retries, timeout)

    if source is None:
        bases = _mnist_sources()[0] if name == "mnist" else (MARTENS_URL,)
    else:
        file_name = urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1]
        if file_name.endswith(".mat"):
            return {"mat": fetch([source], file_name)}
        bases = (source[: len(source) - len(file_name)] if file_name in MNIST_IDX_FILES else source.rstrip("/") + "/",)
    if name == "mnist":
        md5 = _mnist_sources()[1]
        return {f: fetch([base + f for base in bases], f, md5.get(f)) for f in MNIST_IDX_FILES}
    return {"mat": fetch([base + _canonical_file(name) for base in bases], _canonical_file(name))}


def _local_file(path: Path, md5: str | None) -> RawFile:
    """A user-supplied raw file, hashed (and checked against ``md5`` if given); never modified."""
    md5_hash, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            md5_hash.update(chunk)
            sha.update(chunk)
    if md5 is not None and md5_hash.hexdigest() != md5:
        raise FimbenchError(f"{path}: MD5 mismatch (expected {md5}, got {md5_hash.hexdigest()})")
    return RawFile(path=path, origin=str(path.resolve()), sha256=sha.hexdigest(), downloaded=False)


def _download(
    urls: list[str], dest: Path, md5: str | None, progress: DownloadProgress | None, retries: int, timeout: float
) -> RawFile:
    """Fetch ``dest`` from the first of ``urls`` that works, retrying each ``retries`` times with backoff."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        for attempt in range(max(retries, 0) + 1):
            if attempt:
                time.sleep(RETRY_BACKOFF * 2 ** (attempt - 1))
            try:
                sha = _fetch_once(url, dest, md5, progress, timeout)
                return RawFile(path=dest, origin=url, sha256=sha, downloaded=True)
            except _Retryable as error:
                reason = f"{error} (tried {attempt + 1} times)"
            except _MirrorFailed as error:
                reason = str(error)
                break
        failures.append(f"{url}: {reason}")
    raise FimbenchError(f"could not download {dest.name}: {'; '.join(failures)}")


def _fetch_once(url: str, dest: Path, md5: str | None, progress: DownloadProgress | None, timeout: float) -> str:
    """One transfer of ``url`` into a temporary file renamed to ``dest`` if complete; returns its sha256."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    md5_hash, sha = hashlib.md5(), hashlib.sha256()
    started = False
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress is not None:
                progress.start(dest.name, total)
                started = True
            received = 0
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                md5_hash.update(chunk)
                sha.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
            if total is not None and received != total:
                raise _Retryable(f"transfer cut short: got {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and md5_hash.hexdigest() != md5:
            raise _MirrorFailed(f"MD5 mismatch (expected {md5}, got {md5_hash.hexdigest()})")
        os.replace(tmp, dest)
        return sha.hexdigest()
    except urllib.error.HTTPError as error:
        message = f"HTTP {error.code} {error.reason}"
        raise (_Retryable(message) if error.code >= 500 or error.code in (408, 429) else _MirrorFailed(message)) from None
    except urllib.error.URLError as error:
        raise _Retryable(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise _Retryable(f"{type(error).__name__}: {error}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if started and progress is not None:
            progress.finish()
