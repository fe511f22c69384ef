"""Loading a dataset and splitting it: train/val drawn at load time from
``torch.Generator().manual_seed(split_seed)`` exactly like ``torch.utils.data.random_split``
(docs/design.md §2), and the mini-batches of an epoch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fimbench.data.cache import data_root, fetch_command, processed_path, read_processed, rebuild, require_present, stored_manifest
from fimbench.data.synthesis import cached_curves_synth
from fimbench.errors import FimbenchError
from fimbench.names import check_dataset

VAL_FRACTION: dict[str, float] = {"curves": 0.2, "faces": 0.2, "mnist": 1 / 6, "curves-synth": 0.2}
IMAGE_SHAPE: dict[str, tuple[int, int]] = {
    "curves": (28, 28),
    "mnist": (28, 28),
    "faces": (25, 25),
    "curves-synth": (28, 28),
}


@dataclass(frozen=True)
class DatasetSplits:
    """Train/val/test matrices of one dataset, one flattened image per row, float32 in [0, 1], on CPU.

    Attributes:
        name: The dataset's name.
        train: The training rows, (n_train, input_dim).
        val: The validation rows, (n_val, input_dim), drawn from the same pool as ``train``.
        test: The test rows, (n_test, input_dim).
        image_shape: ``(height, width)`` of one image: (28, 28), or (25, 25) for FACES.
        synthetic: Whether the images are generated (curves-synth), not real data.
    """

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
    :func:`download_dataset` (``fimbench download-data``). Splits: :data:`VAL_FRACTION` of the pool goes to val.

    Args:
        name: A dataset name (:data:`~fimbench.names.DATASETS`).
        data_dir: The data directory; ``None`` (default): :func:`~fimbench.data.cache.default_data_dir`.
        split_seed: The seed of the train/val split (:func:`split_indices`).
        synth_train: curves-synth only: images in the train/val pool (at least 2).
        synth_test: curves-synth only: test images (at least 1).

    Returns:
        The splits, float32 in [0, 1], one flattened image per row, on CPU.

    Raises:
        FimbenchError: If ``name`` is unknown, the curves-synth sizes are too small, or the dataset is not in
            ``data_dir`` (or its cache is damaged and cannot be rebuilt from the raw files).
    """
    root = data_root(data_dir)
    if check_dataset(name) == "curves-synth":
        if synth_train < 2 or synth_test < 1:
            raise FimbenchError("curves-synth needs synth_train >= 2 and synth_test >= 1")
        pool, test = cached_curves_synth(root, synth_train, synth_test)
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
    corrupt or truncated cache is rebuilt from the raw files (:func:`rebuild`)."""
    require_present(name, root)
    manifest = stored_manifest(root, name)
    if manifest is None:  # removed since require_present looked
        raise FimbenchError(f"dataset '{name}' is not in {root}; fetch it with: {fetch_command(name, root)}")
    blob = read_processed(processed_path(root, name), manifest["processed"])
    if blob is None:
        blob = rebuild(name, root, manifest, "is corrupt or truncated")
    return blob["train"], blob["test"]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val row indices of an ``n``-row pool: ``round(n * val_fraction)`` rows go to val.

    Same indices as ``torch.utils.data.random_split(range(n), [n_train, n_val],
    generator=torch.Generator().manual_seed(seed))``.

    Args:
        n: Rows in the pool.
        val_fraction: The fraction of them that goes to val.
        seed: The seed of the ``torch.Generator`` the permutation is drawn from.

    Returns:
        ``(train, val)``: int64 row indices, (n − n_val,) and (n_val,).
    """
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n_val], perm[n - n_val :]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; float tensors are returned as float32."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device | str) -> Iterator[torch.Tensor]:
    """One epoch of minibatch indices: a permutation cut into ``n // batch_size`` batches.

    The permutation is drawn from ``generator`` on CPU, then moved to ``device``; the last partial batch is
    dropped.

    Args:
        n: Training examples.
        batch_size: Examples per batch, between 1 and ``n``.
        generator: The CPU generator the permutation is drawn from.
        device: Where the indices are moved.

    Yields:
        The int64 indices of each batch, (batch_size,), on ``device``.

    Raises:
        FimbenchError: If ``batch_size`` is not between 1 and ``n`` (on the first ``next``: this is a generator).
    """
    if not 1 <= batch_size <= n:
        raise FimbenchError(f"batch size {batch_size} must be between 1 and the {n} training examples")
    perm = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield perm[start : start + batch_size]
