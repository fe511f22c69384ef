"""subspace_alignment (fimbench.fisher.subspace): the Gram route against dense float64 eigenvectors of F and F̂."""

from __future__ import annotations

import math

import pytest
import torch
from reference import DTYPE, random_spd, random_symmetric

from fimbench.curvature import approximate
from fimbench.curvature.ekfac import EigenbasisDiagonal, approximate_ekfac
from fimbench.fisher import subspace
from fimbench.fisher.block_errors import ExactFisher, exact_block
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.fisher.subspace import (
    DEFAULT_TOP_K,
    EIGENVALUE_RTOL,
    KRYLOV_RTOL,
    Eigenpairs,
    eigenbasis_eigenpairs,
    exact_eigenpairs,
    kronecker_eigenpairs,
    merge,
    subspace_alignment,
)

EXACT = 1e-9  # identities exact in real arithmetic: float64 round-off of eigenvectors (divided by eigen-gaps)
KRYLOV_AGREEMENT = 1e-7  # block Lanczos (residual ≤ KRYLOV_RTOL ‖F̃‖_F) against the dense eigh: residual / gap
ZERO = 1e-12  # an alignment that is 0 in exact arithmetic


def per_example_vectors(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Rows ``J_n = vec(DW_n)``, ``DW_n = Σ_t g_nt a_ntᵀ`` (q, p), vec column-major (index j·q + i)."""
    if a.ndim == 2:
        a, g = a.unsqueeze(1), g.unsqueeze(1)
    DW = torch.einsum("ntq,ntp->nqp", g, a)
    return DW.transpose(1, 2).reshape(a.shape[0], -1)


def dense_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    J = per_example_vectors(a, g)
    return J.T @ J / a.shape[0]


def kron_sum(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return sum(torch.kron(A, G) for A, G in terms)  # type: ignore[return-value]


def top_vectors(M: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal eigenvectors of the k algebraically largest eigenvalues of the symmetric M, (d, k)."""
    return torch.linalg.eigh(0.5 * (M + M.T))[1].flip(1)[:, :k]


def reference_alignment(F: torch.Tensor, F_hat: torch.Tensor, k: int) -> float:
    """``‖U_Fᵀ U_F̂‖²_F / k'`` with k' = min(k, F's numerical rank), from dense eigenvectors."""
    mu = torch.linalg.eigvalsh(F).flip(0)
    k = min(k, int((mu > EIGENVALUE_RTOL * mu[0]).sum()))
    return float((top_vectors(F, k).T @ top_vectors(F_hat, k)).square().sum()) / k


def statistics(m: int, p: int, q: int, seed: int = 0, positions: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (m, positions) if positions else (m,)
    return torch.randn(*shape, p, generator=gen, dtype=DTYPE), torch.randn(*shape, q, generator=gen, dtype=DTYPE)


def random_terms(p: int, q: int, rank: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A PSD leading pair plus ``rank − 1`` indefinite corrections."""
    gen = torch.Generator().manual_seed(seed)
    terms = [(random_spd(p, gen), random_spd(q, gen))]
    terms += [(0.5 * random_symmetric(p, gen), 0.5 * random_symmetric(q, gen)) for _ in range(rank - 1)]
    return terms


def test_dense_reference_layout_matches_exact_block() -> None:
    """The references' J rows and ``kron(A, G)`` use the layout of exact_block: ``kron(A, G) vec V = vec(G V Aᵀ)``."""
    for positions in (0, 3):
        a, g = statistics(5, 4, 3, positions=positions)
        assert torch.allclose(dense_fisher(a, g), exact_block(a, g), rtol=EXACT, atol=EXACT)
    A, G = random_spd(4, torch.Generator().manual_seed(1)), random_spd(3, torch.Generator().manual_seed(2))
    V = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(torch.kron(A, G) @ V.T.reshape(-1), (G @ V @ A.T).T.reshape(-1), rtol=EXACT, atol=EXACT)


# m ≥ p, q (nothing to reduce); m < p, q (F̃ smaller than F̂); shared weights (T = 3)
CASES = [(7, 4, 3, 0), (3, 5, 4, 0), (4, 4, 3, 3)]


@pytest.mark.parametrize("m, p, q, positions", CASES)
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, DEFAULT_TOP_K])
def test_kronecker_sum_alignment_matches_dense(m: int, p: int, q: int, positions: int, rank: int, k: int) -> None:
    a, g = statistics(m, p, q, positions=positions)
    fisher = ExactFisher(a, g)
    terms = random_terms(p, q, rank, seed=10 * rank + k)
    pairs = kronecker_eigenpairs(fisher, terms, k)
    dense = torch.linalg.eigvalsh(kron_sum(terms)).flip(0)
    assert torch.allclose(pairs.values, dense[:k], rtol=EXACT, atol=EXACT * float(dense.abs().max()))
    expected = reference_alignment(dense_fisher(a, g), kron_sum(terms), k)
    assert subspace_alignment(fisher.gram, m, pairs, k) == pytest.approx(expected, rel=EXACT, abs=EXACT)
    assert 0.0 < expected < 1.0 - 1e-3  # a random F̂: a non-trivial value that a wrong projection would change


def statistics_terms(a: torch.Tensor, g: torch.Tensor, seed: int, indefinite_weights: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank-2 factors in the statistics' ranges (as every method's): ``āᵀ D ā`` and ``gᵀ E g``, D, E random symmetric."""
    gen = torch.Generator().manual_seed(seed)
    m = a.shape[0]
    D1, E1 = torch.diag(torch.rand(m, generator=gen, dtype=DTYPE) + 0.5), torch.diag(torch.rand(m, generator=gen, dtype=DTYPE) + 0.5)
    D2, E2 = random_symmetric(m, gen), random_symmetric(m, gen)
    if not indefinite_weights:
        D2, E2 = D2 @ D2, E2 @ E2
    return [(a.T @ D1 @ a, g.T @ E1 @ g), (0.3 * a.T @ D2 @ a, 0.3 * g.T @ E2 @ g)]


@pytest.mark.parametrize("indefinite", [False, True])
def test_reduced_path_matches_dense(indefinite: bool) -> None:
    """Factors inside range(āᵀ), range(gᵀ) with m < p, q: the reduced F̃ (n = m²) plus F̂'s null space."""
    m, p, q = 3, 6, 5
    a, g = statistics(m, p, q, seed=4)
    fisher = ExactFisher(a, g)
    terms = statistics_terms(a, g, seed=5, indefinite_weights=indefinite)
    F_hat = kron_sum(terms)
    dense = torch.linalg.eigvalsh(F_hat).flip(0)
    pairs = kronecker_eigenpairs(fisher, terms, m)
    assert torch.allclose(pairs.values, dense[:m], atol=EXACT * float(dense.abs().max()))
    assert float(dense[m - 1]) > 0.1 * float(dense[0])  # F̂'s top-m subspace is unique, free of its null space
    expected = reference_alignment(dense_fisher(a, g), F_hat, m)
    assert subspace_alignment(fisher.gram, m, pairs, m) == pytest.approx(expected, rel=EXACT, abs=EXACT)


def test_null_space_eigenvectors_count_as_orthogonal_to_f() -> None:
    """F̂ = v vᵀ ⊗ w wᵀ − 0.1 (P_A ⊗ P_G − v vᵀ ⊗ w wᵀ) (P the projectors on range(āᵀ), range(gᵀ)): eigenvalues 1,
    then 0 on the complement of range(P_A ⊗ P_G) ⊇ range(F), then −0.1. Its second eigenvector lies in that null
    space (the padding), orthogonal to F: the alignment is ‖U_Fᵀ (v ⊗ w)‖² / 2 for every choice of it."""
    m, p, q = 2, 5, 4
    a, g = statistics(m, p, q, seed=6)
    fisher = ExactFisher(a, g)
    v, w = torch.linalg.eigh(a.T @ a)[1][:, -1], torch.linalg.eigh(g.T @ g)[1][:, -1]
    P_A, P_G = (U @ U.T for U in fisher.bases)
    terms = [(1.1 * torch.outer(v, v), torch.outer(w, w)), (-0.1 * P_A, P_G)]
    pairs = kronecker_eigenpairs(fisher, terms, 2)
    assert pairs.values.tolist() == pytest.approx([1.0, 0.0], abs=EXACT)
    assert float(pairs.projections[:, 1].abs().max()) == 0.0
    F = dense_fisher(a, g)
    expected = float((top_vectors(F, 2).T @ torch.kron(v, w)).square().sum()) / 2
    assert expected > 1e-2
    assert reference_alignment(F, kron_sum(terms), 2) == pytest.approx(expected, rel=EXACT)
    assert subspace_alignment(fisher.gram, m, pairs, 2) == pytest.approx(expected, rel=EXACT)


@pytest.mark.parametrize("m, p, q, positions", CASES)
def test_method_terms_match_dense(m: int, p: int, q: int, positions: int) -> None:
    """Real approximations (K-FAC and KPSVD rank 1, Deflation and KFAC-corrected rank 2) of the batch's own F."""
    a, g = statistics(m, p, q, seed=7, positions=positions)
    fisher = ExactFisher(a, g)
    F = dense_fisher(a, g)
    k, checked = 3, 0
    for method in ("kfac", "kpsvd", "deflation", "kfac-corrected"):
        terms = approximate(method, a, g, tol=1e-12).terms
        F_hat = kron_sum(terms)
        dense = torch.linalg.eigvalsh(F_hat).flip(0)
        if float(dense[k - 1] - dense[k]) < 1e-6 * float(dense[0]):
            continue  # F̂'s top-k subspace is not unique
        pairs = kronecker_eigenpairs(fisher, terms, k)
        expected = reference_alignment(F, F_hat, k)
        assert subspace_alignment(fisher.gram, m, pairs, k) == pytest.approx(expected, rel=EXACT, abs=EXACT), method
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("positions", [0, 3])
def test_eigenbasis_diagonal_matches_dense(positions: int) -> None:
    m, p, q, k = 7, 4, 3, 4
    a, g = statistics(m, p, q, seed=8, positions=positions)
    fisher = ExactFisher(a, g)
    ekfac = approximate_ekfac(a, g)
    gen = torch.Generator().manual_seed(9)
    rotated = EigenbasisDiagonal(
        ekfac.factors,
        (torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=DTYPE))[0], torch.linalg.qr(torch.randn(q, q, generator=gen, dtype=DTYPE))[0]),
        torch.rand(q, p, generator=gen, dtype=DTYPE),
    )
    for approximation in (ekfac, rotated):
        F_hat = approximation.to_dense()
        pairs = eigenbasis_eigenpairs(fisher, approximation, k)
        assert torch.allclose(pairs.values, torch.linalg.eigvalsh(F_hat).flip(0)[:k], rtol=EXACT, atol=EXACT)
        expected = reference_alignment(dense_fisher(a, g), F_hat, k)
        assert subspace_alignment(fisher.gram, m, pairs, k) == pytest.approx(expected, rel=EXACT, abs=EXACT)
        assert expected < 1.0 - 1e-3


@pytest.mark.parametrize("m, p, q, positions", [*CASES, (1, 4, 3, 0)])
def test_exact_eigenpairs_align_perfectly(m: int, p: int, q: int, positions: int) -> None:
    a, g = statistics(m, p, q, seed=11, positions=positions)
    gram = ExactFisher(a, g).gram
    pairs = exact_eigenpairs(gram, m)
    assert torch.allclose(pairs.values, torch.linalg.eigvalsh(dense_fisher(a, g)).flip(0)[: min(m, DEFAULT_TOP_K)], atol=EXACT)
    assert subspace_alignment(gram, m, pairs) == pytest.approx(1.0, abs=EXACT)
    J = per_example_vectors(a, g)  # projections J u_i of F's dense unit eigenvectors, up to sign
    U = top_vectors(J.T @ J / m, min(m, p * q))
    assert torch.allclose((J @ U).abs(), pairs.projections.abs(), atol=EXACT)


@pytest.mark.parametrize("p, q", [(4, 3), (6, 5)])
def test_kfac_is_exact_for_one_example(p: int, q: int) -> None:
    """m = 1: F = ā āᵀ ⊗ g gᵀ is K-FAC's [(ā āᵀ, g gᵀ)] — alignment 1 through the Kronecker and the exact paths."""
    a, g = statistics(1, p, q, seed=12)
    fisher = ExactFisher(a, g)
    gram = fisher.gram
    terms = [(torch.outer(a[0], a[0]), torch.outer(g[0], g[0]))]
    assert torch.allclose(kron_sum(terms), exact_block(a, g), rtol=EXACT, atol=EXACT)
    assert subspace_alignment(gram, 1, kronecker_eigenpairs(fisher, terms)) == pytest.approx(1.0, abs=EXACT)
    assert subspace_alignment(gram, 1, exact_eigenpairs(gram, 1)) == pytest.approx(1.0, abs=EXACT)
    # the same F split into two terms goes through the reduced dense path
    split = [(terms[0][0], 0.25 * terms[0][1]), (terms[0][0], 0.75 * terms[0][1])]
    assert subspace_alignment(gram, 1, kronecker_eigenpairs(fisher, split)) == pytest.approx(1.0, abs=EXACT)


def test_merged_layers_match_dense_block_diagonal_and_network_fisher() -> None:
    m, k = 7, 5
    (a1, g1), (a2, g2) = statistics(m, 4, 3, seed=13), statistics(m, 3, 2, seed=14, positions=2)
    fishers = [ExactFisher(a1, g1), ExactFisher(a2, g2)]
    terms1, terms2 = random_terms(4, 3, 1, seed=15), random_terms(3, 2, 2, seed=16)
    merged = merge([kronecker_eigenpairs(fishers[0], terms1, k), kronecker_eigenpairs(fishers[1], terms2, k)], k)
    F_hat = torch.block_diag(kron_sum(terms1), kron_sum(terms2))
    J = torch.cat([per_example_vectors(a1, g1), per_example_vectors(a2, g2)], dim=1)
    F = J.T @ J / m
    sub_batch = SubBatchFisher([LayerStatistics(a1, g1), LayerStatistics(a2, g2)])
    network_gram = sub_batch.gram() / m  # SubBatchFisher's K = JJᵀ has no 1/m
    assert torch.allclose(network_gram, J @ J.T / m, rtol=EXACT, atol=EXACT)
    assert torch.allclose(merged.values, torch.linalg.eigvalsh(F_hat).flip(0)[:k], rtol=EXACT, atol=EXACT)
    expected = reference_alignment(F, F_hat, k)
    assert subspace_alignment(network_gram, m, merged, k) == pytest.approx(expected, rel=EXACT, abs=EXACT)
    assert 0.0 < expected < 1.0 - 1e-3
    for index, (fisher, terms) in enumerate(zip(fishers, (terms1, terms2))):  # the layer rows
        layer_gram = sub_batch.layer_gram(index) / m
        assert torch.allclose(layer_gram, fisher.gram, rtol=EXACT, atol=EXACT)
        expected = reference_alignment(exact_block(fisher.a, fisher.g), kron_sum(terms), k)
        assert subspace_alignment(layer_gram, m, kronecker_eigenpairs(fisher, terms, k), k) == pytest.approx(expected, rel=EXACT, abs=EXACT)
    network = merge([exact_eigenpairs(sub_batch.layer_gram(index) / m, m, k) for index in range(2)], k)  # block-diagonal exact NG
    expected = reference_alignment(F, torch.block_diag(exact_block(a1, g1), exact_block(a2, g2)), k)
    assert subspace_alignment(network_gram, m, network, k) == pytest.approx(expected, rel=EXACT, abs=EXACT)


@pytest.mark.parametrize("method", ["deflation", "random"])
def test_block_lanczos_path_agrees_with_dense(method: str) -> None:
    m, p, q, k = 40, 30, 20, DEFAULT_TOP_K
    a, g = statistics(m, p, q, seed=17)
    fisher = ExactFisher(a, g)
    terms = approximate(method, a, g, tol=1e-12).terms if method != "random" else random_terms(p, q, 2, seed=18)
    dense = kronecker_eigenpairs(fisher, terms, k)
    krylov = kronecker_eigenpairs(fisher, terms, k, dense_limit=0)  # n = 600 > max(0, 4k): block Lanczos
    assert dense.residual == 0.0 and 0.0 < krylov.residual <= KRYLOV_RTOL
    scale = float(dense.values.abs().max())
    assert torch.allclose(krylov.values, dense.values, rtol=0, atol=KRYLOV_AGREEMENT * scale)
    gram = fisher.gram
    aligned = subspace_alignment(gram, m, krylov, k)
    assert aligned == pytest.approx(subspace_alignment(gram, m, dense, k), abs=KRYLOV_AGREEMENT)
    assert aligned == pytest.approx(reference_alignment(dense_fisher(a, g), kron_sum(terms), k), abs=KRYLOV_AGREEMENT)


def test_orthogonal_subspaces_give_zero() -> None:
    """F̂'s top eigenvectors x ⊗ y with x ⟂ range(āᵀ): ⟨DW_n, y xᵀ⟩ = (g_n·y)(ā_n·x) = 0."""
    m, p, q = 2, 5, 4
    a, g = statistics(m, p, q, seed=19)
    fisher = ExactFisher(a, g)
    complement = torch.linalg.svd(a.T, full_matrices=True)[0][:, m:]  # p − m directions ⟂ every ā_n
    A = complement @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=DTYPE)) @ complement.T
    G = random_spd(q, torch.Generator().manual_seed(20))
    expected = reference_alignment(dense_fisher(a, g), torch.kron(A, G), 2)
    assert expected < ZERO
    assert subspace_alignment(fisher.gram, m, kronecker_eigenpairs(fisher, [(A, G)], 2), 2) < ZERO
    # a control: the same spectrum on range(āᵀ) instead aligns with F
    inside = torch.linalg.svd(a.T, full_matrices=True)[0][:, :m] @ torch.diag(torch.tensor([3.0, 2.0], dtype=DTYPE))
    assert subspace_alignment(fisher.gram, m, kronecker_eigenpairs(fisher, [(inside @ inside.T, G)], 2), 2) > 1e-2


def test_zero_fisher_or_no_eigenpairs_give_nan() -> None:
    m, p, q = 5, 4, 3
    a, g = statistics(m, p, q, seed=21)
    zero = ExactFisher(a, torch.zeros_like(g))
    terms = random_terms(p, q, 1, seed=22)
    assert math.isnan(subspace_alignment(zero.gram, m, kronecker_eigenpairs(zero, terms)))
    assert math.isnan(subspace_alignment(zero.gram, m, exact_eigenpairs(zero.gram, m)))
    fisher = ExactFisher(a, g)
    nothing = kronecker_eigenpairs(fisher, [(torch.zeros(p, p, dtype=DTYPE), random_spd(q, torch.Generator()))])
    assert nothing.values.numel() == 0
    assert math.isnan(subspace_alignment(fisher.gram, m, nothing))


def test_k_is_capped_by_the_rank_of_f() -> None:
    """m = 3 < k: only F's 3 nonzero eigenvalues are compared (k' = 3), exactly as the dense reference with k = 3."""
    m, p, q = 3, 4, 3
    a, g = statistics(m, p, q, seed=23)
    fisher = ExactFisher(a, g)
    terms = random_terms(p, q, 2, seed=24)
    pairs = kronecker_eigenpairs(fisher, terms, DEFAULT_TOP_K)
    assert pairs.values.numel() == DEFAULT_TOP_K
    value = subspace_alignment(fisher.gram, m, pairs, DEFAULT_TOP_K)
    assert value == pytest.approx(reference_alignment(dense_fisher(a, g), kron_sum(terms), m), rel=EXACT)
    assert subspace_alignment(fisher.gram, m, pairs, m) == pytest.approx(value, rel=EXACT)


def test_bad_shapes_are_refused() -> None:
    gram = torch.eye(3, dtype=DTYPE)
    pairs = Eigenpairs(torch.ones(1, dtype=DTYPE), torch.ones(4, 1, dtype=DTYPE))
    with pytest.raises(Exception, match="m = 3"):
        subspace_alignment(gram, 3, pairs)
    with pytest.raises(Exception, match="Gram"):
        exact_eigenpairs(gram, 4)
    with pytest.raises(Exception, match="same m"):
        merge([pairs, Eigenpairs(torch.ones(1, dtype=DTYPE), torch.ones(3, 1, dtype=DTYPE))])


def low_rank(d: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    X = torch.randn(d, rank, generator=gen, dtype=DTYPE)
    return X @ torch.diag(torch.arange(1, rank + 1, dtype=DTYPE)) @ X.T


def test_block_lanczos_restarts_after_an_invariant_subspace() -> None:
    """F̃ of rank 3·5 + 1 = 16: the Krylov space is invariant after two blocks and continues from fresh directions."""
    m, p, q, k = 40, 30, 20, DEFAULT_TOP_K
    a, g = statistics(m, p, q, seed=25)
    fisher = ExactFisher(a, g)
    gen = torch.Generator().manual_seed(26)
    terms = [(low_rank(p, 3, gen), low_rank(q, 5, gen)), (0.5 * low_rank(p, 1, gen), low_rank(q, 1, gen))]
    dense = kronecker_eigenpairs(fisher, terms, k)
    krylov = kronecker_eigenpairs(fisher, terms, k, dense_limit=0)
    assert krylov.residual <= KRYLOV_RTOL
    assert torch.allclose(krylov.values, dense.values, rtol=0, atol=KRYLOV_AGREEMENT * float(dense.values[0]))
    gram = fisher.gram
    assert subspace_alignment(gram, m, krylov, k) == pytest.approx(subspace_alignment(gram, m, dense, k), abs=KRYLOV_AGREEMENT)


def test_block_lanczos_reports_an_exhausted_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    m, p, q, k = 40, 30, 20, DEFAULT_TOP_K
    a, g = statistics(m, p, q, seed=17)
    fisher = ExactFisher(a, g)
    monkeypatch.setattr(subspace, "KRYLOV_BUDGET", 2)  # 2 blocks: far from converged
    krylov = kronecker_eigenpairs(fisher, random_terms(p, q, 2, seed=18), k, dense_limit=0)
    assert krylov.residual > 100 * KRYLOV_RTOL
