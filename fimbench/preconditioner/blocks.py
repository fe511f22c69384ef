"""The curvature a preconditioner inverts, behind two small interfaces (docs/design.md, "Curvature blocks").

A :class:`Curvature` is the network-level operator ``F̃`` of :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`:
every T1 steps it takes the captured statistics ``(ā_l, g_l)`` of all layers and the EMA decay ρ, every
T2 steps (or when λ moved) it re-factorises ``F̃(λ)``, every step it maps the layers' (q_l, p_l) gradients
to ``F̃(λ)⁻¹ ∇``, and adaptive damping's predicted change ``M(δ)`` needs ``δᵀ F̃(λ) δ`` from it.

The block-diagonal curvatures (``F̃ = blockdiag(F̃_l)``: every Kronecker method) are a :class:`BlockDiagonal`
of one :class:`CurvatureBlock` per layer; :class:`KroneckerBlock` is the Kronecker-sum block and
:class:`EigenbasisBlock` EKFAC's. A curvature that couples layers (the exact
natural gradient, :mod:`fimbench.preconditioner.exact_natural_gradient`; the two-level correction on top of a block-diagonal
one, :mod:`fimbench.preconditioner.two_level`) implements :class:`Curvature` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from fimbench.curvature import KroneckerInverse, KroneckerSum
from fimbench.curvature.ekfac import EigenbasisDiagonal, approximate_ekfac
from fimbench.curvature.kronecker import kron_matvec
from fimbench.curvature.kronecker_sum import FACTORED, DampingSplit, check_damping_form
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics
from fimbench.methods import Method
from fimbench.preconditioner.guard import REFRESH, UPDATE, Failure, guarded


class SolverReport(NamedTuple):
    """What an iterative approximation reports: matrix-vector iterations and final relative residual."""

    iterations: int
    residual: float


class Curvature(Protocol):
    """The network-level damped curvature ``F̃(λ)`` over the preconditioned layers (module docstring)."""

    def update(self, statistics: Sequence[LayerStatistics], decay: float) -> list[SolverReport]:
        """Move the estimate towards the statistics' Fisher: ``ρ F̂_old + (1 − ρ) F_batch`` with ρ = ``decay``
        (or as the curvature documents); returns the reports of the iterative solvers that ran."""
        ...

    def refresh(self, damping: float) -> None:
        """Factorise ``F̃(λ)`` of the current estimate for λ = ``damping``."""
        ...

    def apply(self, gradients: Sequence[Tensor]) -> list[Tensor]:
        """``F̃(λ)⁻¹ ∇`` with the latest factorisation, one (q_l, p_l) matrix per layer."""
        ...

    def quadratic(self, deltas: Sequence[Tensor]) -> Tensor:
        """``δᵀ F̃(λ) δ`` with the operator of the latest factorisation (a 0-d tensor)."""
        ...

    def pop_failures(self) -> list[Failure]:
        """The updates and refreshes the guard dropped since the last call (:mod:`~fimbench.preconditioner.guard`)."""
        ...

    @property
    def correction_scale(self) -> float | None:
        """The smallest safeguard τ of the latest factorisation (rank-2 blocks), None where none applies."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The estimate and what the latest factorisation was built from, as tensors and plain data."""
        ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        """Continue from :meth:`state_dict`'s ``state``, rebuilding the factorisation on ``device``; the
        estimate is cast to the factor dtype ``dtype`` (float64 Gram quantities stay float64)."""
        ...


class CurvatureBlock(Protocol):
    """One layer's block ``F̃_l(λ)`` of a block-diagonal curvature: :class:`Curvature` for one layer.

    Its state has two entries: ``"approximation"`` (the estimate) and ``"inverse"`` (what the latest
    factorisation was built from), which :class:`BlockDiagonal` keeps as two per-layer lists.
    """

    def update(self, statistics: LayerStatistics, decay: float) -> SolverReport | None: ...

    def refresh(self, damping: float) -> None: ...

    def apply(self, gradient: Tensor) -> Tensor: ...

    def quadratic(self, delta: Tensor) -> Tensor: ...

    @property
    def correction_scale(self) -> float | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None: ...


Approximate = Callable[..., KroneckerSum]
"""``approximate(a, g, prior=F̂_old, decay=ρ) -> KroneckerSum`` (the preconditioner's ``approximate_block``)."""


class KroneckerBlock:
    """A Kronecker-sum block ``F̂ = Σ_k A_k ⊗ G_k`` (one of the five methods), damped and inverted by
    :class:`~fimbench.curvature.KroneckerInverse`: ``damped(λ, π)`` and §3.4's solve."""

    def __init__(self, approximate: Approximate, min_curvature_ratio: float, pi: DampingSplit, form: str = FACTORED) -> None:
        self.approximate = approximate
        self.min_curvature_ratio = min_curvature_ratio
        self.pi = pi
        self.form = check_damping_form(form)
        self.approximation: KroneckerSum | None = None
        self.inverse: KroneckerInverse | None = None

    def update(self, statistics: LayerStatistics, decay: float) -> SolverReport | None:
        """``approximate(ā, g, prior=F̂_old, decay=ρ)``, warm-started from ``F̂_old``; K-FAC reports nothing."""
        self.approximation = self.approximate(statistics.a, statistics.g, prior=self.approximation, decay=decay)
        if self.approximation.method == Method.KFAC.value:
            return None
        return SolverReport(self.approximation.iterations, self.approximation.residual)

    def refresh(self, damping: float) -> None:
        self.inverse = self.approximation.inverse(damping, self.min_curvature_ratio, self.pi, self.form)  # type: ignore[union-attr]

    def apply(self, gradient: Tensor) -> Tensor:
        return self.inverse.apply(gradient)  # type: ignore[union-attr]

    def quadratic(self, delta: Tensor) -> Tensor:
        """``vec(δ)ᵀ damped(λ, π) vec(δ) = Σ_k ⟨δ, G_k δ A_kᵀ⟩_F``."""
        curvature = sum(kron_matvec(A, G, delta) for A, G in self.inverse.operator.terms)  # type: ignore[union-attr, misc]
        return (delta * curvature).sum()

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


class EigenbasisBlock:
    """EKFAC's :class:`~fimbench.preconditioner.blocks.CurvatureBlock`: ``F̂ + λI`` of :class:`EigenbasisDiagonal`,
    the basis recomputed at the first update after each refresh (module docstring)."""

    def __init__(self) -> None:
        self.approximation: EigenbasisDiagonal | None = None
        self.source: EigenbasisDiagonal | None = None  # the approximation of the latest refresh
        self.damping = 0.0
        self.denominator: Tensor | None = None  # S + λ of the latest refresh
        self.basis_due = True

    def update(self, statistics: LayerStatistics, decay: float) -> None:
        """Factors and eigenvalues towards ``ρ F̂_old + (1 − ρ) F_batch``; no iterative solver runs."""
        self.approximation = approximate_ekfac(statistics.a, statistics.g, self.approximation, decay, self.basis_due)
        self.basis_due = False

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


class BlockDiagonal:
    """``F̃ = blockdiag(F̃_1, …, F̃_L)``: each layer's block updated, inverted and applied on its own, each update
    and refresh through the guard (:mod:`~fimbench.preconditioner.guard`): a failed block keeps its previous
    estimate or inverse."""

    def __init__(self, blocks: Sequence[CurvatureBlock]) -> None:
        self.blocks = list(blocks)
        self.failures: list[Failure] = []

    def update(self, statistics: Sequence[LayerStatistics], decay: float) -> list[SolverReport]:
        reports = []
        for index, (block, stats) in enumerate(zip(self.blocks, statistics)):
            had_estimate = block.state_dict()["approximation"] is not None
            outcome: list[SolverReport | None] = []
            reason = guarded(block, lambda: outcome.append(block.update(stats, decay)))
            if reason is not None:
                self.failures.append(Failure(index, UPDATE, reason, fatal=not had_estimate))
            elif outcome[0] is not None:
                reports.append(outcome[0])
        return reports

    def refresh(self, damping: float) -> None:
        for index, block in enumerate(self.blocks):
            had_inverse = block.state_dict()["inverse"] is not None
            reason = guarded(block, lambda: block.refresh(damping))
            if reason is not None:
                self.failures.append(Failure(index, REFRESH, reason, fatal=not had_inverse))

    def pop_failures(self) -> list[Failure]:
        """The guard's failures since the last call."""
        failures, self.failures = self.failures, []
        return failures

    def apply(self, gradients: Sequence[Tensor]) -> list[Tensor]:
        return [block.apply(gradient) for block, gradient in zip(self.blocks, gradients)]

    def quadratic(self, deltas: Sequence[Tensor]) -> Tensor:
        """``Σ_l δ_lᵀ F̃_l δ_l``."""
        return torch.stack([block.quadratic(delta) for block, delta in zip(self.blocks, deltas)]).sum()

    @property
    def correction_scale(self) -> float | None:
        scales = [scale for block in self.blocks if (scale := block.correction_scale) is not None]
        return min(scales) if scales else None

    def state_dict(self) -> dict[str, Any]:
        """``approximations`` and ``inverses``: each block's two state entries, as per-layer lists."""
        states = [block.state_dict() for block in self.blocks]
        return {
            "approximations": [entry["approximation"] for entry in states],
            "inverses": [entry["inverse"] for entry in states],
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        for block, approximation, inverse in zip(self.blocks, state["approximations"], state["inverses"]):
            block.load_state_dict({"approximation": approximation, "inverse": inverse}, device, dtype)
