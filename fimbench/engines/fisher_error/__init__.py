"""Figure 1 (§4.1): the distance of each Kronecker approximation from the exact Fisher block along
training — :mod:`~fimbench.engines.fisher_error.engine` measures, :mod:`~fimbench.engines.fisher_error.outputs` summarises
and writes the run directory."""

from fimbench.engines.fisher_error.engine import FisherErrorMeter, run_fisher_error
from fimbench.engines.fisher_error.outputs import (
    FIGURE_PANEL,
    EntrySummary,
    errors_csv,
    figure_layout,
    plot_figure1,
    summarise,
    summary_json,
    write_run,
)
from fimbench.engines.fisher_error.records import (
    CSV_COLUMNS,
    DEFAULT_METHODS,
    Entry,
    ErrorRow,
    FisherErrorProgress,
    FisherErrorResult,
    FisherErrorSettings,
    entry_label,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_METHODS",
    "FIGURE_PANEL",
    "Entry",
    "EntrySummary",
    "ErrorRow",
    "FisherErrorMeter",
    "FisherErrorProgress",
    "FisherErrorResult",
    "FisherErrorSettings",
    "entry_label",
    "errors_csv",
    "figure_layout",
    "plot_figure1",
    "run_fisher_error",
    "summarise",
    "summary_json",
    "write_run",
]
