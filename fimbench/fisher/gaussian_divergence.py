"""The Kullback–Leibler divergences between the Gaussians of the damped exact and approximate Fisher, from Gram products.

With ``F = JᵀJ/m`` (rows ``J_n = vec DW_n``, the per-example gradients; d = p q unknowns), ``F_λ = F + λI`` and
``F̂_λ`` the approximation damped as its preconditioner damps it (factored Tikhonov for the Kronecker methods,
``F̂ + λI`` for EKFAC, SOAP and the exact blocks):

    kl_forward = KL(N(0, F̂_λ) ‖ N(0, F_λ)) = ½ [tr(F_λ⁻¹ F̂_λ) − d + log det F_λ − log det F̂_λ],
    kl_reverse = KL(N(0, F_λ) ‖ N(0, F̂_λ)) = ½ [tr(F̂_λ⁻¹ F_λ) − d + log det F̂_λ − log det F_λ].

With ``r_i`` the generalised eigenvalues of ``(F̂_λ, F_λ)`` both are sums over the d directions:
``kl_forward = ½ Σ (r_i − 1 − log r_i)`` and ``kl_reverse = ½ Σ (1/r_i − 1 + log r_i)``. The update applies
``F̂_λ⁻¹``: along a direction where F̂ under-estimates the curvature (``r_i → 0``) its step is ``1/r_i`` times
too long, which is what makes a preconditioned step diverge; ``kl_reverse`` grows like ``1/r_i`` there and only
like ``log r_i`` where F̂ over-estimates (steps too short, which only slows training). ``kl_reverse`` is also
``KL(N(0, F̂_λ⁻¹) ‖ N(0, F_λ⁻¹))``, the divergence of the step's own covariance from the exact one: it is the
direction that matches what the update needs. ``kl_forward`` weights the errors the other way round.

Everything goes through the m × m Gram matrix ``K̃ = J Jᵀ / m`` (eigenvalues ``μ``) and the Woodbury identity
``F_λ⁻¹ = (I − Jᵀ (λI + K̃)⁻¹ J / m) / λ``:

    log det F_λ = d log λ + Σ_i log(1 + μ_i / λ),
    tr(F_λ⁻¹ F̂_λ) = (tr F̂_λ − tr((λI + K̃)⁻¹ M) / m) / λ,        M = J F̂_λ Jᵀ (m × m),
    tr(F̂_λ⁻¹ F_λ) = λ tr F̂_λ⁻¹ + Σ_n (J F̂_λ⁻¹ Jᵀ)_nn / m.

An approximation enters through its :class:`GaussianTerms` (d, log det F̂_λ, tr F̂_λ, tr F̂_λ⁻¹, M and the
diagonal of ``J F̂_λ⁻¹ Jᵀ``). A block-diagonal approximation's terms are the sums of its blocks' (``+``), so the
same two formulas give the network's divergences with the network's Gram ``K̃ = Σ_l K̃_l`` (:func:`kl_divergences`).

Each block's terms come from its :class:`~fimbench.curvature.diagonalisation.KroneckerDiagonalisation`
(:func:`diagonalised_terms`): with ``E_n = B_Gᵀ DW_n B_A`` and ``E'_n = C_Gᵀ DW_n C_A``,
``M_ns = Σ_ij D_ij E_n,ij E_s,ij`` and ``(J F̂_λ⁻¹ Jᵀ)_nn = Σ_ij E'_n,ij² / D_ij``; a damped operator that is a short
Kronecker sum gives ``M = Σ_k (ā A_k āᵀ) ∘ (g G_k gᵀ)`` instead — O(m²(p + q)). The exact block ``F_ll + λI``
has closed forms in ``K̃_l`` (:func:`exact_terms`). Cost per block: O(p³ + q³ + m p q) for the diagonal,
O(m² p q) for M of an eigenbasis block (EKFAC, SOAP), chunked so that no more than ``CHUNK_ELEMENTS`` numbers
are held; nothing pq × pq.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.diagonalisation import DIAGONALISATION_DTYPE, KroneckerDiagonalisation
from fimbench.fisher.block_errors import ExactFisher

CHUNK_ELEMENTS = 1 << 24
"""Largest intermediate (in numbers, 128 MiB of float64) of the chunked products with the batch's gradients."""


@dataclass(frozen=True)
class GaussianTerms:
    """What the divergences need of a damped approximation ``F̂_λ`` (module docstring), in float64.

    Attributes:
        dimension: d, the number of weights it covers.
        log_determinant: ``log det F̂_λ``.
        trace: ``tr F̂_λ``.
        inverse_trace: ``tr F̂_λ⁻¹``.
        sandwich: ``M = J F̂_λ Jᵀ``, (m, m).
        inverse_diagonal: the diagonal of ``J F̂_λ⁻¹ Jᵀ``, (m,).
    """

    dimension: int
    log_determinant: float
    trace: float
    inverse_trace: float
    sandwich: Tensor
    inverse_diagonal: Tensor

    def __add__(self, other: GaussianTerms) -> GaussianTerms:
        """The terms of ``blockdiag(F̂_λ, F̂'_λ)``: each term is additive over diagonal blocks."""
        return GaussianTerms(
            self.dimension + other.dimension,
            self.log_determinant + other.log_determinant,
            self.trace + other.trace,
            self.inverse_trace + other.inverse_trace,
            self.sandwich + other.sandwich,
            self.inverse_diagonal + other.inverse_diagonal,
        )


def kl_divergences(gram: Tensor, damping: float, approximation: GaussianTerms) -> tuple[float, float]:
    """``(kl_forward, kl_reverse)`` of ``approximation`` against ``F_λ = JᵀJ/m + λI`` (module docstring).

    Args:
        gram: ``K̃ = J Jᵀ / m`` (m × m) over the rows the approximation covers: one layer's, or the sum over layers.
        damping: λ > 0.
        approximation: The terms of ``F̂_λ`` (a block's, or the sum of a block-diagonal approximation's blocks').

    Returns:
        Both divergences in nats (float64; round-off below 0 is clamped to 0).
    """
    K = gram.to(DIAGONALISATION_DTYPE)
    m = K.shape[0]
    d = approximation.dimension
    mu = torch.linalg.eigvalsh(K).clamp_min(0.0)
    log_det_exact = d * math.log(damping) + float(torch.log1p(mu / damping).sum())
    damped_gram = K + damping * torch.eye(m, dtype=K.dtype, device=K.device)
    woodbury = float(torch.trace(torch.linalg.solve(damped_gram, approximation.sandwich.to(K.dtype))))
    forward_trace = (approximation.trace - woodbury / m) / damping
    reverse_trace = damping * approximation.inverse_trace + float(approximation.inverse_diagonal.sum()) / m
    forward = 0.5 * (forward_trace - d + log_det_exact - approximation.log_determinant)
    reverse = 0.5 * (reverse_trace - d + approximation.log_determinant - log_det_exact)
    return max(forward, 0.0), max(reverse, 0.0)


def exact_terms(gram: Tensor, damping: float, dimension: int) -> GaussianTerms:
    """The terms of the exact block ``F_λ = JᵀJ/m + λI`` itself from ``K̃ = J Jᵀ / m`` (eigenvalues ``μ``):
    ``log det = d log λ + Σ log(1 + μ/λ)``, ``tr = d λ + tr K̃``, ``tr F_λ⁻¹ = (d − c)/λ + Σ_{i≤c} 1/(μ_i + λ)``
    (c = min(m, d)), ``M = m (K̃² + λ K̃)`` and ``J F_λ⁻¹ Jᵀ = m K̃ (K̃ + λI)⁻¹`` (push-through identity)."""
    K = gram.to(DIAGONALISATION_DTYPE)
    m = K.shape[0]
    mu = torch.linalg.eigvalsh(K).clamp_min(0.0).flip(0)[: min(m, dimension)]
    eye = torch.eye(m, dtype=K.dtype, device=K.device)
    return GaussianTerms(
        dimension=dimension,
        log_determinant=dimension * math.log(damping) + float(torch.log1p(mu / damping).sum()),
        trace=dimension * damping + float(torch.trace(K)),
        inverse_trace=(dimension - mu.shape[0]) / damping + float((mu + damping).reciprocal().sum()),
        sandwich=m * (K @ K + damping * K),
        inverse_diagonal=m * torch.diagonal(torch.linalg.solve(K + damping * eye, K)),
    )


def diagonalised_terms(fisher: ExactFisher, operator: KroneckerDiagonalisation) -> GaussianTerms:
    """The terms of ``F̂_λ = (B_A ⊗ B_G) diag(vec D) (B_A ⊗ B_G)ᵀ`` against ``fisher``'s gradients (module docstring)."""
    if operator.terms is not None:
        sandwich = _kronecker_sum_sandwich(fisher, operator.terms)
    else:
        sandwich = _diagonal_sandwich(fisher, operator.basis, operator.diagonal)
    return GaussianTerms(
        dimension=fisher.p * fisher.q,
        log_determinant=operator.log_determinant(),
        trace=operator.trace(),
        inverse_trace=operator.inverse_trace(),
        sandwich=sandwich,
        inverse_diagonal=_inverse_sandwich_diagonal(fisher, operator.inverse_basis, operator.diagonal),
    )


def _inverse_sandwich_diagonal(fisher: ExactFisher, inverse_basis: tuple[Tensor, Tensor], diagonal: Tensor) -> Tensor:
    """``(J F̂_λ⁻¹ Jᵀ)_nn = Σ_ij E'_n,ij² / D_ij`` with ``E'_n = C_Gᵀ DW_n C_A``: for ``DW_n = g_n ā_nᵀ``,
    ``((W'∘W') D⁻¹ ∘ (U'∘U'))`` summed over j (``U' = ā C_A``, ``W' = g C_G``) — O(m p q)."""
    if fisher.gradients is None:
        C_A, C_G = inverse_basis
        return (((fisher.g @ C_G).square() @ diagonal.reciprocal()) * (fisher.a @ C_A).square()).sum(dim=1)
    return torch.cat([
        (projected.square() / diagonal).sum(dim=(1, 2)) for projected in _projected_gradients(fisher, inverse_basis, diagonal.numel())
    ])


def _kronecker_sum_sandwich(fisher: ExactFisher, terms: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``M = J (Σ_k A_k ⊗ G_k) Jᵀ``: ``Σ_k (ā A_k āᵀ) ∘ (g G_k gᵀ)``, or ``M_ns = Σ_k ⟨DW_n, G_k DW_s A_kᵀ⟩`` for shared weights."""
    if fisher.gradients is None:
        return sum(((fisher.a @ A) @ fisher.a.T) * ((fisher.g @ G) @ fisher.g.T) for A, G in terms)  # type: ignore[return-value]
    flat = fisher.gradients.reshape(fisher.m, -1)
    product = sum(G @ fisher.gradients @ A.T for A, G in terms)
    return flat @ product.reshape(fisher.m, -1).T  # type: ignore[union-attr]


def _projected_gradients(fisher: ExactFisher, basis: tuple[Tensor, Tensor], size: int) -> Iterator[Tensor]:
    """``E_n = B_Gᵀ DW_n B_A`` (chunk, q, p) of shared weights' per-example gradients, over chunks of examples."""
    assert fisher.gradients is not None, "shared weights only: a rank-one DW_n = g_n ā_nᵀ needs no projected gradients"
    B_A, B_G = basis
    chunk = max(1, CHUNK_ELEMENTS // size)
    for start in range(0, fisher.m, chunk):
        yield B_G.T @ fisher.gradients[start : start + chunk] @ B_A


def _diagonal_sandwich(fisher: ExactFisher, basis: tuple[Tensor, Tensor], diagonal: Tensor) -> Tensor:
    """``M_ns = Σ_ij D_ij E_n,ij E_s,ij`` with ``E_n = B_Gᵀ DW_n B_A``: per chunk of rows i of D,
    ``Σ_i (W_:i W_:iᵀ) ∘ (U diag(D_i:) Uᵀ)`` (``U = ā B_A``, ``W = g B_G``; shared weights: the projected gradients)."""
    m = fisher.m
    if fisher.gradients is not None:
        projected = torch.cat(list(_projected_gradients(fisher, basis, diagonal.numel()))).reshape(m, -1)
        return (projected * diagonal.reshape(-1)) @ projected.T
    B_A, B_G = basis
    u, w = fisher.a @ B_A, fisher.g @ B_G
    sandwich = torch.zeros(m, m, dtype=u.dtype, device=u.device)
    rows = max(1, CHUNK_ELEMENTS // (m * (m + fisher.p)))
    for start in range(0, fisher.q, rows):
        scaled = u[None, :, :] * diagonal[start : start + rows, None, :]  # (i, n, j): D_ij U_nj
        inner = scaled @ u.T  # (i, n, s): Σ_j D_ij U_nj U_sj
        block = w[:, start : start + rows].T  # (i, n)
        sandwich += (block[:, :, None] * block[:, None, :] * inner).sum(0)
    return sandwich
