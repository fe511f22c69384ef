"""Datasets: download and verify (:mod:`~fimbench.data.download`), parse (:mod:`~fimbench.data.parse`),
cache (:mod:`~fimbench.data.cache`), the synthetic CURVES-like set (:mod:`~fimbench.data.synthesis`),
and loading, splits and device batches (:mod:`~fimbench.data.splits`).

Splits (docs/design.md §2): CURVES 20000 → 16000/4000 (test 10000), FACES first 103500 rows →
82800/20700 (test = last 41400 rows), MNIST 60000 → 50000/10000 (test 10000). This package never
prints; downloads report through an optional :class:`DownloadProgress`.
"""

from fimbench.data.cache import PROCESSED_FORMAT, default_data_dir, is_present, read_manifest, require_present
from fimbench.data.download import (
    MARTENS_URL,
    DownloadProgress,
    download_dataset,
)
from fimbench.data.parse import CURVES_FILE, EXPECTED_ROWS, FACES_FILE, MNIST_IDX_FILES, MNIST_MAT_FILE
from fimbench.data.splits import IMAGE_SHAPE, VAL_FRACTION, DatasetSplits, batch_indices, load_dataset, split_indices
from fimbench.data.synthesis import SYNTH_SEED, SYNTH_VERSION, generate_curves_synth
from fimbench.names import DATASETS, DOWNLOADABLE

__all__ = [
    "CURVES_FILE",
    "DATASETS",
    "DOWNLOADABLE",
    "EXPECTED_ROWS",
    "FACES_FILE",
    "IMAGE_SHAPE",
    "MARTENS_URL",
    "MNIST_IDX_FILES",
    "MNIST_MAT_FILE",
    "PROCESSED_FORMAT",
    "SYNTH_SEED",
    "SYNTH_VERSION",
    "VAL_FRACTION",
    "DatasetSplits",
    "DownloadProgress",
    "batch_indices",
    "default_data_dir",
    "download_dataset",
    "generate_curves_synth",
    "is_present",
    "load_dataset",
    "read_manifest",
    "require_present",
    "split_indices",
]
