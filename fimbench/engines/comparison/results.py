"""The results of a comparison: one line per run, per group of seeds, per difference between groups,
per dataset, and the performance profiles (:mod:`~fimbench.engines.comparison.profiles`): what
:func:`~fimbench.engines.comparison.compare.compare` returns."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fimbench.engines.significance import CONFIDENCE, TEST_NAME, Spread


@dataclass
class MethodResult:
    """One line of the comparison: a run (the best point of a sweep, or a run directory given)."""

    dataset: str
    method: str
    run: str  # run directory name
    path: str
    status: str
    device: str
    epochs: int
    final_train_loss: float | None  # per pixel, the paper's unit (docs/design.md §3)
    best_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    final_train_objective: float | None  # fimbench's objective: per-example NLL summed over pixels
    final_val_objective: float | None
    final_train_reconstruction_error: float | None
    final_val_reconstruction_error: float | None
    wall_time: float | None  # training seconds (evaluation excluded), as logged
    time_per_epoch: float | None
    alignment: float | None  # cos(F̃⁻¹∇, ∇) at the last refresh (Kronecker methods; 1.0 = the SGD direction)
    correction_scale: float | None  # smallest safeguard τ over layers at the last refresh (rank-2 methods)
    epochs_to_target: int | None = None
    seconds_to_target: float | None = None
    speedup_vs_kfac: float | None = None  # KFAC's seconds-to-target / this run's
    speedup_vs_adam: float | None = None
    seed: int | None = None
    group: str = field(default="", repr=False)  # fimbench.engines.rundir.group_key: equal for runs differing only in the seed
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # for the figure only

    def to_dict(self) -> dict[str, Any]:
        """Every scalar field (the curves and the group key are left out)."""
        return {key: value for key, value in asdict(self).items() if key not in ("rows", "group")}


GROUP_METRICS: tuple[str, ...] = (
    "final_train_loss",
    "best_train_loss",
    "final_val_loss",
    "best_val_loss",
    "epochs_to_target",
    "seconds_to_target",
    "time_per_epoch",
    "wall_time",
    "alignment",
    "correction_scale",
)
"""The per-run quantities a group aggregates over its seeds."""
SEED_SUFFIX = re.compile(r"-?seed_\d+$")


@dataclass
class GroupResult:
    """The runs of one setting that differ only in the seed (:func:`fimbench.engines.rundir.group_key`)."""

    dataset: str
    method: str
    name: str  # the runs' name without the seed
    runs: list[MethodResult]  # one per seed, by seed
    stats: dict[str, Spread | None]  # GROUP_METRICS over the counted runs that have the value
    speedup_vs_kfac: float | None = None  # KFAC's fastest group's mean seconds-to-target / this group's
    speedup_vs_adam: float | None = None

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def counted(self) -> list[MethodResult]:
        """The runs the statistics and tests use: those that completed (a diverged, failed or unfinished
        seed ended at another epoch), or every run when none did."""
        return [run for run in self.runs if run.status == "completed"] or self.runs

    def values(self, metric: str, runs: Sequence[MethodResult] | None = None) -> list[float | None]:
        """``metric`` of each run (of ``runs``, by default every seed)."""
        return [getattr(run, metric) for run in (self.runs if runs is None else runs)]

    @property
    def reached(self) -> list[MethodResult]:
        """The counted runs that reached the target (those the to-target statistics are over)."""
        return [run for run in self.counted if run.epochs_to_target is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "name": self.name,
            "seeds": self.seeds,
            "runs": [run.path for run in self.runs],
            "statuses": [run.status for run in self.runs],
            "values": {metric: self.values(metric) for metric in GROUP_METRICS},
            "counted_seeds": [run.seed for run in self.counted],
            "target_reached": {"n": len(self.reached), "of": len(self.counted), "seeds": [run.seed for run in self.reached]},
            "stats": {metric: (stat.to_dict() if stat else None) for metric, stat in self.stats.items()},
            "speedup_vs_kfac": self.speedup_vs_kfac,
            "speedup_vs_adam": self.speedup_vs_adam,
        }


@dataclass
class GroupDifference:
    """``method − baseline`` in final train loss per pixel, with Welch's t interval (:mod:`fimbench.engines.significance`)."""

    dataset: str
    method: str
    group: str
    baseline: str
    baseline_group: str
    seeds: int
    baseline_seeds: int
    difference: float
    interval: tuple[float, float] | None  # None with a single seed on either side
    significant: bool | None  # at 1 − CONFIDENCE; None with a single seed on either side

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "interval": list(self.interval) if self.interval is not None else None,
            "quantity": "final train loss per pixel",
            "test": TEST_NAME,
            "confidence": CONFIDENCE,
        }


@dataclass
class DatasetComparison:
    dataset: str
    target: float | None  # train loss per pixel that "seconds to target" refers to
    target_source: str  # "--target" or "worst final train loss (<method>)"
    results: list[MethodResult]
    groups: list[GroupResult] = field(default_factory=list)
    differences: list[GroupDifference] = field(default_factory=list)


CLOCKS: tuple[tuple[str, str, str], ...] = (
    ("epochs", "epochs_to_target", "epochs to target"),
    ("seconds", "seconds_to_target", "training seconds to target"),
)
"""(clock, :class:`~fimbench.engines.comparison.results.MethodResult` field, description) of each profile."""
TAU_MAX_FLOOR = 4.0
DEFINITION = (
    "Dolan & Moré (2002) performance profile, as MLCommons AlgoPerf scores training algorithms: a problem is one "
    "(dataset, seed) of a dataset with a target (one dataset when its runs have no seed); t(p, s) is solver s's "
    "time to the target train loss per pixel on problem p (epochs, or training seconds), infinite when it never "
    "reached it; r(p, s) = t(p, s) / min_s t(p, s); rho_s(tau) = fraction of problems with r(p, s) <= tau. "
    f"tau runs from 1 to tau_max, the smallest power of 2 above every finite ratio, at least {TAU_MAX_FLOOR:g}; "
    "ratios are null where the solver did not reach the target (not solved for any tau)"
)
PAIRING = (
    "a problem exists only for a seed that every solver ran on that dataset (other seeds are dropped, with a "
    "warning); a dataset without a run of some solver is left out. Not taken: keeping every seed any solver ran, "
    "a missing run counting as unsolved"
)


@dataclass(frozen=True)
class Problem:
    """One problem of the profiles: a dataset and a seed (None: runs without a seed)."""

    dataset: str
    seed: int | None


@dataclass
class ClockProfile:
    """The profile on one clock: per problem each solver's time and ratio, and ρ on the τ grid."""

    clock: str  # "epochs" or "seconds"
    times: list[dict[str, float | None]]  # per problem, per solver: time to target (None: never reached)
    ratios: list[dict[str, float]]  # per problem, per solver: t / best (math.inf: not solved)
    tau_max: float
    taus: list[float]  # 1, every finite ratio and tau_max, sorted: where the step functions may jump
    rho: dict[str, list[float]]  # per solver, ρ at each of taus

    def rho_at(self, solver: str, tau: float) -> float:
        """ρ of ``solver`` at ``tau``.

        Args:
            solver: a solver's label.
            tau: the factor over the best time on each problem.

        Returns:
            The fraction of problems ``solver`` solved within ``tau`` times the best (0 with no problem).
        """
        if not self.ratios:
            return 0.0
        return sum(ratios[solver] <= tau for ratios in self.ratios) / len(self.ratios)


@dataclass
class PerformanceProfiles:
    """Both clocks' profiles over the same problems and solvers."""

    solvers: list[str]  # labels, in method order
    methods: dict[str, str]  # label -> method (its colour and marker)
    problems: list[Problem]
    clocks: dict[str, ClockProfile]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The profiles as report.json holds them (null for an infinite ratio or a missing time).

        Returns:
            ``definition``, ``pairing``, ``solvers`` (label and method), ``problems`` (dataset and seed), and per
            clock ``tau_max``, ``tau``, ``rho`` (per solver, at each tau) and ``problems`` (times, best, ratios).
        """
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        clocks = {}
        for name, profile in self.clocks.items():
            rows = []
            for problem, times, ratios in zip(self.problems, profile.times, profile.ratios):
                reached = [time for time in times.values() if time is not None]
                rows.append({
                    "dataset": problem.dataset, "seed": problem.seed, "times": times, "best": min(reached, default=None),
                    "ratios": {solver: finite(ratio) for solver, ratio in ratios.items()},
                })
            description = next(text for clock, _, text in CLOCKS if clock == name)
            clocks[name] = {"measure": description, "tau_max": profile.tau_max, "tau": profile.taus, "rho": profile.rho, "problems": rows}
        return {
            "definition": DEFINITION,
            "pairing": PAIRING,
            "solvers": [{"label": solver, "method": self.methods[solver]} for solver in self.solvers],
            "problems": [{"dataset": problem.dataset, "seed": problem.seed} for problem in self.problems],
            "clocks": clocks,
        }


@dataclass
class Comparison:
    datasets: list[DatasetComparison]
    warnings: list[str]
    profiles: PerformanceProfiles | None = None  # None: no dataset has a target

    def to_dict(self) -> dict[str, Any]:
        return {
            "datasets": [
                {
                    "dataset": comparison.dataset,
                    "target": comparison.target,
                    "target_source": comparison.target_source,
                    "results": [result.to_dict() for result in comparison.results],
                    "groups": [group.to_dict() for group in comparison.groups],
                }
                for comparison in self.datasets
            ],
            "comparisons": [item.to_dict() for dataset in self.datasets for item in dataset.differences],
            "significance": f"{TEST_NAME} {CONFIDENCE:.0%} interval of the difference in final train loss per pixel; "
            "significant when it excludes 0; null for a single seed",
            "profiles": self.profiles.to_dict() if self.profiles is not None else None,
            "warnings": self.warnings,
        }
