"""The public import path of the preconditioner: ``from fimbench.optim import KroneckerPreconditioner``.

The class lives in :mod:`fimbench.preconditioner.kronecker_preconditioner`; its settings in :mod:`fimbench.preconditioner.settings`.
"""

from fimbench.preconditioner.diagnostics import DampingTrial, PreconditionerDiagnostics
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.preconditioner.settings import PreconditionerSettings

__all__ = ["DampingTrial", "KroneckerPreconditioner", "PreconditionerDiagnostics", "PreconditionerSettings"]
