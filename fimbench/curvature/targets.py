"""What the iterative methods share: the rearranged EMA target ``Z(ρ F̂_old + (1 − ρ) F_batch)`` with its
warm starts, and the Kronecker pairs read off its singular triplets (Theorem 3.1, Prop. 3.2).

The target is :class:`Target` (Gram coordinates, :mod:`fimbench.curvature.rearranged`) for 2-D statistics
and :class:`SharedTarget` (p × p / q × q coordinates, :mod:`fimbench.curvature.shared_weights`) for a layer
applied at T > 1 positions; both answer the same questions, so each method is written once."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.iterative import SingularTriplets, power_svd
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.rearranged import ITERATION_DTYPE, RearrangedOperator
from fimbench.curvature.shared_weights import SharedWeightOperator
from fimbench.errors import FimbenchError

NEGLIGIBLE_START = 1e-8  # a warm start this much smaller than the cold one carries no direction


class StartingVectors(ABC):
    """What :class:`Target` and :class:`SharedTarget` derive from their ``start(pair)``."""

    operator: RearrangedOperator | SharedWeightOperator
    starts: list

    @abstractmethod
    def start(self, pair: int) -> Tensor:
        """The right starting vector of term ``pair``: a usable warm start, else the cold start ``E[g gᵀ]``."""

    def start_orthogonal(self, pair: int, leading: Tensor) -> Tensor:
        """:meth:`start` with the unit right vector of an earlier pair projected out (:func:`orthogonal_start`)."""
        return orthogonal_start(self.operator, self.start(pair), leading)

    def lanczos_start(self) -> Tensor:
        """``Σ_k`` of the warm starts (§3.2.2's restart vector), or the cold start."""
        if not self.starts:
            return self.operator.batch_mean()
        return sum(self.start(k) for k in range(len(self.starts)))  # type: ignore[return-value]


@dataclass
class Target(StartingVectors):
    """What a method approximates: ``Z(ρ F̂_old + (1 − ρ) F_batch)``, plus where to start iterating.

    ``starts[k]`` is the basis index of a warm-start direction for the k-th pair (the k-th term of the
    previous solution), or ``None`` for a cold start from ``E[g gᵀ]``.
    """

    operator: RearrangedOperator
    starts: list[int | None]
    batch_weight: float = 1.0  # 1 − ρ when a prior contributes, else 1
    prior_weight: float = 0.0  # ρ of the prior's columns (its first term is K-FAC's pair in KFAC-corrected)

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

    def kfac_coordinates(self, A: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        """Coordinates of K-FAC's EMA factors ``A`` and ``G``: they lie in the span of the basis,
        ``A = Φ_A x`` with ``x_t = (1 − ρ)/m`` on the batch and ``ρ`` on the prior's first term."""
        m = self.operator.batch_size
        x = torch.zeros(self.operator.size, dtype=ITERATION_DTYPE, device=self.operator.core.device)
        x[:m] = self.batch_weight / m
        if self.prior_weight > 0.0:
            x[m] = self.prior_weight
        return x, x


@dataclass
class SharedTarget(StartingVectors):
    """:class:`Target` for a layer applied at T > 1 positions: the right starts are ``vec(S_k)`` of a
    previous solution, in the operator's zero-padded coordinates."""

    operator: SharedWeightOperator
    starts: list[Tensor]

    def start(self, pair: int) -> Tensor:
        """The warm start of term ``pair``, or K-FAC-expand's G (cold, or when the previous term vanished)."""
        cold = self.operator.batch_mean()
        if pair >= len(self.starts):
            return cold
        warm = self.starts[pair]
        if float(self.operator.norm_right(warm)) <= NEGLIGIBLE_START * float(self.operator.norm_right(cold)):
            return cold
        return warm

    def kfac_coordinates(self, A: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        """``(vec(A), vec(G))`` in the operator's coordinates."""
        return self.operator.activations.coordinates(A), self.operator.derivatives.coordinates(G)


def orthogonal_start(operator: RearrangedOperator | SharedWeightOperator, start: Tensor, leading: Tensor) -> Tensor:
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


@dataclass(frozen=True)
class Prior:
    """What a Kronecker method's approximation continues from: the previous approximation ``estimate``
    (F̂_old), averaged into the target at the EMA rate ``decay`` (ρ), and the terms ``warm_start`` its
    iterations start from (default: the estimate). The default, ``Prior()``, is a cold start on ``F_batch``."""

    estimate: KroneckerSum | None = None
    decay: float = 0.0
    warm_start: KroneckerSum | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise FimbenchError(f"the EMA decay must be in [0, 1), got {self.decay}")

    @property
    def active(self) -> KroneckerSum | None:
        """The estimate when it enters the target (``decay > 0``), else None."""
        return self.estimate if self.estimate is not None and self.decay > 0.0 else None


def checked_statistics(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``a``, ``g`` as an approximation takes them: (m, p) and (m, q), or (m, T, p) and (m, T, q) with T > 1
    (T = 1 is squeezed to the 2-D case); one error for any other shapes."""
    if a.ndim == 3 and g.ndim == 3 and a.shape[:2] == g.shape[:2]:
        return (a[:, 0], g[:, 0]) if a.shape[1] == 1 else (a, g)
    if a.ndim != 2 or g.ndim != 2 or a.shape[0] != g.shape[0]:
        raise FimbenchError(
            "a and g must be (m, p) and (m, q), or (m, T, p) and (m, T, q), with the same m (and T), "
            f"got {tuple(a.shape)} and {tuple(g.shape)}"
        )
    return a, g


def ema_target(a: Tensor, g: Tensor, prior: Prior) -> Target | SharedTarget:
    """The rearranged EMA estimate ``ρ Z(F̂_old) + (1 − ρ) Z(F_batch)`` with ``ρ = prior.decay`` (§2.2), for
    2-D statistics (m, p), (m, q) in Gram coordinates, for 3-D ones (m, T, p), (m, T, q) on the factors.

    ``prior.warm_start`` (default: the estimate) seeds the iterations. In Gram coordinates its terms that
    are not the estimate enter the basis with coefficient 0: they change nothing but the starting vectors.
    """
    decay = prior.decay
    active_prior = prior.active
    terms = [(decay, A, G) for A, G in active_prior.terms] if active_prior is not None else []
    seeds = prior.warm_start if prior.warm_start is not None else active_prior
    batch_weight = 1.0 - decay if active_prior is not None else 1.0
    if a.ndim == 3:
        shared = SharedWeightOperator.build(a, g, batch_weight=batch_weight, terms=terms)
        starts_shared = [shared.derivatives.coordinates(S) for _, S in seeds.terms] if seeds is not None else []
        return SharedTarget(shared, starts_shared)
    m = a.shape[0]
    starts: list[int | None] = []
    if seeds is not None:
        first = m if seeds is active_prior else m + len(terms)  # the prior's columns seed themselves
        if seeds is not active_prior:
            terms += [(0.0, A, G) for A, G in seeds.terms]
        starts = [first + k for k in range(len(seeds.terms))]
    operator = RearrangedOperator.build(a, g, batch_weight=batch_weight, terms=terms)
    return Target(operator, starts, batch_weight, decay if active_prior is not None else 0.0)


def kronecker_pair(operator: RearrangedOperator | SharedWeightOperator, triplets: SingularTriplets, index: int = 0) -> tuple[Tensor, Tensor]:
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
    target: Target | SharedTarget,
    operator: RearrangedOperator | SharedWeightOperator,
    pair: int,
    options: ApproximationOptions,
    scale: float | None = None,
    start: Tensor | None = None,
) -> SingularTriplets:
    """Power SVD of ``operator`` started from ``start``, by default the warm start of term ``pair`` (or cold)."""
    start = target.start(pair) if start is None else start
    return power_svd(operator, start, scale=scale, tol=options.tol, max_iterations=options.max_iterations)
