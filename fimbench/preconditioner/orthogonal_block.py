"""Muon's per-layer step as a block, for ``cost-profile``: Muon keeps no statistics of the Fisher and inverts
nothing; its preconditioner is the orthogonalisation of the layer's (momentum) gradient by five quintic
Newton–Schulz iterations (Jordan, 2024), as ``torch.optim.Muon`` runs it:

    X ← V / ‖V‖_F (transposed so that it has no more rows than columns), then five times
    A = X Xᵀ,   X ← a X + (b A + c A²) X,   (a, b, c) = (3.4445, −4.7750, 2.0315),

in bfloat16, about ``5 (2 r² s + r³)`` multiply-adds for a (q × p) gradient with ``r = min(p, q)``,
``s = max(p, q)``. ``apply`` is that iteration on the layer's (q, p) gradient (``torch.optim.Muon`` itself
takes the weight without its bias column). There is no curvature model: ``fisher-error`` does not take Muon,
and ``fit``, ``errors``, ``measures``, ``operator`` and ``quadratic`` refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import ExactFisher
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.damped_measures import BlockMeasures
from fimbench.methods import Method
from fimbench.preconditioner.blocks import BlockErrors, BlockSettings

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def orthogonalise(gradient: Tensor) -> Tensor:
    """The Newton–Schulz orthogonalisation of ``gradient`` (module docstring), in bfloat16, returned in its dtype."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = gradient.shape[0] > gradient.shape[1]
    X = gradient.bfloat16()
    X = X.transpose(0, 1) if tall else X
    X = X / (torch.linalg.matrix_norm(X) + 1e-7)
    for _ in range(NEWTON_SCHULZ_STEPS):
        A = X @ X.transpose(0, 1)
        X = a * X + (b * A + c * A @ A) @ X
    return (X.transpose(0, 1) if tall else X).to(gradient.dtype)


class OrthogonalBlock:
    """Muon's :class:`~fimbench.preconditioner.blocks.CurvatureBlock` for ``cost-profile`` (module docstring)."""

    rank = 0  # no Kronecker sum
    correction_scale: float | None = None  # no rank-2 safeguard

    def __init__(self, method: Method = Method.MUON, settings: BlockSettings | None = None) -> None:
        self.method = method

    def update(self, statistics: LayerStatistics, decay: float) -> None:
        """Nothing: Muon keeps no statistics of the Fisher."""

    def refresh(self, damping: float) -> None:
        """Nothing: Muon factorises nothing."""

    def apply(self, gradient: Tensor) -> Tensor:
        return orthogonalise(gradient)

    def _refuse(self) -> NoReturn:
        raise FimbenchError(f"{self.method.value} has no curvature model: it approximates no Fisher block")

    def fit(self, statistics: LayerStatistics) -> None:
        self._refuse()

    def errors(self, fisher: ExactFisher) -> BlockErrors:
        self._refuse()

    def measures(self, fisher: ExactFisher, gradient: Tensor, damping: float, top_k: int) -> BlockMeasures:
        self._refuse()

    def operator(self) -> tuple[Callable[[Tensor], Tensor], tuple[Tensor, Tensor]]:
        self._refuse()

    def quadratic(self, delta: Tensor) -> Tensor:
        self._refuse()

    def state_dict(self) -> dict[str, Any]:
        return {"approximation": None, "inverse": None}

    def load_state_dict(self, state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        """Nothing to load: the block holds no state."""
