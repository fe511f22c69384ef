"""Top-k eigenspace alignment of an approximation F̂ with the exact Fisher F, from m×m Gram quantities.

With U_F (d×k) F's orthonormal top-k eigenvectors and U_F̂ those of the UNDAMPED F̂ (algebraically largest
eigenvalues),

    subspace_alignment = ‖U_Fᵀ U_F̂‖²_F / k = (1/k) Σ_i cos² θ_i   (θ_i the principal angles),

1 when the subspaces agree (F̂ = F), 0 when they are orthogonal. Nothing p·q × p·q is formed:

* F = JᵀJ/m with rows ``J_n = vec(DW_n)``, ``DW_n = g_n ā_nᵀ`` (shared weights: ``Σ_t g_nt a_ntᵀ``). The
  m×m Gram ``K̃ = JJᵀ/m`` (WITH the 1/m: :class:`~fimbench.fisher.block_errors.ExactFisher`'s K, and
  ``SubBatchFisher.layer_gram(l) / m`` or ``SubBatchFisher.gram() / m``, which omit it) has
  ``K̃ v_i = μ_i v_i``; F's unit eigenvectors are ``u_i = Jᵀ v_i / sqrt(m μ_i)`` (eigenvalue μ_i).
* F̂'s unit eigenvectors X_j ((q, p) matrices) enter only through ``P[n, j] = ⟨DW_n, X_j⟩_F = (J x_j)_n``;
  for a rank-one ``X = v uᵀ``: ``(g_nᵀ v)(uᵀ ā_n)`` (summed over t for shared weights). Then
  ``u_iᵀ x_j = v_iᵀ P[:, j] / sqrt(m μ_i)`` and

      subspace_alignment = Σ_ij (v_iᵀ P[:, j])² / (m μ_i) / k.

* F̂ = Σ_k A_k ⊗ G_k (:func:`kronecker_eigenpairs`): one term — ``spec(A ⊗ G) = {α_j γ_i}`` with eigenvectors
  ``q_G,i q_A,jᵀ``; more terms — the exact reduction ``F̃ = Σ (U_Aᵀ A_k U_A) ⊗ (U_Gᵀ G_k U_G)`` of
  block_errors.py, then a dense ``eigh`` or a matrix-free block Lanczos, and ``X = U_G Y U_Aᵀ``, whose
  projections are ``⟨U_Gᵀ DW_n U_A, Y⟩`` (no (q, p) matrix is formed either).
* EKFAC/SOAP (:func:`eigenbasis_eigenpairs`): the largest ``S_ij`` with eigenvectors ``Q_G[:, i] Q_A[:, j]ᵀ``.
* F itself (:func:`exact_eigenpairs`): ``J u_i = JJᵀ v_i / sqrt(m μ_i) = sqrt(m μ_i) v_i``.
* A block-diagonal F̂ over layers (:func:`merge`): eigenvectors of different layers are orthogonal and each
  one's projections through the network's J are those through its own layer's J_l, so taking the k
  largest eigenvalues over the blocks is exact; compare with the network's ``K̃ = Σ_l K̃_l``.

Ties: where F̂'s k-th eigenvalue lies in a multiple eigenvalue the top-k subspace is not unique and the
value depends on the eigenvectors chosen. For F̂'s null space (a reduced F̃ with fewer than k positive
eigenvalues, rank-deficient factors) they are chosen orthogonal to every DW_n (projections 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.ekfac import EigenbasisDiagonal
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import (
    DENSE_SPECTRUM_LIMIT,
    METRIC_DTYPE,
    ExactFisher,
    Terms,
    captures_terms,
    kronecker_squared_norm,
    project_terms,
    range_basis,
)
from fimbench.fisher.spectrum import BREAKDOWN, SPECTRUM_SEED, block_tridiagonal, lanczos_step

DEFAULT_TOP_K = 10
"""Eigenpairs compared by default. F has rank ≤ m and its few top directions carry most of the curvature
(the ones a preconditioner must get right); 10 is well below m for every Fisher batch fimbench uses, so
F's top-k subspace is defined (a smaller rank lowers k, see :func:`subspace_alignment`)."""
EIGENVALUE_RTOL = 1e-8
"""F's eigenvalues μ_i ≤ EIGENVALUE_RTOL · μ_max count as zero: their eigenvectors lie in a (numerically)
degenerate null space, and ``u_i = Jᵀ v_i / sqrt(m μ_i)`` magnifies the Gram's round-off (≈ m ε μ_max) by
``sqrt(μ_max / μ_i)``. The comparison then uses fewer than k pairs."""
KRYLOV_RTOL = 1e-10
"""The block Lanczos stops once every one of the k Ritz residuals ``‖F̃ y − θ y‖`` is ≤ KRYLOV_RTOL · ‖F̃‖_F;
an eigenvector's error is about residual / gap, so the alignment is accurate to ~1e-10 ‖F̃‖_F / gap."""
KRYLOV_BUDGET = 60
"""Largest Krylov space of the block Lanczos, in blocks of k vectors (60 k, and at most n): it stores up to
60 k vectors of size n (k = 10, n = 10⁵: 480 MB). Kronecker sums of Fisher statistics converge within 10–35
blocks (clustered top eigenvalues take the most); a run that does not reports its residual in
:attr:`Eigenpairs.residual` (the alignment then moves by about residual / gap)."""


@dataclass(frozen=True)
class Eigenpairs:
    """The top eigenpairs of an approximation F̂, seen through the batch's Jacobian (module docstring).

    Attributes:
        values: The eigenvalues, (k,), decreasing.
        projections: ``P[n, j] = ⟨DW_n, X_j⟩_F = (J x_j)_n`` of the unit eigenvectors X_j, (m, k), float64.
        residual: The largest relative residual ``‖F̃ y − θ y‖ / ‖F̃‖_F`` of the block Lanczos path (0 on the
            exact paths); above :data:`KRYLOV_RTOL` when the Krylov budget ran out.
    """

    values: Tensor
    projections: Tensor
    residual: float = 0.0


def merge(pairs: Sequence[Eigenpairs], k: int = DEFAULT_TOP_K) -> Eigenpairs:
    """The k largest eigenpairs of the block-diagonal ``F̂ = diag(F̂_1, …, F̂_L)`` from those of its blocks.

    Exact: the blocks' eigenvectors live on different layers (mutually orthogonal), and each one's
    projections ``J x = J_l x_l`` are the same through the network's Jacobian as through its layer's.

    Args:
        pairs: The eigenpairs of each block (at least k each, or all its eigenpairs), same m.
        k: How many to keep.

    Returns:
        The k largest over all blocks (fewer if the blocks hold fewer), decreasing.

    Raises:
        FimbenchError: If ``pairs`` is empty or its projections have different numbers m of rows.
    """
    if not pairs or len({pair.projections.shape[0] for pair in pairs}) != 1:
        raise FimbenchError("merge needs the eigenpairs of at least one block, all with the same m")
    values = torch.cat([pair.values for pair in pairs])
    projections = torch.cat([pair.projections for pair in pairs], dim=1)
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return Eigenpairs(values[order], projections[:, order], max(pair.residual for pair in pairs))


def _rank_one_projections(fisher: ExactFisher, left: Tensor, right: Tensor) -> Tensor:
    """``P[n, c] = Σ_t (g_ntᵀ left_c)(right_cᵀ ā_nt)`` for the eigenvectors ``left_c right_cᵀ`` (left (q, k), right (p, k))."""
    products = (fisher.g @ left) * (fisher.a @ right)  # (m, k) or (m, T, k)
    return products.sum(dim=1) if products.ndim == 3 else products


def _reduced_projections(fisher: ExactFisher, U_A: Tensor, U_G: Tensor, Y: Tensor) -> Tensor:
    """``P[n, c] = ⟨DW_n, U_G Y_c U_Aᵀ⟩ = ⟨U_Gᵀ DW_n U_A, Y_c⟩`` for ``Y`` (k, r_G, r_A) — O(m k r_G r_A)."""
    g_reduced, a_reduced = fisher.g @ U_G, fisher.a @ U_A
    if fisher.gradients is not None:  # shared weights: the reduced per-example gradients (m, r_G, r_A)
        reduced = torch.einsum("ntr,nts->nrs", g_reduced, a_reduced).reshape(fisher.m, -1)
        return reduced @ Y.reshape(Y.shape[0], -1).transpose(0, 1)
    return ((g_reduced @ Y) * a_reduced).sum(dim=-1).transpose(0, 1)  # (k, m, r_A) -> (m, k)


def _ordered(values: Tensor, projections: Tensor, k: int, residual: float = 0.0) -> Eigenpairs:
    """The k largest ``values`` (stable order) and their projections' columns."""
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return Eigenpairs(values[order], projections[:, order], residual)


def _reduction(
    terms: list[tuple[Tensor, Tensor]], bases: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """``(U_A, U_G, F̃'s factors)``: ``bases`` (ExactFisher's ranges of ā and g) when they keep every factor
    to ``PROJECTION_RTOL`` (as :func:`~fimbench.fisher.block_errors.reduce_terms`), else the ranges of
    ``[U_A, A_1/‖A_1‖, …]`` and ``[U_G, G_1/‖G_1‖, …]``. Both hold every DW_n, so F̂'s eigenvectors outside
    ``range(U_A ⊗ U_G)`` have eigenvalue 0 (up to that tolerance) and projections 0."""
    reduced = project_terms(terms, *bases)
    if captures_terms(terms, reduced):
        return bases[0], bases[1], reduced
    U_A = range_basis([bases[0], *(A / A.norm() for A, _ in terms)])
    U_G = range_basis([bases[1], *(G / G.norm() for _, G in terms)])
    return U_A, U_G, project_terms(terms, U_A, U_G)


def kronecker_eigenpairs(fisher: ExactFisher, terms: Terms, k: int = DEFAULT_TOP_K, dense_limit: int = DENSE_SPECTRUM_LIMIT) -> Eigenpairs:
    """The k algebraically largest eigenpairs of ``F̂ = Σ_k A_k ⊗ G_k`` (symmetric factors), as projections.

    One term (K-FAC, Shampoo): ``A = Q_A diag(α) Q_Aᵀ``, ``G = Q_G diag(γ) Q_Gᵀ``, eigenvalues ``α_j γ_i`` with
    eigenvectors ``X = q_G,i q_A,jᵀ`` (``vec X = q_A,j ⊗ q_G,i``). More terms: F̃ (:func:`_reduction`, size
    n = r_A r_G) by a dense ``eigh`` of ``Σ kron(Ã_k, G̃_k)`` when n ≤ max(dense_limit, 4k), else by block
    Lanczos on ``V ↦ Σ_k G̃_k V Ã_k`` (:func:`_krylov_top`); ``X = U_G Y U_Aᵀ``, plus up to k eigenvalues 0
    of the complement of ``range(U_A ⊗ U_G)`` (projections 0). Terms with a zero factor are dropped; F̂ = 0
    has no top-k subspace and gives no eigenpairs.

    Args:
        fisher: The exact block F of the batch (its statistics and bases).
        terms: The pairs ``(A_k, G_k)``, (p, p) and (q, q).
        k: How many eigenpairs.
        dense_limit: Reduced sizes n up to which the dense ``eigh`` is used (default :data:`DENSE_SPECTRUM_LIMIT`).

    Returns:
        The eigenpairs, at most k (fewer when F̂ has fewer), decreasing.
    """
    kept = [(A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)) for A, G in terms]
    kept = [(A, G) for A, G in kept if bool(A.any()) and bool(G.any())]
    empty = Eigenpairs(torch.zeros(0, dtype=METRIC_DTYPE), torch.zeros(fisher.m, 0, dtype=METRIC_DTYPE))
    if not kept:
        return empty
    if len(kept) == 1:
        (alpha, Q_A), (gamma, Q_G) = torch.linalg.eigh(kept[0][0]), torch.linalg.eigh(kept[0][1])
        products = torch.outer(gamma, alpha).reshape(-1)  # index i·p + j: eigenvector q_G,i q_A,jᵀ
        top = torch.topk(products, min(k, products.numel()))
        rows, cols = top.indices // alpha.shape[0], top.indices % alpha.shape[0]
        return Eigenpairs(top.values, _rank_one_projections(fisher, Q_G[:, rows], Q_A[:, cols]))
    U_A, U_G, reduced = _reduction(kept, fisher.bases)
    r_A, r_G = U_A.shape[1], U_G.shape[1]
    n, residual = r_A * r_G, 0.0
    values, Y = empty.values, torch.zeros(0, r_G, r_A, dtype=METRIC_DTYPE)
    if n > max(dense_limit, 4 * k):
        values, vectors, residual = _krylov_top(reduced, k)
        Y = vectors.reshape(-1, r_G, r_A)  # row-major (r_G, r_A) vectors of V ↦ Σ G̃ V Ã
    elif n > 0:
        dense = sum(torch.kron(A, G) for A, G in reduced)
        dense = 0.5 * (dense + dense.transpose(0, 1))  # type: ignore[union-attr]
        eigenvalues, eigenvectors = torch.linalg.eigh(dense)
        values = eigenvalues.flip(0)[:k]
        Y = eigenvectors.flip(1)[:, :k].transpose(0, 1).reshape(-1, r_A, r_G).transpose(1, 2)  # vec: j·r_G + i
    padding = min(k, fisher.p * fisher.q - n)  # F̂'s eigenvalues 0 outside range(U_A ⊗ U_G), ⟂ every DW_n
    projections = _reduced_projections(fisher, U_A, U_G, Y)
    all_values = torch.cat([values, torch.zeros(padding, dtype=METRIC_DTYPE)])
    all_projections = torch.cat([projections, torch.zeros(fisher.m, padding, dtype=METRIC_DTYPE)], dim=1)
    return _ordered(all_values, all_projections, k, residual)


def _krylov_top(terms: list[tuple[Tensor, Tensor]], k: int) -> tuple[Tensor, Tensor, float]:
    """Block Lanczos (block size k, full re-orthogonalisation twice, Rayleigh–Ritz) for F̃'s k largest eigenpairs.

    Vectors are row-major (r_G, r_A) matrices V and the operator is ``V ↦ Σ_k G̃_k V Ã_kᵀ`` (a permutation-
    similar copy of F̃). The block-tridiagonal ``T = Qᵀ F̃ Q`` of the recurrence
    ``F̃ Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j`` gives Ritz pairs (θ_i, y_i = Q s_i) with residuals
    ``‖B_J s_i[last block]‖``; the run stops when all k are ≤ :data:`KRYLOV_RTOL` ‖F̃‖_F, or at
    :data:`KRYLOV_BUDGET` blocks. The random start is seeded (:data:`~fimbench.fisher.spectrum.SPECTRUM_SEED`).

    Returns:
        ``(θ (k,) decreasing, Ritz vectors (k, n) orthonormal, largest relative residual ‖F̃ y − θ y‖ / ‖F̃‖_F``,
        recomputed from the vectors).
    """
    r_A, r_G = terms[0][0].shape[0], terms[0][1].shape[0]
    n = r_A * r_G
    norm = math.sqrt(max(kronecker_squared_norm(terms), 0.0))
    capacity = max(min(n, KRYLOV_BUDGET * k) // k, 2) * k
    basis = torch.empty(capacity, n, dtype=METRIC_DTYPE)
    generator = torch.Generator().manual_seed(SPECTRUM_SEED)

    def apply(X: Tensor) -> Tensor:
        V = X.reshape(-1, r_G, r_A)
        return sum(G @ V @ A.transpose(0, 1) for A, G in terms).reshape(-1, n)  # type: ignore[union-attr]

    def orthogonalise(W: Tensor, filled: int) -> Tensor:
        for _ in range(2):
            W = W - (W @ basis[:filled].transpose(0, 1)) @ basis[:filled]
        return W

    start = torch.randn(k, n, generator=generator, dtype=METRIC_DTYPE)
    basis[:k] = torch.linalg.qr(start.transpose(0, 1))[0].transpose(0, 1)
    diagonal: list[Tensor] = []
    coupling: list[Tensor] = []
    filled = k
    while True:
        A_j, W = lanczos_step(apply, basis, filled, k, coupling)
        W = orthogonalise(W, filled)
        Q, R = torch.linalg.qr(W.transpose(0, 1))  # W = Rᵀ Qᵀ
        diagonal.append(A_j)
        coupling.append(R)
        theta, S = _ritz_pairs(diagonal, coupling, k)
        last = filled + k > capacity
        if bool((R @ S[-k:]).norm(dim=0).max() <= KRYLOV_RTOL * norm) or last:
            vectors = S.transpose(0, 1) @ basis[:filled]
            residual = float((apply(vectors) - theta[:, None] * vectors).norm(dim=1).max()) / norm if norm > 0 else 0.0
            return theta, vectors, residual
        good = torch.diagonal(R).abs() > BREAKDOWN * norm
        X_next = Q.transpose(0, 1)
        if not bool(good.all()):  # an invariant subspace was found: continue from fresh random directions
            fresh = torch.randn(int((~good).sum()), n, generator=generator, dtype=METRIC_DTYPE)
            candidates = orthogonalise(torch.cat([X_next[good], fresh]), filled)
            X_next = torch.linalg.qr(candidates.transpose(0, 1))[0].transpose(0, 1)
            coupling[-1] = X_next @ W.transpose(0, 1)
        basis[filled : filled + k] = X_next
        filled += k


def _ritz_pairs(diagonal: list[Tensor], coupling: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The k largest eigenpairs ``(θ, S)`` of the block-tridiagonal T (blocks A_j, couplings B_j below)."""
    theta, S = torch.linalg.eigh(block_tridiagonal(diagonal, coupling))
    return theta.flip(0)[:k], S.flip(1)[:, :k]


def eigenbasis_eigenpairs(fisher: ExactFisher, approximation: EigenbasisDiagonal, k: int = DEFAULT_TOP_K) -> Eigenpairs:
    """The k largest eigenpairs of EKFAC's / SOAP's ``F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ``.

    Its eigenvalues are the ``S_ij`` ((q, p) layout) with eigenvectors ``X = Q_G[:, i] Q_A[:, j]ᵀ``, so
    ``P[n, (i, j)] = Σ_t (g_ntᵀ Q_G[:, i])(Q_A[:, j]ᵀ ā_nt)``.

    Args:
        fisher: The exact block F of the batch (its statistics).
        approximation: The eigenbasis-diagonal approximation (bases (p, p), (q, q); scales (q, p)).
        k: How many eigenpairs.

    Returns:
        The eigenpairs, min(k, pq) of them, decreasing.
    """
    Q_A, Q_G = (Q.to(METRIC_DTYPE) for Q in approximation.bases)
    scales = approximation.scales.to(METRIC_DTYPE).reshape(-1)  # index i·p + j
    top = torch.topk(scales, min(k, scales.numel()))
    rows, cols = top.indices // Q_A.shape[1], top.indices % Q_A.shape[1]
    return Eigenpairs(top.values, _rank_one_projections(fisher, Q_G[:, rows], Q_A[:, cols]))


def exact_eigenpairs(gram: Tensor, m: int, k: int = DEFAULT_TOP_K) -> Eigenpairs:
    """The k largest eigenpairs of F itself (the exact natural-gradient references) from ``K̃ = JJᵀ/m``.

    ``K̃ v_i = μ_i v_i`` gives F's unit eigenvectors ``u_i = Jᵀ v_i / sqrt(m μ_i)``, whose projections are
    ``J u_i = JJᵀ v_i / sqrt(m μ_i) = m μ_i v_i / sqrt(m μ_i) = sqrt(m μ_i) v_i`` (0 where μ_i = 0, as for any
    vector of F's null space).

    Args:
        gram: ``K̃ = JJᵀ / m`` (m, m) — a layer's or the network's (WITH the 1/m factor).
        m: The number of examples.
        k: How many eigenpairs.

    Returns:
        min(k, m) eigenpairs, decreasing.

    Raises:
        FimbenchError: If ``gram`` is not (m, m).
    """
    mu, V = _gram_eigenpairs(gram, m)
    mu, V = mu[:k], V[:, :k]
    return Eigenpairs(mu, V * torch.sqrt(m * mu.clamp_min(0.0)))


def _gram_eigenpairs(gram: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``(μ decreasing, V)`` of the symmetric (m, m) Gram matrix in float64."""
    if gram.shape != (m, m):
        raise FimbenchError(f"the Gram matrix must be ({m}, {m}), got {tuple(gram.shape)}")
    gram = gram.to(METRIC_DTYPE)
    mu, V = torch.linalg.eigh(0.5 * (gram + gram.transpose(0, 1)))
    return mu.flip(0), V.flip(1)


def subspace_alignment(gram: Tensor, m: int, approximation: Eigenpairs, k: int = DEFAULT_TOP_K) -> float:
    """``‖U_Fᵀ U_F̂‖²_F / k' = Σ_ij (v_iᵀ P[:, j])² / (m μ_i) / k'`` over F's and F̂'s top k' eigenpairs.

    ``k' = min(k, #{μ_i > EIGENVALUE_RTOL · μ_max}, number of F̂'s eigenpairs given)``: F has rank ≤ m, and its
    null space has no top directions to compare.

    Args:
        gram: ``K̃ = JJᵀ / m`` (m, m) WITH the 1/m factor: a layer's (``ExactFisher.gram``,
            ``SubBatchFisher.layer_gram(l) / m``) for a layer, the network's (``SubBatchFisher.gram() / m``)
            against merged eigenpairs.
        m: The number of examples.
        approximation: F̂'s top eigenpairs with projections through the same J.
        k: How many eigenpairs to compare.

    Returns:
        The mean cos² of the principal angles, in [0, 1]; NaN when F = 0 (μ_max ≤ 0) or k' = 0.

    Raises:
        FimbenchError: If ``gram`` is not (m, m), the projections do not have m rows, or k < 1.
    """
    if k < 1 or approximation.projections.shape[0] != m:
        raise FimbenchError(f"need k ≥ 1 and projections with m = {m} rows, got k = {k}, {tuple(approximation.projections.shape)}")
    mu, V = _gram_eigenpairs(gram, m)
    if not float(mu[0]) > 0:
        return math.nan
    count = min(k, int((mu > EIGENVALUE_RTOL * mu[0]).sum()), approximation.values.shape[0])
    if count == 0:
        return math.nan
    overlaps = V[:, :count].transpose(0, 1) @ approximation.projections[:, :count].to(METRIC_DTYPE)
    return float((overlaps.square() / (m * mu[:count, None])).sum()) / count
