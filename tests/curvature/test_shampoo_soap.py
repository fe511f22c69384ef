"""Shampoo's and SOAP's implied Fisher approximations against dense float64 references.

Shampoo: its factors are the second moments of the per-example gradients, its scale is Frobenius-optimal,
and ``R ⊗ L`` is one power-iteration step from the identities on the dense rearrangement ``Z(F)`` (the
issue's acceptance test) — also on the EMA target. SOAP: EKFAC in Shampoo's eigenbasis, its spectrum the
Frobenius-optimal diagonal there, with EKFAC's EMA identities. Flat (T = 1) and shared-weight (T = 3) statistics.
"""

from __future__ import annotations

import pytest
import torch
from reference import (
    DTYPE,
    best_kronecker,
    fisher_from_gradients,
    mat_ref,
    random_spd,
    random_statistics,
    rearrange_ref,
    relative_error,
    vec_ref,
)

from fimbench.curvature import ApproximationOptions, KroneckerSum
from fimbench.curvature import shampoo as shampoo_module
from fimbench.curvature.ekfac import eigenbases
from fimbench.curvature.shampoo import approximate_shampoo, shampoo_factors
from fimbench.curvature.soap import approximate_soap
from fimbench.curvature.targets import Prior
from fimbench.errors import FimbenchError

EXACT = 1e-10  # relative ‖x − y‖ / ‖y‖ of closed forms against dense references (round-off only)
DIAGONAL_ATOL = 1e-13  # absolute, for entries that vanish (rotated factors' off-diagonals, tiny S_ij)
COSINE = 1e-12  # 1 − cos between two operators that are parallel
STATIONARY = 1e-12  # |d/dc ‖F − c K‖²| relative to 2 ‖F‖ ‖K‖ at the fitted scale
PERTURBATION = 1e-3  # relative move of a fitted scale / diagonal that must increase the error

M, T, P, Q = 9, 3, 5, 4
SHAPES = ["flat", "shared"]
FORMS = [("flat", None), ("shared", "gradients"), ("shared", "positions")]
FORM_IDS = ["flat", "shared-gradients", "shared-positions"]


def statistics(shape: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, p) / (m, q) statistics with the bias column, or (m, T, p) / (m, T, q) of a layer applied at T = 3 positions."""
    generator = torch.Generator().manual_seed(seed)
    if shape == "flat":
        return random_statistics(M, P, Q, generator)
    return torch.randn(6, T, P, generator=generator, dtype=DTYPE), torch.randn(6, T, Q, generator=generator, dtype=DTYPE)


def gradients(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-example gradients ``DW_n = Σ_t g_nt ā_ntᵀ`` (m, q, p)."""
    if a.ndim == 2:
        a, g = a.unsqueeze(1), g.unsqueeze(1)
    return torch.einsum("ntq,ntp->nqp", g, a)


def dense_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(1/m) Σ_n vec(DW_n) vec(DW_n)ᵀ`` (tests/reference.py)."""
    return fisher_from_gradients(gradients(a, g))


def brute_force_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``R = (1/m) Σ_n DW_nᵀ DW_n`` and ``L = (1/m) Σ_n DW_n DW_nᵀ``, one example at a time."""
    per_example = gradients(a, g)
    R = sum(DW.T @ DW for DW in per_example) / per_example.shape[0]
    L = sum(DW @ DW.T for DW in per_example) / per_example.shape[0]
    return R, L  # type: ignore[return-value]


def gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """``‖x − y‖_F / ‖y‖_F``."""
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


def inner(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x * y).sum())


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return inner(x, y) / float(torch.linalg.norm(x) * torch.linalg.norm(y))


def optimal_multiple(F: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``c K`` with the closed form ``c = ⟨F, K⟩ / ‖K‖²``."""
    return inner(F, K) / inner(K, K) * K


def one_power_step(F: torch.Tensor, p: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``MAT(Z vec I_q)`` (p × p) and ``MAT(Zᵀ vec I_p)`` (q × q) on the dense rearrangement ``Z = Z(F)``."""
    Z = rearrange_ref(F, p, q)
    u = Z @ vec_ref(torch.eye(q, dtype=DTYPE))
    v = Z.T @ vec_ref(torch.eye(p, dtype=DTYPE))
    return mat_ref(u, p, p), mat_ref(v, q, q)


def diagonal_in(F: torch.Tensor, bases: tuple[torch.Tensor, torch.Tensor], q: int, p: int) -> torch.Tensor:
    """``diag((Q_R ⊗ Q_L)ᵀ F (Q_R ⊗ Q_L))`` as the (q, p) matrix S (column-major vec)."""
    Q_ = torch.kron(*bases)
    return torch.diag(Q_.T @ F @ Q_).reshape(p, q).T


@pytest.fixture
def product_form(request, monkeypatch):
    """Force the shared-weight statistics through the per-example-gradient or the positions form."""
    form = request.param
    if form is not None:
        monkeypatch.setattr(shampoo_module, "product_form", lambda *sizes: form)
    return form


# --------------------------------------------------------------------------------------------- Shampoo
@pytest.mark.parametrize(("shape", "product_form"), FORMS, ids=FORM_IDS, indirect=["product_form"])
def test_shampoo_factors_are_the_second_moments_of_per_example_gradients(shape, product_form):
    a, g = statistics(shape)
    R, L = shampoo_factors(a, g)
    R_ref, L_ref = brute_force_factors(a, g)
    assert R.shape == (P, P) and L.shape == (Q, Q)
    assert gap(R, R_ref) <= EXACT and gap(L, L_ref) <= EXACT
    if shape == "flat":  # T = 1 given as (m, 1, p) is the same layer
        R_3d, L_3d = shampoo_factors(a.unsqueeze(1), g.unsqueeze(1))
        assert gap(R_3d, R_ref) <= EXACT and gap(L_3d, L_ref) <= EXACT


@pytest.mark.parametrize(("shape", "product_form"), FORMS, ids=FORM_IDS, indirect=["product_form"])
def test_shampoo_scale_is_frobenius_optimal(shape, product_form):
    """F̂ = c R ⊗ L with c = ⟨F, R⊗L⟩ / ‖R⊗L‖² on the dense F: d/dc ‖F − c K‖² = 0 there, and moving c
    either way increases the error; the factors are ∝ R and ∝ L with equal norms √‖F̂‖."""
    a, g = statistics(shape)
    F = dense_fisher(a, g)
    K = torch.kron(*brute_force_factors(a, g))
    shampoo = approximate_shampoo(a, g, ApproximationOptions(), Prior())
    F_hat = shampoo.to_dense()
    assert shampoo.method == "shampoo" and shampoo.rank == 1
    assert gap(F_hat, optimal_multiple(F, K)) <= EXACT
    derivative = 2.0 * inner(F_hat - F, K)
    assert abs(derivative) <= STATIONARY * 2.0 * float(torch.linalg.norm(F) * torch.linalg.norm(K))
    for factor in (1.0 - PERTURBATION, 1.0 + PERTURBATION):
        assert relative_error(F, F_hat) < relative_error(F, factor * F_hat)
    A, G = shampoo.terms[0]
    norm_a, norm_g = float(torch.linalg.norm(A)), float(torch.linalg.norm(G))
    assert abs(norm_a - norm_g) <= EXACT * norm_g
    assert abs(norm_a**2 - float(torch.linalg.norm(F_hat))) <= EXACT * norm_a**2


@pytest.mark.parametrize("shape", SHAPES)
def test_shampoo_is_one_power_iteration_of_kpsvd_from_the_identity(shape):
    """The issue's acceptance test. On the dense Z(F) (p² × q², row (μ, ν) = vec(F_μν)ᵀ): ``Z vec(I_q)`` is
    ``vec(R)`` (left, activation side) and ``Zᵀ vec(I_p)`` is ``vec(L)``; their Kronecker product is parallel
    to Shampoo's F̂, and with its optimal scale it is the same operator — which KPSVD's optimum beats."""
    a, g = statistics(shape)
    F = dense_fisher(a, g)
    U, V = one_power_step(F, P, Q)
    R, L = shampoo_factors(a, g)
    assert gap(U, R) <= EXACT and gap(V, L) <= EXACT  # fimbench's convention: R = Z vec I, L = Zᵀ vec I
    F_hat = approximate_shampoo(a, g, ApproximationOptions(), Prior()).to_dense()
    step = torch.kron(U, V)
    assert 1.0 - cosine(step, F_hat) <= COSINE
    assert gap(optimal_multiple(F, step), F_hat) <= EXACT
    _, best_error = best_kronecker(F, P, Q, 1)
    assert best_error <= float(torch.linalg.norm(F - F_hat))


def random_prior(kind: str, p: int, q: int) -> KroneckerSum:
    """An earlier Shampoo approximation, or a rank-2 Kronecker sum of SPD factors (any method's F̂_old)."""
    if kind == "shampoo":
        a, g = statistics("flat", seed=5)
        return approximate_shampoo(a[:, :p], g[:, :q], ApproximationOptions(), Prior())
    generator = torch.Generator().manual_seed(6)
    return KroneckerSum([(random_spd(p, generator), random_spd(q, generator)) for _ in range(2)])


@pytest.mark.parametrize("kind", ["shampoo", "rank-2"])
@pytest.mark.parametrize("shape", SHAPES)
def test_shampoo_ema_is_one_power_iteration_on_the_ema_target(shape, kind):
    """With F̂_old and ρ the factors are Shampoo's statistics of ``ρ F̂_old + (1 − ρ) F`` (one power step on its
    dense Z) and c is optimal against that target; ρ = 0 leaves the prior out."""
    decay = 0.7
    a, g = statistics(shape, seed=2)
    prior = random_prior(kind, P, Q)
    target = decay * prior.to_dense() + (1 - decay) * dense_fisher(a, g)
    ema = approximate_shampoo(a, g, ApproximationOptions(), Prior(prior, decay))
    U, V = one_power_step(target, P, Q)
    assert 1.0 - cosine(torch.kron(U, V), ema.to_dense()) <= COSINE
    assert gap(ema.to_dense(), optimal_multiple(target, torch.kron(U, V))) <= EXACT
    batch = approximate_shampoo(a, g, ApproximationOptions(), Prior())
    ignored = approximate_shampoo(a, g, ApproximationOptions(), Prior(prior, 0.0))
    assert gap(ignored.to_dense(), batch.to_dense()) <= EXACT


def test_shampoo_of_vanishing_derivatives_is_zero():
    a, g = statistics("flat")
    shampoo = approximate_shampoo(a, torch.zeros_like(g), ApproximationOptions(), Prior())
    assert all(bool((factor == 0).all()) for factor in shampoo.terms[0])


# ------------------------------------------------------------------------------------------------ SOAP
@pytest.mark.parametrize("shape", SHAPES)
def test_soap_spectrum_is_the_optimal_diagonal_in_shampoos_eigenbasis(shape):
    """S_ij = E_n[(Q_Lᵀ DW_n Q_R)_ij²] = diag(Qᵀ F Q) with Q = Q_R ⊗ Q_L the eigenvectors of Shampoo's
    factors; spec(F̂) = {S_ij}; any other diagonal in that basis is farther from F."""
    a, g = statistics(shape)
    F = dense_fisher(a, g)
    soap = approximate_soap(a, g)
    R, L = brute_force_factors(a, g)
    assert soap.method == "soap"
    assert gap(soap.factors[0], R) <= EXACT and gap(soap.factors[1], L) <= EXACT
    for factor, basis in zip((R, L), soap.bases):
        rotated = basis.T @ factor @ basis
        assert torch.allclose(rotated, torch.diag(torch.diagonal(rotated)), rtol=0.0, atol=DIAGONAL_ATOL * float(torch.linalg.norm(factor)))
    Q_R, Q_L = soap.bases
    moments = sum((Q_L.T @ DW @ Q_R).square() for DW in gradients(a, g)) / a.shape[0]
    assert gap(soap.scales, moments) <= EXACT  # type: ignore[arg-type]
    assert gap(soap.scales, diagonal_in(F, soap.bases, Q, P)) <= EXACT
    spectrum = torch.linalg.eigvalsh(soap.to_dense())
    assert gap(spectrum, soap.scales.reshape(-1).sort().values) <= EXACT
    noise = torch.randn(soap.scales.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    Q_ = torch.kron(Q_R, Q_L)
    for sign in (1.0, -1.0):
        moved = soap.scales * (1.0 + sign * PERTURBATION * noise)
        moved_dense = Q_ @ torch.diag(moved.T.reshape(-1)) @ Q_.T
        assert relative_error(F, soap.to_dense()) < relative_error(F, moved_dense)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("new_basis", [False, True])
def test_soap_ema_eigenvalues_are_the_optimal_diagonal_of_the_ema_target(new_basis, shape):
    """EKFAC's identities with Shampoo's factors: R, L by EMA; the basis the EMA factors' or the prior's;
    S the diagonal of ``ρ F̂_old + (1 − ρ) F`` in it (the old S re-based exactly)."""
    decay = 0.7
    prior = approximate_soap(*statistics(shape, seed=1))
    a, g = statistics(shape, seed=2)
    soap = approximate_soap(a, g, prior=prior, decay=decay, new_basis=new_basis)
    R, L = brute_force_factors(a, g)
    assert gap(soap.factors[0], decay * prior.factors[0] + (1 - decay) * R) <= EXACT
    assert gap(soap.factors[1], decay * prior.factors[1] + (1 - decay) * L) <= EXACT
    expected_bases = eigenbases(*soap.factors) if new_basis else prior.bases
    for basis, expected in zip(soap.bases, expected_bases):
        assert torch.equal(basis, expected)
    target = decay * prior.to_dense() + (1 - decay) * dense_fisher(a, g)
    assert gap(soap.scales, diagonal_in(target, soap.bases, Q, P)) <= EXACT
    assert soap.method == "soap"


@pytest.mark.parametrize("shape", SHAPES)
def test_soap_is_never_farther_than_shampoo(shape):
    """c R ⊗ L is diagonal in Q_R ⊗ Q_L, where SOAP's diagonal is the Frobenius-optimal one."""
    a, g = statistics(shape)
    F = dense_fisher(a, g)
    shampoo = approximate_shampoo(a, g, ApproximationOptions(), Prior()).to_dense()
    assert relative_error(F, approximate_soap(a, g).to_dense()) <= relative_error(F, shampoo) + EXACT


def test_soap_rejects_a_decay_outside_the_unit_interval_and_mismatched_statistics():
    a, g = statistics("flat")
    with pytest.raises(FimbenchError, match="decay"):
        approximate_soap(a, g, prior=approximate_soap(a, g), decay=1.0)
    with pytest.raises(FimbenchError, match="same m"):
        approximate_soap(a, g[:-1])
