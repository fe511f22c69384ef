"""Kronecker-factored approximations of a Fisher block, behind one function and one registry.

>>> from fimbench.curvature import approximate
>>> ks = approximate("deflation", a, g)          # a: (m, p) with the bias column last, g: (m, q)
>>> ks.terms, ks.to_dense(), ks.solve(V, 1e-3)   # F̂ = Σ kron(A_k, G_k); V is (q, p)
>>> ks.solve(V, 1e-3, form="exact")              # (A₁ ⊗ G₁ + λI)⁻¹ in the first term's eigenbasis
>>> ekfac = approximate_ekfac(a, g)              # EKFAC: K-FAC's eigenbasis, re-fitted eigenvalues S (q, p)
>>> ekfac.solve(V, 1e-3)                         # (F̂ + λI)⁻¹ vec V
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from fimbench.curvature.approximator import Approximator
from fimbench.curvature.ekfac import EigenbasisDiagonal, approximate_ekfac
from fimbench.curvature.kronecker_sum import (
    DEFAULT_MIN_CURVATURE_RATIO,
    TRACE_SPLIT,
    DampingSplit,
    KroneckerInverse,
    KroneckerSum,
    check_damping_split,
)
from fimbench.curvature.options import (
    DEFAULT_KRYLOV_DIM,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_TOL,
    ApproximationOptions,
)
from fimbench.curvature.targets import Prior, checked_statistics
from fimbench.errors import FimbenchError, did_you_mean
from fimbench.methods import KRONECKER_BLOCK, RECORDS, Method, implementation, parse_method

__all__ = [
    "APPROXIMATIONS",
    "DEFAULT_KRYLOV_DIM",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MIN_CURVATURE_RATIO",
    "DEFAULT_TOL",
    "TRACE_SPLIT",
    "ApproximationOptions",
    "Approximator",
    "DampingSplit",
    "EigenbasisDiagonal",
    "KroneckerInverse",
    "KroneckerSum",
    "approximate",
    "approximate_ekfac",
    "check_damping_split",
]


APPROXIMATIONS: dict[Method, Approximator] = {
    method: implementation(record.approximation)  # type: ignore[arg-type]
    for method, record in RECORDS.items()
    if record.block == KRONECKER_BLOCK
}
"""The approximation of each method whose block is a Kronecker sum (the five Kronecker methods and Shampoo's),
the function its registry record names (:mod:`fimbench.methods`)."""


def approximate(
    method: str | Method,
    a: Tensor,
    g: Tensor,
    *,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
    options: ApproximationOptions | None = None,
    **settings: Any,
) -> KroneckerSum:
    """Approximate the Fisher block ``F = (1/m) Σ_t kron(ā_t ā_tᵀ, g_t g_tᵀ)`` by a Kronecker sum.

    A layer with shared weights gives 3-D statistics, T positions per example: the block is then
    ``F = (1/m) Σ_n vec(G_nᵀ A_n) vec(G_nᵀ A_n)ᵀ`` and K-FAC uses the K-FAC-expand factors
    (curvature/shared_weights.py); T = 1 is the (m, p) case. With ``prior`` and ``decay = ρ`` the target is
    the EMA estimate ``ρ F̂_old + (1 − ρ) F`` (K-FAC: EMA of its factors).

    Args:
        method: A method whose approximation is a Kronecker sum, a :class:`~fimbench.methods.Method` or its name
            (``"kfac"``, ``"kpsvd"``, ``"deflation"``, ``"lanczos"``, ``"kfac-corrected"``, or ``"shampoo"``:
            Shampoo's implied ``c · R ⊗ L``).
        a: Augmented activations ``ā_t`` (bias column last), (m, p); or (m, T, p) for a layer with shared
            weights.
        g: Pre-activation derivatives ``g_t``, (m, q); or (m, T, q), with the same m (and T) as ``a``.
        prior: The previous approximation F̂_old, averaged into the target at the rate ``decay``; ``None``
            (default): the target is ``F`` alone.
        decay: The EMA rate ρ ∈ [0, 1) of ``prior``; 0 (default) leaves the prior out of the target.
        warm_start: The approximation whose terms seed power SVD / Lanczos (default: the prior).
        options: How far to iterate; default :class:`ApproximationOptions`'s, which own every default.
        **settings: Any of the fields of ``options``, given as keywords on top of it: ``tol`` (relative to the
            leading singular value of ``Z(F)``), ``max_iterations``, Lanczos' ``rank`` r and ``krylov_dim`` K.

    Returns:
        ``F̂ = Σ_k kron(A_k, G_k)``, ``A_k`` (p, p) and ``G_k`` (q, q), with the iterative solver's report.

    Raises:
        FimbenchError: If ``method`` has no Kronecker-sum approximation, if ``a`` and ``g`` are neither (m, p) and
            (m, q) nor (m, T, p) and (m, T, q) with the same m (and T), or if ``decay`` or an option is out of
            range, or an option is unknown (the message suggests the closest).
    """
    chosen = parse_method(method, choices=list(APPROXIMATIONS))
    a, g = checked_statistics(a, g)
    known = [item.name for item in dataclasses.fields(ApproximationOptions)]
    for key in settings:
        if key not in known:
            raise FimbenchError(f"unknown approximation option '{key}'{did_you_mean(key, known)}; the options are {', '.join(known)}")
    chosen_options = dataclasses.replace(options or ApproximationOptions(), **settings)
    return APPROXIMATIONS[chosen](a, g, chosen_options, Prior(prior, decay, warm_start))
