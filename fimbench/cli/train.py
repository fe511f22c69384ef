"""``fimbench train``: train an autoencoder with any :class:`~fimbench.methods.Method`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fimbench.cli.common import console, user_errors
from fimbench.cli.options import (
    DatasetName,
    MethodName,
    data_dir_option,
    dataset_option,
    default_run_dir,
    empirical_fisher_option,
    json_option,
    quiet_option,
    run_directory,
    seeds_option,
    set_option,
    step_rule_option,
    tensorboard_option,
)
from fimbench.cli.output import current, thin_rows, with_output
from fimbench.cli.parsers import parse_seeds
from fimbench.cli.train_options import TrainOptions, resume_config, run_config
from fimbench.errors import DivergedError, FimbenchError, Interrupted

if TYPE_CHECKING:
    from fimbench.engines.config import RunConfig
    from fimbench.engines.train import TrainResult

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


METHOD_HELP = "Optimizer (default: the config's, else sgd; bare `fimbench train` runs the quick start, configs/quickstart.yaml: kfac)."
DAMPING_HELP = (
    "Tikhonov damping λ (Kronecker methods; the initial λ if adaptive; with --step-rule qmodel a fixed λ unless "
    "--damping-schedule adaptive is given too)."
)
DAMPING_SCHEDULE_HELP = (
    "fixed, or adaptive (Levenberg–Marquardt rule every T3 = optimizer.damping_every steps); default: the config's, "
    "with --step-rule qmodel adaptive (configs/<dataset>-qmodel.yaml)."
)


@user_errors
@with_output
def train(
    method: MethodName | None = typer.Option(None, "--method", "-m", help=METHOD_HELP),
    dataset: DatasetName | None = dataset_option(),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; CLI options override it."),
    lr: float | None = typer.Option(None, help="Learning rate."),
    batch_size: int | None = typer.Option(None, help="Mini-batch size."),
    epochs: int | None = typer.Option(None, help="Number of epochs."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps (smoke runs)."),
    momentum: float | None = typer.Option(None, help="SGD momentum (also on the preconditioned gradient)."),
    nesterov: bool | None = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum."),
    weight_decay: float | None = typer.Option(None, help="Weight decay."),
    damping: float | None = typer.Option(None, help=DAMPING_HELP),
    pi: str | None = typer.Option(
        None, "--pi", help="Damping split π: 'trace' (the paper's §2.2 rule) or a fixed positive number."
    ),
    damping_form: str | None = typer.Option(
        None, "--damping-form",
        help="factored: (A₁ + π√λ I) ⊗ (G₁ + √λ/π I) (default); exact: A₁ ⊗ G₁ + λI in the first term's eigenbasis.",
    ),
    coarse: str | None = typer.Option(
        None, "--coarse",
        help="Two-level cross-layer correction for a block method: none (default), nicolaides, spectral or residual.",
    ),
    damping_schedule: str | None = typer.Option(None, "--damping-schedule", help=DAMPING_SCHEDULE_HELP),
    kl_clip: float | None = typer.Option(None, help="KL-clipping constant c (Kronecker methods)."),
    step_rule: str | None = step_rule_option(),
    stats_every: int | None = typer.Option(None, "--stats-every", help="T1: steps between statistics updates."),
    inverse_every: int | None = typer.Option(None, "--inverse-every", help="T2: steps between inversions."),
    ema_decay: float | None = typer.Option(None, help="α of the EMA, ρ = min(1 − 1/k, α)."),
    fisher_fraction: float | None = typer.Option(None, help="Fisher sub-batch size as a fraction of the batch."),
    empirical_fisher: bool | None = empirical_fisher_option(None),
    tol: float | None = typer.Option(None, help="Power SVD / Lanczos tolerance, relative to σ₁."),
    max_iterations: int | None = typer.Option(None, help="Power SVD / Lanczos iteration cap."),
    lanczos_rank: int | None = typer.Option(None, help="Kronecker rank r of Lanczos (1 or 2 for training)."),
    krylov_dim: int | None = typer.Option(None, help="Krylov dimension K of restarted Lanczos."),
    min_curvature_ratio: float | None = typer.Option(None, help="δ of the rank-2 positive-definiteness safeguard."),
    seed: int | None = typer.Option(None, help="Seed of data order, initialisation and Fisher sampling."),
    seeds: str | None = seeds_option(
        "One run per seed, in --out/seed_S: a count (3: seeds 0, 1, 2) or a list (0,4,7); nothing else differs."
    ),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    data_dir: Path | None = data_dir_option(),
    log_every: int | None = typer.Option(None, help="Also log a metrics row every N steps."),
    tensorboard: bool | None = tensorboard_option(),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<dataset>-<method>-<time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out (else it is refused)."),
    resume: Path | None = typer.Option(
        None, "--resume", metavar="RUN_DIR",
        help="Continue the stopped or killed run in RUN_DIR from its checkpoint.pt, as its config.yaml says "
        "(with it only --device, --data-dir, --tensorboard, --quiet, --json and --full-table may be given).",
    ),
    sets: list[str] | None = set_option(),
    full_table: bool = typer.Option(False, "--full-table", help="Show every epoch in the table (default: about 20 rows)."),
    nproc: int | None = typer.Option(
        None, "--nproc", help="Data-parallel workers on this machine (as torchrun --standalone starts them; the batch is split across them)."
    ),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Train an autoencoder with any of fimbench's methods (--method lists them).

    Bare, it runs the quick start (configs/quickstart.yaml): kfac with tuning-free steps, 5 epochs of curves-synth.
    Example: fimbench train --method deflation --dataset curves-synth --epochs 2
    """
    options = TrainOptions(**locals())
    if options.seeds is not None:
        _train_seeds(options, parse_seeds(options.seeds))
        return
    if options.resume is not None:
        resolved, run_dir = resume_config(options, options.resume), options.resume
    else:
        resolved = run_config(options)
        run_dir = options.out or default_run_dir(resolved.data.dataset, resolved.optimizer.method)
    started = time.perf_counter()
    if options.nproc is None or options.nproc == 1:
        result = _run(resolved, run_dir, options.overwrite, options.resume is not None)
    else:
        result = _run_parallel(resolved, run_dir, options.overwrite, options.nproc)
    current().document(_report(result, resolved, run_dir, options.full_table, time.perf_counter() - started))


def _train_seeds(options: TrainOptions, seeds: list[int]) -> None:
    """``--seeds``: the same run once per seed, each in ``<out>/seed_<S>``; one JSON document lists them all."""
    if options.resume is not None:
        raise FimbenchError("--seeds cannot be given with --resume; resume each seed's run directory on its own")
    if options.seed is not None:
        raise FimbenchError("give either --seed or --seeds, not both")
    nproc = options.nproc
    configs = [run_config(dataclasses.replace(options, seed=seed)) for seed in seeds]
    out = options.out or default_run_dir(configs[0].data.dataset, configs[0].optimizer.method)
    documents = []
    for seed, resolved in zip(seeds, configs):
        run_dir = out / f"seed_{seed}"
        started = time.perf_counter()
        if nproc is None or nproc == 1:
            result = _run(resolved, run_dir, options.overwrite, False)
        else:
            result = _run_parallel(resolved, run_dir, options.overwrite, nproc)
        documents.append(_report(result, resolved, run_dir, options.full_table, time.perf_counter() - started))
    current().note(f"{len(seeds)} seeds in [bold]{out}[/bold]; compare them with fimbench report {out}")
    current().document({"out": str(out), "seeds": seeds, "runs": documents})


def _run(resolved: RunConfig, run_dir: Path, overwrite: bool, resume: bool) -> TrainResult:
    """Train in ``run_dir`` (with ``resume``: continue the run there) with a live progress bar; a run that
    stops early still gets its document."""
    from fimbench.engines.rundir import RUN_FILES
    from fimbench.engines.train import run_training

    output = current()
    progress = RichTrainProgress() if output.progress else None
    with run_directory(run_dir, refuse_existing=not (overwrite or resume), replace=RUN_FILES if overwrite else ()):
        try:
            return run_training(resolved, run_dir, progress, resume=resume)
        except DivergedError:
            output.document(_summary_document(run_dir))
            raise
        except KeyboardInterrupt:
            raise _interrupted(run_dir) from None
        except (FimbenchError, OSError):
            raise
        except Exception:  # a bug, reported by fimbench.cli.OneLineErrors
            output.document(_summary_document(run_dir, "crashed"))
            raise
        finally:
            if progress is not None:
                progress.stop()


def _run_parallel(resolved: RunConfig, run_dir: Path, overwrite: bool, nproc: int) -> TrainResult:
    """Train in ``run_dir`` on ``nproc`` local workers (:mod:`fimbench.engines.launch`); the result read back from
    the run directory rank 0 wrote."""
    from fimbench.engines.launch import launch_training
    from fimbench.engines.rundir import METRICS, RUN_FILES, read_metrics, read_summary
    from fimbench.engines.train import TrainResult

    with run_directory(run_dir, refuse_existing=not overwrite, replace=RUN_FILES if overwrite else ()):
        try:
            launch_training(resolved, run_dir, nproc)
        except KeyboardInterrupt:
            raise _interrupted(run_dir) from None
    summary = read_summary(run_dir)
    rows, _ = read_metrics(run_dir / METRICS)
    return TrainResult(run_dir, summary["status"], rows, summary.get("alignment_first_refresh"), summary)


def _report(result: TrainResult, resolved: RunConfig, run_dir: Path, full_table: bool, seconds: float) -> dict[str, Any]:
    """The training table (about 20 rows unless ``full_table``), the curvature table and a note; returns
    the run's JSON document."""
    from fimbench.cli.tables import curvature_table, training_table

    output = current()
    method_name, dataset_name = resolved.optimizer.method, resolved.data.dataset
    rows = result.rows if full_table else thin_rows(result.rows)
    table = training_table(rows, f"{method_name} on {dataset_name} ({result.summary['device']})")
    if len(rows) < len(result.rows):
        table.caption = f"{len(rows)} of {len(result.rows)} epochs (all in metrics.jsonl; --full-table shows every one)"
    output.summary(table)
    if any("seconds_refresh" in row for row in result.rows):
        output.note(curvature_table(rows, f"{method_name}: curvature work per epoch"))
    output.note(
        f"{result.summary['steps']} steps in {seconds:.1f} s "
        f"(training {result.summary['train_seconds']:.1f} s); results in [bold]{run_dir}[/bold]"
    )
    return {"run_dir": str(run_dir), **result.summary}


def _interrupted(run_dir: Path) -> Interrupted:
    """The error of a run stopped by Ctrl-C or SIGTERM, after its document (what ``summary.json`` recorded)."""
    current().document(_summary_document(run_dir))
    return Interrupted(f"interrupted; what was logged is kept in {run_dir}")


def _summary_document(run_dir: Path, status: str = "interrupted") -> dict[str, Any]:
    """The JSON document of a run that stopped early: its ``summary.json`` (if written, else just ``status``) and
    where it is."""
    from fimbench.engines.rundir import read_summary

    return {"run_dir": str(run_dir), **(read_summary(run_dir) or {"status": status})}
