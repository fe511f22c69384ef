"""Deflation (§3.2.1): ``F ≈ R ⊗ S + P ⊗ Q`` computed one pair after the other.

1. ``(R, S)`` = KPSVD's pair (power SVD on ``Z(F)``);
2. ``(P, Q)`` = power SVD on ``Z(F − R ⊗ S) = Z(F) − vec(R) vec(S)ᵀ``, started orthogonally to ``vec(S)``
   (a start along it would be annihilated by the deflation).

A layer with one input or one output (p = 1 or q = 1, a scalar head) has ``Z(F)`` of one row or column,
so of rank 1: the deflated operator is exactly zero and ``(P, Q) = (0, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.targets import Prior, ema_target, kronecker_pair, leading_pair


def approximate_deflation(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """Two successive power SVDs, the second on the deflated operator."""
    target = ema_target(a, g, prior)
    first = leading_pair(target, target.operator, 0, options)
    sigma = float(first.values[0])
    if min(a.shape[-1], g.shape[-1]) == 1:
        R, S = kronecker_pair(target.operator, first)
        return KroneckerSum(
            [(R, S), (torch.zeros_like(R), torch.zeros_like(S))],
            method="deflation",
            iterations=first.iterations,
            residual=first.residual,
            singular_values=[sigma, 0.0],
        )
    deflated = target.operator.deflated(sigma, first.left[:, 0], first.right[:, 0])
    start = target.start_orthogonal(1, first.right[:, 0])
    second = leading_pair(target, deflated, 1, options, scale=sigma, start=start)
    return KroneckerSum(
        [kronecker_pair(target.operator, first), kronecker_pair(deflated, second)],
        method="deflation",
        iterations=first.iterations + second.iterations,
        residual=max(first.residual, second.residual),
        singular_values=[sigma, float(second.values[0])],
    )
