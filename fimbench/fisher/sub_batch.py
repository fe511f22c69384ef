"""The exact Fisher of the preconditioned layers on one Fisher sub-batch, through per-example gradients.

From the captured statistics ``(ā_l, g_l)`` of layers l = 1..L on m examples, the per-example gradient of
layer l is ``DW_{l,n} = g_{l,n} ā_{l,n}ᵀ`` (q_l × p_l, the layout of :func:`fimbench.fisher.capture.weight_of`),
or ``DW_{l,n} = Σ_t g_{l,nt} ā_{l,nt}ᵀ`` for a layer applied at T positions. Stacking the vectorised
gradients of all layers gives the rows ``j_n`` of the m × P Jacobian ``J``, and the network's mini-batch
Fisher is

    F = (1/m) Σ_n j_n j_nᵀ = Jᵀ J / m.

Nothing P × P (or even p_l q_l × p_l q_l) is formed; every product goes through J:

* ``J V``: ``(J V)_n = Σ_l ⟨DW_{l,n}, V_l⟩_F = Σ_l g_{l,n}ᵀ V_l ā_{l,n}`` — O(m Σ_l p_l q_l);
* ``Jᵀ u``: layer l's block is ``Σ_n u_n DW_{l,n} = g_lᵀ diag(u) ā_l``;
* the m × m Gram matrix ``K = J Jᵀ = Σ_l K_l`` with ``K_l = (ā_l ā_lᵀ) ∘ (g_l g_lᵀ)`` (T positions:
  ``K_l[n, n'] = Σ_{t t'} (ā_{l,nt}·ā_{l,n't'})(g_{l,nt}·g_{l,n't'})``);
* ``F V = Jᵀ (J V) / m`` and ``Vᵀ F W = (J V)·(J W) / m``;
* the damped solve by the Woodbury identity,
  ``(F + λI)⁻¹ v = (v − Jᵀ (m λ I + K)⁻¹ J v) / λ`` — one m × m Cholesky factorisation.

Restricting the sums to one layer gives that layer's diagonal block ``F_ll``; so ``solve(…, per_layer=True)``
is the block-diagonal exact natural gradient. The scale matches :class:`fimbench.fisher.block_errors.ExactFisher`:
``g`` holds per-example derivatives with no 1/m factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics

GRAM_DTYPE = torch.float64
"""The m × m Gram matrices and their Cholesky factors are formed in float64: m² numbers, and the damped
Gram ``m λ I + K`` can be ill-conditioned when λ is small against K's spread."""


class SubBatchFisher:
    """``F = Jᵀ J / m`` over the layers of ``statistics`` (module docstring), seen only through ``J``.

    ``statistics[l]`` holds layer l's ``a`` (m, p_l) and ``g`` (m, q_l), or (m, T_l, p_l) and (m, T_l, q_l);
    every layer must have the same m ≥ 1. Vectors are lists of (q_l, p_l) matrices, one per layer.
    """

    def __init__(self, statistics: Sequence[LayerStatistics]) -> None:
        if not statistics:
            raise FimbenchError("the sub-batch Fisher needs the statistics of at least one layer")
        sizes = {stats.a.shape[0] for stats in statistics} | {stats.g.shape[0] for stats in statistics}
        if len(sizes) != 1 or 0 in sizes:
            raise FimbenchError(f"every layer's statistics need the same number m ≥ 1 of examples, got sizes {sorted(sizes)}")
        self.statistics = [_as_positions(stats) for stats in statistics]
        self._grams: list[Tensor | None] = [None] * len(statistics)

    @property
    def m(self) -> int:
        """The number of examples of the Fisher sub-batch."""
        return self.statistics[0].a.shape[0]

    @property
    def layers(self) -> int:
        """How many layers (diagonal blocks) ``F`` covers."""
        return len(self.statistics)

    def layer_gram(self, index: int) -> Tensor:
        """``K_l = J_l J_lᵀ`` (m × m, float64), ``K_l[n, n'] = ⟨DW_{l,n}, DW_{l,n'}⟩_F``; cached."""
        cached = self._grams[index]
        if cached is None:
            a, g = (t.to(GRAM_DTYPE) for t in (self.statistics[index].a, self.statistics[index].g))
            m, positions, p = a.shape
            q = g.shape[-1]
            if positions == 1:
                cached = (a[:, 0] @ a[:, 0].T) * (g[:, 0] @ g[:, 0].T)
            elif m * p * q <= (m * positions) ** 2:  # the per-example gradients are the smaller object
                gradients = torch.einsum("ntq,ntp->nqp", g, a).reshape(m, -1)
                cached = gradients @ gradients.T
            else:
                rows_a, rows_g = a.reshape(m * positions, p), g.reshape(m * positions, q)
                products = (rows_a @ rows_a.T) * (rows_g @ rows_g.T)
                cached = products.reshape(m, positions, m, positions).sum(dim=(1, 3))
            self._grams[index] = cached
        return cached

    def gram(self, layers: Sequence[int] | None = None) -> Tensor:
        """``K = Σ_l K_l`` over ``layers`` (default: all) — the Gram matrix of the per-example gradients."""
        chosen = range(self.layers) if layers is None else layers
        return torch.stack([self.layer_gram(index) for index in chosen]).sum(dim=0)

    def layer_jacobian_product(self, index: int, vector: Tensor) -> Tensor:
        """``(J_l V)_n = ⟨DW_{l,n}, V⟩_F = Σ_t g_{l,nt}ᵀ V ā_{l,nt}`` (shape (m,), ``vector``'s dtype)."""
        stats = self.statistics[index]
        return ((stats.g.to(vector.dtype) @ vector) * stats.a.to(vector.dtype)).sum(dim=(1, 2))

    def jacobian_product(self, vectors: Sequence[Tensor]) -> Tensor:
        """``J V = Σ_l J_l V_l`` (shape (m,))."""
        self._check(vectors)
        return torch.stack([self.layer_jacobian_product(index, V) for index, V in enumerate(vectors)]).sum(dim=0)

    def layer_transpose_product(self, index: int, weights: Tensor) -> Tensor:
        """``J_lᵀ u = Σ_n u_n DW_{l,n} = g_lᵀ diag(u) ā_l`` (a (q_l, p_l) matrix, ``weights``' dtype)."""
        stats = self.statistics[index]
        g = (stats.g.to(weights.dtype) * weights[:, None, None]).reshape(-1, stats.g.shape[-1])
        return g.T @ stats.a.to(weights.dtype).reshape(-1, stats.a.shape[-1])

    def transpose_product(self, weights: Tensor) -> list[Tensor]:
        """``Jᵀ u``, one (q_l, p_l) matrix per layer."""
        return [self.layer_transpose_product(index, weights) for index in range(self.layers)]

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """``F V = Jᵀ (J V) / m``."""
        return self.transpose_product(self.jacobian_product(vectors) / self.m)

    def bilinear(self, left: Sequence[Tensor], right: Sequence[Tensor]) -> Tensor:
        """``Vᵀ F W = (J V)·(J W) / m`` (a 0-d tensor)."""
        return torch.dot(self.jacobian_product(left), self.jacobian_product(right)) / self.m

    def solve(self, vectors: Sequence[Tensor], damping: float, per_layer: bool = False) -> list[Tensor]:
        """``(F + λI)⁻¹ V`` by Woodbury: ``(V − Jᵀ (m λ I + K)⁻¹ J V) / λ`` (:meth:`inverse`, applied once)."""
        return self.inverse(damping, per_layer).apply(vectors)

    def inverse(self, damping: float, per_layer: bool = False) -> SubBatchInverse:
        """Factorise ``(F + λI)`` once (m × m Cholesky factors); apply it to many gradients with ``.apply``."""
        return SubBatchInverse(self, damping, per_layer)

    def _check(self, vectors: Sequence[Tensor]) -> None:
        if len(vectors) != self.layers:
            raise FimbenchError(f"expected one (q, p) matrix per layer ({self.layers}), got {len(vectors)}")


class SubBatchInverse:
    """``(F + λI)⁻¹`` of a :class:`SubBatchFisher` through the Woodbury identity, factorised once.

    ``apply(V) = (V − Jᵀ (m λ I + K)⁻¹ J V) / λ`` with the Cholesky factor of ``m λ I + K`` (float64);
    ``per_layer``: each layer with its own diagonal block, ``(F_ll + λI)⁻¹ V_l`` (``K_l``, ``J_l``).
    Cost O(m Σ_l p_l q_l + m²) per application after the O(m³) factorisation; nothing P-squared.
    ``fisher``, ``damping`` and ``per_layer`` are what it was built from.
    """

    def __init__(self, fisher: SubBatchFisher, damping: float, per_layer: bool = False) -> None:
        if not damping > 0:
            raise FimbenchError(f"the damped solve needs damping > 0, got {damping}")
        self.fisher, self.damping, self.per_layer = fisher, damping, per_layer
        self.groups = [[index] for index in range(fisher.layers)] if per_layer else [list(range(fisher.layers))]
        m = fisher.m
        self.factors = []
        for layers in self.groups:
            gram = fisher.gram(layers)
            self.factors.append(torch.linalg.cholesky(gram + m * damping * torch.eye(m, dtype=GRAM_DTYPE, device=gram.device)))

    def apply(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """``(F + λI)⁻¹ V`` (or blockwise), one (q_l, p_l) matrix per layer in each ``V_l``'s dtype."""
        fisher = self.fisher
        fisher._check(vectors)
        solved: list[Tensor] = list(vectors)
        for layers, factor in zip(self.groups, self.factors):
            J_v = torch.stack([fisher.layer_jacobian_product(index, vectors[index]) for index in layers]).sum(dim=0)
            weights = torch.cholesky_solve(J_v.to(GRAM_DTYPE)[:, None], factor)[:, 0]
            for index in layers:
                correction = fisher.layer_transpose_product(index, weights.to(vectors[index].dtype))
                solved[index] = (vectors[index] - correction) / self.damping
        return solved

    def quadratic(self, vectors: Sequence[Tensor]) -> Tensor:
        """``Vᵀ (F + λI) V`` (or with the diagonal blocks ``F_ll``): ``Σ_groups ‖J_group V‖² / m + λ ‖V‖²``."""
        fisher = self.fisher
        fisher._check(vectors)
        curvature = sum(
            torch.stack([fisher.layer_jacobian_product(index, vectors[index]) for index in layers]).sum(dim=0).square().sum()
            for layers in self.groups
        ) / fisher.m
        return curvature + self.damping * torch.stack([vector.square().sum() for vector in vectors]).sum()


def _as_positions(stats: LayerStatistics) -> LayerStatistics:
    """The statistics as (m, T, p) and (m, T, q): a layer applied once has T = 1."""
    if stats.a.ndim == 2:
        return LayerStatistics(stats.a.unsqueeze(1), stats.g.unsqueeze(1))
    return stats
