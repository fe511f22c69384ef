"""``fimbench train``: train an autoencoder with one of the seven optimizers."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fimbench.cli.common import console, user_errors
from fimbench.config import load_config
from fimbench.curvature import Method
from fimbench.data import DATASETS
from fimbench.errors import FimbenchError
from fimbench.report import curvature_table, training_table
from fimbench.train import run_training


class RichTrainProgress:
    """Live bar: epoch, step, loss, steps/s."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} steps/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.steps_per_epoch = 1

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, epoch=1, loss="–", rate="–")

    def step(self, step: int, epoch: int, loss: float, steps_per_second: float) -> None:
        self.progress.update(self.task, completed=step, epoch=epoch, loss=f"{loss:.4g}", rate=f"{steps_per_second:.1f}")

    def epoch(self, row: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=row["step"])

    def warn(self, message: str) -> None:
        typer.echo(f"warning: {message}", err=True)

    def stop(self) -> None:
        self.progress.stop()


def _damping_split(text: str | None) -> float | str | None:
    """``--pi``: ``trace`` or a number (validated with the other optimizer settings)."""
    if text is None or text == "trace":
        return text
    try:
        return float(text)
    except ValueError:
        raise FimbenchError(f"--pi must be 'trace' or a positive number, got '{text}'") from None


def _default_out(dataset: str, method: str) -> Path:
    return Path("runs") / f"{dataset}-{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@user_errors
def train(
    method: Optional[Method] = typer.Option(None, "--method", "-m", help="Optimizer (default: the config's, else sgd)."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help=f"One of {', '.join(DATASETS)} (default: the config's, else curves-synth)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; CLI options override it."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Mini-batch size."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps (smoke runs)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (also on the preconditioned gradient)."),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
    damping: Optional[float] = typer.Option(None, help="Tikhonov damping λ (Kronecker methods; the initial λ if adaptive)."),
    pi: Optional[str] = typer.Option(
        None, "--pi", help="Damping split π: 'trace' (the paper's §2.2 rule) or a fixed positive number."
    ),
    damping_schedule: Optional[str] = typer.Option(
        None, "--damping-schedule", help="fixed, or adaptive (Levenberg–Marquardt rule every T3 = optimizer.damping_every steps)."
    ),
    kl_clip: Optional[float] = typer.Option(None, help="KL-clipping constant c (Kronecker methods)."),
    stats_every: Optional[int] = typer.Option(None, "--stats-every", help="T1: steps between statistics updates."),
    inverse_every: Optional[int] = typer.Option(None, "--inverse-every", help="T2: steps between inversions."),
    ema_decay: Optional[float] = typer.Option(None, help="α of the EMA, ρ = min(1 − 1/k, α)."),
    fisher_fraction: Optional[float] = typer.Option(None, help="Fisher sub-batch size as a fraction of the batch."),
    empirical_fisher: Optional[bool] = typer.Option(
        None, "--empirical-fisher/--true-fisher", help="Data targets instead of targets sampled from the model."
    ),
    tol: Optional[float] = typer.Option(None, help="Power SVD / Lanczos tolerance, relative to σ₁."),
    max_iterations: Optional[int] = typer.Option(None, help="Power SVD / Lanczos iteration cap."),
    lanczos_rank: Optional[int] = typer.Option(None, help="Kronecker rank r of Lanczos (1 or 2 for training)."),
    krylov_dim: Optional[int] = typer.Option(None, help="Krylov dimension K of restarted Lanczos."),
    min_curvature_ratio: Optional[float] = typer.Option(None, help="δ of the rank-2 positive-definiteness safeguard."),
    seed: Optional[int] = typer.Option(None, help="Seed of data order, initialisation and Fisher sampling."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FIMBENCH_DATA", help="Dataset cache directory."),
    log_every: Optional[int] = typer.Option(None, help="Also log a metrics row every N steps."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<dataset>-<method>-<time>)."),
) -> None:
    """Train an autoencoder with sgd, adam, kfac, kpsvd, deflation, lanczos or kfac-corrected.

    Example: fimbench train --method deflation --dataset curves-synth --epochs 2
    """
    overrides = {
        "optimizer.method": method.value if method is not None else None,
        "data.dataset": dataset,
        "data.data_dir": str(data_dir) if data_dir is not None else None,
        "optimizer.lr": lr,
        "training.batch_size": batch_size,
        "training.epochs": epochs,
        "training.max_steps": max_steps,
        "optimizer.momentum": momentum,
        "optimizer.nesterov": nesterov,
        "optimizer.weight_decay": weight_decay,
        "optimizer.damping": damping,
        "optimizer.pi": _damping_split(pi),
        "optimizer.damping_schedule": damping_schedule,
        "optimizer.kl_clip": kl_clip,
        "optimizer.stats_every": stats_every,
        "optimizer.inverse_every": inverse_every,
        "optimizer.ema_decay": ema_decay,
        "optimizer.fisher_fraction": fisher_fraction,
        "optimizer.empirical_fisher": empirical_fisher,
        "optimizer.tol": tol,
        "optimizer.max_iterations": max_iterations,
        "optimizer.lanczos_rank": lanczos_rank,
        "optimizer.krylov_dim": krylov_dim,
        "optimizer.min_curvature_ratio": min_curvature_ratio,
        "training.seed": seed,
        "training.device": device,
        "training.log_every": log_every,
    }
    if dataset is not None and dataset not in DATASETS:
        raise FimbenchError(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
    resolved = load_config(config, overrides)
    run_dir = out or _default_out(resolved.data.dataset, resolved.optimizer.method)
    progress = RichTrainProgress()
    started = time.perf_counter()
    try:
        result = run_training(resolved, run_dir, progress)
    except KeyboardInterrupt:
        progress.stop()
        typer.echo(f"interrupted; what was logged is kept in {run_dir}", err=True)
        raise typer.Exit(130) from None
    finally:
        progress.stop()
    method_name, dataset_name = resolved.optimizer.method, resolved.data.dataset
    console.print(training_table(result.rows, f"{method_name} on {dataset_name} ({result.summary['device']})"))
    if any("seconds_refresh" in row for row in result.rows):
        console.print(curvature_table(result.rows, f"{method_name}: curvature work per epoch"))
    console.print(
        f"{result.summary['steps']} steps in {time.perf_counter() - started:.1f} s "
        f"(training {result.summary['train_seconds']:.1f} s); results in [bold]{run_dir}[/bold]"
    )
