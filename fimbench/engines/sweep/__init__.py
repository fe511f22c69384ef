"""Grid search (paper §4.2) as a resumable set of ordinary ``train`` runs.

Every grid point is one run directory ``<out>/<point>`` (``config.yaml``, ``metrics.jsonl``,
``summary.json``, exactly what ``fimbench train`` writes), named from the point, e.g.
``kfac-lr_7.84e1-damping_1.84397e3-clip_1e-2``. ``<out>/sweep.json`` lists each method's grid and points
with their last status; ``<out>/best/<method>.yaml`` holds the best point's configuration.

:mod:`~fimbench.engines.sweep.plan` expands the grid (and says its scale), :mod:`~fimbench.engines.sweep.state` keeps the
points' state on disk (and says how a sweep resumes), :mod:`~fimbench.engines.sweep.runners` runs points locally
or through submitit, and :mod:`~fimbench.engines.sweep.orchestration` drives a plan to its end;
:mod:`~fimbench.engines.sweep.tuning` drives rounds of plans under a fixed budget of trials per method, extending
past the grid's edge or drawing quasi-random points (:mod:`~fimbench.engines.sweep.search`).
"""

from fimbench.engines.sweep.orchestration import SweepProgress, SweepResult, run_sweep
from fimbench.engines.sweep.plan import (
    GRID_KEYS,
    KRONECKER_GRID,
    PAPER_GRID,
    GridAxis,
    SettingsRule,
    SweepPlan,
    SweepPoint,
    format_value,
    grid_settings,
    parse_grid,
    plan_best_runs,
    plan_sweep,
    point_name,
    to_fimbench_scale,
    tunable_keys,
)
from fimbench.engines.sweep.runners import LocalRunner, Runner, SubmititRunner, Worker, available_cores
from fimbench.engines.sweep.state import ACTIVE, FINISHED, PointState, inspect_points
from fimbench.engines.sweep.tuning import Planner, TunedSweep, Tuning, TuningRecord, plan_tuned, run_tuned_sweep

__all__ = [
    "ACTIVE",
    "FINISHED",
    "GRID_KEYS",
    "KRONECKER_GRID",
    "PAPER_GRID",
    "GridAxis",
    "LocalRunner",
    "Planner",
    "PointState",
    "Runner",
    "SettingsRule",
    "SubmititRunner",
    "SweepPlan",
    "SweepPoint",
    "SweepProgress",
    "SweepResult",
    "TunedSweep",
    "Tuning",
    "TuningRecord",
    "Worker",
    "available_cores",
    "format_value",
    "grid_settings",
    "inspect_points",
    "parse_grid",
    "plan_best_runs",
    "plan_sweep",
    "plan_tuned",
    "point_name",
    "run_sweep",
    "run_tuned_sweep",
    "to_fimbench_scale",
    "tunable_keys",
]
