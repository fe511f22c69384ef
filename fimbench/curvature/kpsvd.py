"""KPSVD (§3.1): the best single Kronecker product, ``argmin ‖F − R ⊗ S‖_F`` (eq. 3).

By Theorem 3.1 this is the leading singular pair of ``Z(F)``: ``R = √σ₁ MAT(u₁)``, ``S = √σ₁ MAT(v₁)``,
found by power SVD (App. B.1). Both factors are symmetric, and the sign is chosen so that they are
positive semi-definite (Prop. 3.2).
"""

from __future__ import annotations

from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.targets import Prior, ema_target, kronecker_pair, leading_pair


def approximate_kpsvd(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """KPSVD: the leading Kronecker pair of the (EMA) Fisher block."""
    target = ema_target(a, g, prior)
    first = leading_pair(target, target.operator, 0, options)
    return KroneckerSum(
        [kronecker_pair(target.operator, first)],
        method="kpsvd",
        iterations=first.iterations,
        residual=first.residual,
        singular_values=[float(first.values[0])],
    )
