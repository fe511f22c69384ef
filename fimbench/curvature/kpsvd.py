"""KPSVD (§3.1): the best single Kronecker product, ``argmin ‖F − R ⊗ S‖_F`` (eq. 3).

By Theorem 3.1 this is the leading singular pair of ``Z(F)``: ``R = √σ₁ MAT(u₁)``, ``S = √σ₁ MAT(v₁)``,
found by power SVD (App. B.1). Both factors are symmetric, and the sign is chosen so that they are
positive semi-definite (Prop. 3.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.iterative import SingularTriplets, power_svd
from fimbench.curvature.options import ApproximationOptions, Target, ema_target
from fimbench.curvature.rearranged import RearrangedOperator


def kronecker_pair(operator: RearrangedOperator, triplets: SingularTriplets, index: int = 0) -> tuple[Tensor, Tensor]:
    """``(√σ MAT(Φ_A x), √σ MAT(Φ_G y))`` for triplet ``index``, signed so that ``tr R ≥ 0``.

    Flipping both factors leaves ``R ⊗ S`` unchanged; for the leading pair of a PSD block this sign makes
    both factors PSD (Prop. 3.2), for a correction term it is a deterministic convention.
    """
    root = math.sqrt(max(float(triplets.values[index]), 0.0))
    R = operator.activations.materialise(root * triplets.left[:, index])
    S = operator.derivatives.materialise(root * triplets.right[:, index])
    if float(torch.trace(R)) < 0.0:
        R, S = -R, -S
    return R, S


def leading_pair(
    target: Target,
    operator: RearrangedOperator,
    pair: int,
    options: ApproximationOptions,
    scale: float | None = None,
    start: Tensor | None = None,
) -> SingularTriplets:
    """Power SVD of ``operator`` started from ``start``, by default the warm start of term ``pair`` (or cold)."""
    start = target.start(pair) if start is None else start
    return power_svd(operator, start, scale=scale, tol=options.tol, max_iterations=options.max_iterations)


def approximate_kpsvd(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """KPSVD: the leading Kronecker pair of the (EMA) Fisher block."""
    target = ema_target(a, g, prior, decay, warm_start)
    first = leading_pair(target, target.operator, 0, options)
    return KroneckerSum(
        [kronecker_pair(target.operator, first)],
        method="kpsvd",
        iterations=first.iterations,
        residual=first.residual,
        singular_values=[float(first.values[0])],
    )
