"""The public import path of fimbench's optimizers: ``from fimbench.optim import KroneckerPreconditioner``.

The natural-gradient preconditioner lives in :mod:`fimbench.preconditioner.kronecker_preconditioner`, its
settings in :mod:`fimbench.preconditioner.settings`; the optimizers that precondition by themselves — Shampoo,
SOAP and Muon (with AdamW for the parameters Muon leaves out) — in :mod:`fimbench.optimizers`.
"""

from fimbench.optimizers.muon import MuonWithAdamW, muon_parameters
from fimbench.optimizers.shampoo import Shampoo
from fimbench.optimizers.soap import soap
from fimbench.preconditioner.diagnostics import DampingTrial, PreconditionerDiagnostics
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.preconditioner.settings import PreconditionerSettings

__all__ = [
    "DampingTrial",
    "KroneckerPreconditioner",
    "MuonWithAdamW",
    "PreconditionerDiagnostics",
    "PreconditionerSettings",
    "Shampoo",
    "muon_parameters",
    "soap",
]
