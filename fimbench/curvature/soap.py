"""SOAP's implied Fisher approximation: EKFAC in Shampoo's eigenbasis.

SOAP (Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and Stabilizing
Shampoo using Adam", 2024) runs Adam in the eigenbasis of Shampoo's statistics. With Shampoo's factors
(:func:`~fimbench.curvature.shampoo.shampoo_factors`; ``R`` on the activation side, ``L`` on the derivative
side, fimbench's ``A ⊗ G`` order)

    R = E[DWᵀ DW] = Q_R diag(ρ_R) Q_Rᵀ  (p × p),        L = E[DW DWᵀ] = Q_L diag(ρ_L) Q_Lᵀ  (q × q),

its second moment in the rotated coordinates ``Q_Lᵀ DW Q_R`` is a diagonal in the basis ``Q_R ⊗ Q_L``; as a
Fisher approximation, with Adam's second moment taken over examples, that diagonal is the Frobenius-optimal
one (George et al.'s EKFAC, :mod:`fimbench.curvature.ekfac`, in another basis):

    F̂ = (Q_R ⊗ Q_L) diag(vec S) (Q_R ⊗ Q_L)ᵀ,     S_ij = E_n[(Q_Lᵀ DW_n Q_R)_ij²]   (q × p),

so that spec(F̂) = {S_ij}. The result is an :class:`~fimbench.curvature.ekfac.EigenbasisDiagonal` whose
``factors`` are Shampoo's ``(R, L)`` and ``bases`` ``(Q_R, Q_L)``, with ``method="soap"``.

Schedule: EKFAC's (:func:`~fimbench.curvature.ekfac.approximate_ekfac`). Every update moves the factors by
the EMA ``R ← ρ R_old + (1 − ρ) R_batch``, ``L ← ρ L_old + (1 − ρ) L_batch`` (Shampoo's/SOAP's β₂ average of
its statistics, K-FAC's :func:`~fimbench.curvature.kfac.factor_ema`) and S towards the EMA target
``ρ F̂_old + (1 − ρ) F``: ``S = ρ S_old + (1 − ρ) S_batch`` in a kept basis, the old S re-based exactly
(:func:`~fimbench.curvature.ekfac.rebase`) in a new one.

Departures from SOAP's optimizer: the statistics are the Fisher's (per-example gradients ``DW_n``, summed
over a shared-weight layer's positions), not the mini-batch gradient's; the basis is the exact eigenbasis of
the EMA factors (SOAP refreshes it by one QR power step from the previous basis); the old eigenvalues are
re-based exactly into a new basis (SOAP only reorders its second moment); there is no bias correction.
"""

from __future__ import annotations

from torch import Tensor

from fimbench.curvature.ekfac import EigenbasisDiagonal, fit_in_eigenbasis
from fimbench.curvature.kfac import factor_ema
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.shampoo import shampoo_factors
from fimbench.curvature.targets import checked_statistics
from fimbench.errors import FimbenchError


def approximate_soap(
    a: Tensor, g: Tensor, prior: EigenbasisDiagonal | None = None, decay: float = 0.0, new_basis: bool = True
) -> EigenbasisDiagonal:
    """SOAP's approximation of the statistics ``a`` (m, p) / (m, T, p) and ``g`` (m, q) / (m, T, q) (module docstring).

    Without a prior: the batch's Shampoo factors, their eigenbasis and ``S_batch`` in it. With a prior and
    ``decay = ρ``: the EMA of the factors and ``S = ρ S_old + (1 − ρ) S_batch`` — in the eigenbasis of the
    new factors with ``new_basis`` (``S_old`` re-based exactly), else in the prior's basis.

    Args:
        a: Augmented activations (bias column last), (m, p); or (m, T, p) for a layer applied at T positions.
        g: Pre-activation derivatives, (m, q); or (m, T, q).
        prior: The previous SOAP approximation (its ``factors`` are Shampoo's); ``None`` (default): the batch's own.
        decay: The EMA rate ρ ∈ [0, 1) of the factors and of ``S``, used only with a prior (default 0: the batch's).
        new_basis: Whether to recompute the eigenbasis from the new factors (default), else keep the prior's.

    Returns:
        The approximation: factors ``(R, L)`` (p, p) and (q, q), their eigenbases ``(Q_R, Q_L)``, ``S`` (q, p),
        ``method="soap"``.

    Raises:
        FimbenchError: for statistics of mismatched shapes, or ``decay`` outside [0, 1).
    """
    a, g = checked_statistics(a, g)
    if not 0.0 <= decay < 1.0:
        raise FimbenchError(f"the EMA decay must be in [0, 1), got {decay}")
    factors = factor_ema(*shampoo_factors(a, g), None if prior is None else KroneckerSum([prior.factors]), decay)
    return fit_in_eigenbasis(a, g, factors, prior, decay, new_basis, method="soap")
