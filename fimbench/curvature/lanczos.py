"""Lanczos (§3.2.2): the top-r Kronecker pairs at once, ``F ≈ Σ_{i≤r} √σ_i MAT(u_i) ⊗ √σ_i MAT(v_i)``,
from restarted Golub–Kahan bidiagonalisation of ``Z(F)`` (App. B.2). With r = 2 this is the best
Kronecker rank-2 approximation (eq. 5), the same optimum Deflation reaches one pair at a time.

A layer with one input or one output (p = 1 or q = 1) has ``Z(F)`` of rank 1: the Krylov space ends after
one vector, so one pair is computed and the others are (0, 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fimbench.curvature.iterative import lanczos_svd
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.targets import Prior, ema_target, kronecker_pair


def approximate_lanczos(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """Top-``options.rank`` pairs; the restart vector is the sum of the previous solution's ``S_k``."""
    target = ema_target(a, g, prior)
    operator = target.operator
    rank = 1 if min(a.shape[-1], g.shape[-1]) == 1 else options.rank
    triplets = lanczos_svd(
        operator,  # type: ignore[arg-type]
        target.lanczos_start(),
        rank=rank,
        krylov_dim=options.krylov_dim,
        tol=options.tol,
        max_iterations=options.max_iterations,
    )
    pairs = [kronecker_pair(operator, triplets, i) for i in range(rank)]
    zero = (torch.zeros_like(pairs[0][0]), torch.zeros_like(pairs[0][1]))
    return KroneckerSum(
        pairs + [zero] * (options.rank - rank),
        method="lanczos",
        iterations=triplets.iterations,
        residual=triplets.residual,
        singular_values=[float(s) for s in triplets.values] + [0.0] * (options.rank - rank),
    )
