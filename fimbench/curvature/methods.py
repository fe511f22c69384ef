"""The methods fimbench trains with, told apart: first-order (SGD, Adam) and Kronecker-factored (the five
approximations of the Fisher block), and the :class:`Approximator` signature every Kronecker method has."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.errors import FimbenchError


class Method(str, Enum):
    """Every optimizer fimbench trains with; the first five precondition with a Kronecker approximation."""

    KFAC = "kfac"
    KPSVD = "kpsvd"
    DEFLATION = "deflation"
    LANCZOS = "lanczos"
    KFAC_CORRECTED = "kfac-corrected"
    SGD = "sgd"
    ADAM = "adam"

    @property
    def is_kronecker(self) -> bool:
        """Whether the method preconditions with a Kronecker approximation (else it is first-order)."""
        return self in KRONECKER_METHODS

    @property
    def rank(self) -> int:
        """Kronecker rank of the approximation (Lanczos: its default)."""
        return 1 if self in (Method.KFAC, Method.KPSVD) else 2


KRONECKER_METHODS: tuple[Method, ...] = (
    Method.KFAC,
    Method.KPSVD,
    Method.DEFLATION,
    Method.LANCZOS,
    Method.KFAC_CORRECTED,
)
"""The methods that precondition with a Kronecker approximation ``F̂ = Σ_k A_k ⊗ G_k``."""
FIRST_ORDER_METHODS: tuple[Method, ...] = (Method.SGD, Method.ADAM)
"""The methods that step along the gradient itself."""


def parse_method(name: "str | Method", kronecker_only: bool = False) -> Method:
    """``"deflation"`` -> ``Method.DEFLATION``; a clear error for anything else."""
    choices = list(KRONECKER_METHODS) if kronecker_only else list(Method)
    try:
        method = Method(name)
    except ValueError:
        method = None
    if method is None or method not in choices:
        names = ", ".join(m.value for m in choices)
        raise FimbenchError(f"unknown method '{getattr(name, 'value', name)}'; choose from {names}")
    return method


class Approximator(Protocol):
    """One Kronecker method: the approximation of ``ρ F̂_old + (1 − ρ) F`` (``prior`` = F̂_old, ``decay`` = ρ;
    without a prior, of ``F = (1/m) Σ_t ā_t ā_tᵀ ⊗ g_t g_tᵀ``) from the statistics ``a``, ``g``, iterating from
    ``warm_start`` (default: the prior) with ``options``."""

    def __call__(
        self,
        a: Tensor,
        g: Tensor,
        options: ApproximationOptions,
        prior: KroneckerSum | None = None,
        decay: float = 0.0,
        warm_start: KroneckerSum | None = None,
    ) -> KroneckerSum: ...
