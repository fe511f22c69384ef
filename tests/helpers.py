"""Helpers shared across the test packages (the dense references are :mod:`reference`): the CLI runner and
its one-line error check, a tiny configuration, the installed console script, fake run directories, and
a small MLP with its training loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

ROOT = Path(__file__).resolve().parents[1]


SMOKE = ROOT / "configs" / "smoke.yaml"


FIMBENCH = Path(sys.executable).with_name("fimbench")  # the console script installed beside this interpreter


QUIET_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


runner = CliRunner()


def tiny_config(tmp_path: Path, **optimizer: object) -> Path:
    """The smoke config on a very small curves-synth set and a narrow autoencoder."""
    config = yaml.safe_load(SMOKE.read_text())
    config["data"].update({"synth_train": 640, "synth_test": 128, "data_dir": str(tmp_path / "data")})
    config["model"] = {"layers": [784, 32, 8, 32, 784]}
    config["training"].update({"batch_size": 64, "epochs": 2})
    config["optimizer"].update(optimizer)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(result, status: int = 2) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == status, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def make_run(
    path: Path,
    method: str,
    train: list[float],
    seconds_per_epoch: float,
    dataset: str = "curves-synth",
    status: str | None = "completed",
    device: str = "NVIDIA A100",
    lr: float = 0.1,
    seed: int | None = None,
) -> Path:
    """A run directory as ``fimbench train`` writes it, with train losses per pixel ``train`` (val = 1.1 × train);
    runs that differ only in ``seed`` form one group."""
    path.mkdir(parents=True)
    rows = [
        {
            "kind": "epoch",
            "epoch": epoch,
            "step": 10 * epoch,
            "train_loss": loss * 784,
            "train_loss_per_pixel": loss,
            "train_reconstruction_error": loss * 100,
            "val_loss": loss * 1.1 * 784,
            "val_loss_per_pixel": loss * 1.1,
            "val_reconstruction_error": loss * 110,
            "wall_time": seconds_per_epoch * epoch,
            "time_per_step": seconds_per_epoch / 10,
        }
        for epoch, loss in enumerate(train, start=1)
    ]
    lines = [json.dumps(row) for row in rows]
    lines.insert(1, json.dumps({"kind": "step", "step": 5, "epoch": 1, "train_loss": 1.0, "wall_time": 0.1}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    training = "" if seed is None else f"training:\n  seed: {seed}\n"
    (path / "config.yaml").write_text(f"data:\n  dataset: {dataset}\noptimizer:\n  method: {method}\n  lr: {lr}\n{training}")
    if status is not None:
        summary = {"status": status, "dataset": dataset, "method": method, "device": device, "final": rows[-1]}
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 12))


def train_steps(model: nn.Module, preconditioner: KroneckerPreconditioner, optimizer: torch.optim.Optimizer,
                batches: list[torch.Tensor]) -> None:
    likelihood = Likelihood.BERNOULLI
    for x in batches:
        optimizer.zero_grad()
        loss = likelihood.nll(model(x), x).mean()
        loss.backward()
        preconditioner.step(x)
        optimizer.step()
        if preconditioner.awaiting_loss:
            with torch.no_grad():
                preconditioner.adapt_damping(loss.detach(), likelihood.nll(model(x), x).mean())
