"""Time per epoch of SGD through the full `train` pipeline (issue 2's measurement).

1. the CURVES autoencoder on curves-synth (16000 training images, batch 256);
2. the MNIST autoencoder on random data of MNIST's size (50000 × 784 binary images, batch 512).

    python benchmarks/epoch_time.py [--epochs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fimbench.data import DatasetSplits
from fimbench.engines.config import load_config
from fimbench.engines.train import run_training


def random_mnist(seed: int = 0, sizes: tuple[int, int, int] = (50000, 10000, 10000)) -> DatasetSplits:
    """Binary 28×28 images, each pixel on with MNIST's mean ink ≈ 0.13: ``sizes`` train / val / test rows."""
    train, val, test = sizes
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(train + val + test, 784, generator=generator) < 0.13).float()
    return DatasetSplits("mnist-random", images[:train], images[train : train + val], images[train + val :], (28, 28), True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    table = Table(title="SGD, time per epoch (training only, device-synchronised)")
    for header in ("benchmark", "batch", "steps/epoch", "s/epoch", "ms/step", "device"):
        table.add_column(header, justify="right")
    with tempfile.TemporaryDirectory() as scratch:
        cases = [
            ("curves-synth (CURVES AE)", {"data.dataset": "curves-synth", "data.data_dir": scratch}, None),
            ("random MNIST-size (MNIST AE)", {"data.dataset": "mnist"}, random_mnist()),
        ]
        for name, overrides, dataset in cases:
            overrides.update({"optimizer.method": "sgd", "training.epochs": args.epochs, "training.device": args.device})
            config = load_config(None, overrides)
            result = run_training(config, Path(scratch) / name.split()[0], dataset=dataset)
            summary = result.summary
            table.add_row(
                name,
                str(config.training.batch_size),
                str(summary["steps"] // args.epochs),
                f"{summary['train_seconds'] / args.epochs:.2f}",
                f"{1e3 * summary['time_per_step']:.1f}",
                summary["device"],
            )
    Console().print(table)


if __name__ == "__main__":
    main()
