"""The paper's §4.2 protocol as one resumable pipeline: the data behind Figure 2.

Stages, each a folder of ``<out>``:

1. ``sweep/``: a grid search of every method (:func:`fimbench.engines.sweep.plan_sweep`), ``sweep_epochs`` each, tuned as
   its :class:`~fimbench.engines.sweep.Tuning` asks (a budget of trials per method, the edge extension, or a
   quasi-random search: :func:`fimbench.engines.sweep.run_tuned_sweep`);
2. ``sweep/best/<method>.yaml``: each method's best setting (lowest final train loss, §4.2);
3. ``runs/``: that setting once per seed, ``epochs`` each (:func:`fimbench.engines.sweep.plan_best_runs`);
4. ``report/``: ``figure2.png``, ``profile.png`` (the performance profiles) and ``report.json`` of the runs (:mod:`fimbench.engines.comparison`), seeds
   aggregated and differences tested; ``report.json``'s ``tuning`` holds each method's tuning record of stage 1.

Stages 1 and 3 are ordinary sweeps run by :func:`fimbench.engines.sweep.run_sweep`, so the pipeline resumes as
a sweep does: rerunning it keeps every finished run and reruns the interrupted ones; the report is
rewritten from whatever is on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fimbench.engines.comparison import Comparison
from fimbench.engines.sweep import (
    Planner,
    PointState,
    Runner,
    SettingsRule,
    SweepPlan,
    SweepPoint,
    SweepResult,
    Tuning,
    plan_best_runs,
    plan_sweep,
    plan_tuned,
    run_sweep,
    run_tuned_sweep,
)
from fimbench.errors import FimbenchError
from fimbench.methods import PAPER_METHODS, Command, Method, methods_of, parse_method

SWEEP, RUNS, REPORT = "sweep", "runs", "report"
STAGES: tuple[str, ...] = (SWEEP, RUNS, REPORT)
"""The stages' names, which are also their folders in ``<out>``."""


@dataclass(frozen=True)
class Figure2Plan:
    out: Path
    sweep: SweepPlan  # stage 1's first round (the grid, or the quasi-random points)
    seeds: tuple[int, ...]
    epochs: int | None  # of the seeded runs; None: the config's
    overrides: dict[str, Any]  # dotted config overrides of the seeded runs (besides the best setting)
    planner: Planner  # stage 1's plan for given settings: its rounds
    tuning: Tuning = field(default_factory=Tuning)  # of stage 1


class Figure2Progress(Protocol):
    def stage(self, name: str, plan: SweepPlan | None) -> None: ...
    def update(self, states: Sequence[PointState], seconds_left: float | None) -> None: ...


def plan_figure2(
    out: Path,
    methods: Sequence[str] = (),
    grid: Mapping[str, Sequence[float]] | None = None,
    authors_scale: bool = False,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sweep_epochs: int | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    tuning: Tuning | None = None,
) -> Figure2Plan:
    """The protocol's plan; ``overrides`` (``--set``, ``data.dataset``, ...) apply to every run.

    ``grid`` (values per key, :func:`fimbench.engines.sweep.parse_grid`) is the Kronecker methods' grid; SGD and
    Adam always sweep their default learning rates (the paper's, converted), which no value of a
    curvature method's grid suits. ``tuning``: how stage 1 tunes each method (default: the grid, extended
    within the default bound, no budget); a grid larger than its budget is an error here, before anything runs.
    """
    overrides = dict(overrides or {})
    if overrides.get("training.seed") is not None:
        raise FimbenchError("the seeds are the protocol's --seeds (the sweep runs the first); do not set training.seed")
    if overrides.get("training.epochs") is not None:
        raise FimbenchError("the epochs are the protocol's --sweep-epochs and --epochs; do not set training.epochs")
    if not seeds:
        raise FimbenchError("--seeds needs at least one seed")
    for name, value in (("--sweep-epochs", sweep_epochs), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise FimbenchError(f"{name} must be at least 1, got {value}")
    sweep_overrides = {**overrides, "training.seed": seeds[0], "training.epochs": sweep_epochs}
    accepted = methods_of(command=Command.REPRODUCE)
    chosen = list(dict.fromkeys(parse_method(name, choices=accepted) for name in methods)) or list(PAPER_METHODS)
    if grid and not any(method.is_preconditioned for method in chosen):
        raise FimbenchError("--grid is the preconditioned methods' grid, and none is among --methods (SGD and Adam sweep their default lr)")
    order = [method.value for method in chosen]
    planner = partial(_plan_stage1, Path(out) / SWEEP, order, grid, authors_scale, config_path, sweep_overrides)
    tuning = tuning or Tuning()
    return Figure2Plan(Path(out), plan_tuned(planner, tuning), tuple(seeds), epochs, overrides, planner, tuning)


def _plan_stage1(
    out: Path,
    order: list[str],
    grid: Mapping[str, Sequence[float]] | None,
    authors_scale: bool,
    config_path: Path | None,
    overrides: dict[str, Any],
    settings: SettingsRule,
) -> SweepPlan:
    """Stage 1's plan: the Kronecker methods with ``grid``, SGD and Adam with their default learning rates."""
    kronecker = [name for name in order if Method(name).is_preconditioned]
    baselines = [name for name in order if not Method(name).is_preconditioned]
    parts = [
        plan_sweep(out, names, method_grid, authors_scale, config_path, overrides, settings=settings)
        for names, method_grid in ((kronecker, grid), (baselines, None))
        if names
    ]
    grids = {method: axes for part in parts for method, axes in part.grids.items()}
    points = sorted((point for part in parts for point in part.points), key=lambda point: order.index(point.method))
    return SweepPlan(out, parts[0].dataset, {m: grids[m] for m in order}, tuple(points))


def runs_plan(plan: Figure2Plan, best: Mapping[str, tuple[SweepPoint, Path]]) -> SweepPlan:
    """Stage 3's plan: each method's best setting (its point and ``best/<method>.yaml``) once per seed."""
    overrides = {**plan.overrides, "training.epochs": plan.epochs} if plan.epochs is not None else plan.overrides
    return plan_best_runs(plan.out / RUNS, best, plan.seeds, overrides)


def _epochs(state: PointState) -> int:
    return state.point.config.training.epochs


def seconds_left(states: Sequence[PointState], elapsed: float, future: Sequence[tuple[str, int]] = ()) -> float | None:
    """Estimated seconds until ``states`` (and the ``future`` runs, ``(method, epochs)`` each) finish.

    Work is counted in training seconds: an epoch of a method costs its mean logged seconds per epoch
    (over every run of ``states`` that logged one; a method with none costs the mean over methods). The
    work done in this invocation (the epochs of runs not finished by an earlier one, past those an earlier one
    left for them to continue from) over ``elapsed`` wall seconds is
    the throughput, which includes evaluation, start-up and parallel workers; ``None`` until some is done.
    """
    seconds: dict[str, float] = {}
    epochs: dict[str, int] = {}
    for state in states:
        if state.epoch and state.wall_time:
            seconds[state.point.method] = seconds.get(state.point.method, 0.0) + state.wall_time
            epochs[state.point.method] = epochs.get(state.point.method, 0) + state.epoch
    rates = {method: seconds[method] / epochs[method] for method in seconds}
    if not rates or elapsed <= 0:
        return None
    fallback = sum(rates.values()) / len(rates)

    def cost(method: str, count: int) -> float:
        return rates.get(method, fallback) * count

    done = sum(cost(s.point.method, max(0, (s.epoch or 0) - s.continued_from)) for s in states if not s.resumed)
    if done <= 0:
        return None
    left = sum(
        cost(s.point.method, max(0, _epochs(s) - (s.epoch or 0)))
        for s in states if s.status in ("pending", "running")
    )
    left += sum(cost(method, count) for method, count in future)
    return left / (done / elapsed)


@dataclass
class Figure2Result:
    comparison: Comparison  # of the seeded runs
    report_dir: Path
    skipped: list[str]  # methods without a completed sweep point, left out of the runs
    failed: list[Path]  # run directories whose worker failed (in either stage); a rerun retries them
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its stage-1 TuningRecord, as a dict

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": str(self.report_dir),
            "skipped": self.skipped,
            "failed": [str(path) for path in self.failed],
            **self.comparison.to_dict(),
            "tuning": self.tuning,
        }


def run_figure2(
    plan: Figure2Plan,
    runner: Callable[[SweepPlan], Runner],
    progress: Figure2Progress | None = None,
    poll_seconds: float = 1.0,
    target: float | None = None,
) -> Figure2Result:
    """Run the four stages (module docstring); ``target`` is the report's (:func:`fimbench.engines.comparison.compare`).

    ``runner(stage_plan)`` gives the runner of a stage (local workers, submitit). A failed run (its worker
    raised) is treated like a diverged one: the best setting is chosen among the completed points, the
    report shows the seeds that completed, and :attr:`Figure2Result.failed` lists it, so that the caller
    can say so (a rerun retries it). A method without a completed sweep point is left out of the later
    stages.
    """
    import time

    from fimbench.engines.comparison import compare, write_report

    started = time.monotonic()

    def observe(states: Sequence[PointState], future: Sequence[tuple[str, int]]) -> None:
        if progress is not None:
            progress.update(states, seconds_left(states, time.monotonic() - started, future))

    future = [(p.method, plan.epochs or p.config.training.epochs) for p in _one_per_method(plan.sweep) for _ in plan.seeds]
    if progress is not None:
        progress.stage(SWEEP, plan.sweep)
    tuned = run_tuned_sweep(plan.planner, plan.tuning, runner(plan.sweep), _Relay(lambda states: observe(states, future)), poll_seconds)
    sweep_result = tuned.result
    tuning = {method: record.to_dict() for method, record in tuned.records.items()}
    failed = [state.run_dir for state in sweep_result.failed]
    best = {method: (sweep_result.best_points[method], path) for method, path in sweep_result.best.items()}
    skipped = [method for method in plan.sweep.grids if method not in best]
    if not best:
        raise FimbenchError(f"no method has a completed sweep point in {plan.sweep.out}; nothing to run")
    started = time.monotonic()
    runs = runs_plan(plan, best)
    failed += [state.run_dir for state in _stage(runs, RUNS, runner, progress, lambda states: observe(states, ()), poll_seconds).failed]
    if progress is not None:
        progress.stage(REPORT, None)
    comparison = compare([runs.out], target)
    if skipped:
        comparison.warnings.append(f"no completed sweep point for {', '.join(skipped)}: left out of the runs")
    comparison.warnings += [
        f"{method}: tuning ended '{record['state']}' after {record['trials_of_budget']} trials; its best setting is the "
        "outermost tried along an axis, not known to be a tuned optimum"
        for method, record in tuning.items()
        if record["state"].startswith("edge")
    ]
    report_dir = plan.out / REPORT
    write_report(comparison, report_dir, {"tuning": tuning})
    return Figure2Result(comparison, report_dir, skipped, failed, tuning)


def _one_per_method(plan: SweepPlan) -> list[SweepPoint]:
    first: dict[str, SweepPoint] = {}
    for point in plan.points:
        first.setdefault(point.method, point)
    return list(first.values())


def _stage(
    plan: SweepPlan,
    name: str,
    runner: Callable[[SweepPlan], Runner],
    progress: Figure2Progress | None,
    observe: Callable[[Sequence[PointState]], None],
    poll_seconds: float,
) -> SweepResult:
    """One sweep stage, announced to ``progress``."""
    if progress is not None:
        progress.stage(name, plan)
    return run_sweep(plan, runner(plan), _Relay(observe), poll_seconds)


class _Relay:
    """A sweep's progress, handed to ``observe``."""

    def __init__(self, observe: Callable[[Sequence[PointState]], None]) -> None:
        self.update = observe
