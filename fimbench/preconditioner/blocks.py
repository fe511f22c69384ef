"""The per-layer block interface, the unit a method implements (docs/design.md §13).

A :class:`CurvatureBlock` is one layer's block ``F̃_l`` of a block-diagonal approximation of the Fisher. Its three consumers
call the same methods:

* the preconditioner: :meth:`~CurvatureBlock.update` (EMA towards the batch), :meth:`~CurvatureBlock.refresh`
  (factorise the damped block), :meth:`~CurvatureBlock.apply` and :meth:`~CurvatureBlock.quadratic`;
* ``fisher-error``: :meth:`~CurvatureBlock.fit` (the batch's own approximation, warm-started where the method
  iterates), :meth:`~CurvatureBlock.errors` against the exact block and :meth:`~CurvatureBlock.measures` (the
  damped block's Gaussian terms, direction and top eigenpairs: docs/design.md §21);
* ``cost-profile``: ``update`` cold and warm, ``refresh`` and ``apply``, timed.

Each method's registry record (:mod:`fimbench.methods`) names its block class; :func:`new_block` builds one.
The block-diagonal methods precondition with a :class:`BlockDiagonal` of their blocks, a
:class:`~fimbench.preconditioner.damped_fisher.DampedFisher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from fimbench.curvature import ApproximationOptions, DampingSplit
from fimbench.curvature.kronecker_sum import DEFAULT_MIN_CURVATURE_RATIO, TRACE_SPLIT, DampingForm, check_damping_form, check_damping_split
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import ApproximationErrors, ExactFisher
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.damped_measures import BlockMeasures
from fimbench.fisher.network_error import NetworkTerms
from fimbench.methods import Method, implementation
from fimbench.preconditioner.guard import REFRESH, UPDATE, Failure, guarded


class SolverReport(NamedTuple):
    """What an iterative approximation reports: matrix-vector iterations and final relative residual."""

    iterations: int
    residual: float


class BlockErrors(NamedTuple):
    """A block's estimate against the exact block ``F_ll``: Error 1 and Error 2, and its network terms
    ``⟨F_ll, F̂_l⟩`` and ``‖F̂_l‖²`` (:mod:`fimbench.fisher.network_error`)."""

    errors: ApproximationErrors
    terms: NetworkTerms


@dataclass(frozen=True)
class BlockSettings:
    """What a block is built with: the approximation options (tol, iterations, Lanczos' rank and Krylov
    dimension), the rank-2 safeguard δ, and the damping split π and form of a Kronecker block."""

    options: ApproximationOptions = field(default_factory=ApproximationOptions)
    min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO
    pi: DampingSplit = TRACE_SPLIT
    damping_form: str = DampingForm.FACTORED.value

    def __post_init__(self) -> None:
        """Check π and the damping form once, here (one error line for a bad value)."""
        object.__setattr__(self, "pi", check_damping_split(self.pi))
        object.__setattr__(self, "damping_form", check_damping_form(self.damping_form))


class CurvatureBlock(Protocol):
    """One layer's block ``F̃_l(λ)`` (module docstring). Its state has two entries: ``"approximation"`` (the
    estimate) and ``"inverse"`` (what the latest factorisation was built from), which :class:`BlockDiagonal`
    keeps as two per-layer lists."""

    def update(self, statistics: LayerStatistics, decay: float) -> SolverReport | None:
        """Move the estimate towards ``ρ F̂_old + (1 − ρ) F_batch`` (ρ = ``decay``); the solver's report, if
        an iterative one ran."""
        ...

    def fit(self, statistics: LayerStatistics) -> SolverReport | None:
        """Replace the estimate by the approximation of ``F_batch`` alone (no EMA), warm-started from the
        current estimate where the method iterates; the solver's report, if one ran."""
        ...

    def refresh(self, damping: float) -> None:
        """Factorise the damped block of the current estimate for λ = ``damping``."""
        ...

    def apply(self, gradient: Tensor) -> Tensor:
        """``F̃_l(λ)⁻¹ ∇_l`` with the latest factorisation."""
        ...

    def quadratic(self, delta: Tensor) -> Tensor:
        """``vec(δ)ᵀ F̃_l(λ) vec(δ)`` with the latest factorisation's operator (a 0-d tensor)."""
        ...

    def errors(self, fisher: ExactFisher) -> BlockErrors:
        """The current estimate against the exact block ``fisher`` of the same statistics."""
        ...

    def measures(self, fisher: ExactFisher, gradient: Tensor, damping: float, top_k: int) -> BlockMeasures | None:
        """The current estimate against the exact block ``fisher``: ``F̂_λ`` damped by λ = ``damping`` in the
        block's own form (float64), applied to the batch's (q, p) ``gradient``, and its ``top_k`` eigenpairs;
        None where the estimate cannot be damped and inverted (a Kronecker rank above 2, a damped factor that
        is not positive definite), as the preconditioner could not either."""
        ...

    def operator(self) -> tuple[Callable[[Tensor], Tensor], tuple[Tensor, Tensor]]:
        """The undamped estimate as a float64 matvec ``V ↦ F̂_l V`` on (q, p) matrices, and its first Kronecker
        term ``(A₁, G₁)`` (the coarse spaces of the two-level correction read it)."""
        ...

    @property
    def rank(self) -> int:
        """Kronecker rank of the current estimate (0 where it is no Kronecker sum)."""
        ...

    @property
    def correction_scale(self) -> float | None:
        """The safeguard τ of the latest factorisation (rank-2 blocks), None where none applies."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The estimate and what the latest factorisation was built from, as tensors and plain data."""
        ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        """Continue from :meth:`state_dict`'s ``state`` on ``device``, the estimate in ``dtype``."""
        ...


def new_block(method: Method, settings: BlockSettings | None = None) -> CurvatureBlock:
    """A fresh block of ``method`` (the class its registry record names), built with ``settings``.

    Raises:
        FimbenchError: for a method without per-layer blocks (first-order).
    """
    path = method.record.block
    if path is None:
        raise FimbenchError(f"method {method.value} has no curvature block")
    block: CurvatureBlock = implementation(path)(method, settings or BlockSettings())
    return block


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
