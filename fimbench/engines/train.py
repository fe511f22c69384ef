"""Training engine: one run of any :class:`~fimbench.methods.Method` on an autoencoder benchmark.

Returns a :class:`TrainResult` and writes a run directory — ``config.yaml`` (fully resolved),
``metrics.jsonl`` (one row per epoch, and per ``log_every`` steps if asked), ``checkpoint.pt`` after each
epoch (:mod:`fimbench.engines.checkpoint`) and ``summary.json`` — but never prints: progress goes to an optional
:class:`TrainProgress` (the CLI draws it with rich).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from fimbench.data import DatasetSplits, batch_indices
from fimbench.engines.checkpoint import Counters, restore_training, training_checkpoint
from fimbench.engines.config import OptimizerConfig, RunConfig, dump_config, load_config
from fimbench.engines.data_parallel import batch_share, data_parallel, rank_mean, shard
from fimbench.engines.dataset import check_batch_size, load_configured_dataset
from fimbench.engines.device import resolve_device
from fimbench.engines.event_log import EventLog
from fimbench.engines.models import build_model, evaluate, resolve_architecture
from fimbench.engines.optimizers import configured_preconditioner, torch_optimizer
from fimbench.engines.run_summary import training_summary
from fimbench.engines.rundir import (
    CONFIG,
    METRICS,
    append_metrics,
    clear_results,
    continuable_epochs,
    read_checkpoint,
    read_summary,
    reopen_run,
    start_metrics,
    write_checkpoint,
    write_config,
    write_summary,
)
from fimbench.errors import CurvatureFailedError, DivergedError, FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.names import StepRule
from fimbench.preconditioner.damping import DampingSchedule
from fimbench.preconditioner.distributed import mean_over_ranks, rank
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.preconditioner.selection import without_wrappers
from fimbench.timing import PhaseTimer, synchronize

CHECK_EVERY = 10  # steps between host reads of the loss on an accelerator (progress + finiteness)
SGD_LIKE_ALIGNMENT = 0.99  # above this cos(F̃⁻¹∇, ∇) the preconditioner is about the identity


class TrainProgress(Protocol):
    def start(self, total_steps: int, steps_per_epoch: int) -> None: ...
    def step(self, step: int, epoch: int, loss: float, steps_per_second: float) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def warn(self, message: str) -> None: ...


def damping_warning(alignment: float | None) -> str | None:
    """The one-line warning for a preconditioner whose damping swamps the curvature, if it does."""
    if alignment is None or alignment <= SGD_LIKE_ALIGNMENT:
        return None
    return (
        f"damping dominates the curvature: alignment cos(F̃⁻¹∇, ∇) = {alignment:.3f} after the first refresh, "
        "so this run is close to SGD; lower --damping or change --pi"
    )


def step_rule_warning(optimizer: OptimizerConfig) -> str | None:
    """The one-line warning for qmodel under a fixed λ (the user's: unset, λ adapts, :mod:`fimbench.engines.config`): with a small
    fixed λ the model ``M(δ)`` trusts ``F + λI`` far outside the region where it holds (K-FAC diverged at step 3 with λ = 0.01)."""
    if optimizer.step_rule != StepRule.QMODEL or optimizer.damping_schedule == DampingSchedule.ADAPTIVE:
        return None
    return (
        f"step rule qmodel with a fixed damping λ = {optimizer.damping:g}: its steps may leave the region where the "
        "quadratic model holds; use --damping-schedule adaptive, or leave λ unset for configs/<dataset>-qmodel.yaml's adaptive one"
    )


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | interrupted | diverged | crashed (an unexpected exception: a bug)
    rows: list[dict[str, Any]] = field(default_factory=list)
    alignment_first_refresh: float | None = None  # cos(F̃⁻¹∇, ∇) after the first refresh (Kronecker methods)
    summary: dict[str, Any] = field(default_factory=dict)


def run_training(
    config: RunConfig,
    run_dir: Path,
    progress: TrainProgress | None = None,
    dataset: DatasetSplits | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``config`` (from :func:`~fimbench.engines.config.load_config`, which checked it) and log into
    ``run_dir`` (module docstring).

    ``dataset`` replaces the one ``config.data`` names (e.g. random data of a benchmark's shape); the
    architecture is still the one of ``config.data.dataset`` unless ``config.model.layers`` is set.
    ``resume``: continue the run in ``run_dir`` (of this ``config``) from its ``checkpoint.pt``.
    """
    run = _prepare(config, run_dir, progress, dataset, resume)
    if progress is not None and (warning := step_rule_warning(config.optimizer)) is not None:
        progress.warn(warning)
    try:
        for epoch in range(run.epoch + 1, config.training.epochs + 1):
            if run.step >= run.total_steps:
                break
            _train_epoch(run, epoch)
    except _Diverged as diverged:
        _finish(run, "diverged", diverged.step)
        raise DivergedError(
            f"non-finite loss ({diverged.value}) at step {diverged.step}; stopped, "
            f"{len(run.result.rows)} epoch(s) kept in {run_dir}"
        ) from None
    except CurvatureFailedError as failure:  # a refresh guard with no earlier inverse to keep
        _finish(run, "diverged", failure.step)
        raise DivergedError(f"{failure}; stopped, {len(run.result.rows)} epoch(s) kept in {run_dir}") from None
    except (KeyboardInterrupt, Exception) as stopped:  # Ctrl-C, or a bug (not a FimbenchError or OSError: the user's)
        if not isinstance(stopped, (FimbenchError, OSError)):
            _finish(run, "interrupted" if isinstance(stopped, KeyboardInterrupt) else "crashed", None)
        raise
    return _finish(run, "completed", None)


@dataclass
class _Run:
    """The state of one training run between its prepare, epoch and finish steps."""

    config: RunConfig
    device: torch.device
    dataset: DatasetSplits
    train_x: torch.Tensor
    val_x: torch.Tensor
    model: torch.nn.Module
    likelihood: Likelihood
    order_generator: torch.Generator
    timer: PhaseTimer
    optimizer: torch.optim.Optimizer | None  # None when the preconditioner takes the step (step_rule qmodel)
    preconditioner: KroneckerPreconditioner | None
    metrics_path: Path
    total_steps: int
    result: TrainResult
    progress: TrainProgress | None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    train_seconds: float = 0.0
    epoch: int = 0  # epochs completed
    step: int = 0
    window: list[torch.Tensor] = field(default_factory=list)  # losses not yet read on the host
    events: EventLog | None = None  # training.tensorboard: the rows as TensorBoard scalars too

    def log(self, row: dict[str, Any]) -> None:
        """One row of ``metrics.jsonl`` (and of the event files with ``training.tensorboard``)."""
        append_metrics(self.metrics_path, row)
        if self.events is not None:
            self.events.write(row)


def _prepare(
    config: RunConfig, run_dir: Path, progress: TrainProgress | None, dataset: DatasetSplits | None, resume: bool
) -> _Run:
    """Load the data, build the model and optimizers, and start the run directory (or, with ``resume``, put
    them back into the state of its checkpoint)."""
    method = config.method
    device = resolve_device(config.training.device)
    checkpoint = read_checkpoint(run_dir, device) if resume else None
    training, settings = config.training, config.optimizer
    if dataset is None:
        dataset = load_configured_dataset(config, training.batch_size)
    else:
        check_batch_size(training.batch_size, dataset)
    architecture = resolve_architecture(config, dataset.input_dim)
    train_x = dataset.train.to(device)
    val_x = dataset.val.to(device)
    model = data_parallel(build_model(architecture, seed=training.seed).to(device))
    likelihood = architecture.likelihood
    order_generator = torch.Generator().manual_seed(training.seed + 1)
    fisher_generator = torch.Generator(device=device).manual_seed(training.seed + 2 + rank())
    timer = PhaseTimer(device)

    takes_step = method.is_preconditioned and settings.step_rule == StepRule.QMODEL
    optimizer = None if takes_step else torch_optimizer(model, method, settings)
    preconditioner: KroneckerPreconditioner | None = None
    if method.is_preconditioned:
        preconditioner = configured_preconditioner(model, likelihood, settings, fisher_generator, timer)

    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        write_config(run_dir, dump_config(config))
        metrics_path = start_metrics(run_dir)
    else:
        metrics_path = run_dir / METRICS

    steps_per_epoch = dataset.train.shape[0] // training.batch_size
    total_steps = steps_per_epoch * training.epochs
    if training.max_steps is not None:
        total_steps = min(total_steps, training.max_steps)
    if progress is not None:
        progress.start(total_steps, steps_per_epoch)
    run = _Run(
        config, device, dataset, train_x, val_x, model, likelihood, order_generator, timer, optimizer, preconditioner,
        metrics_path, total_steps, TrainResult(run_dir, "completed"), progress,
    )
    if checkpoint is not None:
        _resume(run, checkpoint)
    if training.tensorboard and rank() == 0:
        run.events = EventLog(run_dir)
    return run


def _resume(run: _Run, checkpoint: dict[str, Any]) -> None:
    """Put ``run`` into the state of ``checkpoint`` and cut its run directory back to it."""
    counters = restore_training(checkpoint, without_wrappers(run.model), run.optimizer, run.preconditioner, run.order_generator, run.device)
    run.result.rows = reopen_run(run.result.run_dir, counters.metrics_bytes, counters.epoch)
    run.epoch, run.step, run.train_seconds = counters.epoch, counters.step, counters.train_seconds
    run.started = datetime.fromisoformat(counters.started)
    run.result.alignment_first_refresh = counters.alignment_first_refresh


def _save_checkpoint(run: _Run) -> None:
    """``checkpoint.pt`` after the epoch ``run.epoch``, whose row is the last of ``metrics.jsonl``."""
    counters = Counters(
        run.epoch, run.step, run.train_seconds, run.started.isoformat(), run.result.alignment_first_refresh,
        run.metrics_path.stat().st_size,
    )
    state = training_checkpoint(counters, without_wrappers(run.model), run.optimizer, run.preconditioner, run.order_generator, run.device)
    write_checkpoint(run.result.run_dir, state)


def _read_window(run: _Run) -> list[float]:
    """Host values of the pending losses; raises on the first non-finite one."""
    values = torch.stack(run.window).tolist() if run.window else []
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise _Diverged(run.step - len(values) + offset + 1, value)
    run.window.clear()
    return values


def _train_epoch(run: _Run, epoch: int) -> None:
    """One pass over the shuffled training split (up to ``total_steps``), then the epoch's row."""
    training = run.config.training
    run.model.train()
    synchronize(run.device)
    epoch_start = time.perf_counter()
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    epoch_steps = 0
    for index in batch_indices(run.dataset.train.shape[0], training.batch_size, run.order_generator, run.device):
        if run.step >= run.total_steps:
            break
        _train_step(run, epoch, run.train_x[shard(index)], sums, epoch_start, batch_share(index.shape[0]))
        epoch_steps += 1
    _read_window(run)
    sums = mean_over_ranks(sums)
    synchronize(run.device)
    run.train_seconds += time.perf_counter() - epoch_start
    row = _epoch_row(run, epoch, (sums / max(epoch_steps, 1)).tolist())
    run.result.rows.append(row)  # first: an interrupt during the write's fsync keeps both in step
    run.log(row)
    run.epoch = epoch
    _save_checkpoint(run)
    if run.progress is not None:
        run.progress.epoch(row)


def _train_step(run: _Run, epoch: int, x: torch.Tensor, sums: torch.Tensor, epoch_start: float, share: float | None) -> None:
    """One optimizer step on this rank's shard ``x`` of the mini-batch; adds (loss, loss per pixel,
    reconstruction error) to ``sums``. Every mean is this rank's term of the global batch's mean
    (:func:`rank_mean` with ``share``), so that the ranks' average is the mean over the whole mini-batch."""
    model, likelihood, preconditioner, progress = run.model, run.likelihood, run.preconditioner, run.progress
    output = model(x)
    loss = rank_mean(likelihood.nll(output, x), share)
    (run.model if run.optimizer is None else run.optimizer).zero_grad(set_to_none=False)
    loss.backward()
    run.step += 1
    step = run.step
    run.window.append(loss.detach())
    due = preconditioner is not None and preconditioner.steps % preconditioner.settings.stats_every == 0
    if run.device.type == "cpu" or step % CHECK_EVERY == 0 or due:
        values = _read_window(run)
        if progress is not None and values:
            elapsed = run.train_seconds + time.perf_counter() - epoch_start
            progress.step(step, epoch, values[-1], step / elapsed if elapsed > 0 else 0.0)
    if preconditioner is not None:
        preconditioner.step(x, x)  # an autoencoder's targets are its inputs (empirical Fisher)
        if step == 1:
            run.result.alignment_first_refresh = preconditioner.alignment
            warning = damping_warning(run.result.alignment_first_refresh)
            adaptive = run.config.optimizer.damping_schedule == DampingSchedule.ADAPTIVE  # an adaptive λ moves on
            if warning is not None and progress is not None and not adaptive:
                progress.warn(warning)
    if run.optimizer is not None:  # else the preconditioner took the step (step_rule qmodel)
        run.optimizer.step()
    if preconditioner is not None and preconditioner.awaiting_loss:
        with torch.no_grad():
            preconditioner.adapt_damping(loss.detach(), rank_mean(likelihood.nll(model(x), x), share))
    with torch.no_grad():
        sums += torch.stack(
            [
                loss.detach().double(),
                _loss_per_pixel(likelihood, output.detach(), x, share).double(),
                rank_mean((likelihood.mean(output.detach()) - x).square().sum(dim=1), share).double(),
            ]
        )
    log_every = run.config.training.log_every
    if log_every and step % log_every == 0:
        synchronize(run.device)
        step_row = {
            "kind": "step",
            "step": step,
            "epoch": epoch,
            "train_loss": float(loss.detach()),
            "wall_time": run.train_seconds + time.perf_counter() - epoch_start,
        }
        run.log(step_row)


def _epoch_row(run: _Run, epoch: int, train_means: list[float]) -> dict[str, Any]:
    """The epoch's ``metrics.jsonl`` row: train means, validation, timing and the preconditioner's diagnostics."""
    run.model.eval()
    validation = evaluate(without_wrappers(run.model), run.val_x)  # type: ignore[arg-type]
    step, train_seconds = run.step, run.train_seconds
    row: dict[str, Any] = {
        "kind": "epoch",
        "epoch": epoch,
        "step": step,
        "train_loss": train_means[0],
        "train_loss_per_pixel": train_means[1],
        "train_reconstruction_error": train_means[2],
        "val_loss": validation.loss,
        "val_loss_per_pixel": validation.loss_per_pixel,
        "val_reconstruction_error": validation.reconstruction_error,
        "wall_time": train_seconds,
        "time_per_step": train_seconds / step if step else None,
    }
    if not all(math.isfinite(row[key]) for key in ("val_loss", "train_loss")):
        raise _Diverged(step, row["val_loss"])
    if run.preconditioner is not None:
        phases = run.timer.reset()
        row.update(run.preconditioner.pop_diagnostics())
        row["seconds_statistics"] = phases.get("statistics", 0.0)
        row["seconds_refresh"] = phases.get("approximate", 0.0) + phases.get("invert", 0.0)
        row["seconds_approximate"] = phases.get("approximate", 0.0)
        row["seconds_invert"] = phases.get("invert", 0.0)
        row["seconds_precondition"] = phases.get("precondition", 0.0)
        if "step_rule" in phases:
            row["seconds_step_rule"] = phases["step_rule"]
    return row


def _finish(run: _Run, status: str, diverged_at: int | None) -> TrainResult:
    """Write ``summary.json`` with the run's ``status`` and return the result."""
    result = run.result
    result.status = status
    result.summary = training_summary(run.config, run.device, result.status, result.rows, result.alignment_first_refresh, run.started, run.train_seconds, run.step, diverged_at)
    write_summary(result.run_dir, result.summary)
    if run.events is not None:
        run.events.close()
    return result


def _loss_per_pixel(likelihood: Likelihood, output: torch.Tensor, x: torch.Tensor, share: float | None) -> torch.Tensor:
    """The paper's loss per pixel (a mean over examples and pixels) as this rank's term of the batch mean."""
    if share is None:
        return likelihood.loss_per_pixel(output, x)
    if x.shape[0] == 0:  # an empty shard adds nothing
        return torch.zeros((), dtype=output.dtype, device=output.device)
    return likelihood.loss_per_pixel(output, x) * (x.shape[0] * share)


class _Diverged(Exception):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(step, value)
        self.step, self.value = step, value


def run_point(run_dir: str, threads: int) -> str:
    """Train the point whose resolved config is ``run_dir/config.yaml`` with ``threads`` torch threads: on from
    the checkpoint an earlier attempt left if it can continue (:func:`~fimbench.engines.rundir.continuable_epochs`),
    else from scratch. Returns the run's status; a divergence is a result (in ``summary.json``), not a failure."""
    torch.set_num_threads(threads)
    path = Path(run_dir)
    config = load_config(path / CONFIG)
    continued = continuable_epochs(path, resolve_device(config.training.device).type)
    if continued is None:
        clear_results(path)
    else:
        print(f"continuing from the checkpoint after epoch {continued}", flush=True)
    try:
        return run_training(config, path, resume=continued is not None).status
    except FimbenchError:
        if read_summary(path).get("status") == "diverged":
            return "diverged"
        raise
