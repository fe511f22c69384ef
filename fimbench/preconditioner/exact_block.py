"""The exact references' block: one layer's exact Fisher block ``F_ll = J_lᵀ J_l / m`` of the Fisher sub-batch,
damped as ``F_ll + λI`` and solved by Woodbury with the Cholesky factor of ``m λ I + K_l``
(:class:`~fimbench.fisher.sub_batch.SubBatchFisher`). ``fisher-error`` and ``cost-profile`` measure it per layer;
training preconditions with :class:`~fimbench.preconditioner.exact_natural_gradient.ExactNaturalGradient`,
which for ``exact-ng`` couples the layers' blocks through the whole Gram matrix ``K = Σ_l K_l``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import ApproximationErrors, ExactFisher, Metric
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.damped_measures import BlockMeasures
from fimbench.fisher.gaussian_divergence import exact_terms
from fimbench.fisher.network_error import exact_block_terms
from fimbench.fisher.sub_batch import SubBatchFisher, SubBatchInverse
from fimbench.fisher.subspace import exact_eigenpairs
from fimbench.methods import Method
from fimbench.preconditioner.blocks import BlockErrors, BlockSettings

EXACT = Metric(0.0, "exact")
"""An exact block's errors: 0 by definition."""


class ExactBlock:
    """:class:`~fimbench.preconditioner.blocks.CurvatureBlock` ``F_ll + λI`` of the latest sub-batch (module
    docstring); the EMA does not apply (an average of sub-batch Fishers is no ``JᵀJ/m``)."""

    def __init__(self, method: Method = Method.EXACT_NG_BLOCK, settings: BlockSettings | None = None) -> None:
        self.fisher: SubBatchFisher | None = None
        self.inverse: SubBatchInverse | None = None

    def update(self, statistics: LayerStatistics, decay: float) -> None:
        """Take the sub-batch's statistics as ``F_ll`` and form its Gram term ``K_l`` (``decay`` does not apply)."""
        self.fisher = SubBatchFisher([statistics])
        self.fisher.layer_gram(0)

    def fit(self, statistics: LayerStatistics) -> None:
        """Take the batch's statistics as ``F_ll`` (nothing is approximated)."""
        self.fisher = SubBatchFisher([statistics])

    def refresh(self, damping: float) -> None:
        self.inverse = self.fisher.inverse(damping, per_layer=True)  # type: ignore[union-attr]

    def apply(self, gradient: Tensor) -> Tensor:
        return self.inverse.apply([gradient])[0]  # type: ignore[union-attr]

    def quadratic(self, delta: Tensor) -> Tensor:
        return self.inverse.quadratic([delta])  # type: ignore[union-attr]

    def errors(self, fisher: ExactFisher) -> BlockErrors:
        """Both errors 0 (path ``exact``); the network terms of ``F̂_l = F_ll``."""
        return BlockErrors(ApproximationErrors(EXACT, EXACT), exact_block_terms(fisher))

    def measures(self, fisher: ExactFisher, gradient: Tensor, damping: float, top_k: int) -> BlockMeasures:
        """``F_ll + λI`` itself (``exact``): its terms and eigenpairs from ``fisher``'s Gram ``K̃_l = J_l J_lᵀ / m``, its
        Woodbury solve."""
        assert self.fisher is not None, "measures before fit"
        solved = self.fisher.inverse(damping, per_layer=True).apply([gradient.to(fisher.gram.dtype)])[0]
        return BlockMeasures(exact_terms(fisher.gram, damping, fisher.p * fisher.q), solved, exact_eigenpairs(fisher.gram, fisher.m, top_k), exact=True)

    def operator(self) -> tuple[Callable[[Tensor], Tensor], tuple[Tensor, Tensor]]:
        raise FimbenchError("the exact references take no two-level correction: their block has no Kronecker term")

    @property
    def rank(self) -> int:
        return 0

    @property
    def correction_scale(self) -> float | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """The sub-batch's statistics, and the λ of the factorisation."""
        fisher = None if self.fisher is None else [[s.a, s.g] for s in self.fisher.statistics]
        return {"approximation": fisher, "inverse": None if self.inverse is None else {"damping": self.inverse.damping}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        entry = state["approximation"]
        self.fisher = None if entry is None else SubBatchFisher([LayerStatistics(a.to(device, dtype), g.to(device, dtype)) for a, g in entry])
        self.inverse = None if state["inverse"] is None else self.fisher.inverse(state["inverse"]["damping"], per_layer=True)  # type: ignore[union-attr]
