"""Comparison engine (paper §4.2, Figure 2): read run and sweep directories, compare methods per dataset
(:mod:`~fimbench.engines.comparison.compare`), into :mod:`~fimbench.engines.comparison.results`, written out by
:mod:`~fimbench.engines.comparison.outputs`.

Run and sweep directories are read by :mod:`fimbench.engines.rundir`. Losses here are the paper's: per pixel (the
authors' mean BCE / MSE, ``*_loss_per_pixel`` in ``metrics.jsonl``), so the numbers read like the paper's (docs/design.md §3).

A run without ``summary.json`` (still running, or killed) is shown with status ``incomplete``. Nothing
here prints.
"""

from fimbench.engines.comparison.compare import compare, discover
from fimbench.engines.comparison.outputs import FIGURE2_PANELS, group_curve, write_csv, write_figure2, write_report_json
from fimbench.engines.comparison.results import Comparison, DatasetComparison, GroupDifference, GroupResult, MethodResult

__all__ = [
    "FIGURE2_PANELS",
    "Comparison",
    "DatasetComparison",
    "GroupDifference",
    "GroupResult",
    "MethodResult",
    "compare",
    "discover",
    "group_curve",
    "write_csv",
    "write_figure2",
    "write_report_json",
]
