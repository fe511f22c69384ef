"""Training engine: one run of any of the seven optimizers on an autoencoder benchmark.

Returns a :class:`TrainResult` and writes a run directory — ``config.yaml`` (fully resolved),
``metrics.jsonl`` (one row per epoch, and per ``log_every`` steps if asked) and ``summary.json`` —
but never prints: progress goes to an optional :class:`TrainProgress` (the CLI draws it with rich).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch

from fimbench import __version__
from fimbench.config import OptimizerConfig, RunConfig, dump_config
from fimbench.curvature import Method, parse_method
from fimbench.data import DatasetSplits, batch_indices, load_dataset
from fimbench.errors import DivergedError, FimbenchError
from fimbench.io import append_jsonl, atomic_write_json, atomic_write_text
from fimbench.models import Architecture, Likelihood, build_model, default_architecture, evaluate
from fimbench.optim import KroneckerPreconditioner
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


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | interrupted | diverged
    rows: list[dict[str, Any]] = field(default_factory=list)
    alignment_first_refresh: float | None = None  # cos(F̃⁻¹∇, ∇) after the first refresh (Kronecker methods)
    summary: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FimbenchError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FimbenchError("device 'cuda' requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise FimbenchError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def resolve_architecture(config: RunConfig, input_dim: int) -> Architecture:
    """The dataset's App. D autoencoder (or ``model.architecture``'s default), or the layers / likelihood the config names."""
    default = default_architecture(config.data.dataset, config.model.architecture)
    layers = tuple(config.model.layers) if config.model.layers else default.layers
    try:
        likelihood = Likelihood(config.model.likelihood) if config.model.likelihood else default.likelihood
    except ValueError:
        raise FimbenchError(f"unknown likelihood '{config.model.likelihood}'; choose bernoulli or gaussian") from None
    if layers[0] != input_dim or layers[-1] != input_dim:
        raise FimbenchError(
            f"model.layers must start and end with the data width {input_dim}, got {list(layers)}"
        )
    return Architecture(layers, likelihood, config.model.activation, default.kind)


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
    if batch_size > dataset.train.shape[0]:
        raise FimbenchError(f"batch size {batch_size} exceeds the {dataset.train.shape[0]} training examples")


def first_order_optimizer(parameters: Iterable[torch.nn.Parameter], method: Method, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam for ``adam``; momentum SGD (with weight decay) for every other method — the Kronecker
    methods' preconditioned gradient included."""
    if method is Method.ADAM:
        return torch.optim.Adam(
            parameters, lr=settings.lr, betas=tuple(settings.adam_betas), weight_decay=settings.weight_decay  # type: ignore[arg-type]
        )
    return torch.optim.SGD(
        parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=settings.nesterov
    )


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _validate(config: RunConfig) -> Method:
    method = parse_method(config.optimizer.method)
    training, optimizer = config.training, config.optimizer
    if training.batch_size < 1 or training.epochs < 1:
        raise FimbenchError("training.batch_size and training.epochs must be at least 1")
    if training.max_steps is not None and training.max_steps < 1:
        raise FimbenchError("training.max_steps must be at least 1")
    if not optimizer.lr > 0:
        raise FimbenchError(f"optimizer.lr must be positive, got {optimizer.lr}")
    if optimizer.weight_decay < 0 or not 0 <= optimizer.momentum < 1:
        raise FimbenchError("optimizer.weight_decay must be ≥ 0 and optimizer.momentum in [0, 1)")
    if optimizer.nesterov and optimizer.momentum == 0:
        raise FimbenchError("optimizer.nesterov needs a positive optimizer.momentum")
    return method


def run_training(
    config: RunConfig,
    run_dir: Path,
    progress: TrainProgress | None = None,
    dataset: DatasetSplits | None = None,
) -> TrainResult:
    """Train ``config`` and log into ``run_dir`` (module docstring).

    ``dataset`` replaces the one ``config.data`` names (e.g. random data of a benchmark's shape); the
    architecture is still the one of ``config.data.dataset`` unless ``config.model.layers`` is set.
    """
    method = _validate(config)
    device = resolve_device(config.training.device)
    training, settings = config.training, config.optimizer
    if dataset is None:
        dataset = load_configured_dataset(config, training.batch_size)
    else:
        check_batch_size(training.batch_size, dataset)
    architecture = resolve_architecture(config, dataset.input_dim)
    train_x = dataset.train.to(device)
    val_x = dataset.val.to(device)
    model = build_model(architecture, seed=training.seed).to(device)
    likelihood = architecture.likelihood
    order_generator = torch.Generator().manual_seed(training.seed + 1)
    fisher_generator = torch.Generator(device=device).manual_seed(training.seed + 2)
    timer = PhaseTimer(device)

    optimizer = first_order_optimizer(model.parameters(), method, settings)
    preconditioner: KroneckerPreconditioner | None = None
    if method.is_kronecker:
        preconditioner = KroneckerPreconditioner.from_config(model, likelihood, settings, fisher_generator, timer)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("", encoding="utf-8")

    steps_per_epoch = dataset.train.shape[0] // training.batch_size
    total_steps = steps_per_epoch * training.epochs
    if training.max_steps is not None:
        total_steps = min(total_steps, training.max_steps)
    if progress is not None:
        progress.start(total_steps, steps_per_epoch)

    result = TrainResult(run_dir, "completed")
    started = datetime.now(timezone.utc)
    train_seconds = 0.0
    step = 0
    window: list[torch.Tensor] = []  # losses not yet read on the host

    def read_window() -> list[float]:
        """Host values of the pending losses; raises on the first non-finite one."""
        values = torch.stack(window).tolist() if window else []
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                bad_step = step - len(values) + offset + 1
                raise _Diverged(bad_step, value)
        window.clear()
        return values

    try:
        for epoch in range(1, training.epochs + 1):
            if step >= total_steps:
                break
            model.train()
            synchronize(device)
            epoch_start = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            epoch_steps = 0
            for index in batch_indices(dataset.train.shape[0], training.batch_size, order_generator, device):
                if step >= total_steps:
                    break
                x = train_x[index]
                output = model(x)
                loss = likelihood.nll(output, x).mean()
                optimizer.zero_grad(set_to_none=False)
                loss.backward()
                step += 1
                epoch_steps += 1
                window.append(loss.detach())
                due = preconditioner is not None and preconditioner.steps % preconditioner.stats_every == 0
                if device.type == "cpu" or step % CHECK_EVERY == 0 or due:
                    values = read_window()
                    if progress is not None and values:
                        elapsed = train_seconds + time.perf_counter() - epoch_start
                        progress.step(step, epoch, values[-1], step / elapsed if elapsed > 0 else 0.0)
                if preconditioner is not None:
                    preconditioner.step(x)
                    if step == 1:
                        result.alignment_first_refresh = preconditioner.alignment
                        warning = damping_warning(result.alignment_first_refresh)
                        if warning is not None and progress is not None:
                            progress.warn(warning)
                optimizer.step()
                if preconditioner is not None and preconditioner.awaiting_loss:
                    with torch.no_grad():
                        preconditioner.adapt_damping(loss.detach(), likelihood.nll(model(x), x).mean())
                with torch.no_grad():
                    sums += torch.stack(
                        [
                            loss.detach().double(),
                            likelihood.loss_per_pixel(output.detach(), x).double(),
                            (likelihood.mean(output.detach()) - x).square().sum(dim=1).mean().double(),
                        ]
                    )
                if training.log_every and step % training.log_every == 0:
                    synchronize(device)
                    step_row = {
                        "kind": "step",
                        "step": step,
                        "epoch": epoch,
                        "train_loss": float(loss.detach()),
                        "wall_time": train_seconds + time.perf_counter() - epoch_start,
                    }
                    append_jsonl(metrics_path, step_row)
            read_window()
            synchronize(device)
            train_seconds += time.perf_counter() - epoch_start
            model.eval()
            validation = evaluate(model, val_x)
            train_means = (sums / max(epoch_steps, 1)).tolist()
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
            if preconditioner is not None:
                phases = timer.reset()
                row.update(preconditioner.pop_diagnostics())
                row["seconds_statistics"] = phases.get("statistics", 0.0)
                row["seconds_refresh"] = phases.get("approximate", 0.0) + phases.get("invert", 0.0)
                row["seconds_approximate"] = phases.get("approximate", 0.0)
                row["seconds_invert"] = phases.get("invert", 0.0)
                row["seconds_precondition"] = phases.get("precondition", 0.0)
            result.rows.append(row)  # first: an interrupt during the write's fsync keeps both in step
            append_jsonl(metrics_path, row)
            if progress is not None:
                progress.epoch(row)
    except _Diverged as diverged:
        result.status = "diverged"
        result.summary = _summary(config, device, result, started, train_seconds, step, diverged.step)
        atomic_write_json(run_dir / "summary.json", result.summary)
        raise DivergedError(
            f"non-finite loss ({diverged.value}) at step {diverged.step}; stopped, "
            f"{len(result.rows)} epoch(s) kept in {run_dir}"
        ) from None
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.summary = _summary(config, device, result, started, train_seconds, step, None)
        atomic_write_json(run_dir / "summary.json", result.summary)
        raise
    result.summary = _summary(config, device, result, started, train_seconds, step, None)
    atomic_write_json(run_dir / "summary.json", result.summary)
    return result


class _Diverged(Exception):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(step, value)
        self.step, self.value = step, value


def _summary(
    config: RunConfig,
    device: torch.device,
    result: TrainResult,
    started: datetime,
    train_seconds: float,
    steps: int,
    diverged_at: int | None,
) -> dict[str, Any]:
    last = result.rows[-1] if result.rows else {}
    best_val = min((row["val_loss"] for row in result.rows), default=None)
    return {
        "status": result.status,
        "dataset": config.data.dataset,
        "method": config.optimizer.method,
        "seed": config.training.seed,
        "epochs": len(result.rows),
        "steps": steps,
        "diverged_at_step": diverged_at,
        "final": {key: value for key, value in last.items() if key != "kind"},
        "best_val_loss": best_val,
        "alignment_first_refresh": result.alignment_first_refresh,
        "train_seconds": train_seconds,
        "time_per_step": train_seconds / steps if steps else None,
        "device": device_description(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "fimbench": __version__,
        "host": platform.node(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loss_convention": "train_loss/val_loss: per-example negative log-likelihood summed over pixels "
        "(mean over examples); *_loss_per_pixel: the paper's mean BCE / MSE",
    }
