"""What a :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` reports between two
``pop_diagnostics`` calls, and what a damping adaptation keeps of the step it judges."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fimbench.fisher.capture import KroneckerLayer, weight_gradient, weight_of
from fimbench.preconditioner.guard import GuardEvent


@dataclass
class PreconditionerDiagnostics:
    """What happened since the last :meth:`KroneckerPreconditioner.pop_diagnostics` call."""

    updates: int = 0  # statistics updates (T1 events)
    refreshes: int = 0  # inversions (T2 events)
    iterations: list[int] = field(default_factory=list)  # per layer and update
    residuals: list[float] = field(default_factory=list)
    clip_sum: Tensor | None = None  # Σ ν over steps, kept on the device
    steps: int = 0
    reduction_ratios: list[float] = field(default_factory=list)  # ρ of each damping adaptation
    guard_events: list[GuardEvent] = field(default_factory=list)  # updates and refreshes the guard dropped

    def summary(self) -> dict[str, Any]:
        """The counts, and the means and maxima over updates, as plain numbers.

        Returns:
            ``statistics_updates``, ``inverse_refreshes``, ``iterations_mean``/``_max``, ``residual_mean``/``_max``,
            ``kl_clip_factor`` (mean ν), ``damping_adaptations`` and ``reduction_ratio_mean`` (None where
            there was nothing to average), ``guard_activations`` and ``guard_events`` (each as a plain dict).
        """
        ratios = [rho for rho in self.reduction_ratios if math.isfinite(rho)]
        return {
            "statistics_updates": self.updates,
            "inverse_refreshes": self.refreshes,
            "iterations_mean": sum(self.iterations) / len(self.iterations) if self.iterations else None,
            "iterations_max": max(self.iterations) if self.iterations else None,
            "residual_mean": sum(self.residuals) / len(self.residuals) if self.residuals else None,
            "residual_max": max(self.residuals) if self.residuals else None,
            "kl_clip_factor": float(self.clip_sum) / self.steps if self.clip_sum is not None and self.steps else None,
            "damping_adaptations": len(self.reduction_ratios),
            "reduction_ratio_mean": sum(ratios) / len(ratios) if ratios else None,
            "guard_activations": len(self.guard_events),
            "guard_events": [event.as_dict() for event in self.guard_events],
        }


@dataclass
class DampingTrial:
    """What an adaptation needs from the step it judges: ``θ`` and ``∇h`` per layer, before the update —
    or, for a step of the quadratic model, the model's ``M_h(δ)`` of that step (``predicted``)."""

    parameters: list[Tensor]
    gradients: list[Tensor]
    predicted: Tensor | None = None

    @classmethod
    def before_update(cls, layers: Sequence[KroneckerLayer], dtype: torch.dtype, scale: Tensor | float) -> DampingTrial:
        """The trial of the step about to be taken: θ and ``∇h`` of ``layers`` now.

        Args:
            layers: the preconditioned layers.
            dtype: the factor dtype the trial is kept in.
            scale: the GradScaler's scale the gradients carry (1 without one).

        Returns:
            θ (copied, not a view) and the unscaled gradients per layer.
        """
        return cls(
            [weight_of(layer).detach().to(dtype, copy=True) for layer in layers],
            [weight_gradient(layer).to(dtype) / scale for layer in layers],
        )

    def model_change(self, parameters: Sequence[Tensor], quadratic: Callable[[Sequence[Tensor]], Tensor]) -> Tensor:
        """``M(δ) = ⟨∇, δ⟩ + ½ δᵀ F̃ δ`` for the update ``δ`` from the trial's θ to ``parameters``, with ``F̃`` the
        damped operator that produced it (block-diagonal: ``Σ_i ⟨∇_i, δ_i⟩ + ½ ⟨δ_i, F̃_i δ_i⟩``).

        Args:
            parameters: θ + δ per layer, now.
            quadratic: ``δ ↦ δᵀ F̃ δ`` (the curvature's ``quadratic``).

        Returns:
            ``M(δ)``, a 0-d tensor on the device.
        """
        deltas = [after - before for after, before in zip(parameters, self.parameters)]
        linear = torch.stack([(gradient * delta).sum() for gradient, delta in zip(self.gradients, deltas)]).sum()
        return linear + 0.5 * quadratic(deltas)
