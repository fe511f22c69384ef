"""Which :class:`~fimbench.preconditioner.blocks.Curvature` each method preconditions with, and its per-layer
blocks.

* K-FAC, KPSVD, Deflation, Lanczos, KFAC-corrected: ``F̃ = blockdiag(F̂_l)``, one
  :class:`~fimbench.preconditioner.blocks.KroneckerBlock` (``F̂_l = Σ_k A_k ⊗ G_k``) per layer;
* EKFAC: one :class:`~fimbench.preconditioner.blocks.EigenbasisBlock` per layer;
* either of them with a coarse space: the two-level correction on top
  (:class:`~fimbench.preconditioner.two_level.TwoLevel`);
* ``exact-ng`` / ``exact-ng-block``: the exact Fisher of the Fisher sub-batch, whole network or per block
  (:class:`~fimbench.preconditioner.exact_natural_gradient.ExactNaturalGradient`).
"""

from __future__ import annotations

from fimbench.curvature import DampingSplit
from fimbench.errors import FimbenchError
from fimbench.methods import Method
from fimbench.preconditioner.blocks import Approximate, BlockDiagonal, Curvature, CurvatureBlock, EigenbasisBlock, KroneckerBlock
from fimbench.preconditioner.exact_natural_gradient import ExactNaturalGradient
from fimbench.preconditioner.settings import PreconditionerSettings
from fimbench.preconditioner.two_level import NO_COARSE, TwoLevel


def method_curvature(method: Method, layer_count: int, settings: PreconditionerSettings, pi: DampingSplit, approximate: Approximate) -> Curvature:
    """The curvature of ``method`` over ``layer_count`` layers (module docstring); a Kronecker block
    approximates with ``approximate`` and is damped with ``pi``, ``settings.min_curvature_ratio`` and
    ``settings.damping_form``; ``settings.coarse`` adds the two-level correction."""
    if method in (Method.EXACT_NG, Method.EXACT_NG_BLOCK):
        return ExactNaturalGradient(per_layer=method is Method.EXACT_NG_BLOCK)
    if method is Method.EKFAC:
        blocks = BlockDiagonal([EigenbasisBlock() for _ in range(layer_count)])
    else:
        blocks = BlockDiagonal(
            [KroneckerBlock(approximate, settings.min_curvature_ratio, pi, settings.damping_form) for _ in range(layer_count)]
        )
    return blocks if settings.coarse == NO_COARSE else TwoLevel(blocks, settings.coarse)


def layer_blocks(curvature: Curvature, method: Method) -> list[CurvatureBlock]:
    """The per-layer blocks of a block-diagonal curvature (under the two-level correction, if any); one
    error for the exact natural gradient, which has none."""
    inner = curvature.inner if isinstance(curvature, TwoLevel) else curvature
    if not isinstance(inner, BlockDiagonal):
        raise FimbenchError(f"method {method.value} has no per-layer blocks")
    return inner.blocks
