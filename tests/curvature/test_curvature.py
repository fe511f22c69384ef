"""Every Kronecker approximation against a dense SVD of the explicit ``Z(F)`` (tests/reference.py).

fimbench runs power SVD and Lanczos in Gram coordinates (curvature/rearranged.py); nothing here uses
that machinery to build expectations — references are dense ``F``, dense ``Z(F)`` and ``torch.linalg.svd``.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    DTYPE,
    best_kronecker,
    best_rank1_of_matrix,
    fisher_from_statistics,
    kron_sum,
    mat_ref,
    random_spd,
    random_symmetric,
    rearrange_ref,
    relative_error,
    vec_ref,
)

from fimbench.curvature import KroneckerSum, approximate, approximate_ekfac
from fimbench.curvature.kfac_corrected import SCALE_TOLERANCE
from fimbench.curvature.rearranged import RearrangedOperator
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import capture_statistics
from fimbench.fisher.likelihood import Likelihood

EXACT = 1e-10  # relative; closed forms and exact cases (round-off only)
SINGLE_EXAMPLE = 1e-12  # relative error when m = 1 (F is itself one Kronecker product)
ERROR_MATCH = 1e-9  # relative to ‖F‖: Frobenius errors at the default tol (they are second order in it)
ITERATIVE = 1e-6  # relative to ‖F‖: reconstructions F̂ when the solver runs at TIGHT_TOL
TIGHT_TOL = 1e-10  # solver tolerance asked for when F̂ itself is compared
TIGHT_ITERATIONS = 2000
RESIDUAL_SLACK = 1e-10  # dense recomputation vs the reported residual (Lanczos' β|x_k| carries round-off)
FLOAT32 = 1e-4  # float32 statistics vs the float64 reference

ITERATIVE_METHODS = ["kpsvd", "deflation", "lanczos", "kfac-corrected"]
ALL_METHODS = ["kfac", *ITERATIVE_METHODS]
BEST_RANK = {"kpsvd": 1, "deflation": 2, "lanczos": 2}

# (m, p, q, seed): m = 2 and m < p; m < p² < pq; generic; m > p² (rank-deficient Gram matrices);
# more examples than the Krylov dimension (Lanczos restarts).
CASES = [(2, 4, 3, 0), (5, 4, 3, 1), (20, 4, 3, 2), (60, 3, 2, 3), (40, 6, 5, 5)]
CASE_IDS = ["m2", "m<p2", "generic", "m>p2", "restarts"]


def statistics(m: int, p: int, q: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.cat([torch.randn(m, p - 1, generator=gen, dtype=DTYPE), torch.ones(m, 1, dtype=DTYPE)], dim=1)
    return a, torch.randn(m, q, generator=gen, dtype=DTYPE)


def norm(x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x))


def min_eig_ratio(M: torch.Tensor) -> float:
    """Smallest eigenvalue relative to the largest magnitude: ≥ 0 for PSD."""
    eigenvalues = torch.linalg.eigvalsh(M)
    return float(eigenvalues.min() / eigenvalues.abs().max())


# --------------------------------------------------------------------------- Gram coordinates vs dense Z
def test_rearranged_operator_is_exact_in_gram_coordinates(make_statistics):
    """``RearrangedOperator`` (Prop. 3.1 in Gram coordinates) equals the dense Z it represents.

    Z = (w/m) Σ_t vec(ā_t ā_tᵀ) vec(g_t g_tᵀ)ᵀ + Σ_k c_k vec(R_k) vec(S_k)ᵀ, with an EMA weight, a prior term
    and a zero-coefficient (warm-start) term; then one deflation.
    """
    m, p, q = 7, 4, 3
    a, g = make_statistics(m, p, q, seed=3)
    gen = torch.Generator().manual_seed(4)
    R1, S1 = random_spd(p, gen), random_spd(q, gen)
    R2, S2 = random_symmetric(p, gen), random_symmetric(q, gen)
    w, c1 = 0.3, 0.7
    operator = RearrangedOperator.build(a, g, batch_weight=w, terms=[(c1, R1, S1), (0.0, R2, S2)])
    Z = rearrange_ref(w * fisher_from_statistics(a, g) + c1 * torch.kron(R1, S1), p, q)
    phi_a, phi_g = operator.activations.materialise, operator.derivatives.materialise
    n = operator.size
    assert n == m + 2
    basis_a = [torch.outer(row, row) for row in a] + [R1, R2]
    basis_g = [torch.outer(row, row) for row in g] + [S1, S2]
    gram_a = torch.stack([torch.stack([torch.sum(X * Y) for Y in basis_a]) for X in basis_a])
    gram_g = torch.stack([torch.stack([torch.sum(X * Y) for Y in basis_g]) for X in basis_g])
    assert torch.allclose(operator.gram_a, gram_a, rtol=EXACT, atol=0)
    assert torch.allclose(operator.gram_g, gram_g, rtol=EXACT, atol=0)
    scale = norm(Z)
    for _ in range(3):
        x = torch.randn(n, generator=gen, dtype=DTYPE)
        y = torch.randn(n, generator=gen, dtype=DTYPE)
        assert torch.allclose(phi_a(x), sum(c * X for c, X in zip(x, basis_a)), rtol=0, atol=EXACT * scale)
        assert norm(vec_ref(phi_a(operator.matvec(y))) - Z @ vec_ref(phi_g(y))) <= EXACT * scale * norm(y)
        assert norm(vec_ref(phi_g(operator.rmatvec(x))) - Z.T @ vec_ref(phi_a(x))) <= EXACT * scale * norm(x)
        assert math.isclose(float(operator.norm_left(x)), norm(phi_a(x)), rel_tol=EXACT)
        assert math.isclose(float(operator.norm_right(y)), norm(phi_g(y)), rel_tol=EXACT)
    assert math.isclose(operator.frobenius_norm(), scale, rel_tol=EXACT)
    x, y = torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    deflated = operator.deflated(0.5, x, y)
    Z_deflated = Z - 0.5 * torch.outer(vec_ref(phi_a(x)), vec_ref(phi_g(y)))
    y2 = torch.randn(n, generator=gen, dtype=DTYPE)
    assert norm(vec_ref(phi_a(deflated.matvec(y2))) - Z_deflated @ vec_ref(phi_g(y2))) <= EXACT * scale * norm(y2)
    assert math.isclose(deflated.frobenius_norm(), norm(Z_deflated), rel_tol=1e-8)
    assert torch.equal(operator.core, torch.diag(torch.tensor([w / m] * m + [c1, 0.0], dtype=DTYPE)))


# ------------------------------------------------------------------------------ each method vs dense SVD
@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_error_equals_best_kronecker_rank_error(method, case):
    """KPSVD = best rank-1, Deflation and Lanczos = best rank-2 (Theorem 3.1 + Eckart–Young)."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    F = fisher_from_statistics(a, g)
    rank = BEST_RANK[method]
    _, best_error = best_kronecker(F, p, q, rank)
    ks = approximate(method, a, g)
    assert ks.rank == rank
    error = norm(F - kron_sum(ks.terms))
    assert error >= best_error - EXACT * norm(F)  # nothing beats the SVD
    assert error - best_error <= ERROR_MATCH * norm(F)


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reconstruction_equals_best_kronecker_sum(method, case):
    """At a tight tolerance F̂ itself (not only its error) is the SVD's best rank-r Kronecker sum."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    F = fisher_from_statistics(a, g)
    best_terms, _ = best_kronecker(F, p, q, BEST_RANK[method])
    ks = approximate(method, a, g, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    assert norm(ks.to_dense() - kron_sum(best_terms)) <= ITERATIVE * norm(F)
    assert torch.allclose(ks.to_dense(), kron_sum(ks.terms), rtol=0, atol=EXACT * norm(F))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kfac_is_the_pair_of_moments(case):
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    ks = approximate("kfac", a, g)
    (A, G), = ks.terms
    A_ref = sum(torch.outer(row, row) for row in a) / m
    G_ref = sum(torch.outer(row, row) for row in g) / m
    assert torch.allclose(A, A_ref, rtol=EXACT, atol=EXACT)
    assert torch.allclose(G, G_ref, rtol=EXACT, atol=EXACT)
    assert ks.iterations == 0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kfac_corrected_is_kfac_plus_best_rank1_correction(case):
    """``F̂ = A_KFAC ⊗ G_KFAC + P ⊗ Q`` with ``vec(P)vec(Q)ᵀ`` the best rank-1 of ``Z(F) − vec(A)vec(G)ᵀ`` (eq. 6)."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    F = fisher_from_statistics(a, g)
    A_ref, G_ref = a.T @ a / m, g.T @ g / m
    sigma, u, v = best_rank1_of_matrix(rearrange_ref(F, p, q) - torch.outer(vec_ref(A_ref), vec_ref(G_ref)))
    correction = sigma * torch.kron(mat_ref(u, p, p), mat_ref(v, q, q))

    ks = approximate("kfac-corrected", a, g, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    assert ks.rank == 2
    A, G = ks.terms[0]
    assert torch.allclose(A, A_ref, rtol=EXACT, atol=EXACT) and torch.allclose(G, G_ref, rtol=EXACT, atol=EXACT)
    P, Q = ks.terms[1]
    assert norm(torch.kron(P, Q) - correction) <= ITERATIVE * norm(F)
    # the correction is optimal: the error is ‖Z(F) − vec(A)vec(G)ᵀ‖ with σ₁ removed
    residual_matrix = rearrange_ref(F, p, q) - torch.outer(vec_ref(A_ref), vec_ref(G_ref))
    expected_error = math.sqrt(max(norm(residual_matrix) ** 2 - sigma**2, 0.0))
    assert abs(norm(F - ks.to_dense()) - expected_error) <= ERROR_MATCH * norm(F) + ITERATIVE * expected_error


@pytest.mark.parametrize("case", [(20, 4, 3, 2), (40, 6, 5, 5), (30, 6, 5, 7)], ids=["n20", "n40", "n30"])
def test_lanczos_rank_r_is_best_and_monotone(case):
    """Lanczos with r = 1..4 reaches the best Kronecker rank-r error; errors never increase with r."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    F = fisher_from_statistics(a, g)
    errors = []
    for rank in range(1, 5):
        _, best_error = best_kronecker(F, p, q, rank)
        ks = approximate("lanczos", a, g, rank=rank)
        assert ks.rank == rank and len(ks.singular_values) == rank
        error = norm(F - ks.to_dense())
        assert abs(error - best_error) <= ERROR_MATCH * norm(F)
        errors.append(error)
    assert all(later <= earlier + EXACT * norm(F) for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]


def test_lanczos_small_krylov_space_restarts_and_converges():
    """K = 3 < n forces restarts (§3.2.2): still the best rank-2 pair, with more iterations than K."""
    a, g = statistics(40, 6, 5, 5)
    F = fisher_from_statistics(a, g)
    best_terms, _ = best_kronecker(F, 6, 5, 2)
    ks = approximate("lanczos", a, g, rank=2, krylov_dim=3, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    assert ks.iterations > 3
    assert ks.residual <= TIGHT_TOL
    assert norm(ks.to_dense() - kron_sum(best_terms)) <= ITERATIVE * norm(F)


# ---------------------------------------------------------------------------- structure of the factors
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_factors_symmetric_and_leading_pair_psd(method, case):
    """Symmetry is automatic; the leading pair is PSD (Prop. 3.2); KPSVD never loses to K-FAC."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    ks = approximate(method, a, g)
    for A, G in ks.terms:
        assert A.shape == (p, p) and G.shape == (q, q)
        assert torch.allclose(A, A.T, rtol=0, atol=EXACT * float(A.abs().max()))
        assert torch.allclose(G, G.T, rtol=0, atol=EXACT * float(G.abs().max()))
    A1, G1 = ks.terms[0]
    psd_slack = EXACT if method in ("kfac", "kpsvd", "deflation", "kfac-corrected") else ITERATIVE
    assert min_eig_ratio(A1) >= -psd_slack
    assert min_eig_ratio(G1) >= -psd_slack
    assert float(torch.trace(A1)) > 0 and float(torch.trace(G1)) > 0


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
def test_leading_pair_psd_even_from_a_negated_warm_start(method):
    """``R ⊗ S = (−R) ⊗ (−S)``: the sign is a choice, and fimbench must choose the PSD pair (Prop. 3.2)
    even when the iteration is seeded with negative definite factors."""
    a, g = statistics(20, 4, 3, seed=2)
    previous = approximate(method, a, g)
    negated = KroneckerSum([(-A, -G) for A, G in previous.terms])
    ks = approximate(method, a, g, warm_start=negated)
    A1, G1 = ks.terms[0]
    assert min_eig_ratio(A1) >= -ITERATIVE and min_eig_ratio(G1) >= -ITERATIVE
    assert torch.allclose(ks.to_dense(), previous.to_dense(), rtol=0, atol=1e-4 * float(previous.to_dense().abs().max()))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kpsvd_error_not_above_kfac(case):
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    F = fisher_from_statistics(a, g)
    kfac_error = relative_error(F, approximate("kfac", a, g).to_dense())
    kpsvd_error = relative_error(F, approximate("kpsvd", a, g).to_dense())
    rank2_errors = [relative_error(F, approximate(method, a, g).to_dense()) for method in ("deflation", "lanczos")]
    assert kpsvd_error <= kfac_error + EXACT
    assert all(error <= kpsvd_error + EXACT for error in rank2_errors)
    assert relative_error(F, approximate("kfac-corrected", a, g).to_dense()) <= kfac_error + EXACT


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("p, q", [(3, 2), (5, 4)])
def test_single_example_is_exact_for_every_method(method, p, q):
    """m = 1: F = ā āᵀ ⊗ g gᵀ is itself one Kronecker product, so every method recovers it exactly."""
    a, g = statistics(1, p, q, seed=11)
    F = fisher_from_statistics(a, g)
    ks = approximate(method, a, g)
    assert relative_error(F, ks.to_dense()) <= SINGLE_EXAMPLE
    if ks.rank == 2:  # nothing is left for the second term
        C, D = ks.terms[1]
        assert norm(torch.kron(C, D)) <= SINGLE_EXAMPLE * norm(F)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_single_example_from_a_real_network_is_exact(method, make_mlp):
    model = make_mlp((5, 4, 3, 5), Likelihood.BERNOULLI, seed=2)
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    layers = model.linear_layers()
    stats = capture_statistics(model, x, Likelihood.BERNOULLI, layers, generator=torch.Generator().manual_seed(6))
    for layer_stats in stats:
        F = fisher_from_statistics(layer_stats.a, layer_stats.g)
        assert relative_error(F, approximate(method, layer_stats.a, layer_stats.g).to_dense()) <= SINGLE_EXAMPLE


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
def test_real_network_block_matches_dense_svd(method, make_mlp):
    """Statistics captured from a real MLP (sampled targets), not just random vectors."""
    model = make_mlp((6, 5, 4, 6), Likelihood.GAUSSIAN, seed=3)
    x = torch.randn(24, 6, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
    stats = capture_statistics(model, x, Likelihood.GAUSSIAN, model.linear_layers(), generator=torch.Generator().manual_seed(8))
    for layer_stats in stats:
        p, q = layer_stats.a.shape[1], layer_stats.g.shape[1]
        F = fisher_from_statistics(layer_stats.a, layer_stats.g)
        _, best_error = best_kronecker(F, p, q, BEST_RANK[method])
        error = norm(F - approximate(method, layer_stats.a, layer_stats.g).to_dense())
        assert abs(error - best_error) <= ERROR_MATCH * norm(F)


def test_float32_statistics_still_match_the_float64_reference():
    a, g = statistics(20, 4, 3, 2)
    F = fisher_from_statistics(a, g)
    _, best_error = best_kronecker(F, 4, 3, 2)
    ks = approximate("deflation", a.float(), g.float())
    assert ks.terms[0][0].dtype == torch.float32
    assert abs(norm(F - ks.to_dense().double()) - best_error) <= FLOAT32 * norm(F)


# ----------------------------------------------------------------------------- iterations and residuals
def _pair_vectors(R: torch.Tensor, S: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ``u = vec(R)/√σ`` and ``v = vec(S)/√σ`` of a term ``(√σ MAT(u), √σ MAT(v))``."""
    return vec_ref(R) / math.sqrt(sigma), vec_ref(S) / math.sqrt(sigma)


@pytest.mark.parametrize("case", [(20, 4, 3, 2), (40, 6, 5, 5), (12, 6, 5, 4)], ids=["n20", "n40", "n12"])
def test_reported_residuals_are_real(case):
    """Recompute ``‖Z v − σ u‖ / σ_ref`` densely from the returned factors for every iterative method."""
    m, p, q, seed = case
    a, g = statistics(m, p, q, seed)
    Z = rearrange_ref(fisher_from_statistics(a, g), p, q)
    sigma_1 = float(torch.linalg.svdvals(Z)[0])
    tol = 1e-6

    # KPSVD: σ = ‖Zᵀu‖ and v = Zᵀu/σ by construction; the check is on Z v − σ u
    ks = approximate("kpsvd", a, g, tol=tol)
    (sigma,) = ks.singular_values
    u, v = _pair_vectors(*ks.terms[0], sigma)
    assert math.isclose(norm(u), 1.0, rel_tol=EXACT) and math.isclose(norm(v), 1.0, rel_tol=EXACT)
    dense = norm(Z @ v - sigma * u) / sigma
    assert ks.iterations > 0 and ks.residual <= tol
    assert abs(dense - ks.residual) <= RESIDUAL_SLACK
    assert norm(Z.T @ u - sigma * v) <= EXACT * sigma_1

    # Deflation: second pair on Z − σ₁ u₁ v₁ᵀ, residual relative to the undeflated σ₁
    ks = approximate("deflation", a, g, tol=tol)
    s1, s2 = ks.singular_values
    u1, v1 = _pair_vectors(*ks.terms[0], s1)
    u2, v2 = _pair_vectors(*ks.terms[1], s2)
    first = norm(Z @ v1 - s1 * u1) / s1
    second = norm((Z - s1 * torch.outer(u1, v1)) @ v2 - s2 * u2) / s1
    assert ks.iterations > 0 and ks.residual <= tol
    assert abs(max(first, second) - ks.residual) <= RESIDUAL_SLACK

    # Lanczos: Z v_i = σ_i u_i exactly, the residual is ‖Zᵀ u_i − σ_i v_i‖ (relative to σ₁)
    ks = approximate("lanczos", a, g, tol=tol, krylov_dim=4)
    worst = 0.0
    for (R, S), sigma in zip(ks.terms, ks.singular_values):
        u, v = _pair_vectors(R, S, sigma)
        worst = max(worst, norm(Z.T @ u - sigma * v) / ks.singular_values[0])
        assert norm(Z @ v - sigma * u) <= EXACT * sigma_1
    assert ks.iterations > 0 and ks.residual <= tol
    assert abs(worst - ks.residual) <= RESIDUAL_SLACK
    assert math.isclose(ks.singular_values[0], sigma_1, rel_tol=ITERATIVE)

    # KFAC-corrected: power SVD on Z − vec(A)vec(G)ᵀ; its σ_ref is σ₁ of Z(F), estimated to SCALE_TOLERANCE
    ks = approximate("kfac-corrected", a, g, tol=tol)
    (A, G), (P, Q) = ks.terms
    (sigma,) = ks.singular_values
    u, v = _pair_vectors(P, Q, sigma)
    Z_corrected = Z - torch.outer(vec_ref(A), vec_ref(G))
    dense = norm(Z_corrected @ v - sigma * u) / sigma_1
    assert ks.iterations > 0 and ks.residual <= tol
    assert abs(dense - ks.residual) <= SCALE_TOLERANCE * dense + RESIDUAL_SLACK


# ------------------------------------------------------------------------------------- EMA and priors
def _prior(method: str, p: int, q: int) -> KroneckerSum:
    """A previous approximation of the same method, on other statistics."""
    a_old, g_old = statistics(15, p, q, seed=21)
    return approximate(method, a_old, g_old)


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
@pytest.mark.parametrize("decay", [0.5, 0.95])
def test_prior_gives_best_approximation_of_ema_block(method, decay):
    """With ``prior`` and ``decay = ρ`` the target is ``ρ F̂_old + (1 − ρ) F`` (§2.2)."""
    m, p, q = 20, 4, 3
    a, g = statistics(m, p, q, seed=2)
    old = _prior(method, p, q)
    target = decay * old.to_dense() + (1 - decay) * fisher_from_statistics(a, g)
    best_terms, best_error = best_kronecker(target, p, q, BEST_RANK[method])
    ks = approximate(method, a, g, prior=old, decay=decay, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    assert norm(ks.to_dense() - kron_sum(best_terms)) <= ITERATIVE * norm(target)
    assert abs(norm(target - ks.to_dense()) - best_error) <= ERROR_MATCH * norm(target)


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
def test_foreign_indefinite_prior(method):
    """Any Kronecker sum may be the prior, e.g. a rank-2 one whose second term is indefinite."""
    m, p, q = 9, 3, 4
    a, g = statistics(m, p, q, seed=5)
    gen = torch.Generator().manual_seed(6)
    old = KroneckerSum([(random_spd(p, gen), random_spd(q, gen)), (random_symmetric(p, gen), 0.3 * random_symmetric(q, gen))])
    decay = 0.8
    target = decay * old.to_dense() + (1 - decay) * fisher_from_statistics(a, g)
    best_terms, _ = best_kronecker(target, p, q, BEST_RANK[method])
    ks = approximate(method, a, g, prior=old, decay=decay, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    assert norm(ks.to_dense() - kron_sum(best_terms)) <= ITERATIVE * norm(target)


def test_kfac_prior_is_ema_of_factors():
    m, p, q, decay = 10, 4, 3, 0.7
    a, g = statistics(m, p, q, seed=2)
    old = _prior("kfac", p, q)
    (A, G), = approximate("kfac", a, g, prior=old, decay=decay).terms
    (A_old, G_old), = old.terms
    assert torch.allclose(A, decay * A_old + (1 - decay) * a.T @ a / m, rtol=EXACT, atol=EXACT)
    assert torch.allclose(G, decay * G_old + (1 - decay) * g.T @ g / m, rtol=EXACT, atol=EXACT)
    # decay 0 ignores the prior
    (A0, G0), = approximate("kfac", a, g, prior=old, decay=0.0).terms
    assert torch.allclose(A0, a.T @ a / m, rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("decay", [0.5, 0.95])
def test_kfac_corrected_prior(decay):
    """EMA'd K-FAC pair + best rank-1 of ``Z(ρ F̂_old + (1 − ρ) F) − vec(A)vec(G)ᵀ``."""
    m, p, q = 20, 4, 3
    a, g = statistics(m, p, q, seed=2)
    old = _prior("kfac-corrected", p, q)
    (A_old, G_old), _ = old.terms
    A_ref = decay * A_old + (1 - decay) * a.T @ a / m
    G_ref = decay * G_old + (1 - decay) * g.T @ g / m
    target = decay * old.to_dense() + (1 - decay) * fisher_from_statistics(a, g)
    sigma, u, v = best_rank1_of_matrix(rearrange_ref(target, p, q) - torch.outer(vec_ref(A_ref), vec_ref(G_ref)))
    expected = torch.kron(A_ref, G_ref) + sigma * torch.kron(mat_ref(u, p, p), mat_ref(v, q, q))

    ks = approximate("kfac-corrected", a, g, prior=old, decay=decay, tol=TIGHT_TOL, max_iterations=TIGHT_ITERATIONS)
    A, G = ks.terms[0]
    assert torch.allclose(A, A_ref, rtol=EXACT, atol=EXACT) and torch.allclose(G, G_ref, rtol=EXACT, atol=EXACT)
    assert norm(ks.to_dense() - expected) <= ITERATIVE * norm(target)


@pytest.mark.parametrize("method", ITERATIVE_METHODS)
def test_warm_start_same_answer_fewer_iterations(method):
    """Seeding with the previous solution (§4) converges to the same F̂ in fewer iterations."""
    m, p, q = 40, 6, 5
    a, g = statistics(m, p, q, seed=5)
    gen = torch.Generator().manual_seed(99)
    a_new = a.clone()
    a_new[:, :-1] += 0.01 * torch.randn(m, p - 1, generator=gen, dtype=DTYPE)
    g_new = g + 0.01 * torch.randn(m, q, generator=gen, dtype=DTYPE)
    options = {"krylov_dim": 4} if method == "lanczos" else {}
    previous = approximate(method, a, g, **options)
    cold = approximate(method, a_new, g_new, **options)
    warm = approximate(method, a_new, g_new, warm_start=previous, **options)
    assert warm.iterations < cold.iterations
    assert warm.residual <= 1e-6 and cold.residual <= 1e-6
    F = fisher_from_statistics(a_new, g_new)
    best_terms, _ = best_kronecker(F, p, q, 2)
    if method == "kfac-corrected":
        reference = cold.to_dense()
    else:
        reference = kron_sum(best_terms[: BEST_RANK[method]])
    assert norm(warm.to_dense() - reference) <= 1e-4 * norm(F)  # both stop at tol = 1e-6
    assert norm(warm.to_dense() - cold.to_dense()) <= 1e-4 * norm(F)
    # at a tight tolerance the two runs agree to ITERATIVE
    tight = {"tol": TIGHT_TOL, "max_iterations": TIGHT_ITERATIONS, **options}
    cold_tight = approximate(method, a_new, g_new, **tight)
    warm_tight = approximate(method, a_new, g_new, warm_start=previous, **tight)
    assert norm(warm_tight.to_dense() - cold_tight.to_dense()) <= ITERATIVE * norm(F)


# ------------------------------------------------------------------------------------------ validation
def test_invalid_arguments_raise_fimbench_error():
    a, g = statistics(5, 3, 2, seed=0)
    with pytest.raises(FimbenchError):
        approximate("sgd", a, g)
    with pytest.raises(FimbenchError):
        approximate("no-such-method", a, g)
    with pytest.raises(FimbenchError):
        approximate("kpsvd", a, g[:4])
    with pytest.raises(FimbenchError):
        approximate("kpsvd", a, g, prior=approximate("kpsvd", a, g), decay=1.0)
    with pytest.raises(FimbenchError):
        approximate("kpsvd", a, g, tol=0.0)
    with pytest.raises(FimbenchError):
        approximate("lanczos", a, g, rank=0)
    with pytest.raises(FimbenchError):
        approximate("lanczos", a, g, krylov_dim=1)
    with pytest.raises(FimbenchError):
        approximate("kpsvd", a, g, max_iterations=0)
    with pytest.raises(FimbenchError, match="unknown approximation option 'tolerance'; the options are tol, "):
        approximate("kpsvd", a, g, tolerance=1e-3)
    with pytest.raises(FimbenchError, match="'max_iteration'; did you mean 'max_iterations'"):
        approximate("kpsvd", a, g, max_iteration=5)
    with pytest.raises(FimbenchError, match="decay must be in"):
        approximate("kfac", a, g, prior=approximate("kfac", a, g), decay=1.0)  # K-FAC refuses it too
    with pytest.raises(FimbenchError, match="a and g must be"):
        approximate_ekfac(a, g[:4])
    with pytest.raises(FimbenchError, match="decay must be in"):
        approximate_ekfac(a, g, prior=approximate_ekfac(a, g), decay=1.5)


@pytest.mark.parametrize("method", ITERATIVE_METHODS)
def test_zero_decay_with_the_prior_as_warm_start(method):
    """The optimizer's call with ema_decay = 0: the prior drops out of the target but still seeds it."""
    m, p, q = 30, 5, 4
    a, g = statistics(m, p, q, seed=8)
    previous = approximate(method, *statistics(m, p, q, seed=9))
    seeded = approximate(method, a, g, prior=previous, decay=0.0, warm_start=previous)
    fresh = approximate(method, a, g)
    F = fisher_from_statistics(a, g)
    assert seeded.residual <= 1e-6
    assert norm(seeded.to_dense() - fresh.to_dense()) <= 1e-4 * norm(F)


@pytest.mark.parametrize("method", ITERATIVE_METHODS)
@pytest.mark.parametrize("shape", [(5, 1), (1, 4)], ids=["q=1", "p=1"])
def test_single_output_or_input_layer_is_exact_and_finite(method, shape):
    """A layer with one output (a scalar head) or one input: ``Z(F)`` has one column or row, so ``F`` is one
    Kronecker product. Every Gram-coordinate method reproduces it exactly (Deflation's deflated operator is zero, its second
    term (0, 0)), over an EMA update too, and the damped solve is the dense one."""
    p, q = shape
    a, g = statistics(12, p, q, 0)
    F = fisher_from_statistics(a, g)
    ks = approximate(method, a, g)
    assert norm(F - kron_sum(ks.terms)) <= EXACT * norm(F)
    if method == "deflation":
        assert all(float(factor.abs().max()) == 0.0 for factor in ks.terms[1]) and ks.singular_values[1] == 0.0
    a2, g2 = statistics(12, p, q, 1)
    updated = approximate(method, a2, g2, prior=ks, decay=0.5, warm_start=ks)
    expected = 0.5 * F + 0.5 * fisher_from_statistics(a2, g2)
    assert norm(expected - kron_sum(updated.terms)) <= EXACT * norm(expected)
    gradient = torch.randn(q, p, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    direction = updated.inverse(1e-3).apply(gradient)
    dense = torch.linalg.solve(updated.damped(1e-3).to_dense(), vec_ref(gradient))
    assert torch.allclose(vec_ref(direction), dense, rtol=1e-8, atol=1e-12)
