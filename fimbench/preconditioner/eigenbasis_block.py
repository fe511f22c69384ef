"""The eigenbasis block: ``F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ`` of :class:`~fimbench.curvature.ekfac.EigenbasisDiagonal`,
a Kronecker eigenbasis with re-fitted eigenvalues — K-FAC's (EKFAC) or Shampoo's (SOAP), whichever
approximation the method's record names — damped as ``F̂ + λI``; the basis is recomputed at the first
update after each refresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fimbench.curvature.diagonalisation import KroneckerDiagonalisation
from fimbench.curvature.ekfac import EigenbasisDiagonal
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import METRIC_DTYPE, ExactFisher, eigenbasis_errors, eigenbasis_terms
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.damped_measures import BlockMeasures
from fimbench.fisher.gaussian_divergence import diagonalised_terms
from fimbench.fisher.network_error import NetworkTerms
from fimbench.fisher.subspace import eigenbasis_eigenpairs
from fimbench.methods import Method, implementation
from fimbench.preconditioner.blocks import BlockErrors, BlockSettings


class EigenbasisBlock:
    """The :class:`~fimbench.preconditioner.blocks.CurvatureBlock` of EKFAC and SOAP (module docstring)."""

    def __init__(self, method: Method = Method.EKFAC, settings: BlockSettings | None = None) -> None:
        self.approximate = implementation(method.record.approximation)  # type: ignore[arg-type]
        self.approximation: EigenbasisDiagonal | None = None
        self.source: EigenbasisDiagonal | None = None  # the approximation of the latest refresh
        self.damping = 0.0
        self.denominator: Tensor | None = None  # S + λ of the latest refresh
        self.basis_due = True

    def update(self, statistics: LayerStatistics, decay: float) -> None:
        """Factors and eigenvalues towards ``ρ F̂_old + (1 − ρ) F_batch``; no iterative solver runs."""
        self.approximation = self.approximate(statistics.a, statistics.g, self.approximation, decay, self.basis_due)
        self.basis_due = False

    def fit(self, statistics: LayerStatistics) -> None:
        """The batch's own approximation: its factors, their eigenbasis and ``S_batch`` in it."""
        self.approximation = self.approximate(statistics.a, statistics.g)

    def refresh(self, damping: float) -> None:
        """``S + λ`` of the current approximation (``(F̂ + λI)⁻¹`` is diagonal in its eigenbasis); the next
        update takes a new basis."""
        if not damping > 0:
            raise FimbenchError(f"EKFAC's damped solve needs damping > 0, got {damping}")
        self.source, self.damping, self.basis_due = self.approximation, damping, True
        self.denominator = self.source.scales + damping  # type: ignore[union-attr]

    def apply(self, gradient: Tensor) -> Tensor:
        """``vec(Q_G ((Q_Gᵀ V Q_A) ⊘ (S + λ)) Q_Aᵀ)``."""
        assert self.source is not None and self.denominator is not None, "apply before refresh"
        Q_A, Q_G = self.source.bases
        return Q_G @ ((Q_G.transpose(0, 1) @ gradient @ Q_A) / self.denominator) @ Q_A.transpose(0, 1)

    def quadratic(self, delta: Tensor) -> Tensor:
        """``vec(δ)ᵀ (F̂ + λI) vec(δ)``."""
        return (delta * self.source.matvec(delta)).sum() + self.damping * delta.square().sum()  # type: ignore[union-attr]

    def errors(self, fisher: ExactFisher) -> BlockErrors:
        """Error 1 and Error 2 in the eigenbasis (path ``gram/diag``) and the network terms."""
        approximation = self.approximation
        assert approximation is not None, "errors before fit"
        return BlockErrors(eigenbasis_errors(fisher, approximation), NetworkTerms(*eigenbasis_terms(fisher, approximation)))

    def measures(self, fisher: ExactFisher, gradient: Tensor, damping: float, top_k: int) -> BlockMeasures:
        """``F̂ + λI = (Q_A ⊗ Q_G) diag(vec(S + λ)) (Q_A ⊗ Q_G)ᵀ`` in float64: its terms, its solve of ``gradient``
        (:meth:`apply`'s formula) and the top-``top_k`` entries of S as eigenpairs."""
        approximation = self.approximation
        assert approximation is not None, "measures before fit"
        operator = KroneckerDiagonalisation.orthonormal(approximation.bases, approximation.scales + damping)
        Q_A, Q_G = operator.basis
        solved = Q_G @ ((Q_G.T @ gradient.to(METRIC_DTYPE) @ Q_A) / operator.diagonal) @ Q_A.T
        return BlockMeasures(diagonalised_terms(fisher, operator), solved, eigenbasis_eigenpairs(fisher, approximation, top_k))

    def operator(self) -> tuple[Callable[[Tensor], Tensor], tuple[Tensor, Tensor]]:
        approximation = self.approximation
        assert approximation is not None, "operator before fit"
        widened = EigenbasisDiagonal(
            tuple(t.to(METRIC_DTYPE) for t in approximation.factors),  # type: ignore[arg-type]
            tuple(t.to(METRIC_DTYPE) for t in approximation.bases),  # type: ignore[arg-type]
            approximation.scales.to(METRIC_DTYPE),
            approximation.method,
        )
        return widened.matvec, widened.factors

    @property
    def rank(self) -> int:
        return 0

    @property
    def first_term(self) -> tuple[Tensor, Tensor]:
        """K-FAC's factors ``A``, ``G`` (the spectral coarse space reads them)."""
        return self.approximation.factors  # type: ignore[union-attr]

    @property
    def correction_scale(self) -> float | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """The approximation and, once refreshed, the refresh's λ, its approximation when that is older, and
        whether a new basis is due (before a refresh it is due exactly when there is no approximation yet)."""
        inverse = None
        if self.source is not None:
            source = None if self.source is self.approximation else self.source.state_dict()
            inverse = {"damping": self.damping, "source": source, "basis_due": self.basis_due}
        return {"approximation": None if self.approximation is None else self.approximation.state_dict(), "inverse": inverse}

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        entry = state["approximation"]
        self.approximation = None if entry is None else EigenbasisDiagonal.from_state_dict(entry, device, dtype)
        inverse = state["inverse"]
        if inverse is None:
            self.source, self.damping, self.basis_due, self.denominator = None, 0.0, self.approximation is None, None
            return
        source = inverse["source"]
        self.source = self.approximation if source is None else EigenbasisDiagonal.from_state_dict(source, device, dtype)
        self.damping, self.basis_due = inverse["damping"], inverse["basis_due"]
        assert self.source is not None, "a state with an inverse has an approximation"
        self.denominator = self.source.scales + self.damping
