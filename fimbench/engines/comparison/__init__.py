"""Comparison engine (paper §4.2, Figure 2): read run and sweep directories, compare methods per dataset
(:mod:`~fimbench.engines.comparison.compare`), into :mod:`~fimbench.engines.comparison.results` with the methods'
performance profiles on both clocks (:mod:`~fimbench.engines.comparison.profiles`), written out by
:mod:`~fimbench.engines.comparison.outputs`.

Run and sweep directories are read by :mod:`fimbench.engines.rundir`. Losses here are the paper's: per pixel (the
authors' mean BCE / MSE, ``*_loss_per_pixel`` in ``metrics.jsonl``), so the numbers read like the paper's (docs/design.md §3).

A run without ``summary.json`` (still running, or killed) is shown with status ``incomplete``. Nothing
here prints.
"""

from fimbench.engines.comparison.compare import compare, discover
from fimbench.engines.comparison.outputs import (
    FIGURE2_FILE,
    FIGURE2_PANELS,
    PROFILE_FILE,
    REPORT_FILE,
    group_curve,
    write_csv,
    write_figure2,
    write_profile,
    write_report,
    write_report_json,
)
from fimbench.engines.comparison.profiles import ClockProfile, PerformanceProfiles, Problem, performance_profiles
from fimbench.engines.comparison.results import Comparison, DatasetComparison, GroupDifference, GroupResult, MethodResult

__all__ = [
    "FIGURE2_FILE",
    "FIGURE2_PANELS",
    "PROFILE_FILE",
    "REPORT_FILE",
    "ClockProfile",
    "Comparison",
    "DatasetComparison",
    "GroupDifference",
    "GroupResult",
    "MethodResult",
    "PerformanceProfiles",
    "Problem",
    "compare",
    "discover",
    "group_curve",
    "performance_profiles",
    "write_csv",
    "write_figure2",
    "write_profile",
    "write_report",
    "write_report_json",
]
