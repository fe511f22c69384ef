"""The exact natural gradient on the Fisher sub-batch: the references ``exact-ng`` and ``exact-ng-block``.

With ``F_m = Jᵀ J / m`` the exact Fisher of the latest Fisher sub-batch (:class:`~fimbench.fisher.sub_batch.SubBatchFisher`,
rows ``j_n`` = the per-example gradients of all preconditioned layers), the step direction is

    exact-ng:        d = (F_m + λI)⁻¹ ∇            (the whole network: layers coupled),
    exact-ng-block:  d_l = (F_m,ll + λI)⁻¹ ∇_l     (each layer's exact diagonal block),

both by the Woodbury identity ``(F + λI)⁻¹ v = (v − Jᵀ (m λ I + K)⁻¹ J v) / λ`` with the m × m Gram matrix
``K = Σ_l (Ā_l Ā_lᵀ) ∘ (G_l G_lᵀ)`` (per layer: its one term ``K_l``). Nothing P × P is formed.

Schedules: every T1 steps the captured statistics replace the previous sub-batch — the EMA decay ρ does
not apply, since an average of sample Fishers over sub-batches is no longer ``JᵀJ/m`` of one Jacobian
and would need every past sub-batch's gradients; every T2 steps (or when λ moved) the damped Gram
``m λ I + K`` of the latest sub-batch is factorised. Adaptive damping's ``M(δ)`` uses ``δᵀ (F_m + λI) δ =
‖J δ‖² / m + λ ‖δ‖²`` of the sub-batch of that factorisation. λ is used as it is: no π split, no τ safeguard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.sub_batch import SubBatchFisher, SubBatchInverse
from fimbench.preconditioner.blocks import SolverReport
from fimbench.preconditioner.guard import NETWORK, REFRESH, Failure, guarded


class ExactNaturalGradient:
    """:class:`~fimbench.preconditioner.damped_fisher.DampedFisher` ``F_m + λI`` of the latest Fisher sub-batch (module
    docstring); ``per_layer`` keeps only its diagonal blocks (``exact-ng-block``)."""

    def __init__(self, per_layer: bool) -> None:
        self.per_layer = per_layer
        self.fisher: SubBatchFisher | None = None
        self.inverse: SubBatchInverse | None = None
        self.failures: list[Failure] = []

    def update(self, statistics: Sequence[LayerStatistics], decay: float) -> list[SolverReport]:
        """Take the sub-batch's statistics as ``F_m`` (``decay`` does not apply); no iterative solver runs."""
        self.fisher = SubBatchFisher(statistics)
        return []

    def refresh(self, damping: float) -> None:
        """Factorise ``m λ I + K`` of the latest sub-batch, through the guard (a failure keeps the previous one)."""
        had_inverse = self.inverse is not None
        reason = guarded(self, lambda: setattr(self, "inverse", self.fisher.inverse(damping, self.per_layer)))  # type: ignore[union-attr]
        if reason is not None:
            self.failures.append(Failure(NETWORK, REFRESH, reason, fatal=not had_inverse))

    def pop_failures(self) -> list[Failure]:
        """The guard's failures since the last call."""
        failures, self.failures = self.failures, []
        return failures

    def apply(self, gradients: Sequence[Tensor]) -> list[Tensor]:
        return self.inverse.apply(gradients)  # type: ignore[union-attr]

    def quadratic(self, deltas: Sequence[Tensor]) -> Tensor:
        return self.inverse.quadratic(deltas)  # type: ignore[union-attr]

    @property
    def correction_scale(self) -> float | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """The sub-batch's statistics, and the λ of the factorisation with its sub-batch when that is older."""
        inverse = None
        if self.inverse is not None:
            source = None if self.inverse.fisher is self.fisher else _statistics_state(self.inverse.fisher)
            inverse = {"damping": self.inverse.damping, "source": source}
        return {"fisher": None if self.fisher is None else _statistics_state(self.fisher), "inverse": inverse}

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        self.fisher = None if state["fisher"] is None else _fisher_from_state(state["fisher"], device, dtype)
        inverse = state["inverse"]
        if inverse is None:
            self.inverse = None
            return
        source = self.fisher if inverse["source"] is None else _fisher_from_state(inverse["source"], device, dtype)
        self.inverse = source.inverse(inverse["damping"], self.per_layer)  # type: ignore[union-attr]


def _statistics_state(fisher: SubBatchFisher) -> list[list[Tensor]]:
    return [[stats.a, stats.g] for stats in fisher.statistics]


def _fisher_from_state(state: list[list[Tensor]], device: torch.device, dtype: torch.dtype) -> SubBatchFisher:
    return SubBatchFisher([LayerStatistics(a.to(device, dtype), g.to(device, dtype)) for a, g in state])
