"""K-FAC (§2.2, eq. 1): ``F ≈ E[ā āᵀ] ⊗ E[g gᵀ]``, each factor an EMA ``ρ X_old + (1 − ρ) X_batch``
(K-FAC-expand's factors for a layer applied at T > 1 positions)."""

from __future__ import annotations

from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.shared_weights import kfac_expand_factors
from fimbench.curvature.targets import Prior


def factor_ema(A: Tensor, G: Tensor, prior: KroneckerSum | None, decay: float) -> tuple[Tensor, Tensor]:
    """The K-FAC factors' EMA: ``A ← ρ A_old + (1 − ρ) A_batch`` and ``G ← ρ G_old + (1 − ρ) G_batch``, with
    ``ρ = decay`` and ``(A_old, G_old)`` the prior's first term; the batch factors unchanged when there is
    no prior or ``decay`` is 0."""
    if prior is not None and decay > 0.0:
        A_old, G_old = prior.terms[0]
        return decay * A_old + (1.0 - decay) * A, decay * G_old + (1.0 - decay) * G
    return A, G


def kfac_factors(a: Tensor, g: Tensor, prior: KroneckerSum | None, decay: float) -> tuple[Tensor, Tensor]:
    """``A = aᵀ a / m`` and ``G = gᵀ g / m`` — for 3-D statistics (T > 1 positions) K-FAC-expand's factors
    (:func:`kfac_expand_factors`) — averaged with the prior's first term at rate ``decay`` (:func:`factor_ema`)."""
    if a.ndim == 3:
        A, G = kfac_expand_factors(a, g)
    else:
        m = a.shape[0]
        A = a.transpose(0, 1) @ a / m
        G = g.transpose(0, 1) @ g / m
    return factor_ema(A, G, prior, decay)


def approximate_kfac(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """K-FAC's single Kronecker product (no iteration)."""
    return KroneckerSum([kfac_factors(a, g, prior.estimate, prior.decay)], method="kfac")
