"""Grid search (paper §4.2) as a resumable set of ordinary ``train`` runs.

Every grid point is one run directory ``<out>/<point>`` (``config.yaml``, ``metrics.jsonl``,
``summary.json``, exactly what ``fimbench train`` writes), named from the point, e.g.
``kfac-lr_7.84e1-damping_1.84397e3-clip_1e-2``. ``<out>/sweep.json`` lists each method's grid and points
with their last status; ``<out>/best/<method>.yaml`` holds the best point's configuration (lowest final
train loss, as §4.2 selects) ready for ``fimbench train --config``.

Grid scale. The paper's grid (:data:`PAPER_GRID`) is in the authors' loss scale and damping split,
which differ from fimbench's (:mod:`fimbench.conventions`: κ = 1/P for BCE, 2/P for MSE, and a fixed π per
method). With ``authors_scale`` every value, given or the paper's, is converted per method and dataset by
:func:`fimbench.conventions.from_authors_scale` (a converted damping also sets the point's ``pi``), so the
sweep explores exactly the optimizers the paper explored. Otherwise values are in fimbench's scale (that
of ``fimbench train --lr`` and of ``config.yaml``, with the base config's ``pi``), and the Kronecker
methods' default grid is :data:`KRONECKER_GRID`, fimbench's own around its presets, where the curvature
acts; SGD and Adam keep the paper's learning rates, converted (their conversion involves no damping).
SGD and Adam tune ``lr`` only; the Kronecker methods tune ``lr``, ``damping`` and ``clip`` (the KL-clip c,
invariant under the conversion).

Resume. A point whose ``summary.json`` says ``completed`` or ``diverged`` is finished and kept (given its
seed a divergence is a result, not an accident); every other point (interrupted, failed, never started)
runs again from scratch. A finished point whose ``config.yaml`` differs from the one asked for (another
``--epochs``, say) is an error rather than silently mixed in.

Executors. :class:`LocalRunner` runs J worker processes (``python -m fimbench.sweep RUN_DIR THREADS``)
with ``cores // J`` torch threads each; :class:`SubmititRunner` submits the same worker function,
:func:`run_point`, through submitit: to SLURM on a cluster, or to submitit's local and debug executors.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import submitit
import torch
import yaml

from fimbench.comparison import SWEEP_MANIFEST, best_run, read_metrics, read_run, read_summary
from fimbench.config import RunConfig, dump_config, load_config
from fimbench.conventions import from_authors_scale
from fimbench.curvature import Method, parse_method
from fimbench.data import DATASETS, require_present
from fimbench.errors import FimbenchError
from fimbench.io import atomic_write_json, atomic_write_text
from fimbench.models import ARCHITECTURES, Architecture
from fimbench.train import load_configured_dataset, resolve_architecture, run_training

_PAPER_VALUES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_GRID: dict[str, tuple[float, ...]] = {"lr": _PAPER_VALUES, "damping": _PAPER_VALUES, "clip": (1e-2, 1e-3)}
"""§4.2's grid, in the authors' loss scale."""
KRONECKER_GRID: dict[str, tuple[float, ...]] = {"lr": (1.0, 0.3, 0.1, 0.03), "damping": (1.0, 0.1, 1e-2, 1e-3), "clip": (1e-2, 1e-3)}
"""The Kronecker methods' default grid in fimbench's scale (trace π): around the presets of configs/."""
GRID_KEYS: dict[str, str] = {"lr": "optimizer.lr", "damping": "optimizer.damping", "clip": "optimizer.kl_clip"}
FINISHED = ("completed", "diverged")
ACTIVE = ("pending", "running")
WORKER_LOG = "worker.log"
CLOSE_GRACE_SECONDS = 30.0  # after Ctrl-C, time for workers to record "interrupted" before they are killed
_UNCOMPARED = {("data", "data_dir"), ("training", "device")}  # may change when a sweep resumes elsewhere
GRID_SCALE_NOTE = (
    "values: fimbench's scale (per-example NLL summed over pixels), as in config.yaml; authors_values: "
    "the same values in the authors' scale (mean over pixels), where they were converted from it by "
    "fimbench.conventions.from_authors_scale"
)


def tunable_keys(method: Method) -> tuple[str, ...]:
    """The grid keys a method tunes: SGD and Adam have no damping and no KL-clipping."""
    return tuple(GRID_KEYS) if method.is_kronecker else ("lr",)


def parse_grid(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["lr=1e-1,3e-2", "clip=1e-2"]`` -> ``{"lr": [0.1, 0.03], "clip": [0.01]}``."""
    grid: dict[str, list[float]] = {}
    for spec in specs:
        key, separator, text = spec.partition("=")
        key = key.strip()
        if not separator or key not in GRID_KEYS:
            raise FimbenchError(f"--grid takes KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}; got '{spec}'")
        if key in grid:
            raise FimbenchError(f"--grid {key} is given twice; list all its values in one --grid {key}=...")
        try:
            values = [float(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise FimbenchError(f"--grid {key}: values must be numbers, got '{text}'") from None
        if not values or not all(math.isfinite(value) and value > 0 for value in values):
            raise FimbenchError(f"--grid {key}: give one or more positive numbers, got '{text}'")
        grid[key] = values
    return grid


def format_value(value: float) -> str:
    """Six significant digits, no padding: 0.03 -> ``3e-2``, 78.4 -> ``7.84e1``."""
    mantissa, exponent = f"{value:.5e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def point_name(method: str, values: Mapping[str, float]) -> str:
    """The point's run directory name: ``kfac-lr_3e-2-damping_1e-3-clip_1e-2``."""
    return "-".join([method, *(f"{key}_{format_value(value)}" for key, value in values.items())])


def to_fimbench_scale(method: Method, architecture: Architecture, key: str, value: float) -> float:
    """A grid value of the authors' scale in fimbench's (module docstring); the KL-clip c is invariant."""
    pixels = architecture.layers[0]
    if key == "lr":
        return from_authors_scale(method, architecture.likelihood, pixels, lr=value)["lr"]
    if key == "damping":
        return from_authors_scale(method, architecture.likelihood, pixels, lr=1.0, damping=value)["damping"]
    return value


@dataclass(frozen=True)
class GridAxis:
    key: str  # lr | damping | clip
    values: tuple[float, ...]  # fimbench's scale
    authors_values: tuple[float, ...] | None  # the same, in the authors' scale, when converted from it


@dataclass(frozen=True)
class SweepPoint:
    name: str
    method: str
    values: dict[str, float]  # grid key -> value in fimbench's scale
    authors_values: dict[str, float]  # the keys whose values were converted from the authors' scale
    config: RunConfig


@dataclass(frozen=True)
class SweepPlan:
    out: Path
    dataset: str
    grids: dict[str, tuple[GridAxis, ...]]  # method -> its axes
    points: tuple[SweepPoint, ...]


def _axis(method: Method, architecture: Architecture, key: str, given: Sequence[float] | None, authors_scale: bool) -> GridAxis:
    if given is None and method.is_kronecker and not authors_scale:
        return GridAxis(key, KRONECKER_GRID[key], None)
    raw = tuple(given) if given is not None else PAPER_GRID[key]
    converted = authors_scale or given is None
    values = tuple(to_fimbench_scale(method, architecture, key, value) for value in raw) if converted else raw
    first: dict[str, int] = {}  # one point per distinct run name
    for index, value in enumerate(values):
        first.setdefault(format_value(value), index)
    kept = sorted(first.values())
    return GridAxis(key, tuple(values[i] for i in kept), tuple(raw[i] for i in kept) if converted else None)


def plan_sweep(
    out: Path,
    methods: Sequence[str] = (),
    grid: Mapping[str, Sequence[float]] | None = None,
    authors_scale: bool = False,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepPlan:
    """Expand each method's grid into points (module docstring).

    ``methods``: default all seven. ``grid``: values per key (:func:`parse_grid`); keys left out take the
    default grid (module docstring). ``config_path`` and dotted ``overrides`` (``data.dataset``, ``training.epochs``, ...) are
    resolved as by ``fimbench train`` for every point, before the point's own values.
    """
    grid = dict(grid or {})
    overrides = dict(overrides or {})
    chosen = list(dict.fromkeys(parse_method(name) for name in methods)) or list(Method)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise FimbenchError(f"unknown grid key(s) {', '.join(unknown)}; use {', '.join(GRID_KEYS)}")
    unused = sorted(set(grid) - {key for method in chosen for key in tunable_keys(method)})
    if unused:
        raise FimbenchError(
            f"--grid {', '.join(unused)} is tuned by none of {', '.join(m.value for m in chosen)} (SGD and Adam tune lr only)"
        )
    grids: dict[str, tuple[GridAxis, ...]] = {}
    points: list[SweepPoint] = []
    dataset = ""
    for method in chosen:
        base = load_config(config_path, {**overrides, "optimizer.method": method.value})
        dataset = base.data.dataset
        if dataset not in DATASETS:
            raise FimbenchError(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
        architecture = resolve_architecture(base, ARCHITECTURES[dataset].layers[0])
        axes = tuple(_axis(method, architecture, key, grid.get(key), authors_scale) for key in tunable_keys(method))
        grids[method.value] = axes
        for combination in itertools.product(*(range(len(axis.values)) for axis in axes)):
            values = {axis.key: axis.values[i] for axis, i in zip(axes, combination)}
            authors = {
                axis.key: axis.authors_values[i]
                for axis, i in zip(axes, combination)
                if axis.authors_values is not None
            }
            point_overrides = {GRID_KEYS[key]: value for key, value in values.items()}
            if "damping" in authors:  # the authors' damping comes with their split
                pixels = architecture.layers[0]
                point_overrides["optimizer.pi"] = from_authors_scale(method, architecture.likelihood, pixels, 1.0, 1.0)["pi"]
            config = load_config(config_path, {**overrides, "optimizer.method": method.value, **point_overrides})
            points.append(SweepPoint(point_name(method.value, values), method.value, values, authors, config))
    return SweepPlan(Path(out), dataset, grids, tuple(points))


# ----------------------------------------------------------------------------------------------- state on disk


@dataclass
class PointState:
    point: SweepPoint
    run_dir: Path
    status: str = "pending"  # pending | running | completed | diverged | interrupted | failed
    resumed: bool = False  # finished by an earlier invocation of the sweep
    epoch: int | None = None
    train_loss: float | None = None  # latest logged; the final one once finished
    val_loss: float | None = None
    alignment: float | None = None  # latest logged cos(F̃⁻¹∇, ∇) (Kronecker methods)
    correction_scale: float | None = None  # latest logged safeguard τ (rank-2 methods)
    message: str | None = None  # why it failed or diverged


def _fill(state: PointState, row: Mapping[str, Any]) -> None:
    state.epoch, state.train_loss, state.val_loss = row.get("epoch"), row.get("train_loss"), row.get("val_loss")
    state.alignment, state.correction_scale = row.get("alignment"), row.get("correction_scale")


def _config_difference(point: SweepPoint, run_dir: Path) -> str | None:
    """The first setting in which ``run_dir/config.yaml`` differs from the point's config, if any."""
    try:
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict):
        return "its config.yaml is missing or unreadable"
    for section, values in point.config.to_dict().items():
        for key, value in values.items():
            old = (recorded.get(section) or {}).get(key, "<absent>")
            if (section, key) not in _UNCOMPARED and old != value:
                return f"{section}.{key} is {old!r} there, {value!r} now"
    return None


def _existing_manifest(plan: SweepPlan) -> dict[str, Any]:
    """The sweep directory's manifest (``{}`` if new); another dataset's sweep is an error."""
    path = plan.out / SWEEP_MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FimbenchError(f"{path} is unreadable; sweep into another --out or delete it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("methods"), dict):
        raise FimbenchError(f"{path} is not a fimbench sweep manifest; sweep into another --out")
    if manifest.get("dataset") != plan.dataset:
        raise FimbenchError(f"{plan.out} holds a sweep on {manifest.get('dataset')}, not {plan.dataset}; use another --out")
    return manifest


def inspect_points(plan: SweepPlan) -> list[PointState]:
    """Every point's state before running: finished ones are kept, the rest are pending (module docstring)."""
    _existing_manifest(plan)
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
            _fill(state, summary.get("final") or {})
            if state.status == "diverged":
                state.message = f"non-finite loss at step {summary.get('diverged_at_step')}"
        states.append(state)
    return states


def _manifest(plan: SweepPlan, previous: dict[str, Any], states: Sequence[PointState]) -> dict[str, Any]:
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
        }
    return {
        "dataset": plan.dataset,
        "grid_scale": GRID_SCALE_NOTE,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "methods": methods,
    }


def _prepare_data(config: RunConfig) -> None:
    """Fail before launching anything if the dataset is absent; build curves-synth's cache once, not per worker."""
    data = config.data
    if data.dataset == "curves-synth":
        load_configured_dataset(config)
    else:
        require_present(data.dataset, Path(data.data_dir) if data.data_dir else None)


def _reset_run_dir(state: PointState) -> None:
    """Drop what an earlier attempt left and write the point's config for the worker."""
    for name in ("summary.json", "metrics.jsonl"):
        (state.run_dir / name).unlink(missing_ok=True)
    atomic_write_text(state.run_dir / "config.yaml", dump_config(state.point.config))


def _observe(state: PointState) -> None:
    """A pending point whose worker has started logging is running; show its latest epoch."""
    metrics = state.run_dir / "metrics.jsonl"
    if metrics.is_file():
        state.status = "running"
        rows, _ = read_metrics(metrics)
        if rows:
            _fill(state, rows[-1])


def _settle(state: PointState, error: str | None) -> None:
    """Record how a point's worker ended: the status of its summary.json, else failed."""
    summary = read_summary(state.run_dir)
    status = summary.get("status")
    if status in ("completed", "diverged", "interrupted"):
        state.status = status
        _fill(state, summary.get("final") or {})
        if status == "diverged":
            state.message = f"non-finite loss at step {summary.get('diverged_at_step')}"
    else:
        state.status, state.message = "failed", error or "the worker ended without writing summary.json"


# ----------------------------------------------------------------------------------------------- workers


def run_point(run_dir: str, threads: int) -> str:
    """Train the point whose resolved config is ``run_dir/config.yaml`` with ``threads`` torch threads.

    Returns the run's status; a divergence is a result (recorded in ``summary.json``), not a failure.
    """
    torch.set_num_threads(threads)
    path = Path(run_dir)
    try:
        return run_training(load_config(path / "config.yaml"), path).status
    except FimbenchError:
        if read_summary(path).get("status") == "diverged":
            return "diverged"
        raise


class Runner(Protocol):
    """Runs :func:`run_point` for points somewhere and says which have ended."""

    def submit(self, states: Sequence[PointState]) -> None: ...
    def poll(self) -> list[tuple[PointState, str | None]]: ...  # ended since the last poll, with the error if any
    def close(self) -> None: ...  # stop what still runs (Ctrl-C)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class LocalRunner:
    """``jobs`` worker processes on this machine, ``max(1, cores // jobs)`` torch threads each."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise FimbenchError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.threads = max(1, available_cores() // jobs)
        self._queue: deque[PointState] = deque()
        self._running: list[tuple[subprocess.Popen[bytes], PointState]] = []

    def submit(self, states: Sequence[PointState]) -> None:
        self._queue.extend(states)
        self._launch()

    def _launch(self) -> None:
        while self._queue and len(self._running) < self.jobs:
            state = self._queue.popleft()
            with open(state.run_dir / WORKER_LOG, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "fimbench.sweep", str(state.run_dir.absolute()), str(self.threads)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the sweep, which interrupts workers itself
                )
            self._running.append((process, state))

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended: list[tuple[PointState, str | None]] = []
        for process, state in list(self._running):
            if process.poll() is not None:
                self._running.remove((process, state))
                error = None
                if process.returncode != 0:
                    log = (state.run_dir / WORKER_LOG).read_text(encoding="utf-8", errors="replace")
                    error = f"worker exited with status {process.returncode}: {_last_line(log)}"
                ended.append((state, error))
        self._launch()
        return ended

    def close(self) -> None:
        """Interrupt the running workers (they record ``interrupted``); kill those that do not stop."""
        self._queue.clear()
        for process, _ in self._running:
            process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for process, _ in self._running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running.clear()


class SubmititRunner:
    """Points as submitit jobs in ``folder``: ``cluster="slurm"`` on a cluster; ``"local"`` or ``"debug"``
    run them on this machine. ``jobs`` caps how many run at once on SLURM (its array parallelism)."""

    def __init__(
        self,
        folder: Path,
        cluster: str = "slurm",
        partition: str | None = None,
        time_minutes: int = 240,
        gpus_per_job: int = 0,
        cpus_per_job: int = 4,
        jobs: int | None = None,
    ) -> None:
        if time_minutes < 1 or gpus_per_job < 0 or cpus_per_job < 1 or (jobs is not None and jobs < 1):
            raise FimbenchError("--time, --cpus-per-job and --jobs must be at least 1, --gpus-per-job at least 0")
        self.threads = cpus_per_job
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            self.executor.update_parameters(
                name="fimbench-sweep",
                timeout_min=time_minutes,
                gpus_per_node=gpus_per_job or None,  # no --gpus-per-node=0 line for CPU partitions
                cpus_per_task=cpus_per_job,
                slurm_partition=partition,
                slurm_array_parallelism=jobs,
            )
        except (RuntimeError, ValueError, NameError) as error:  # e.g. no srun: not on a SLURM cluster
            raise FimbenchError(f"submitit cannot use the {cluster} executor here: {_last_line(str(error))}") from None
        self._jobs: list[tuple[submitit.Job[str], PointState]] = []

    def submit(self, states: Sequence[PointState]) -> None:
        if not states:
            return
        try:
            with self.executor.batch():
                jobs = [self.executor.submit(run_point, str(state.run_dir.absolute()), self.threads) for state in states]
        except Exception as error:  # sbatch missing or refusing: whatever submitit raises, one clear line
            raise FimbenchError(
                f"submitting {len(states)} job(s) through submitit ({self.executor.cluster}) failed: {_last_line(str(error))}"
            ) from None
        self._jobs.extend(zip(jobs, states))

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended: list[tuple[PointState, str | None]] = []
        for job, state in list(self._jobs):
            if job.done():
                self._jobs.remove((job, state))
                try:
                    job.result()
                    ended.append((state, None))
                except Exception as error:  # the job's exception or submitit's (timeout, node failure)
                    ended.append((state, f"job {job.job_id}: {_last_line(str(error))}"))
        return ended

    def close(self) -> None:
        """Cancel the jobs still queued or running, so a rerun does not race them."""
        for job, _ in self._jobs:
            job.cancel(check=False)
        self._jobs.clear()


# ----------------------------------------------------------------------------------------------- the sweep


class SweepProgress(Protocol):
    def update(self, states: Sequence[PointState]) -> None: ...


@dataclass
class SweepResult:
    plan: SweepPlan
    states: list[PointState]
    best: dict[str, Path]  # method -> best/<method>.yaml

    @property
    def failed(self) -> list[PointState]:
        return [state for state in self.states if state.status == "failed"]


def _best_header(plan: SweepPlan, state: PointState, method_states: Sequence[PointState], train_loss: float, path: Path) -> str:
    completed = sum(other.status == "completed" for other in method_states)
    lines = [
        f"Best {state.point.method} point of the sweep in {plan.out} on {plan.dataset}: {state.point.name}",
        f"lowest final train loss ({train_loss:.6g}) among {completed} completed of {len(method_states)} points "
        "(paper §4.2 selects by training loss).",
        "Grid values (fimbench's scale): " + ", ".join(f"{k} {format_value(v)}" for k, v in state.point.values.items()),
    ]
    if state.point.authors_values:
        authors = ", ".join(f"{k} {format_value(v)}" for k, v in state.point.authors_values.items())
        lines.append(f"In the authors' scale: {authors} (converted by fimbench.conventions.from_authors_scale).")
    lines.append(f"Reproduce: fimbench train --config {path}")
    return "".join(f"# {line}\n" for line in lines)


def _write_best(plan: SweepPlan, states: Sequence[PointState]) -> dict[str, Path]:
    """``best/<method>.yaml``: the config of the completed point with the lowest final train loss."""
    written: dict[str, Path] = {}
    for method in plan.grids:
        method_states = [state for state in states if state.point.method == method]
        path = plan.out / "best" / f"{method}.yaml"
        best = best_run([read_run(state.run_dir) for state in method_states if state.status == "completed"])
        if best is None or best.final_train_loss is None:
            path.unlink(missing_ok=True)  # a best file from an earlier grid of this method is stale
            continue
        state = next(state for state in method_states if state.run_dir == best.path)
        header = _best_header(plan, state, method_states, best.final_train_loss, path)
        atomic_write_text(path, header + (best.path / "config.yaml").read_text(encoding="utf-8"))
        written[method] = path
    return written


def run_sweep(
    plan: SweepPlan, runner: Runner, progress: SweepProgress | None = None, poll_seconds: float = 1.0
) -> SweepResult:
    """Run the plan's unfinished points on ``runner`` and write the manifest and best configs.

    Ctrl-C stops the workers (they record ``interrupted``), saves the manifest and re-raises; running the
    same plan again resumes.
    """
    states = inspect_points(plan)
    previous = _existing_manifest(plan)
    todo = [state for state in states if state.status == "pending"]
    if todo:
        _prepare_data(todo[0].point.config)
        for state in todo:
            _reset_run_dir(state)

    def save() -> None:
        atomic_write_json(plan.out / SWEEP_MANIFEST, _manifest(plan, previous, states))

    plan.out.mkdir(parents=True, exist_ok=True)
    save()
    try:
        runner.submit(todo)
        while True:
            ended = runner.poll()
            for state, error in ended:
                _settle(state, error)
            for state in todo:
                if state.status in ACTIVE:
                    _observe(state)
            if ended:
                save()
            if progress is not None:
                progress.update(states)
            if not any(state.status in ACTIVE for state in todo):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        runner.close()
        for state in todo:
            summary = read_summary(state.run_dir) if state.status in ACTIVE else {}
            if summary or state.status == "running":  # a point may finish between two polls
                state.status = summary.get("status", "interrupted")
                _fill(state, summary.get("final") or {})
        save()
        raise
    best = _write_best(plan, states)
    return SweepResult(plan, states, best)


if __name__ == "__main__":  # LocalRunner's worker: python -m fimbench.sweep RUN_DIR THREADS
    run_point(sys.argv[1], int(sys.argv[2]))
