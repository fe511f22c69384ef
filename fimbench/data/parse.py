"""Parsing and validating the raw files: the CURVES and FACES ``.mat`` files, ``mnist_all.mat`` and the
MNIST idx files. No checksums are published for the ``.mat`` files, so their structure (variable names,
shapes, finite values) is what is checked."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from fimbench.errors import FimbenchError

CURVES_FILE = "digs3pts_1.mat"
FACES_FILE = "newfaces_rot_single.mat"
MNIST_MAT_FILE = "mnist_all.mat"
MNIST_IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

EXPECTED_ROWS: dict[str, dict[str, int]] = {
    "curves": {"bdata": 20000, "bdatatest": 10000},
    "faces": {"newfaces_single": 165600},
    "mnist": {"train": 60000, "test": 10000},
}
"""Row counts a genuine raw file must have (tests replace them to import small fake files)."""
FACES_ROWS, FACES_POOL_ROWS, FACES_TEST_ROWS = 165600, 103500, 41400
"""FACES: the first 103500 rows are the train/val pool, the last 41400 the test set (rows in between are
unused); files of another length (tests) are cut in the same proportions."""


@dataclass(frozen=True)
class RawFile:
    """One raw input file: where it lies, where it came from, its sha256, and whether we downloaded it."""

    path: Path
    origin: str
    sha256: str
    downloaded: bool


def parse_raw(name: str, raw: dict[str, RawFile]) -> tuple[torch.Tensor, torch.Tensor]:
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
