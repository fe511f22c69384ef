"""Kronecker algebra (fimbench.curvature.kronecker, fimbench.fisher.block_errors) against the paper's definitions (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from reference import (
    DTYPE,
    fisher_from_statistics,
    mat_ref,
    rearrange,
    rearrange_ref,
    vec_ref,
    z_matvec,
    z_rmatvec,
)

from fimbench.curvature.kronecker import (
    kron_dense,
    kron_matvec,
    quadratic_forms,
    unvec,
    vec,
    weighted_gram,
)
from fimbench.fisher.block_errors import exact_block

EXACT = 1e-12  # relative: identities that hold in exact arithmetic, float64 round-off only

SHAPES = [(1, 1), (2, 3), (4, 2), (3, 5)]  # (p, q)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = EXACT) -> bool:
    scale = max(float(expected.abs().max()), 1.0)
    return float((actual - expected).abs().max()) <= tol * scale


def test_vec_is_column_major(generator):
    V = torch.arange(6, dtype=DTYPE).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    assert vec(V).tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    X = torch.randn(4, 3, generator=generator, dtype=DTYPE)
    assert torch.equal(vec(X), vec_ref(X))
    assert torch.equal(unvec(vec(X), 4, 3), X)
    assert torch.equal(unvec(vec_ref(X), 4, 3), mat_ref(vec_ref(X), 4, 3))


@pytest.mark.parametrize("p, q", SHAPES)
def test_kron_matvec_identity(generator, p, q):
    """``kron(A, G) @ vec(V) == vec(G V Aᵀ)`` for non-symmetric A, G and a (q, p) V."""
    A = torch.randn(p, p, generator=generator, dtype=DTYPE)
    G = torch.randn(q, q, generator=generator, dtype=DTYPE)
    V = torch.randn(q, p, generator=generator, dtype=DTYPE)
    dense = torch.kron(A, G) @ vec_ref(V)
    assert close(vec_ref(kron_matvec(A, G, V)), dense)
    assert close(vec_ref(G @ V @ A.T), dense)
    assert torch.equal(kron_dense(A, G), torch.kron(A, G))


def test_rearrangement_reference_by_hand():
    """The reference Z(F) on a 2×2-block example written out from the paper's definition."""
    p, q = 2, 2
    F = torch.arange(16, dtype=DTYPE).reshape(4, 4)
    # blocks F11 = [[0,1],[4,5]], F21 = [[8,9],[12,13]], F12 = [[2,3],[6,7]], F22 = [[10,11],[14,15]]
    expected = torch.tensor(
        [[0, 4, 1, 5], [8, 12, 9, 13], [2, 6, 3, 7], [10, 14, 11, 15]], dtype=DTYPE
    )  # rows vec(F11), vec(F21), vec(F12), vec(F22)
    assert torch.equal(rearrange_ref(F, p, q), expected)


@pytest.mark.parametrize("p, q", SHAPES)
def test_rearrange_matches_reference(generator, p, q):
    F = torch.randn(p * q, p * q, generator=generator, dtype=DTYPE)
    assert torch.equal(rearrange(F, p, q), rearrange_ref(F, p, q))


@pytest.mark.parametrize("p, q", SHAPES)
def test_rearrangement_of_a_kronecker_product_is_rank_one(generator, p, q):
    """``Z(R ⊗ S) = vec(R) vec(S)ᵀ`` — the heart of Theorem 3.1."""
    R = torch.randn(p, p, generator=generator, dtype=DTYPE)
    S = torch.randn(q, q, generator=generator, dtype=DTYPE)
    assert close(rearrange_ref(torch.kron(R, S), p, q), torch.outer(vec_ref(R), vec_ref(S)))


@pytest.mark.parametrize("p, q", SHAPES)
def test_theorem_3_1_frobenius_identity(generator, p, q):
    """``‖F − R⊗S‖_F = ‖Z(F) − vec(R) vec(S)ᵀ‖_F`` for arbitrary F, R, S (Z is a permutation of entries)."""
    F = torch.randn(p * q, p * q, generator=generator, dtype=DTYPE)
    for _ in range(3):
        R = torch.randn(p, p, generator=generator, dtype=DTYPE)
        S = torch.randn(q, q, generator=generator, dtype=DTYPE)
        left = torch.linalg.norm(F - torch.kron(R, S))
        right = torch.linalg.norm(rearrange_ref(F, p, q) - torch.outer(vec_ref(R), vec_ref(S)))
        assert abs(float(left - right)) <= EXACT * float(left)
    # and the rearrangement is a permutation of the entries: same multiset of values
    assert torch.equal(torch.sort(F.reshape(-1)).values, torch.sort(rearrange(F, p, q).reshape(-1)).values)


@pytest.mark.parametrize("m, p, q", [(1, 3, 2), (2, 4, 3), (7, 3, 5), (40, 3, 2)])
def test_exact_block_matches_sum_of_kronecker_products(make_statistics, m, p, q):
    a, g = make_statistics(m, p, q)
    F = exact_block(a, g)
    assert F.shape == (p * q, p * q)
    assert close(F, fisher_from_statistics(a, g))
    assert close(F, F.T)


@pytest.mark.parametrize("m, p, q", [(1, 3, 2), (5, 4, 3), (30, 3, 4)])
def test_prop_3_1_matrix_free_products(generator, make_statistics, m, p, q):
    """``Z(F) vec(V) = E[(gᵀVg) vec(ā āᵀ)]`` and ``Z(F)ᵀ vec(U) = E[(āᵀUā) vec(g gᵀ)]`` vs the dense Z(F)."""
    a, g = make_statistics(m, p, q)
    Z = rearrange_ref(fisher_from_statistics(a, g), p, q)
    for _ in range(3):
        V = torch.randn(q, q, generator=generator, dtype=DTYPE)  # not symmetric: the identity still holds
        U = torch.randn(p, p, generator=generator, dtype=DTYPE)
        assert close(vec_ref(z_matvec(a, g, V)), Z @ vec_ref(V))
        assert close(vec_ref(z_rmatvec(a, g, U)), Z.T @ vec_ref(U))


def test_weighted_gram_and_quadratic_forms(generator):
    x = torch.randn(6, 4, generator=generator, dtype=DTYPE)
    w = torch.randn(6, generator=generator, dtype=DTYPE)
    M = torch.randn(4, 4, generator=generator, dtype=DTYPE)
    assert close(weighted_gram(x, w), sum(w[t] * torch.outer(x[t], x[t]) for t in range(6)))
    assert close(quadratic_forms(x, M), torch.stack([x[t] @ M @ x[t] for t in range(6)]))

