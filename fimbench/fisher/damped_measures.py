"""The five measures of ``fisher-error`` beyond Error 1 and 2, per layer and over the network (docs/design.md §21).

With the batch's Fisher ``F = JᵀJ/m``, its mini-batch gradient ∇ (the data's loss, not the sampled targets'),
λ the damping the preconditioner applies and ``F̂_λ`` the approximation damped in its own form:

* ``kl_forward``, ``kl_reverse``: ``KL(N(0, F̂_λ) ‖ N(0, F_λ))`` and ``KL(N(0, F_λ) ‖ N(0, F̂_λ))``
  (:mod:`fimbench.fisher.gaussian_divergence`);
* ``direction_error = ‖F̂_λ⁻¹ ∇ − F_λ⁻¹ ∇‖ / ‖F_λ⁻¹ ∇‖`` and ``direction_cosine``, the cosine between the two
  directions; ``F_λ⁻¹ ∇`` by Woodbury on the m × m Gram (:class:`~fimbench.fisher.sub_batch.SubBatchInverse`),
  ``F̂_λ⁻¹ ∇`` by the block's own solve;
* ``subspace_alignment``: the mean cos² of the principal angles between the top-k eigenspaces of F and of the
  undamped F̂ (:mod:`fimbench.fisher.subspace`; λI moves no eigenvector of F).

A layer's row compares its block with ``F_ll``; the network row compares ``blockdiag(F̂_l)`` with the coupled
F of all chosen layers: the Gaussian terms add over blocks, the directions concatenate, the eigenpairs merge.
An estimate that is exact (``F̂ = F``) gets 0, 0, 0, 1 and 1 by definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fimbench.fisher.gaussian_divergence import GaussianTerms, kl_divergences
from fimbench.fisher.subspace import Eigenpairs, merge, subspace_alignment


class BlockMeasures(NamedTuple):
    """What the measures need of one block's estimate: the Gaussian terms of ``F̂_λ``, the direction
    ``F̂_λ⁻¹ ∇`` (q, p) and the top eigenpairs of the undamped ``F̂``; ``exact``: the estimate is the exact block
    itself."""

    gaussian: GaussianTerms
    direction: Tensor
    eigenpairs: Eigenpairs
    exact: bool = False


class DampedMeasures(NamedTuple):
    """The five measures of one row of ``errors.csv`` (module docstring)."""

    kl_forward: float
    kl_reverse: float
    direction_error: float
    direction_cosine: float
    subspace_alignment: float


EXACT_MEASURES = DampedMeasures(0.0, 0.0, 0.0, 1.0, 1.0)
"""The measures of ``F̂ = F``."""
MISSING_MEASURES = DampedMeasures(math.nan, math.nan, math.nan, math.nan, math.nan)
"""Where an estimate cannot be damped and inverted (:meth:`~fimbench.preconditioner.blocks.CurvatureBlock.measures`
returned None), or a two-level entry, whose ``P⁻¹`` is no block diagonal."""


def direction_errors(approximate: Sequence[Tensor], exact: Sequence[Tensor]) -> tuple[float, float]:
    """``(‖d̂ − d‖ / ‖d‖, ⟨d̂, d⟩ / (‖d̂‖ ‖d‖))`` over the concatenated (q_l, p_l) pieces; NaN where a norm is 0."""
    d_hat = torch.cat([piece.reshape(-1) for piece in approximate]).to(torch.float64)
    d = torch.cat([piece.reshape(-1) for piece in exact]).to(d_hat)
    norm, norm_hat = float(d.norm()), float(d_hat.norm())
    if norm == 0.0 or norm_hat == 0.0:
        return math.nan, math.nan
    return float((d_hat - d).norm()) / norm, float(d_hat @ d) / (norm * norm_hat)


def damped_measures(
    blocks: Sequence[BlockMeasures | None],
    gram: Tensor,
    exact_direction: Sequence[Tensor],
    damping: float,
    top_k: int,
    exact: bool = False,
) -> DampedMeasures:
    """The measures of ``blockdiag(F̂_l)`` over ``blocks`` against the F whose Gram is ``gram`` (``K̃ = JJᵀ/m`` of
    those layers) and whose damped direction is ``exact_direction`` (one (q_l, p_l) piece per block).

    ``exact`` (or one block that is exact): ``F̂ = F``, so :data:`EXACT_MEASURES`; a block without measures
    makes every measure NaN.
    """
    if exact or (len(blocks) == 1 and blocks[0] is not None and blocks[0].exact):
        return EXACT_MEASURES
    if any(block is None for block in blocks):
        return MISSING_MEASURES
    present = [block for block in blocks if block is not None]
    gaussian = sum((block.gaussian for block in present[1:]), present[0].gaussian)
    forward, reverse = kl_divergences(gram, damping, gaussian)
    error, cosine = direction_errors([block.direction for block in present], exact_direction)
    pairs = merge([block.eigenpairs for block in present], top_k)
    alignment = subspace_alignment(gram, gram.shape[0], pairs, top_k)
    return DampedMeasures(forward, reverse, error, cosine, alignment)
