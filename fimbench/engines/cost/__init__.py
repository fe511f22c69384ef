"""Cost profile: the paper's Table 1 (App. C) measured — :mod:`~fimbench.engines.cost.profiler` times the phases,
:mod:`~fimbench.engines.cost.model` predicts and fits their orders, :mod:`~fimbench.engines.cost.results` holds what was
measured and :mod:`~fimbench.engines.cost.outputs` writes ``cost.json`` and ``cost.png``."""

from fimbench.engines.cost.model import (
    EXPONENT_TOLERANCE,
    PHASES,
    STEADY_PHASES,
    fit_exponents,
    model_order,
    modelled_cost,
    paper_order,
    sweep_exponents,
)
from fimbench.engines.cost.outputs import sweep_figure, write_outputs
from fimbench.engines.cost.profiler import (
    COST_DATASETS,
    SWEEP_LIKELIHOOD,
    YARDSTICKS,
    Progress,
    profile_dataset,
    profile_model,
    profile_sweep,
)
from fimbench.engines.cost.results import (
    FIT_STATISTIC,
    AxisFit,
    CostPoint,
    DatasetCost,
    ExponentFit,
    LayerCost,
    MethodCost,
    ModelProfile,
    SweepCost,
    Timing,
)

__all__ = [
    "COST_DATASETS",
    "EXPONENT_TOLERANCE",
    "FIT_STATISTIC",
    "PHASES",
    "STEADY_PHASES",
    "SWEEP_LIKELIHOOD",
    "YARDSTICKS",
    "AxisFit",
    "CostPoint",
    "DatasetCost",
    "ExponentFit",
    "LayerCost",
    "MethodCost",
    "ModelProfile",
    "Progress",
    "SweepCost",
    "Timing",
    "fit_exponents",
    "model_order",
    "modelled_cost",
    "paper_order",
    "profile_dataset",
    "profile_model",
    "profile_sweep",
    "sweep_exponents",
    "sweep_figure",
    "write_outputs",
]
