"""KFAC-corrected (§3.3): ``F ≈ A_KFAC ⊗ G_KFAC + P ⊗ Q`` with the best corrector (eq. 6),

    (P, Q) = argmin ‖F − A_KFAC ⊗ G_KFAC − P ⊗ Q‖_F,

the leading pair of ``Z(F) − vec(A_KFAC) vec(G_KFAC)ᵀ`` by power SVD. K-FAC's factors lie in the span of
the rearranged basis (``A_KFAC = Φ_A (1/m, …)``), so the deflation is exact in Gram coordinates; for a
layer applied at T > 1 positions the pair is K-FAC-expand's. The
tolerance is relative to σ₁ of ``Z(F)``, estimated by a loose power SVD (O(n²) per iteration, not counted
in ``iterations``).
"""

from __future__ import annotations

from torch import Tensor

from fimbench.curvature.iterative import power_svd
from fimbench.curvature.kfac import kfac_factors
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.targets import Prior, ema_target, kronecker_pair, leading_pair

SCALE_TOLERANCE = 1e-3  # σ₁ only sets the scale of the stopping rule


def approximate_kfac_corrected(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """K-FAC's pair (EMA of the factors) plus the best rank-1 correction of the EMA block."""
    target = ema_target(a, g, prior)
    operator = target.operator
    A, G = kfac_factors(a, g, prior.estimate, prior.decay)
    corrected = operator.deflated(1.0, *target.kfac_coordinates(A, G))
    sigma1 = float(power_svd(operator, target.start(0), tol=SCALE_TOLERANCE, max_iterations=options.max_iterations).values[0])
    correction = leading_pair(target, corrected, 1, options, scale=sigma1)
    return KroneckerSum(
        [(A, G), kronecker_pair(corrected, correction)],
        method="kfac-corrected",
        iterations=correction.iterations,
        residual=correction.residual,
        singular_values=[float(correction.values[0])],
    )
