"""Equal tuning (docs/design.md §22): every method gets the same budget of trials, the grid search extends past
the edge its best point lies on, and a quasi-random search replaces the grid on request.

A trial is one run of one point (one seed of one setting). With ``search="grid"`` a method's grid counts
against its budget (a grid larger than the budget is an error before anything runs); then, while the best
point (lowest final train loss, :func:`fimbench.engines.rundir.best_group`: a diverged or failed point is worse
than any finite loss) has no tried point beyond it along an axis with two values or more, the next value that
way is added (one grid step past the axis' edge, or a value the axis has elsewhere:
:func:`~fimbench.engines.sweep.search.edges`) and run, and the best recomputed, until the best is inside,
the bound is reached (``extend`` steps per axis and direction, or a limit of
:data:`~fimbench.names.TUNING_LIMITS`) or the budget is spent. With ``search="quasi-random"`` a method
runs ``budget`` trials of scrambled Sobol settings over the log box of its grid, without extension.

Each round is an ordinary :func:`~fimbench.engines.sweep.run_sweep` of a plan that holds the settings so far, in
the same folder, so a tuned sweep resumes as a sweep does: the rounds replay from the finished points and no
finished trial runs again. Each method's :class:`TuningRecord` is in ``sweep.json`` (``methods.<m>.tuning``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fimbench.engines.sweep.orchestration import SweepProgress, SweepResult, run_sweep, write_manifest
from fimbench.engines.sweep.plan import SettingsRule, SweepPlan, SweepPoint, format_value, grid_settings, setting_values
from fimbench.engines.sweep.runners import Runner
from fimbench.engines.sweep.search import SOBOL_SEED, Extension, edges, quasi_random_settings, stopped
from fimbench.engines.sweep.state import PointState
from fimbench.errors import FimbenchError
from fimbench.names import DEFAULT_EXTEND, SEARCHES, Search

GRID, QUASI_RANDOM = Search.GRID.value, Search.QUASI_RANDOM.value
PENDING, INSIDE, BUDGET_SPENT, NO_EXTENSION, NO_BEST = (
    "pending", "inside", "edge, budget spent", "quasi-random: no extension", "no completed point",
)  # fmt: skip
"""A record's states besides ``edge at bound (KEY VALUE)``: before the last round ends, and after it."""

Planner = Callable[[SettingsRule], SweepPlan]
"""``planner(settings)``: the sweep's plan when each method runs the settings ``settings`` gives (the arguments of
:func:`~fimbench.engines.sweep.plan_sweep` bound, ``settings`` its last)."""


@dataclass(frozen=True)
class Tuning:
    """How a sweep tunes each method (module docstring); checked on creation.

    Attributes:
        budget: Trials per method; ``None``: no budget (the grid, extended within the bound).
        search: ``grid`` or ``quasi-random`` (which needs a budget).
        extend: The most edge-extension steps per axis and direction; 0: none.
        seed: The Sobol scramble seed of the quasi-random search.
    """

    budget: int | None = None
    search: str = GRID
    extend: int = DEFAULT_EXTEND
    seed: int = SOBOL_SEED

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise FimbenchError(f"--search is one of {', '.join(SEARCHES)}, not {self.search!r}")
        if self.budget is not None and self.budget < 1:
            raise FimbenchError(f"--budget must be at least 1, got {self.budget}")
        if self.extend < 0:
            raise FimbenchError(f"--extend must be at least 0, got {self.extend}")
        if self.search == QUASI_RANDOM and self.budget is None:
            raise FimbenchError("--search quasi-random needs --budget N, the number of trials (points) per method")


@dataclass
class TuningRecord:
    """The tuning a method got: ``trials`` used of ``budget``, the extensions made and where its best ended."""

    method: str
    search: str
    budget: int | None
    trials: int
    extend: int | None  # the bound per axis and direction (None: quasi-random)
    extensions: list[dict[str, Any]]  # axis, direction, from, value (the axis' scale), kind (edge | fill), point
    state: str  # pending | inside | edge at bound (KEY VALUE, ...) | edge, budget spent | quasi-random: ... | no completed point
    best: str | None = None  # the best setting's name
    edges: list[dict[str, Any]] = field(default_factory=list)  # where the best lies on an edge: axis, direction, value, stopped_by

    def to_dict(self) -> dict[str, Any]:
        """The record as plain data (``sweep.json``, ``--json``, ``report.json``).

        Returns:
            Its fields, with ``trials_of_budget`` (``"12/20"``, ``"12"`` without a budget) first.
        """
        used = f"{self.trials}/{self.budget}" if self.budget is not None else str(self.trials)
        return {"trials_of_budget": used, **asdict(self)}


@dataclass
class TunedSweep:
    """The last round's sweep result (every point of every round) and each method's tuning record."""

    result: SweepResult
    records: dict[str, TuningRecord]


@dataclass(frozen=True)
class _Decision:
    new: list[Extension]
    state: str
    edges: list[dict[str, Any]] = field(default_factory=list)


def _rule(tuning: Tuning, made: Mapping[str, Sequence[Extension]], runs_per_setting: int) -> SettingsRule:
    if tuning.search == QUASI_RANDOM:
        count = (tuning.budget or 0) // runs_per_setting
        if count < 1:
            raise FimbenchError(f"--budget {tuning.budget} is less than the {runs_per_setting} runs (seeds) of one setting")
        return lambda method, axes: quasi_random_settings(axes, count, tuning.seed)
    return lambda method, axes: grid_settings(method, axes) + [extension.setting for extension in made.get(method, ())]


def _method_points(plan: SweepPlan, method: str) -> list[SweepPoint]:
    return [point for point in plan.points if point.method == method]


def _record(plan: SweepPlan, method: str, tuning: Tuning, made: Sequence[Extension], decision: _Decision) -> TuningRecord:
    points = _method_points(plan, method)
    names = {tuple(setting_values(point).items()): point.setting for point in points}
    extensions = [
        {
            "axis": item.key, "direction": item.direction, "from": item.edge, "value": item.value,
            "kind": "fill" if item.fill else "edge", "point": names.get(tuple(item.setting.items())),
        }
        for item in made
    ]
    extend = tuning.extend if tuning.search == GRID else None
    return TuningRecord(method, tuning.search, tuning.budget, len(points), extend, extensions, decision.state, edges=decision.edges)


def plan_tuned(
    planner: Planner, tuning: Tuning, runs_per_setting: int = 1, made: Mapping[str, Sequence[Extension]] | None = None
) -> SweepPlan:
    """The plan of a tuned sweep's round: each method's grid (or quasi-random settings) and the extensions ``made``.

    Args:
        planner: Plans the sweep for a :data:`~fimbench.engines.sweep.plan.SettingsRule`.
        tuning: The tuning.
        runs_per_setting: Runs of each setting (its seeds), the trials one setting costs.
        made: The extensions made so far, per method (none for the first round).

    Returns:
        The plan, with each method's record (state ``pending``) in its ``tuning``.

    Raises:
        FimbenchError: When a method's grid has more points than the budget, or the quasi-random search cannot
            draw its points.
    """
    made = made or {}
    plan = planner(_rule(tuning, made, runs_per_setting))
    if tuning.search == GRID and tuning.budget is not None:
        over = {method: count for method in plan.grids if (count := len(_method_points(plan, method))) > tuning.budget}
        if over:
            sizes = ", ".join(f"{method} {count}" for method, count in over.items())
            raise FimbenchError(
                f"the grid has more points than --budget {tuning.budget} ({sizes}; a point is one run of one seed); "
                "give a smaller --grid, or --search quasi-random to draw the budget's points from the grid's box"
            )
    records = {method: _record(plan, method, tuning, made.get(method, ()), _Decision([], PENDING)) for method in plan.grids}
    return replace(plan, tuning={method: record.to_dict() for method, record in records.items()})


def _decide(plan: SweepPlan, result: SweepResult, method: str, tuning: Tuning, made: Sequence[Extension]) -> _Decision:
    """After a round: the settings to add for ``method`` (none when done) and its state."""
    if tuning.search == QUASI_RANDOM:
        return _Decision([], NO_EXTENSION)
    best = result.best_points.get(method)
    if best is None:
        return _Decision([], NO_BEST)
    points = _method_points(plan, method)
    settings = list({point.setting: setting_values(point) for point in points}.values())
    cost = len(points) // len(settings)
    left = None if tuning.budget is None else tuning.budget - len(points)
    new: list[Extension] = []
    blocked: list[dict[str, Any]] = []
    for edge in edges(settings, setting_values(best)):
        why = stopped(edge, made, tuning.extend)
        if why is None and left is not None and left < cost:
            why = "--budget"
        if why is None:
            setting = {**setting_values(best), edge.key: edge.beyond}
            new.append(Extension(edge.key, edge.direction, edge.value, edge.beyond, edge.fill, setting))
            left = None if left is None else left - cost
        else:
            blocked.append({"axis": edge.key, "direction": edge.direction, "value": edge.value, "stopped_by": why})
    if new:
        return _Decision(new, PENDING, blocked)
    if not blocked:
        return _Decision([], INSIDE)
    if any(item["stopped_by"] == "--budget" for item in blocked):
        return _Decision([], BUDGET_SPENT, blocked)
    at = ", ".join(f"{item['axis']} {format_value(item['value'])}" for item in blocked)
    return _Decision([], f"edge at bound ({at})", blocked)


def run_tuned_sweep(
    planner: Planner,
    tuning: Tuning,
    runner: Runner,
    progress: SweepProgress | None = None,
    poll_seconds: float = 1.0,
    runs_per_setting: int = 1,
) -> TunedSweep:
    """Run a tuned sweep to its end (module docstring): rounds of :func:`~fimbench.engines.sweep.run_sweep` on ``runner``.

    Args:
        planner: Plans the sweep for a :data:`~fimbench.engines.sweep.plan.SettingsRule`.
        tuning: The tuning.
        runner: Runs the points of every round.
        progress: Shown each round's states.
        poll_seconds: How often the runner is polled.
        runs_per_setting: Runs of each setting (its seeds).

    Returns:
        The last round's result and each method's record, also written to ``sweep.json``.

    Raises:
        FimbenchError: As :func:`plan_tuned` and :func:`~fimbench.engines.sweep.run_sweep` do. Ctrl-C stops the round
            (``KeyboardInterrupt``); rerunning resumes.
    """
    made: dict[str, list[Extension]] = {}
    states: Sequence[PointState] = ()
    while True:
        plan = plan_tuned(planner, tuning, runs_per_setting, made)
        result = run_sweep(plan, runner, progress, poll_seconds, states)
        states = result.states
        decisions = {method: _decide(plan, result, method, tuning, made.get(method, [])) for method in plan.grids}
        if not any(decision.new for decision in decisions.values()):
            break
        for method, decision in decisions.items():
            made.setdefault(method, []).extend(decision.new)
    records = {method: _record(plan, method, tuning, made.get(method, []), decisions[method]) for method in plan.grids}
    for method, record in records.items():
        record.best = result.best_points[method].setting if method in result.best_points else None
    final = replace(plan, tuning={method: record.to_dict() for method, record in records.items()})
    write_manifest(final, states)
    return TunedSweep(replace(result, plan=final), records)
