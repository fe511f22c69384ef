"""The :class:`Approximator` signature every Kronecker method has (the methods themselves are
:class:`fimbench.methods.Method`)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.targets import Prior


class Approximator(Protocol):
    """One Kronecker method: the approximation of ``ρ F̂_old + (1 − ρ) F`` (``prior.estimate`` = F̂_old,
    ``prior.decay`` = ρ; without an estimate, of ``F = (1/m) Σ_t ā_t ā_tᵀ ⊗ g_t g_tᵀ``) from the statistics
    ``a``, ``g``, iterating from ``prior.warm_start`` (default: the estimate) as far as ``options`` say."""

    def __call__(self, a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
        """The approximation (class docstring)."""
        ...
