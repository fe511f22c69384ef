"""Performance profiles (Dolan & Moré 2002; how MLCommons AlgoPerf scores training algorithms) of the
compared methods, on both clocks: epochs and training seconds to the target.

A *problem* is one (dataset, seed) — one dataset when its runs have no seed — of a dataset that has a target
(``--target``, or its default: :func:`~fimbench.engines.comparison.compare.compare`). A *solver* is a method
(its group of seeds; a method with several groups on a dataset is one solver per group, labelled
``method (group)``). ``t(p, s)`` is solver ``s``'s time to the target on problem ``p`` (the first logged
epoch at or below it, in epochs or in training seconds), infinite when it never reached it. The ratio
``r(p, s) = t(p, s) / min over solvers of t(p, s)`` and the profile

    ρ_s(τ) = |{p : r(p, s) ≤ τ}| / |problems|

is the fraction of problems that ``s`` solves within ``τ`` times the fastest solver's time: ``ρ_s(1)`` is how
often ``s`` is fastest (ties count for each), ``ρ_s(τ_max)`` how often it reaches the target at all.

Seeds are paired: a problem exists only for a seed that every solver has run on that dataset (the others are
dropped, with a warning), and a dataset where a solver has no run at all is left out. Every run of a seed
counts, however it ended (a seed that diverged after reaching the target keeps its time; one that never
reached it is unsolved). The alternative not taken keeps every (dataset, seed) that any solver ran and
counts a missing run as unsolved: it charges a method for runs that were never made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fimbench.engines.comparison.results import (
    CLOCKS,
    TAU_MAX_FLOOR,
    ClockProfile,
    DatasetComparison,
    GroupResult,
    PerformanceProfiles,
    Problem,
)


def _labels(groups: Sequence[GroupResult]) -> list[tuple[str, GroupResult]]:
    """Each group's solver label: its method, or ``method (group)`` when the method has several groups."""
    methods = [group.method for group in groups]
    return [(group.method if methods.count(group.method) == 1 else f"{group.method} ({group.name})", group) for group in groups]


def _seed_key(seed: int | None) -> tuple[bool, int]:
    return (seed is not None, seed or 0)


def _tau_max(ratios: list[dict[str, float]]) -> float:
    """The smallest power of 2 above every finite ratio, at least TAU_MAX_FLOOR."""
    largest = max((ratio for row in ratios for ratio in row.values() if math.isfinite(ratio)), default=1.0)
    return max(TAU_MAX_FLOOR, 2.0 ** (math.floor(math.log2(largest)) + 1))


def _ratios(times: dict[str, float | None]) -> dict[str, float]:
    """Each solver's time over the best on one problem (math.inf where it did not reach the target)."""
    reached = [time for time in times.values() if time is not None]
    best = min(reached, default=None)
    ratios = {}
    for solver, time in times.items():
        if time is None or best is None:
            ratios[solver] = math.inf
        elif best > 0:
            ratios[solver] = time / best
        else:
            ratios[solver] = 1.0 if time == best else math.inf  # a zero best time: only its equals tie with it
    return ratios


def _clock(clock: str, key: str, solvers: list[str], cells: list[dict[str, Any]]) -> ClockProfile:
    """One clock's profile from each problem's run per solver (``cells``)."""
    times: list[dict[str, float | None]] = []
    for cell in cells:
        values = {solver: getattr(cell[solver], key) for solver in solvers}
        times.append({solver: (float(value) if value is not None else None) for solver, value in values.items()})
    ratios = [_ratios(row) for row in times]
    tau_max = _tau_max(ratios)
    taus = sorted({1.0, tau_max, *(ratio for row in ratios for ratio in row.values() if math.isfinite(ratio))})
    profile = ClockProfile(clock, times, ratios, tau_max, taus, {})
    profile.rho = {solver: [profile.rho_at(solver, tau) for tau in taus] for solver in solvers}
    return profile


def performance_profiles(datasets: Sequence[DatasetComparison]) -> PerformanceProfiles | None:
    """The performance profiles of the compared groups on both clocks (module docstring).

    Args:
        datasets: the comparison's datasets, their runs' times to target already set.

    Returns:
        The profiles, with warnings for the seeds and datasets left out; None when no dataset has a target.
        With a target but no problem left (no seed shared by every solver) there are solvers but no problem,
        and every ρ is 0.
    """
    with_target = [dataset for dataset in datasets if dataset.target is not None]
    if not with_target:
        return None
    warnings = [f"{d.dataset}: no target (no train loss per pixel logged); left out of the performance profiles"
                for d in datasets if d.target is None]
    solvers: list[str] = []
    methods: dict[str, str] = {}
    for dataset in with_target:
        for label, group in _labels(dataset.groups):
            if label not in methods:
                solvers.append(label)
                methods[label] = group.method
    problems: list[Problem] = []
    cells: list[dict[str, Any]] = []
    for dataset in with_target:
        labelled = dict(_labels(dataset.groups))
        absent = [solver for solver in solvers if solver not in labelled]
        if absent:
            warnings.append(f"{dataset.dataset}: no run of {', '.join(absent)}; left out of the performance profiles")
            continue
        runs = {solver: {run.seed: run for run in reversed(group.runs)} for solver, group in labelled.items()}
        every = set.union(*(set(by_seed) for by_seed in runs.values()))
        shared = set.intersection(*(set(by_seed) for by_seed in runs.values()))
        if every - shared:
            lacking = [solver for solver in solvers if set(runs[solver]) != every]
            dropped = ", ".join(str(seed) for seed in sorted(every - shared, key=_seed_key))
            warnings.append(f"{dataset.dataset}: seeds {dropped} are not run by every method ({', '.join(lacking)} lack some); "
                            "left out of the performance profiles")
        for seed in sorted(shared, key=_seed_key):
            problems.append(Problem(dataset.dataset, seed))
            cells.append({solver: runs[solver][seed] for solver in solvers})
    clocks = {clock: _clock(clock, key, solvers, cells) for clock, key, _ in CLOCKS}
    return PerformanceProfiles(solvers, methods, problems, clocks, warnings)
