"""K-FAC (§2.2, eq. 1): ``F ≈ E[ā āᵀ] ⊗ E[g gᵀ]``, each factor an EMA ``ρ X_old + (1 − ρ) X_batch``
(K-FAC-expand's factors for a layer applied at T > 1 positions)."""

from __future__ import annotations

from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.shared_weights import kfac_expand_factors
from fimbench.curvature.targets import Prior


def kfac_factors(a: Tensor, g: Tensor, prior: KroneckerSum | None, decay: float) -> tuple[Tensor, Tensor]:
    """``A = aᵀ a / m`` and ``G = gᵀ g / m``, averaged with the prior's first term at rate ``decay``; for
    3-D statistics (T > 1 positions) K-FAC-expand's factors (:func:`kfac_expand_factors`)."""
    if a.ndim == 3:
        return kfac_expand_factors(a, g, prior, decay)
    m = a.shape[0]
    A = a.transpose(0, 1) @ a / m
    G = g.transpose(0, 1) @ g / m
    if prior is not None and decay > 0.0:
        A_old, G_old = prior.terms[0]
        A = decay * A_old + (1.0 - decay) * A
        G = decay * G_old + (1.0 - decay) * G
    return A, G


def approximate_kfac(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """K-FAC's single Kronecker product (no iteration)."""
    return KroneckerSum([kfac_factors(a, g, prior.estimate, prior.decay)], method="kfac")
