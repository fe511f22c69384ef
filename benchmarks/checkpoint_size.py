"""Size of ``checkpoint.pt`` for the MNIST autoencoder (784-1000-500-250-30-250-500-1000-784) after one
epoch of ``fimbench train`` on random binary data of MNIST's width, per method, with what it holds.

The size does not depend on the number of steps (the state has the same tensors after any epoch), so
``--train 2048`` (4 steps of batch 512) gives the number of a 50000-image epoch in seconds.

    python benchmarks/checkpoint_size.py [--methods deflation,kfac,sgd] [--train 50000]
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
from fimbench.engines.rundir import CHECKPOINT
from fimbench.engines.train import run_training


def random_mnist(train: int, seed: int = 0) -> DatasetSplits:
    """``train`` training images and 10000 each for validation and test, of MNIST's mean ink (≈ 0.13)."""
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(train + 20000, 784, generator=generator) < 0.13).float()
    return DatasetSplits("mnist-random", images[:train], images[train : train + 10000], images[train + 10000 :], (28, 28), True)


def tensor_bytes(state: object) -> int:
    """Bytes of the tensors anywhere in ``state`` (dicts and lists walked)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="deflation,kfac,sgd")
    parser.add_argument("--train", type=int, default=50000, help="training images (the size does not depend on it)")
    args = parser.parse_args()
    dataset = random_mnist(args.train)
    table = Table(title=f"checkpoint.pt of the MNIST autoencoder after one epoch ({args.train} images, batch 512)")
    for header in ("method", "steps", "MiB", "model MiB", "optimizer MiB", "preconditioner MiB"):
        table.add_column(header, justify="right")
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            overrides = {"data.dataset": "mnist", "optimizer.method": method, "training.epochs": 1, "training.device": "cpu"}
            run_dir = Path(scratch) / method
            result = run_training(load_config(None, overrides), run_dir, dataset=dataset)
            path = run_dir / CHECKPOINT
            state = torch.load(path, weights_only=True)
            parts = [tensor_bytes(state[key]) / 2**20 for key in ("model", "optimizer", "preconditioner")]
            table.add_row(method, str(result.summary["steps"]), f"{path.stat().st_size / 2**20:.1f}", *(f"{part:.1f}" for part in parts))
    Console().print(table)


if __name__ == "__main__":
    main()
