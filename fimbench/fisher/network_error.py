"""The cross-layer error of an approximation of the multi-layer Fisher, from m × m Gram products only.

Over layers l = 1..L (the chosen ones, or the whole network) with per-example gradients ``DW_{l,n}``, the
exact Fisher is ``F = JᵀJ/m`` (:class:`~fimbench.fisher.sub_batch.SubBatchFisher`): its diagonal blocks
``F_ll`` are the per-layer blocks of :class:`~fimbench.fisher.block_errors.ExactFisher`, its off-diagonal blocks
``F_lk`` the cross-layer curvature that every block-diagonal method drops. For an approximation ``F̂``,

    network error = ‖F − F̂‖_F / ‖F‖_F,   ‖F − F̂‖² = ‖F‖² − 2 ⟨F, F̂⟩ + ‖F̂‖²,

    ‖F‖² = (1/m²) Σ_ts (Σ_l (ā_lt·ā_ls)(g_lt·g_ls))² = ‖K‖² / m²,   K = Σ_l K_l,

and ``F̂`` enters only through its :class:`NetworkTerms` ``⟨F, F̂⟩`` and ``‖F̂‖²``. A block-diagonal
``F̂ = blockdiag(F̂_l)`` has ``⟨F, F̂⟩ = Σ_l ⟨F_ll, F̂_l⟩`` and ``‖F̂‖² = Σ_l ‖F̂_l‖²`` (:func:`kronecker_block_terms`,
summed with ``+``); the exact diagonal block ``F̂_l = F_ll`` gives ``‖F_ll‖²`` for both, so
``exact-ng-block``'s network error is ``sqrt(1 − Σ_l ‖F_ll‖² / ‖F‖²)`` — the share of ``‖F‖²`` off the
diagonal blocks — and ``exact-ng`` (``F̂ = F``: both terms ``‖F‖²``) is exactly 0. An approximation that is
not block-diagonal supplies its own two numbers from Gram-level quantities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fimbench.fisher.block_errors import ExactFisher, Metric, Terms, kronecker_squared_norm
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.sub_batch import SubBatchFisher

NETWORK = "network"
"""The ``layer`` of a cross-layer row of ``errors.csv``."""


@dataclass(frozen=True)
class NetworkTerms:
    """What the network error needs of an approximation ``F̂``: ``inner = ⟨F, F̂⟩_F``, ``squared_norm = ‖F̂‖²_F``."""

    inner: float
    squared_norm: float

    def __add__(self, other: NetworkTerms) -> NetworkTerms:
        """The terms of ``F̂ + F̂'`` when ``⟨F̂, F̂'⟩ = 0`` (blocks on different diagonal positions)."""
        return NetworkTerms(self.inner + other.inner, self.squared_norm + other.squared_norm)


def network_squared_norm(statistics: Sequence[LayerStatistics]) -> float:
    """``‖F‖²_F = ‖K‖²_F / m²`` of the multi-layer Fisher of ``statistics`` (one entry per layer)."""
    fisher = SubBatchFisher(statistics)
    return float(fisher.gram().square().sum()) / fisher.m**2


def kronecker_block_terms(block: ExactFisher, terms: Terms) -> NetworkTerms:
    """A Kronecker sum ``F̂_l = Σ_k A_k ⊗ G_k`` on layer l's diagonal block: ``⟨F_ll, F̂_l⟩ = Σ_k ⟨F_ll, A_k ⊗ G_k⟩``
    and ``‖F̂_l‖²`` (:mod:`fimbench.fisher.block_errors`'s Gram identities)."""
    return NetworkTerms(sum(block.inner(A, G) for A, G in terms), kronecker_squared_norm(terms))


def exact_block_terms(block: ExactFisher) -> NetworkTerms:
    """The exact diagonal block ``F̂_l = F_ll``: ``⟨F_ll, F_ll⟩ = ‖F_ll‖²``."""
    return NetworkTerms(block.squared_norm, block.squared_norm)


def network_error(squared_norm: float, approximation: NetworkTerms) -> Metric:
    """``‖F − F̂‖_F / ‖F‖_F`` from ``‖F‖²`` and ``F̂``'s terms (path ``gram``); NaN when F = 0."""
    if not squared_norm > 0:
        return Metric(math.nan, "gram")
    squared = squared_norm - 2.0 * approximation.inner + approximation.squared_norm
    return Metric(math.sqrt(max(squared, 0.0) / squared_norm), "gram")
