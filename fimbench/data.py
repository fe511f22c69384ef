"""Datasets: download, verify, import, cache, splits, the synthetic CURVES-like set, device batches.

Layout of a data directory (``default_data_dir()`` unless given)::

    raw/<file name>          downloaded files, renamed into place only once complete and checked
    <name>.pt                processed tensors {"format", "train", "test"} (MNIST uint8, others float32);
                             "train" is the pool that :func:`load_dataset` splits into train/val
    <name>.json              manifest: source, sha256 of every raw file and of <name>.pt, shapes, version
    curves-synth-v<V>-seed<S>-<n_train>-<n_test>.pt (and .json: its size and sha256)
                             cached output of :func:`generate_curves_synth`

Every file is written atomically, and a cache is read only once it matches its manifest's size and sha256:
a corrupt or truncated ``<name>.pt`` is rebuilt from the raw files (or, when they are gone, the error
names ``fimbench download-data NAME --force``), a damaged curves-synth cache is generated again.

Splits (docs/design.md §2) are drawn at load time from ``torch.Generator().manual_seed(split_seed)`` exactly like
``torch.utils.data.random_split(pool, [n_train, n_val], generator)``: CURVES 20000 → 16000/4000 (test
10000), FACES first 103500 rows → 82800/20700 (test = last 41400 rows), MNIST 60000 → 50000/10000
(test 10000). This module never prints; downloads report through an optional :class:`DownloadProgress`.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import struct
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import platformdirs
import scipy.io
import torch

from fimbench import __version__
from fimbench.errors import FimbenchError
from fimbench.io import atomic_write_bytes, atomic_write_json
from fimbench.names import DATASETS, DOWNLOADABLE

MARTENS_URL = "http://www.cs.toronto.edu/~jmartens/"
"""Base URL of the CURVES and FACES .mat files (no checksums are published for them)."""
CURVES_FILE = "digs3pts_1.mat"
FACES_FILE = "newfaces_rot_single.mat"
MNIST_MAT_FILE = "mnist_all.mat"
MNIST_IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_MIRRORS: tuple[str, ...] | None = None
"""Base URLs tried in order for the idx files; ``None`` = ``torchvision.datasets.MNIST.mirrors``."""
MNIST_MD5: dict[str, str] | None = None
"""MD5 of each idx file; ``None`` = ``torchvision.datasets.MNIST.resources`` (torchvision is imported
only when MNIST is fetched: importing it costs more than a second)."""

EXPECTED_ROWS: dict[str, dict[str, int]] = {
    "curves": {"bdata": 20000, "bdatatest": 10000},
    "faces": {"newfaces_single": 165600},
    "mnist": {"train": 60000, "test": 10000},
}
"""Row counts a genuine raw file must have (tests replace them to import small fake files)."""
FACES_ROWS, FACES_POOL_ROWS, FACES_TEST_ROWS = 165600, 103500, 41400
"""FACES: the first 103500 rows are the train/val pool, the last 41400 the test set (rows in between are
unused); files of another length (tests) are cut in the same proportions."""
VAL_FRACTION: dict[str, float] = {"curves": 0.2, "faces": 0.2, "mnist": 1 / 6, "curves-synth": 0.2}
IMAGE_SHAPE: dict[str, tuple[int, int]] = {
    "curves": (28, 28),
    "mnist": (28, 28),
    "faces": (25, 25),
    "curves-synth": (28, 28),
}

PROCESSED_FORMAT = 1
SYNTH_SEED = 0
"""curves-synth draws its train/val pool with this seed and its test set with ``SYNTH_SEED + 1``."""
SYNTH_VERSION = 1
"""Bumped whenever :func:`generate_curves_synth` changes, so stale caches are not reused."""
RETRY_BACKOFF = 1.0
"""Seconds before the first retry of a failed transfer; doubled for each further retry."""
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class DatasetSplits:
    """Train/val/test matrices of one dataset, one flattened image per row, float32 in [0, 1], on CPU."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, int]
    synthetic: bool

    @property
    def input_dim(self) -> int:
        """Pixels per image (784 or 625)."""
        return int(self.train.shape[1])


class DownloadProgress(Protocol):
    """Receives the progress of each transfer attempt: ``start``, any number of ``advance``, ``finish``."""

    def start(self, name: str, total: int | None) -> None:
        """A transfer of ``name`` begins; ``total`` bytes if the server announced a length."""

    def advance(self, n: int) -> None:
        """``n`` more bytes arrived."""

    def finish(self) -> None:
        """The transfer ended (completed or failed)."""


class _Retryable(Exception):
    """A transfer failure worth trying again (connection error, timeout, short read, HTTP 5xx)."""


class _MirrorFailed(Exception):
    """A transfer failure that retrying the same URL will not fix (HTTP 404, MD5 mismatch)."""


@dataclass(frozen=True)
class _RawFile:
    """One raw input file: where it lies, where it came from, its sha256, and whether we downloaded it."""

    path: Path
    origin: str
    sha256: str
    downloaded: bool


# ----------------------------------------------------------------------------------------------- paths


def default_data_dir() -> Path:
    """``$FIMBENCH_DATA`` if set, else the per-user cache directory (``platformdirs``) of fimbench."""
    env = os.environ.get("FIMBENCH_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fimbench"))


def _root(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise FimbenchError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return name


def _check_downloadable(name: str) -> str:
    if _check_name(name) not in DOWNLOADABLE:
        raise FimbenchError(f"{name} is generated locally; there is nothing to download")
    return name


def _processed_path(root: Path, name: str) -> Path:
    return root / f"{name}.pt"


def _manifest_path(root: Path, name: str) -> Path:
    return root / f"{name}.json"


def read_manifest(name: str, data_dir: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a downloaded dataset, or ``None`` if it is absent or its processed file is not
    the one the manifest describes (an interrupted or foreign write)."""
    root = _root(data_dir)
    try:
        manifest = json.loads(_manifest_path(root, _check_downloadable(name)).read_text(encoding="utf-8"))
        processed = _processed_path(root, name)
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
    """Whether ``name`` is downloaded and processed in ``data_dir`` (curves-synth: always)."""
    return _check_name(name) == "curves-synth" or read_manifest(name, data_dir) is not None


def require_present(name: str, data_dir: Path | None = None) -> None:
    """Raise the one-line error that names the fetch command when ``name`` is not in ``data_dir``; a
    processed cache that no longer matches its manifest is rebuilt from the raw files first."""
    root = _root(data_dir)
    if is_present(name, root):
        return
    manifest = _stored_manifest(root, name)
    if manifest is None:
        raise FimbenchError(f"dataset '{name}' is not in {root}; fetch it with: {_fetch_command(name, root)}")
    _rebuild(name, root, manifest, "does not match its manifest")


def _fetch_command(name: str, root: Path, force: bool = False) -> str:
    """``fimbench download-data NAME`` with ``--force`` and ``--data-dir`` where they are needed."""
    data_dir = "" if root.resolve() == default_data_dir().resolve() else f" --data-dir {root}"
    return f"fimbench download-data {name}{' --force' if force else ''}{data_dir}"


def _stored_manifest(root: Path, name: str) -> dict[str, Any] | None:
    """The manifest file of ``name`` as written, whatever state its processed file is in (``None`` if it
    is absent, unreadable or of another format)."""
    try:
        manifest = json.loads(_manifest_path(root, name).read_text(encoding="utf-8"))
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


def _read_processed(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
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


def _rebuild(name: str, root: Path, manifest: dict[str, Any], why: str) -> dict[str, Any]:
    """Rebuild the processed cache of ``name`` from the raw files its manifest lists (checked against
    their sha256), rewrite the manifest, and return the tensors; without them, the error names the
    command that fetches the dataset again."""
    path = _processed_path(root, name)
    again = f"fetch it again with: {_fetch_command(name, root, force=True)}"
    raw: dict[str, _RawFile] = {}
    for entry in manifest["raw_files"]:
        candidates = [root / "raw" / entry["name"], Path(entry["origin"])]  # downloaded, or imported from
        found = next((c for c in candidates if c.is_file() and _sha256(c) == entry["sha256"]), None)
        if found is None:
            raise FimbenchError(f"the cache {path} of '{name}' {why}, and its raw file {entry['name']} is gone or changed; {again}")
        key = entry["name"] if entry["name"] in MNIST_IDX_FILES else "mat"
        raw[key] = _RawFile(path=found, origin=entry["origin"], sha256=entry["sha256"], downloaded=False)
    try:
        pool, test = _parse(name, raw)
    except FimbenchError as error:
        raise FimbenchError(f"the cache {path} of '{name}' {why}, and rebuilding it failed ({error}); {again}") from None
    blob = {"format": PROCESSED_FORMAT, "train": pool, "test": test}
    processed = dict(manifest["processed"])
    processed.update(_save_tensors(path, blob))
    atomic_write_json(_manifest_path(root, name), {**manifest, "processed": processed})
    return blob


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    split_seed: int = 0,
    synth_train: int = 20000,
    synth_test: int = 10000,
) -> DatasetSplits:
    """Load ``name`` from the cache in ``data_dir`` and split its pool into train/val with ``split_seed``.

    ``curves-synth`` is generated (and cached if ``data_dir`` is writable): ``synth_train`` images split
    80/20 into train/val, ``synth_test`` test images. The other sets must have been fetched by
    :func:`download_dataset` (``fimbench download-data``).
    """
    root = _root(data_dir)
    if _check_name(name) == "curves-synth":
        if synth_train < 2 or synth_test < 1:
            raise FimbenchError("curves-synth needs synth_train >= 2 and synth_test >= 1")
        pool, test = _curves_synth(root, synth_train, synth_test)
    else:
        pool, test = _load_processed(name, root)
    train_idx, val_idx = split_indices(pool.shape[0], VAL_FRACTION[name], split_seed)
    return DatasetSplits(
        name=name,
        train=_as_float(pool[train_idx]),
        val=_as_float(pool[val_idx]),
        test=_as_float(test),
        image_shape=IMAGE_SHAPE[name],
        synthetic=name == "curves-synth",
    )


def _load_processed(name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The processed tensors of a downloaded dataset, checked against the manifest's size and sha256; a
    corrupt or truncated cache is rebuilt from the raw files (:func:`_rebuild`)."""
    require_present(name, root)
    manifest = _stored_manifest(root, name)
    if manifest is None:  # removed since require_present looked
        raise FimbenchError(f"dataset '{name}' is not in {root}; fetch it with: {_fetch_command(name, root)}")
    blob = _read_processed(_processed_path(root, name), manifest["processed"])
    if blob is None:
        blob = _rebuild(name, root, manifest, "is corrupt or truncated")
    return blob["train"], blob["test"]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val row indices of an ``n``-row pool: ``round(n * val_fraction)`` rows go to val.

    Same indices as ``torch.utils.data.random_split(range(n), [n_train, n_val],
    generator=torch.Generator().manual_seed(seed))``.
    """
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n_val], perm[n - n_val :]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; float tensors are returned as float32."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device | str) -> Iterator[torch.Tensor]:
    """One epoch of minibatch indices: a permutation from ``generator`` (drawn on CPU, then moved to
    ``device``) cut into ``n // batch_size`` batches; the last partial batch is dropped."""
    if not 1 <= batch_size <= n:
        raise FimbenchError(f"batch size {batch_size} must be between 1 and the {n} training examples")
    perm = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield perm[start : start + batch_size]


# ----------------------------------------------------------------------------------------------- curves-synth


def generate_curves_synth(n: int, seed: int) -> torch.Tensor:
    """``n`` synthetic CURVES-like 28×28 images, flattened to ``(n, 784)`` float32 in [0, 1].

    Each image is a smooth curve through three random points ``P0, P1, P2`` (the quadratic interpolating
    them at ``t = 0, t1, 1`` with centripetal parameter ``t1``), drawn with a random half-width
    ``w ∈ [0.5, 1.5]`` px and anti-aliased as the distance field ``clamp(w + 0.5 − d, 0, 1)``, where ``d``
    is the distance from a pixel centre to 48 points sampled on the curve. Synthetic: it imitates the
    look of Martens' CURVES, it is not that data. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 3, 2, generator=g) * 22 + 2.5
    half_width = torch.rand(n, generator=g) + 0.5
    seg = (points[:, 1:] - points[:, :-1]).norm(dim=-1).sqrt()
    t1 = (seg[:, 0] / seg.sum(1).clamp_min(1e-6)).clamp(0.2, 0.8)[:, None]
    t = torch.linspace(0, 1, 48)[None]
    lagrange = torch.stack([(t - t1) * (t - 1) / t1, t * (t - 1) / (t1 * (t1 - 1)), t * (t - t1) / (1 - t1)], dim=-1)
    axis = torch.arange(28, dtype=torch.float32)
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(784, 2)
    images = torch.empty(n, 784)
    for start in range(0, n, 512):  # chunks bound the (chunk, 784, 48) distance tensor to ~77 MB
        stop = min(start + 512, n)
        curve = lagrange[start:stop] @ points[start:stop]
        dist = torch.cdist(pixels.expand(stop - start, 784, 2), curve, compute_mode="donot_use_mm_for_euclid_dist")
        images[start:stop] = (half_width[start:stop, None] + 0.5 - dist.amin(dim=-1)).clamp_(0, 1)
    return images


def _curves_synth(root: Path, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The curves-synth pool and test set, from the cache in ``root`` or generated (then cached)."""
    path = root / f"curves-synth-v{SYNTH_VERSION}-seed{SYNTH_SEED}-{n_train}-{n_test}.pt"
    manifest = path.with_suffix(".json")  # {"bytes", "sha256"} of the cache: a damaged one is regenerated
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        expected = None
    blob = _read_processed(path, expected) if isinstance(expected, dict) else None
    if blob is not None:
        return blob["train"], blob["test"]
    pool = generate_curves_synth(n_train, SYNTH_SEED)
    test = generate_curves_synth(n_test, SYNTH_SEED + 1)
    try:
        atomic_write_json(manifest, _save_tensors(path, {"format": PROCESSED_FORMAT, "train": pool, "test": test}))
    except OSError:
        pass  # read-only data dir: the cache is only a speed-up
    return pool, test


def _save_tensors(path: Path, blob: dict[str, Any]) -> dict[str, Any]:
    """Write ``blob`` atomically; returns the ``bytes`` and ``sha256`` a manifest records of it."""
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    content = buffer.getvalue()
    atomic_write_bytes(path, content)
    return {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


# ----------------------------------------------------------------------------------------------- download


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

    ``source``: ``None`` (canonical URLs: :data:`MARTENS_URL`, torchvision's MNIST mirrors), a local
    file (the .mat file; ``mnist_all.mat`` for MNIST), a local folder holding the original file names
    (MNIST: the four idx ``.gz`` files or ``mnist_all.mat``), an http(s) URL of one ``.mat`` file, or the
    base URL of a mirror. Downloads go to ``raw/`` via a temporary file renamed only when complete,
    with ``retries`` retries (exponential backoff) on connection errors and short reads; MNIST idx
    files are checked against torchvision's MD5s, .mat files by structure. A dataset already present
    is returned at once unless ``force``.
    """
    root = _root(data_dir)
    target = _processed_path(root, _check_downloadable(name))
    if not force and is_present(name, root):
        return target
    raw = _acquire(name, root, source, progress, retries, timeout)
    try:
        pool, test = _parse(name, raw)
    except FimbenchError:
        for item in raw.values():
            if item.downloaded:
                item.path.unlink(missing_ok=True)
        raise
    written = _save_tensors(target, {"format": PROCESSED_FORMAT, "train": pool, "test": test})
    n_val = round(pool.shape[0] * VAL_FRACTION[name])
    atomic_write_json(
        _manifest_path(root, name),
        {
            "dataset": name,
            "format": PROCESSED_FORMAT,
            "fimbench_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
) -> dict[str, _RawFile]:
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
) -> dict[str, _RawFile]:
    """Download the raw files of ``name`` from the canonical places (``source=None``) or from a URL:
    a ``.mat`` file URL, one MNIST idx file's URL (its folder is used), or a mirror's base URL."""

    def fetch(urls: list[str], file_name: str, md5: str | None = None) -> _RawFile:
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


def _local_file(path: Path, md5: str | None) -> _RawFile:
    """A user-supplied raw file, hashed (and checked against ``md5`` if given); never modified."""
    md5_hash, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            md5_hash.update(chunk)
            sha.update(chunk)
    if md5 is not None and md5_hash.hexdigest() != md5:
        raise FimbenchError(f"{path}: MD5 mismatch (expected {md5}, got {md5_hash.hexdigest()})")
    return _RawFile(path=path, origin=str(path.resolve()), sha256=sha.hexdigest(), downloaded=False)


def _download(
    urls: list[str], dest: Path, md5: str | None, progress: DownloadProgress | None, retries: int, timeout: float
) -> _RawFile:
    """Fetch ``dest`` from the first of ``urls`` that works, retrying each ``retries`` times with backoff."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        for attempt in range(max(retries, 0) + 1):
            if attempt:
                time.sleep(RETRY_BACKOFF * 2 ** (attempt - 1))
            try:
                sha = _fetch_once(url, dest, md5, progress, timeout)
                return _RawFile(path=dest, origin=url, sha256=sha, downloaded=True)
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


# ----------------------------------------------------------------------------------------------- parsing


def _parse(name: str, raw: dict[str, _RawFile]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the raw files of ``name`` and return its (pool, test) tensors in file order."""
    expected = EXPECTED_ROWS[name]
    if name == "mnist":
        if "mat" in raw:
            return _parse_mnist_mat(raw["mat"].path)
        train_images, train_labels, test_images, test_labels = (raw[f].path for f in MNIST_IDX_FILES)
        return (
            _read_idx_pair(train_images, train_labels, expected["train"]),
            _read_idx_pair(test_images, test_labels, expected["test"]),
        )
    path = raw["mat"].path
    if name == "curves":
        contents = _load_mat(path, "CURVES", ["bdata", "bdatatest"])
        pool = _matrix(contents, "bdata", path, "CURVES", 784, expected["bdata"])
        test = _matrix(contents, "bdatatest", path, "CURVES", 784, expected["bdatatest"])
        return _float_tensor(pool), _float_tensor(test)
    contents = _load_mat(path, "FACES", ["newfaces_single"])
    faces = _matrix(contents, "newfaces_single", path, "FACES", 625, expected["newfaces_single"], transposed=True)
    n = faces.shape[0]
    return _float_tensor(faces[: n * FACES_POOL_ROWS // FACES_ROWS]), _float_tensor(faces[n - n * FACES_TEST_ROWS // FACES_ROWS :])


def _float_tensor(matrix: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(matrix, dtype=np.float32, order="C"))


def _invalid(path: Path, label: str, why: str) -> FimbenchError:
    return FimbenchError(f"{path.name} is not a valid {label} file: {why}")


def _load_mat(path: Path, label: str, variables: list[str]) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path), variable_names=variables)
    except Exception as error:  # scipy raises many types (MatReadError, ValueError, OSError, ...) on bad input
        raise _invalid(path, label, f"cannot read it as a MATLAB v5 file ({error})") from None


def _matrix(
    contents: dict[str, Any], var: str, path: Path, label: str, width: int, rows: int | None, transposed: bool = False
) -> np.ndarray:
    """Variable ``var`` as a finite ``(rows, width)`` matrix (stored as its transpose if ``transposed``)."""
    if var not in contents:
        raise _invalid(path, label, f"missing variable '{var}'")
    stored = contents[var]
    if not (isinstance(stored, np.ndarray) and stored.ndim == 2 and np.issubdtype(stored.dtype, np.number)):
        raise _invalid(path, label, f"variable '{var}' is not a 2-D numeric matrix")
    matrix = stored.T if transposed else stored
    if matrix.shape[1] != width or (rows is not None and matrix.shape[0] != rows):
        want = (f"{width}×{rows or 'N'}") if transposed else f"{rows or 'N'}×{width}"
        raise _invalid(path, label, f"variable '{var}' has shape {stored.shape[0]}×{stored.shape[1]}, expected {want}")
    if not np.isfinite(matrix).all():
        raise _invalid(path, label, f"variable '{var}' has non-finite values")
    return matrix


def _parse_mnist_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``mnist_all.mat``: ``train0..train9`` then ``test0..test9`` concatenated in digit order, uint8."""
    parts: dict[str, torch.Tensor] = {}
    for part in ("train", "test"):
        names = [f"{part}{digit}" for digit in range(10)]
        contents = _load_mat(path, "MNIST", names)
        blocks = [_matrix(contents, var, path, "MNIST", 784, None) for var in names]
        pixels = np.concatenate(blocks)
        if pixels.dtype != np.uint8 and ((pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))).any():
            raise _invalid(path, "MNIST", f"'{part}*' variables are not 8-bit pixel values")
        if pixels.shape[0] != EXPECTED_ROWS["mnist"][part]:
            raise _invalid(path, "MNIST", f"'{part}0..9' hold {pixels.shape[0]} images, expected {EXPECTED_ROWS['mnist'][part]}")
        parts[part] = torch.from_numpy(pixels.astype(np.uint8))
    return parts["train"], parts["test"]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx array (``magic`` 2051: images n×28×28, 2049: labels n) from a gzipped idx file."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise _invalid(path, "MNIST", f"not gzip data ({error})") from None
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise _invalid(path, "MNIST", f"bad idx header (expected magic number {magic})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + int(np.prod(dims)) or dims[1:] not in ((), (28, 28)):
        raise _invalid(path, "MNIST", f"idx dimensions {dims} do not match its {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(images_path: Path, labels_path: Path, rows: int) -> torch.Tensor:
    """The images of an idx images/labels pair as ``(rows, 784)`` uint8, checked against the labels count."""
    images = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049)
    if images.shape[0] != rows:
        raise _invalid(images_path, "MNIST", f"{images.shape[0]} images, expected {rows}")
    if labels.shape[0] != rows:
        raise _invalid(labels_path, "MNIST", f"{labels.shape[0]} labels, expected {rows}")
    return torch.from_numpy(images.reshape(rows, 784).copy())
