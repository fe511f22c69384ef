"""A sweep's state on disk: each point's run directory and ``<out>/sweep.json``.

Resume. A point whose ``summary.json`` says ``completed`` or ``diverged`` is finished and kept (given its
seed a divergence is a result, not an accident). A point that was interrupted or killed (no summary) with the
same config continues from the ``checkpoint.pt`` of its last finished epoch, bit for bit on CPU, its training
seconds those of its epochs; its worker checks the checkpoint first (:func:`~fimbench.engines.rundir.continuable_epochs`)
and starts again from scratch when it cannot continue. Every other point (crashed, of another config, never
started) runs from scratch. A finished point whose ``config.yaml`` differs from the one asked for (another
``--epochs``, say) is an error rather than silently mixed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fimbench.data import require_present
from fimbench.engines.config import RunConfig, dump_config
from fimbench.engines.dataset import load_configured_dataset
from fimbench.engines.rundir import (
    CHECKPOINT,
    METRICS,
    SEED_INDEPENDENT,
    SWEEP_MANIFEST,
    clear_results,
    read_config,
    read_metrics,
    read_summary,
    read_sweep_manifest,
    write_config,
)
from fimbench.engines.sweep.plan import SweepPlan, SweepPoint
from fimbench.errors import FimbenchError

FINISHED = ("completed", "diverged")
ACTIVE = ("pending", "running")
_UNCOMPARED = SEED_INDEPENDENT - {("training", "seed")}  # where a point runs and how it is watched may change
GRID_SCALE_NOTE = (
    "values: fimbench's scale (per-example NLL summed over pixels), as in config.yaml; authors_values: "
    "the same values in the authors' scale (mean over pixels), where they were converted from it by "
    "fimbench.engines.authors_scale.from_authors_scale"
)


@dataclass
class PointState:
    point: SweepPoint
    run_dir: Path
    status: str = "pending"  # pending | running | completed | diverged | interrupted | failed
    resumed: bool = False  # finished by an earlier invocation of the sweep
    continued_from: int = 0  # epochs an earlier invocation left logged, which this one continues after
    epoch: int | None = None
    train_loss: float | None = None  # latest logged; the final one once finished
    val_loss: float | None = None
    wall_time: float | None = None  # training seconds up to the latest logged epoch
    alignment: float | None = None  # latest logged cos(F̃⁻¹∇, ∇) (Kronecker methods)
    correction_scale: float | None = None  # latest logged safeguard τ (rank-2 methods)
    message: str | None = None  # why it failed or diverged


def fill_state(state: PointState, row: Mapping[str, Any]) -> None:
    state.epoch, state.train_loss, state.val_loss = row.get("epoch"), row.get("train_loss"), row.get("val_loss")
    state.wall_time = row.get("wall_time")
    state.alignment, state.correction_scale = row.get("alignment"), row.get("correction_scale")


def _config_difference(point: SweepPoint, run_dir: Path) -> str | None:
    """The first setting in which ``run_dir/config.yaml`` differs from the point's config, if any."""
    recorded = read_config(run_dir)
    if recorded is None:
        return "its config.yaml is missing or unreadable"
    for section, values in point.config.to_dict().items():
        for key, value in values.items():
            old = (recorded.get(section) or {}).get(key, "<absent>")
            if (section, key) not in _UNCOMPARED and old != value:
                return f"{section}.{key} is {old!r} there, {value!r} now"
    return None


def existing_manifest(plan: SweepPlan) -> dict[str, Any]:
    """The sweep directory's manifest (``{}`` if new); another dataset's sweep is an error."""
    path = plan.out / SWEEP_MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = read_sweep_manifest(plan.out)
    except (OSError, ValueError):
        raise FimbenchError(f"{path} is unreadable; sweep into another --out or delete it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("methods"), dict):
        raise FimbenchError(f"{path} is not a fimbench sweep manifest; sweep into another --out")
    if manifest.get("dataset") != plan.dataset:
        raise FimbenchError(f"{plan.out} holds a sweep on {manifest.get('dataset')}, not {plan.dataset}; use another --out")
    return manifest


def inspect_points(plan: SweepPlan) -> list[PointState]:
    """Every point's state before running: finished ones are kept, the rest are pending (module docstring)."""
    existing_manifest(plan)
    states: list[PointState] = []
    for point in plan.points:
        state = PointState(point, plan.out / point.name)
        summary = read_summary(state.run_dir)
        if summary.get("status") in FINISHED:
            difference = _config_difference(point, state.run_dir)
            if difference is not None:
                raise FimbenchError(
                    f"{state.run_dir} is a finished run with other settings ({difference}); "
                    "sweep into another --out, or delete that directory to rerun it"
                )
            state.status, state.resumed = summary["status"], True
            fill_state(state, summary.get("final") or {})
            if state.status == "diverged":
                state.message = f"non-finite loss at step {summary.get('diverged_at_step')}"
        states.append(state)
    return states


def manifest_document(plan: SweepPlan, previous: dict[str, Any], states: Sequence[PointState]) -> dict[str, Any]:
    """``previous`` with this plan's methods replaced (other methods swept into the same directory stay)."""
    methods = dict(previous.get("methods") or {})
    for method, axes in plan.grids.items():
        methods[method] = {
            "grid": {
                axis.key: {"values": list(axis.values), "authors_values": list(axis.authors_values) if axis.authors_values else None}
                for axis in axes
            },
            "points": {
                state.point.name: {
                    "values": state.point.values,
                    "seed": state.point.seed,
                    "authors_values": state.point.authors_values,
                    "status": state.status,
                    "final_train_loss": state.train_loss if state.status in FINISHED else None,
                    "alignment": state.alignment,
                    "correction_scale": state.correction_scale,
                    "message": state.message,
                }
                for state in states
                if state.point.method == method
            },
            **({"tuning": plan.tuning[method]} if method in plan.tuning else {}),
        }
    return {
        "dataset": plan.dataset,
        "grid_scale": GRID_SCALE_NOTE,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "methods": methods,
    }


def prepare_data(config: RunConfig) -> None:
    """Fail before launching anything if the dataset is absent; build curves-synth's cache once, not per worker."""
    data = config.data
    if data.dataset == "curves-synth":
        load_configured_dataset(config)
    else:
        require_present(data.dataset, Path(data.data_dir) if data.data_dir else None)


def prepare_run_dir(state: PointState) -> None:
    """Before a pending point runs: keep what an interrupted or killed attempt of the same config left, for the
    worker to continue from (module docstring), else drop it; then write the point's config for the worker."""
    if _may_continue(state):
        rows, _ = read_metrics(state.run_dir / METRICS)
        state.continued_from = int(rows[-1]["epoch"]) if rows else 0
    else:
        clear_results(state.run_dir)
    write_config(state.run_dir, dump_config(state.point.config))


def _may_continue(state: PointState) -> bool:
    """An earlier attempt left a checkpoint, stopped without a bug (interrupted, or no summary: killed), and ran
    the point's config."""
    return (
        (state.run_dir / CHECKPOINT).is_file()
        and read_summary(state.run_dir).get("status", "interrupted") == "interrupted"
        and _config_difference(state.point, state.run_dir) is None
    )


def observe(state: PointState) -> None:
    """A pending point whose worker has started logging is running; show its latest epoch."""
    metrics = state.run_dir / METRICS
    if metrics.is_file():
        state.status = "running"
        rows, _ = read_metrics(metrics)
        if rows:
            fill_state(state, rows[-1])


def settle(state: PointState, error: str | None) -> None:
    """Record how a point's worker ended: the status of its summary.json, else failed."""
    summary = read_summary(state.run_dir)
    status = summary.get("status")
    if status in ("completed", "diverged", "interrupted"):
        state.status = status
        fill_state(state, summary.get("final") or {})
        if status == "diverged":
            state.message = f"non-finite loss at step {summary.get('diverged_at_step')}"
    else:
        state.status, state.message = "failed", error or "the worker ended without writing summary.json"
