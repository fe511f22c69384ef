"""The statistics of a Fisher sub-batch: which examples, and ``(ā, g)`` of every preconditioned layer on them.

The Fisher sub-batch of a mini-batch of B examples is its first ``m = max(1, round(B · fisher_fraction))``;
its statistics are captured with targets sampled from the model (true Fisher; the data targets with
``empirical_fisher``) from the preconditioner's own generator (:mod:`fimbench.fisher.capture`), cast to the
factor dtype and gathered over the ranks of a process group (:mod:`~fimbench.preconditioner.distributed`).
Under a GradScaler a non-finite batch is skipped (:func:`~fimbench.preconditioner.amp.usable_statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fimbench.fisher.capture import KroneckerLayer, LayerStatistics, capture_statistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.preconditioner.amp import GradScalerLike, usable_statistics
from fimbench.preconditioner.distributed import gather_statistics


@dataclass
class SubBatchCapture:
    """Captures the statistics of Fisher sub-batches of ``model``'s ``layers`` (module docstring)."""

    model: nn.Module
    likelihood: Likelihood
    layers: list[KroneckerLayer]
    generator: torch.Generator
    factor_dtype: torch.dtype
    grad_scaler: GradScalerLike | None
    fisher_fraction: float
    empirical_fisher: bool

    def size(self, batch_size: int) -> int:
        """``m = max(1, round(batch_size · fisher_fraction))``."""
        return max(1, round(batch_size * self.fisher_fraction))

    def capture(self, inputs: Tensor, targets: Tensor | None, size: int) -> list[LayerStatistics] | None:
        """``(ā, g)`` of every layer on the first ``size`` examples of ``inputs`` (gathered over ranks), or None
        for a non-finite batch skipped under a GradScaler."""
        sub_targets = None
        if self.empirical_fisher:
            sub_targets = (targets if targets is not None else inputs)[:size]
        statistics = capture_statistics(self.model, inputs[:size], self.likelihood, self.layers, sub_targets, self.generator)
        statistics = gather_statistics([LayerStatistics(s.a.to(self.factor_dtype), s.g.to(self.factor_dtype)) for s in statistics])
        return statistics if usable_statistics(statistics, self.grad_scaler) else None
