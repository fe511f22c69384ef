"""What a preconditioner inverts: the damped approximation ``F̃(λ)`` of the Fisher over its layers, and which
one each method has (docs/design.md §13).

A :class:`DampedFisher` is the network-level operator of
:class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`: every T1 steps it takes the
captured statistics ``(ā_l, g_l)`` of all layers and the EMA decay ρ, every T2 steps (or when λ moved) it
re-factorises ``F̃(λ)``, every step it maps the layers' (q_l, p_l) gradients to ``F̃(λ)⁻¹ ∇``, and adaptive
damping's predicted change ``M(δ)`` needs ``δᵀ F̃(λ) δ`` from it. :func:`damped_fisher_of` builds a method's:

* a block-diagonal method: ``F̃ = blockdiag(F̂_l)``, a :class:`~fimbench.preconditioner.blocks.BlockDiagonal`
  of one block of the class its registry record names per layer;
* with a coarse space: the two-level correction on top (:class:`~fimbench.preconditioner.two_level.TwoLevel`);
* the exact references: the exact Fisher of the Fisher sub-batch, whole network (``exact-ng``, which couples
  the layers) or per block (:class:`~fimbench.preconditioner.exact_natural_gradient.ExactNaturalGradient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics
from fimbench.methods import Family, Method
from fimbench.preconditioner.blocks import BlockDiagonal, CurvatureBlock, SolverReport, new_block
from fimbench.preconditioner.exact_natural_gradient import ExactNaturalGradient
from fimbench.preconditioner.guard import Failure
from fimbench.preconditioner.settings import PreconditionerSettings
from fimbench.preconditioner.two_level import CoarseSpace, TwoLevel


class DampedFisher(Protocol):
    """The network-level damped approximation ``F̃(λ)`` of the Fisher over the preconditioned layers (module docstring)."""

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


def damped_fisher_of(method: Method, layer_count: int, settings: PreconditionerSettings) -> DampedFisher:
    """The damped Fisher approximation of ``method`` over ``layer_count`` layers (module docstring).

    Args:
        method: a preconditioned method.
        layer_count: how many layers it covers.
        settings: the preconditioner's; its blocks are built with :meth:`PreconditionerSettings.block_settings`,
            and ``settings.coarse`` adds the two-level correction.

    Returns:
        The :class:`DampedFisher`, before its first update.
    """
    if method.record.family is Family.EXACT:
        return ExactNaturalGradient(per_layer=not method.record.couples_layers)
    blocks = BlockDiagonal([new_block(method, settings.block_settings()) for _ in range(layer_count)])
    return blocks if settings.coarse == CoarseSpace.NONE else TwoLevel(blocks, settings.coarse)


def layer_blocks(damped_fisher: DampedFisher, method: Method) -> list[CurvatureBlock]:
    """The per-layer blocks of a block-diagonal approximation (under the two-level correction, if any).

    Args:
        damped_fisher: the preconditioner's.
        method: its method (for the message).

    Returns:
        The blocks, in layer order.

    Raises:
        FimbenchError: for the exact natural gradient, which has no per-layer blocks.
    """
    inner = damped_fisher.inner if isinstance(damped_fisher, TwoLevel) else damped_fisher
    if not isinstance(inner, BlockDiagonal):
        raise FimbenchError(f"method {method.value} has no per-layer blocks")
    return inner.blocks
