"""What the iterative methods share: the rearranged EMA target ``Z(ρ F̂_old + (1 − ρ) F_batch)`` with its
warm starts, and the Kronecker pairs read off its singular triplets (Theorem 3.1, Prop. 3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fimbench.curvature.iterative import SingularTriplets, power_svd
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.rearranged import RearrangedOperator
from fimbench.errors import FimbenchError

if TYPE_CHECKING:
    from fimbench.curvature.shared_weights import SharedWeightOperator

NEGLIGIBLE_START = 1e-8  # a warm start this much smaller than the cold one carries no direction


@dataclass
class Target:
    """What a method approximates: ``Z(ρ F̂_old + (1 − ρ) F_batch)``, plus where to start iterating.

    ``starts[k]`` is the basis index of a warm-start direction for the k-th pair (the k-th term of the
    previous solution), or ``None`` for a cold start from ``E[g gᵀ]``.
    """

    operator: RearrangedOperator
    starts: list[int | None]

    def start(self, pair: int) -> Tensor:
        """The warm start of term ``pair``, or the cold start ``E[g gᵀ]`` when there is none or when it is
        (near) zero — a term that vanished once, e.g. after an update with ``g ≡ 0``, must not seed the next
        update, since a zero start vector is a fixed point of power SVD and Lanczos."""
        cold = self.operator.batch_mean()
        index = self.starts[pair] if pair < len(self.starts) else None
        if index is None:
            return cold
        warm = self.operator.unit(index)
        if float(self.operator.norm_right(warm)) <= NEGLIGIBLE_START * float(self.operator.norm_right(cold)):
            return cold
        return warm

    def start_orthogonal(self, pair: int, leading: Tensor) -> Tensor:
        """:meth:`start` with the unit right vector of an earlier pair projected out (:func:`orthogonal_start`)."""
        return orthogonal_start(self.operator, self.start(pair), leading)


def orthogonal_start(operator: "RearrangedOperator | SharedWeightOperator", start: Tensor, leading: Tensor) -> Tensor:
    """``start`` with the unit right vector ``v₁`` of an earlier pair projected out (in the operator's inner
    product).

    The next right singular vector is orthogonal to ``v₁``, and the component along ``v₁`` is all that
    deflating ``σ₁ u₁ v₁ᵀ`` removes: a start equal to ``v₁`` (a cold start whose first pair converged in
    one iteration) would be annihilated. When nothing is left after the projection, the start is the
    operator's :meth:`fresh_direction` orthogonal to ``v₁``.
    """
    candidate = start - (leading @ (operator.gram_g @ start)) * leading
    if float(operator.norm_right(candidate)) > NEGLIGIBLE_START * float(operator.norm_right(start)):
        return candidate
    fresh = operator.fresh_direction([leading])
    return candidate if fresh is None else fresh


def ema_target(
    a: Tensor,
    g: Tensor,
    prior: KroneckerSum | None = None,
    decay: float = 0.0,
    warm_start: KroneckerSum | None = None,
) -> Target:
    """The rearranged EMA estimate ``ρ Z(F̂_old) + (1 − ρ) Z(F_batch)`` with ``ρ = decay`` (§2.2).

    Terms of ``warm_start`` that are not the prior enter the basis with coefficient 0: they change
    nothing but the starting vectors.
    """
    if not 0.0 <= decay < 1.0:
        raise FimbenchError(f"the EMA decay must be in [0, 1), got {decay}")
    m = a.shape[0]
    active_prior = prior if prior is not None and decay > 0.0 else None
    terms = [(decay, A, G) for A, G in active_prior.terms] if active_prior is not None else []
    seeds = warm_start if warm_start is not None else active_prior
    starts: list[int | None] = []
    if seeds is not None:
        first = m if seeds is active_prior else m + len(terms)  # the prior's columns seed themselves
        if seeds is not active_prior:
            terms += [(0.0, A, G) for A, G in seeds.terms]
        starts = [first + k for k in range(len(seeds.terms))]
    operator = RearrangedOperator.build(a, g, batch_weight=1.0 - decay, terms=terms)
    return Target(operator, starts)


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
