"""The five methods on shared-weight layers (T > 1 positions per example; docs/design.md §7): K-FAC-expand,
and KPSVD, Deflation, Lanczos and KFAC-corrected iterating on :class:`SharedWeightOperator`'s symmetric
block (:mod:`fimbench.curvature.shared_weights`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.iterative import SingularTriplets, lanczos_svd, power_svd
from fimbench.curvature.kfac_corrected import SCALE_TOLERANCE
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.shared_weights import SharedWeightOperator, kfac_expand_factors
from fimbench.curvature.targets import kronecker_pair, orthogonal_start
from fimbench.errors import FimbenchError


@dataclass
class SharedTarget:
    """``Z(ρ F̂_old + (1 − ρ) F_batch)`` and the warm-start right vectors ``vec(S_k)`` of a previous solution."""

    operator: SharedWeightOperator
    starts: list[Tensor]

    def start(self, pair: int) -> Tensor:
        """The k-th warm start, or K-FAC-expand's G (cold, or when the previous term vanished)."""
        if pair < len(self.starts) and float(torch.linalg.vector_norm(self.starts[pair])) > 0.0:
            return self.starts[pair]
        return self.operator.batch_mean()

    def start_orthogonal(self, pair: int, leading: Tensor) -> Tensor:
        """:meth:`start` with the unit right vector of an earlier pair projected out (:func:`orthogonal_start`)."""
        return orthogonal_start(self.operator, self.start(pair), leading)


def shared_target(
    a: Tensor, g: Tensor, prior: KroneckerSum | None, decay: float, warm_start: KroneckerSum | None
) -> SharedTarget:
    """The rearranged EMA estimate ``ρ Z(F̂_old) + (1 − ρ) Z(F_batch)`` (ρ = ``decay``, §2.2), seeded by
    ``warm_start`` (default: the prior)."""
    if not 0.0 <= decay < 1.0:
        raise FimbenchError(f"the EMA decay must be in [0, 1), got {decay}")
    active_prior = prior if prior is not None and decay > 0.0 else None
    terms = [(decay, A, G) for A, G in active_prior.terms] if active_prior is not None else []
    operator = SharedWeightOperator.build(a, g, batch_weight=1.0 - decay if active_prior is not None else 1.0, terms=terms)
    seeds = warm_start if warm_start is not None else active_prior
    starts = [operator.derivatives.coordinates(S) for _, S in seeds.terms] if seeds is not None else []
    return SharedTarget(operator, starts)


def _power(target: SharedTarget, operator: SharedWeightOperator, pair: int, options: ApproximationOptions, scale: float | None = None) -> SingularTriplets:
    return power_svd(operator, target.start(pair), scale=scale, tol=options.tol, max_iterations=options.max_iterations)


def approximate_kfac_expand(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """K-FAC with the K-FAC-expand factors (no iteration)."""
    return KroneckerSum([kfac_expand_factors(a, g, prior, decay)], method="kfac")


def approximate_kpsvd_shared(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """KPSVD (§3.1): the leading singular pair of ``Z(F)``, ``R = √σ₁ MAT(u₁)``, ``S = √σ₁ MAT(v₁)``."""
    target = shared_target(a, g, prior, decay, warm_start)
    first = _power(target, target.operator, 0, options)
    return KroneckerSum(
        [kronecker_pair(target.operator, first)],  # type: ignore[arg-type]
        method="kpsvd",
        iterations=first.iterations,
        residual=first.residual,
        singular_values=[float(first.values[0])],
    )


def approximate_deflation_shared(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """Deflation (§3.2.1): KPSVD's pair, then the leading pair of ``Z(F) − vec(R) vec(S)ᵀ``."""
    target = shared_target(a, g, prior, decay, warm_start)
    first = _power(target, target.operator, 0, options)
    sigma = float(first.values[0])
    deflated = target.operator.deflated(sigma, first.left[:, 0], first.right[:, 0])
    start = target.start_orthogonal(1, first.right[:, 0])
    second = power_svd(deflated, start, scale=sigma, tol=options.tol, max_iterations=options.max_iterations)
    return KroneckerSum(
        [kronecker_pair(target.operator, first), kronecker_pair(deflated, second)],  # type: ignore[arg-type]
        method="deflation",
        iterations=first.iterations + second.iterations,
        residual=max(first.residual, second.residual),
        singular_values=[sigma, float(second.values[0])],
    )


def approximate_lanczos_shared(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """Lanczos (§3.2.2): the top ``options.rank`` pairs of ``Z(F)``, restarted from ``Σ_k vec(S_k)``."""
    target = shared_target(a, g, prior, decay, warm_start)
    operator = target.operator
    start = sum(target.starts) if target.starts else operator.batch_mean()
    if float(torch.linalg.vector_norm(start)) == 0.0:  # type: ignore[arg-type]
        start = operator.batch_mean()
    triplets = lanczos_svd(
        operator,  # type: ignore[arg-type]
        start,  # type: ignore[arg-type]
        rank=options.rank,
        krylov_dim=options.krylov_dim,
        tol=options.tol,
        max_iterations=options.max_iterations,
    )
    return KroneckerSum(
        [kronecker_pair(operator, triplets, i) for i in range(options.rank)],  # type: ignore[arg-type]
        method="lanczos",
        iterations=triplets.iterations,
        residual=triplets.residual,
        singular_values=[float(s) for s in triplets.values],
    )


def approximate_kfac_corrected_shared(
    a: Tensor,
    g: Tensor,
    options: ApproximationOptions,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> KroneckerSum:
    """KFAC-corrected (§3.3): K-FAC-expand's pair plus the leading pair of ``Z(F) − vec(A) vec(G)ᵀ``.

    The stopping tolerance is relative to σ₁ of ``Z(F)`` (a loose power SVD, not counted in ``iterations``).
    """
    target = shared_target(a, g, prior, decay, warm_start)
    operator = target.operator
    A, G = kfac_expand_factors(a, g, prior, decay)
    corrected = operator.deflated(1.0, operator.activations.coordinates(A), operator.derivatives.coordinates(G))
    sigma1 = float(
        power_svd(operator, target.start(0), tol=SCALE_TOLERANCE, max_iterations=options.max_iterations).values[0]  # type: ignore[arg-type]
    )
    correction = _power(target, corrected, 1, options, scale=sigma1)
    return KroneckerSum(
        [(A, G), kronecker_pair(corrected, correction)],  # type: ignore[arg-type]
        method="kfac-corrected",
        iterations=correction.iterations,
        residual=correction.residual,
        singular_values=[float(correction.values[0])],
    )
