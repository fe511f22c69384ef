"""Adaptive damping: the Levenberg–Marquardt rule of Martens & Grosse (2015, §6.5), for every method
(docs/design.md §5).

Every T3 steps the update ``δ`` that was just applied is judged by the reduction ratio

    ρ = (h(θ + δ) − h(θ)) / M(δ),   M(δ) = ∇hᵀ δ + ½ δᵀ F̃_λ δ,

on the same mini-batch, where ``F̃_λ`` is the method's own damped approximation (the operator the
preconditioner inverts, block-diagonal over layers). ``ρ`` near 1 means the quadratic model is trusted,
so the damping shrinks; a small ``ρ`` means it is not, so the damping grows:

    λ ← ω λ  if ρ > 3/4,   λ ← λ / ω  if ρ < 1/4,   ω = (19/20)^T3,   then clamp λ to [λ_min, λ_max].

A model that predicts no decrease (``M(δ) ≥ 0``) or a non-finite ``h(θ + δ)`` counts as ``ρ < 1/4``.
``h`` is the mini-batch objective without the weight-decay term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIXED = "fixed"
ADAPTIVE = "adaptive"
DAMPING_SCHEDULES = (FIXED, ADAPTIVE)

DEFAULT_ADAPT_EVERY = 5  # T3, as in Martens & Grosse
DEFAULT_DAMPING_MIN = 1e-8
DEFAULT_DAMPING_MAX = 1e8

TRUSTED = 0.75  # ρ above: shrink λ
DISTRUSTED = 0.25  # ρ below: grow λ
DECAY_PER_STEP = 19.0 / 20.0


def reduction_ratio(actual_change: float, predicted_change: float) -> float:
    """``ρ = (h(θ + δ) − h(θ)) / M(δ)``; ``-inf`` when the model predicts no decrease or ``h`` is not finite."""
    if not math.isfinite(actual_change) or not predicted_change < 0.0:
        return -math.inf
    return actual_change / predicted_change


@dataclass(frozen=True)
class LevenbergMarquardt:
    """The rule of the module docstring with ``every`` = T3 and bounds ``[minimum, maximum]``."""

    every: int = DEFAULT_ADAPT_EVERY
    minimum: float = DEFAULT_DAMPING_MIN
    maximum: float = DEFAULT_DAMPING_MAX

    @property
    def omega(self) -> float:
        """``ω = (19/20)^T3``."""
        return DECAY_PER_STEP**self.every

    def update(self, damping: float, rho: float) -> float:
        """The next λ given the current one and the reduction ratio ρ."""
        if rho > TRUSTED:
            damping = damping * self.omega
        elif rho < DISTRUSTED:
            damping = damping / self.omega
        return min(max(damping, self.minimum), self.maximum)
