"""Kronecker algebra in fimbench's conventions (docs/design.md §1).

* ``vec`` is column-major: ``vec(V) == V.T.reshape(-1)``, so ``kron(A, G) @ vec(V) == vec(G @ V @ A.T)``.
* A Fisher block is ``F = E[ā āᵀ ⊗ g gᵀ]``: ``A`` (p×p) is always the activation side, ``G`` (q×q) the
  pre-activation-derivative side, and a weight-shaped matrix ``V`` is (q, p).
* Van Loan's rearrangement ``Z(F)`` (p² × q²) has row ``(μ, ν)`` (column-major block order) equal to
  ``vec(F_{μν})ᵀ``, so that ``‖F − R⊗S‖_F = ‖Z(F) − vec(R) vec(S)ᵀ‖_F`` (paper, Theorem 3.1 / eq. 7).

Only :func:`rearrange` and :func:`kron_dense` build p·q-sized matrices; they exist for reference code and
tests. Everything on the hot path works with p×p, q×q and m×m matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def vec(matrix: Tensor) -> Tensor:
    """Column-major vectorisation: stack the columns of ``matrix``."""
    return matrix.transpose(-2, -1).reshape(*matrix.shape[:-2], -1)


def unvec(vector: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`vec` ("MAT" in the paper)."""
    return vector.reshape(cols, rows).transpose(0, 1)


def kron_matvec(A: Tensor, G: Tensor, V: Tensor) -> Tensor:
    """``(A ⊗ G) vec(V) = vec(G V Aᵀ)``, returned as the (q, p) matrix ``G V Aᵀ``."""
    return G @ V @ A.transpose(-2, -1)


def kronecker_sum_matvec(terms: Sequence[tuple[Tensor, Tensor]], V: Tensor) -> Tensor:
    """``(Σ_k A_k ⊗ G_k) vec(V) = vec(Σ_k G_k V A_kᵀ)``, returned as a (q, p) matrix (at least one term)."""
    product = kron_matvec(*terms[0], V)
    for A, G in terms[1:]:
        product = product + kron_matvec(A, G, V)
    return product


def kron_dense(A: Tensor, G: Tensor) -> Tensor:
    """Dense ``A ⊗ G`` (reference code only)."""
    return torch.kron(A, G)


def weighted_gram(x: Tensor, weights: Tensor) -> Tensor:
    """``Σ_t w_t x_t x_tᵀ = xᵀ diag(w) x`` for rows ``x_t`` of ``x`` (m, d) — O(m d²)."""
    return (x * weights.unsqueeze(1)).transpose(0, 1) @ x


def quadratic_forms(x: Tensor, M: Tensor) -> Tensor:
    """``(x_tᵀ M x_t)_t`` for every row of ``x`` (m, d) — O(m d²)."""
    return ((x @ M) * x).sum(dim=1)
