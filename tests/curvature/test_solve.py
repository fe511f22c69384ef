"""``KroneckerSum.damped / .solve / .inverse`` (§2.2 damping, §3.4 solve) against dense linear algebra."""

from __future__ import annotations

import math

import pytest
import torch
from reference import DTYPE, mat_ref, random_spd, random_symmetric, vec_ref

from fimbench.curvature import DEFAULT_MIN_CURVATURE_RATIO, KroneckerSum, approximate
from fimbench.errors import FimbenchError

SOLVE = 1e-9  # relative: closed-form solves vs torch.linalg.solve (condition numbers stay below ~1e4 here)
EXACT = 1e-12  # relative: algebraic identities of the damped factors

DAMPINGS = [1e-3, 0.1, 3.0]
P, Q = 5, 4


def dense_solve(operator: KroneckerSum, V: torch.Tensor) -> torch.Tensor:
    """``MAT(F̃⁻¹ vec(V))`` with a dense ``F̃ = operator.to_dense()``."""
    q, p = V.shape
    return mat_ref(torch.linalg.solve(operator.to_dense(), vec_ref(V)), q, p)


def assert_solves(ks: KroneckerSum, damping: float, gen: torch.Generator, **kwargs) -> None:
    damped = ks.damped(damping, **kwargs)
    for _ in range(3):
        V = torch.randn(ks.q, ks.p, generator=gen, dtype=DTYPE)
        expected = dense_solve(damped, V)
        actual = ks.solve(V, damping, **kwargs)
        assert actual.shape == V.shape
        assert float((actual - expected).norm()) <= SOLVE * float(expected.norm())


def damping_split(A: torch.Tensor, G: torch.Tensor) -> float:
    """``π = sqrt((tr A / p) / (tr G / q))`` (§2.2), computed independently."""
    return math.sqrt((float(torch.trace(A)) / A.shape[0]) / (float(torch.trace(G)) / G.shape[0]))


def generalised_eigenvalues(operator: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``reference^{-1/2} operator reference^{-1/2}`` (reference SPD)."""
    L = torch.linalg.cholesky(reference)
    whitened = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, operator, upper=False).T, upper=False)
    return torch.linalg.eigvalsh(0.5 * (whitened + whitened.T))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("damping", DAMPINGS)
def test_rank1_solve_and_damping_convention(gen, damping):
    A, G = random_spd(P, gen), 3.0 * random_spd(Q, gen)
    ks = KroneckerSum([(A, G)])
    pi = damping_split(A, G)
    assert math.isclose(ks.damping_split(), pi, rel_tol=EXACT)
    (A_damped, G_damped), = ks.damped(damping).terms
    root = math.sqrt(damping)
    assert torch.allclose(A_damped, A + pi * root * torch.eye(P, dtype=DTYPE), rtol=EXACT, atol=EXACT)
    assert torch.allclose(G_damped, G + root / pi * torch.eye(Q, dtype=DTYPE), rtol=EXACT, atol=EXACT)
    assert_solves(ks, damping, gen)
    V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
    by_hand = torch.linalg.inv(G_damped) @ V @ torch.linalg.inv(A_damped)  # eq. (2)
    assert torch.allclose(ks.solve(V, damping), by_hand, rtol=SOLVE, atol=SOLVE * float(by_hand.abs().max()))


@pytest.mark.parametrize("damping", DAMPINGS)
def test_rank2_psd_solve_is_dense_solve_of_plain_damped_sum(gen, damping):
    A, G = random_spd(P, gen), random_spd(Q, gen)
    C, D = random_spd(P, gen), 2.0 * random_spd(Q, gen)
    ks = KroneckerSum([(A, G), (C, D)])
    inverse = ks.inverse(damping)
    assert inverse.correction_scale == 1.0  # PSD correction: nothing to guard against
    pi, root = damping_split(A, G), math.sqrt(damping)
    plain = KroneckerSum(
        [(A + pi * root * torch.eye(P, dtype=DTYPE), G + root / pi * torch.eye(Q, dtype=DTYPE)), (C, D)]
    )
    assert torch.allclose(ks.damped(damping).to_dense(), plain.to_dense(), rtol=EXACT, atol=EXACT)
    assert_solves(ks, damping, gen)
    V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
    assert torch.equal(inverse.apply(V), ks.solve(V, damping))


def test_rank2_indefinite_but_safe_correction_is_untouched(gen):
    """An indefinite second term that keeps every ``1 + s₂ⱼ s₁ᵢ ≥ δ`` is inverted as it is."""
    A, G = random_spd(P, gen), random_spd(Q, gen)
    C, D = 0.05 * random_symmetric(P, gen), 0.05 * random_symmetric(Q, gen)
    ks = KroneckerSum([(A, G), (C, D)])
    damping = 0.01
    inverse = ks.inverse(damping)
    assert inverse.correction_scale == 1.0
    damped = ks.damped(damping)
    assert torch.equal(damped.terms[1][0], C) and torch.equal(damped.terms[1][1], D)
    assert_solves(ks, damping, gen)


def _unsafe_sum(gen: torch.Generator) -> KroneckerSum:
    """Rank 2 whose second term makes ``1 + s₂ s₁ᵀ`` strongly negative somewhere."""
    A, G = random_spd(P, gen), random_spd(Q, gen)
    C = 4.0 * random_symmetric(P, gen)
    D = 4.0 * random_symmetric(Q, gen)
    return KroneckerSum([(A, G), (C, D)])


@pytest.mark.parametrize("ratio", [DEFAULT_MIN_CURVATURE_RATIO, 0.5, 1.0])
@pytest.mark.parametrize("damping", [1e-3, 0.1])
def test_safeguard_keeps_preconditioner_positive_definite(gen, ratio, damping):
    ks = _unsafe_sum(gen)
    (A, G), (C, D) = ks.terms
    pi, root = damping_split(A, G), math.sqrt(damping)
    first = torch.kron(A + pi * root * torch.eye(P, dtype=DTYPE), G + root / pi * torch.eye(Q, dtype=DTYPE))
    unguarded = first + torch.kron(C, D)
    assert float(torch.linalg.eigvalsh(unguarded).min()) < 0  # the case really needs a safeguard

    inverse = ks.inverse(damping, min_curvature_ratio=ratio)
    tau = inverse.correction_scale
    assert 0.0 <= tau < 1.0
    damped = ks.damped(damping, min_curvature_ratio=ratio)
    assert torch.allclose(damped.terms[0][0], A + pi * root * torch.eye(P, dtype=DTYPE), rtol=EXACT, atol=EXACT)
    assert torch.allclose(damped.terms[1][0], tau * C, rtol=EXACT, atol=EXACT)
    assert torch.equal(damped.terms[1][1], D)
    dense = damped.to_dense()
    assert torch.allclose(dense, first + tau * torch.kron(C, D), rtol=EXACT, atol=EXACT * float(dense.abs().max()))
    assert float(torch.linalg.eigvalsh(dense).min()) > 0  # positive definite
    ratios = generalised_eigenvalues(dense, first)
    assert float(ratios.min()) >= ratio - 1e-9
    assert math.isclose(float(ratios.min()), ratio, rel_tol=1e-8, abs_tol=1e-9)  # shrunk just enough
    assert_solves(ks, damping, gen, min_curvature_ratio=ratio)
    for _ in range(5):
        V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
        assert float((ks.solve(V, damping, min_curvature_ratio=ratio) * V).sum()) > 0  # descent direction


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"])
@pytest.mark.parametrize("damping", DAMPINGS)
def test_every_method_output_solves_like_dense(gen, method, damping):
    m = 9
    a = torch.cat([torch.randn(m, P - 1, generator=gen, dtype=DTYPE), torch.ones(m, 1, dtype=DTYPE)], dim=1)
    g = torch.randn(m, Q, generator=gen, dtype=DTYPE)
    ks = approximate(method, a, g)
    damped = ks.damped(damping)
    assert float(torch.linalg.eigvalsh(damped.to_dense()).min()) > 0
    assert_solves(ks, damping, gen)
    inverse = ks.inverse(damping)
    if inverse.correction_scale == 1.0 and ks.rank == 2:
        assert torch.equal(damped.terms[1][0], ks.terms[1][0])


def test_lanczos_rank3_cannot_be_solved(gen):
    a = torch.cat([torch.randn(12, P - 1, generator=gen, dtype=DTYPE), torch.ones(12, 1, dtype=DTYPE)], dim=1)
    g = torch.randn(12, Q, generator=gen, dtype=DTYPE)
    ks = approximate("lanczos", a, g, rank=3)
    V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
    with pytest.raises(FimbenchError):
        ks.solve(V, 1e-3)
    with pytest.raises(FimbenchError):
        ks.damped(1e-3)
    with pytest.raises(FimbenchError):
        KroneckerSum([(random_spd(P, gen), random_spd(Q, gen))] * 3).inverse(1e-3)


def test_invalid_damping_and_ratio(gen):
    ks = KroneckerSum([(random_spd(P, gen), random_spd(Q, gen))])
    with pytest.raises(FimbenchError):
        ks.solve(torch.zeros(Q, P, dtype=DTYPE), -1.0)
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(FimbenchError):
            ks.inverse(1e-3, min_curvature_ratio=ratio)
    indefinite = KroneckerSum([(-random_spd(P, gen), random_spd(Q, gen))])
    with pytest.raises(FimbenchError, match="damping"):
        indefinite.inverse(1e-6)


def test_damping_split_falls_back_to_one_without_positive_traces(gen):
    ks = KroneckerSum([(torch.zeros(P, P, dtype=DTYPE), random_spd(Q, gen))])
    assert ks.damping_split() == 1.0
    (A, G), = ks.damped(0.25).terms
    assert torch.allclose(A, 0.5 * torch.eye(P, dtype=DTYPE)) and torch.allclose(G, ks.terms[0][1] + 0.5 * torch.eye(Q, dtype=DTYPE))


def test_zero_damping_inverts_the_approximation_itself(gen):
    A, G, C, D = random_spd(P, gen), random_spd(Q, gen), random_spd(P, gen), random_spd(Q, gen)
    ks = KroneckerSum([(A, G), (C, D)])
    V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
    expected = mat_ref(torch.linalg.solve(ks.to_dense(), vec_ref(V)), Q, P)
    assert torch.allclose(ks.solve(V, 0.0), expected, rtol=SOLVE, atol=SOLVE * float(expected.abs().max()))


def test_float32_rank2_solve_survives_float32_eigh_failure(gen, monkeypatch):
    """float32 LAPACK eigh fails (raises, or returns NaN) on the many repeated zero eigenvalues of a
    low-rank correction — seen in training on the CURVES autoencoder. The solve must not depend on it."""
    real_eigh = torch.linalg.eigh

    def float32_fails(matrix, *args, **kwargs):
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated: linalg.eigh failed to converge")
        return real_eigh(matrix, *args, **kwargs)

    m = 6
    a = torch.cat([torch.randn(m, P - 1, generator=gen, dtype=DTYPE), torch.ones(m, 1, dtype=DTYPE)], dim=1)
    g = torch.randn(m, Q, generator=gen, dtype=DTYPE)
    ks64 = approximate("deflation", a, g)
    ks32 = KroneckerSum([(A.float(), G.float()) for A, G in ks64.terms])
    V = torch.randn(Q, P, generator=gen, dtype=DTYPE)
    expected = dense_solve(ks64.damped(1e-2), V)
    monkeypatch.setattr(torch.linalg, "eigh", float32_fails)
    actual = ks32.solve(V.float(), 1e-2)
    assert actual.dtype == torch.float32
    assert float((actual.double() - expected).norm()) <= 1e-4 * float(expected.norm())
