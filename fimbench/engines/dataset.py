"""The dataset a run configuration names, and the check that a mini-batch fits in it."""

from __future__ import annotations

from pathlib import Path

from fimbench.data import DatasetSplits, load_dataset
from fimbench.engines.config import RunConfig
from fimbench.errors import FimbenchError


def load_configured_dataset(config: RunConfig, batch_size: int | None = None) -> DatasetSplits:
    """The dataset ``config.data`` names; with ``batch_size``, check that one batch fits in it."""
    data = config.data
    dataset = load_dataset(
        data.dataset,
        data_dir=Path(data.data_dir) if data.data_dir else None,
        split_seed=data.split_seed,
        synth_train=data.synth_train,
        synth_test=data.synth_test,
    )
    if batch_size is not None:
        check_batch_size(batch_size, dataset)
    return dataset


def check_batch_size(batch_size: int, dataset: DatasetSplits) -> None:
    """A mini-batch must fit in the training split."""
    if batch_size > dataset.train.shape[0]:
        raise FimbenchError(f"batch size {batch_size} exceeds the {dataset.train.shape[0]} training examples")
