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
from enum import StrEnum

import torch
from torch import Tensor

from fimbench.preconditioner.diagnostics import DampingTrial
from fimbench.preconditioner.distributed import mean_over_ranks


class DampingSchedule(StrEnum):
    """``damping_schedule`` choices: λ fixed, or adapted by the Levenberg–Marquardt rule (module docstring)."""

    FIXED = "fixed"
    ADAPTIVE = "adaptive"



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


@dataclass
class Damping:
    """λ now, and how it moves: fixed (``rule`` None) or adapted every T3 = ``rule.every`` steps by the
    Levenberg–Marquardt ``rule`` from the :class:`~fimbench.preconditioner.diagnostics.DampingTrial` of the
    judged step (``trial``, pending until its loss after the update is known)."""

    value: float
    rule: LevenbergMarquardt | None = None
    trial: DampingTrial | None = None

    @classmethod
    def of(cls, damping: float, schedule: str, every: int, minimum: float, maximum: float) -> Damping:
        """λ = ``damping``, fixed or (``schedule`` adaptive) adapted every ``every`` steps within ``[minimum, maximum]``."""
        return cls(damping, LevenbergMarquardt(every, minimum, maximum) if schedule == DampingSchedule.ADAPTIVE else None)

    def judges(self, step: int) -> bool:
        """Whether step number ``step`` (counted from 0) is judged (adaptive λ, every T3 steps)."""
        return self.rule is not None and step % self.rule.every == 0

    def adapt(self, loss_before: Tensor | float, loss_after: Tensor | float, predicted_change: float, device: torch.device) -> float:
        """Close the pending trial: ρ = (h(θ + δ) − h(θ)) / M(δ) and λ ← the rule's next λ; returns ρ.

        Under a process group the two losses are first averaged over the ranks (a collective: every rank calls
        it, its trial pending at the same step): ρ is that of the mean of the ranks' objectives, whose
        gradient DDP averages, and λ stays the same on every rank.
        """
        assert self.rule is not None, "adapt with a fixed λ"
        losses = mean_over_ranks(torch.tensor([float(loss_before), float(loss_after)], dtype=torch.float64, device=device))
        mean_before, mean_after = losses.tolist()
        rho = reduction_ratio(mean_after - mean_before, predicted_change)
        self.value = self.rule.update(self.value, rho)
        self.trial = None
        return rho
