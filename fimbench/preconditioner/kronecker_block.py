"""The Kronecker-sum block ``F̂_l = Σ_k A_k ⊗ G_k`` of the five Kronecker methods (K-FAC, KPSVD, Deflation,
Lanczos, KFAC-corrected): built by the method's :class:`~fimbench.curvature.Approximator` (its registry
record's), damped and inverted by :class:`~fimbench.curvature.KroneckerInverse` (``damped(λ, π)`` and §3.4's
solve), measured against the exact block by :func:`~fimbench.fisher.block_errors.approximation_errors`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from fimbench.curvature import KroneckerInverse, KroneckerSum
from fimbench.curvature.diagonalisation import KroneckerDiagonalisation
from fimbench.curvature.kronecker import kron_matvec, kronecker_sum_matvec
from fimbench.curvature.targets import Prior, checked_statistics
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import METRIC_DTYPE, ExactFisher, approximation_errors
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.damped_measures import BlockMeasures
from fimbench.fisher.gaussian_divergence import diagonalised_terms
from fimbench.fisher.network_error import kronecker_block_terms
from fimbench.fisher.subspace import kronecker_eigenpairs
from fimbench.methods import Method, implementation
from fimbench.preconditioner.blocks import BlockErrors, BlockSettings, SolverReport


class KroneckerBlock:
    """:class:`~fimbench.preconditioner.blocks.CurvatureBlock` ``F̂ = Σ_k A_k ⊗ G_k`` of a Kronecker method
    (module docstring)."""

    def __init__(self, method: Method, settings: BlockSettings | None = None) -> None:
        settings = settings or BlockSettings()
        self.approximator = implementation(method.record.approximation)  # type: ignore[arg-type]
        self.iterative = method.record.iterative
        self.options = settings.options
        self.min_curvature_ratio = settings.min_curvature_ratio
        self.pi = settings.pi
        self.form = settings.damping_form
        self.approximation: KroneckerSum | None = None
        self.inverse: KroneckerInverse | None = None

    def _approximate(self, statistics: LayerStatistics, prior: KroneckerSum | None, decay: float) -> SolverReport:
        """The approximation of ``ρ F̂_old + (1 − ρ) F_batch`` (``prior`` F̂_old, ``decay`` ρ), warm-started
        from the current estimate; it becomes the estimate."""
        a, g = checked_statistics(statistics.a, statistics.g)
        self.approximation = self.approximator(a, g, self.options, Prior(prior, decay, self.approximation))
        return SolverReport(self.approximation.iterations, self.approximation.residual)

    def update(self, statistics: LayerStatistics, decay: float) -> SolverReport | None:
        """``approximate(ā, g, prior=F̂_old, decay=ρ)``, warm-started from ``F̂_old``; K-FAC reports nothing."""
        report = self._approximate(statistics, self.approximation, decay)
        return report if self.iterative else None

    def fit(self, statistics: LayerStatistics) -> SolverReport:
        """``approximate(ā, g)`` of the batch alone, warm-started from the current estimate."""
        return self._approximate(statistics, None, 0.0)

    def refresh(self, damping: float) -> None:
        self.inverse = self.approximation.inverse(damping, self.min_curvature_ratio, self.pi, self.form)  # type: ignore[union-attr]

    def apply(self, gradient: Tensor) -> Tensor:
        return self.inverse.apply(gradient)  # type: ignore[union-attr]

    def quadratic(self, delta: Tensor) -> Tensor:
        """``vec(δ)ᵀ damped(λ, π) vec(δ) = Σ_k ⟨δ, G_k δ A_kᵀ⟩_F``."""
        curvature = sum(kron_matvec(A, G, delta) for A, G in self.inverse.operator.terms)  # type: ignore[union-attr, misc]
        return (delta * curvature).sum()

    def errors(self, fisher: ExactFisher) -> BlockErrors:
        """Error 1 and Error 2 of ``Σ_k A_k ⊗ G_k`` and its network terms (:mod:`fimbench.fisher.block_errors`)."""
        terms = self.approximation.terms  # type: ignore[union-attr]
        return BlockErrors(approximation_errors(fisher, terms), kronecker_block_terms(fisher, terms))

    def measures(self, fisher: ExactFisher, gradient: Tensor, damping: float, top_k: int) -> BlockMeasures | None:
        """``damped(λ, π)`` of ``Σ_k A_k ⊗ G_k`` in float64 (the block's δ, π and damping form): its
        diagonalisation's terms, its solve of ``gradient``, and the sum's top eigenpairs."""
        approximation = self.approximation
        assert approximation is not None, "measures before fit"
        terms = [(A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)) for A, G in approximation.terms]
        try:
            inverse = KroneckerSum(terms).inverse(damping, self.min_curvature_ratio, self.pi, self.form)
        except FimbenchError:
            return None
        return BlockMeasures(
            diagonalised_terms(fisher, KroneckerDiagonalisation.of_inverse(inverse)),
            inverse.apply(gradient.to(METRIC_DTYPE)),
            kronecker_eigenpairs(fisher, terms, top_k),
        )

    def operator(self) -> tuple[Callable[[Tensor], Tensor], tuple[Tensor, Tensor]]:
        terms = [(A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)) for A, G in self.approximation.terms]  # type: ignore[union-attr]
        return partial(kronecker_sum_matvec, terms), terms[0]

    @property
    def rank(self) -> int:
        return 0 if self.approximation is None else self.approximation.rank

    @property
    def first_term(self) -> tuple[Tensor, Tensor]:
        """``(A₁, G₁)`` of the current approximation (the spectral coarse space reads it)."""
        return self.approximation.terms[0]  # type: ignore[union-attr]

    @property
    def correction_scale(self) -> float | None:
        if self.inverse is None or self.inverse.source.rank == 1:
            return None
        return self.inverse.correction_scale

    def state_dict(self) -> dict[str, Any]:
        """The approximation, and the λ of the inverse with its source when that is an older approximation."""
        inverse = None
        if self.inverse is not None:
            source = None if self.inverse.source is self.approximation else self.inverse.source.state_dict()
            inverse = {"damping": self.inverse.damping, "source": source}
        return {"approximation": None if self.approximation is None else self.approximation.state_dict(), "inverse": inverse}

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        entry = state["approximation"]
        self.approximation = None if entry is None else KroneckerSum.from_state_dict(entry, device, dtype)
        inverse = state["inverse"]
        if inverse is None:
            self.inverse = None
            return
        source = self.approximation if inverse["source"] is None else KroneckerSum.from_state_dict(inverse["source"], device, dtype)
        self.inverse = source.inverse(inverse["damping"], self.min_curvature_ratio, self.pi, self.form)  # type: ignore[union-attr]
