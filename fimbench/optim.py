"""The public import path of the preconditioner: ``from fimbench.optim import KroneckerPreconditioner``.

The class lives in :mod:`fimbench.preconditioner`; its settings in :mod:`fimbench.settings`.
"""

from fimbench.preconditioner import DampingTrial, KroneckerPreconditioner, PreconditionerDiagnostics
from fimbench.settings import PreconditionerSettings

__all__ = ["DampingTrial", "KroneckerPreconditioner", "PreconditionerDiagnostics", "PreconditionerSettings"]
