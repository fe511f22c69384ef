"""EKFAC against dense float64 references: its eigenvalues are the diagonal of F in K-FAC's eigenbasis,
its EMA re-basing is exact, its damped solve is ``(F̂ + λI)⁻¹``, and Error 1 / Error 2 of its fast path
equal the dense ones (flat and shared-weight statistics)."""

from __future__ import annotations

import math

import pytest
import torch
from reference import DTYPE, fisher_from_gradients, random_statistics, relative_error

from fimbench.curvature.ekfac import approximate_ekfac, eigenbases
from fimbench.curvature.kfac import kfac_factors
from fimbench.curvature.kronecker import kron_dense
from fimbench.fisher.block_errors import ExactFisher, eigenbasis_errors

EXACT_RTOL = 1e-10


def statistics(shared: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, p) / (m, q) statistics, or (m, T, p) / (m, T, q) ones of a layer applied at T = 3 positions."""
    generator = torch.Generator().manual_seed(seed)
    if not shared:
        return random_statistics(9, 5, 4, generator)
    return torch.randn(6, 3, 5, generator=generator, dtype=DTYPE), torch.randn(6, 3, 4, generator=generator, dtype=DTYPE)


def dense_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(1/m) Σ_n vec(DW_n) vec(DW_n)ᵀ`` with ``DW_n = Σ_t g_nt ā_ntᵀ`` (torch.einsum, then the reference)."""
    if a.ndim == 2:
        a, g = a.unsqueeze(1), g.unsqueeze(1)
    return fisher_from_gradients(torch.einsum("ntq,ntp->nqp", g, a))


def diagonal_in(F: torch.Tensor, bases: tuple[torch.Tensor, torch.Tensor], q: int, p: int) -> torch.Tensor:
    """``diag((Q_A ⊗ Q_G)ᵀ F (Q_A ⊗ Q_G))`` as the (q, p) matrix S (column-major vec)."""
    Q = torch.kron(*bases)
    return torch.diag(Q.T @ F @ Q).reshape(p, q).T


@pytest.mark.parametrize("shared", [False, True])
def test_eigenvalues_are_the_diagonal_of_the_fisher_in_kfac_eigenbasis(shared):
    a, g = statistics(shared)
    ekfac = approximate_ekfac(a, g)
    A, G = kfac_factors(a, g, None, 0.0)
    for factor, basis in zip((A, G), ekfac.bases):  # K-FAC's eigenbases
        rotated = basis.T @ factor @ basis
        assert torch.allclose(rotated, torch.diag(torch.diagonal(rotated)), atol=1e-12)
    F = dense_fisher(a, g)
    assert torch.allclose(ekfac.scales, diagonal_in(F, ekfac.bases, g.shape[-1], a.shape[-1]), rtol=EXACT_RTOL, atol=1e-13)
    # Frobenius-optimal among operators diagonal in that basis: any other diagonal is farther from F
    Q = torch.kron(*ekfac.bases)
    other = ekfac.scales * (1.0 + 0.05 * torch.randn(ekfac.scales.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE))
    moved = Q @ torch.diag(other.T.reshape(-1)) @ Q.T
    assert relative_error(F, ekfac.to_dense()) < relative_error(F, moved)


@pytest.mark.parametrize("new_basis", [False, True])
def test_ema_eigenvalues_are_the_optimal_diagonal_of_the_ema_target(new_basis):
    """With a prior F̂_old and ρ, S is the diagonal of ``ρ F̂_old + (1 − ρ) F`` in the basis used: the prior's,
    or the eigenbasis of the EMA factors (the old eigenvalues re-based exactly)."""
    decay = 0.7
    old_a, old_g = statistics(False, seed=1)
    a, g = statistics(False, seed=2)
    prior = approximate_ekfac(old_a, old_g)
    ekfac = approximate_ekfac(a, g, prior=prior, decay=decay, new_basis=new_basis)
    A_old, G_old = prior.factors
    A, G = kfac_factors(a, g, None, 0.0)
    assert torch.allclose(ekfac.factors[0], decay * A_old + (1 - decay) * A, rtol=EXACT_RTOL)
    expected_bases = eigenbases(*ekfac.factors) if new_basis else prior.bases
    for basis, expected in zip(ekfac.bases, expected_bases):
        assert torch.equal(basis, expected)
    target = decay * prior.to_dense() + (1 - decay) * dense_fisher(a, g)
    assert torch.allclose(ekfac.scales, diagonal_in(target, ekfac.bases, 4, 5), rtol=EXACT_RTOL, atol=1e-13)


def test_damped_solve_and_product_equal_dense():
    a, g = statistics(True)
    ekfac = approximate_ekfac(a, g)
    V = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    damped = ekfac.to_dense() + 0.2 * torch.eye(20, dtype=DTYPE)
    vec = V.T.reshape(-1)
    assert torch.allclose(ekfac.solve(V, 0.2).T.reshape(-1), torch.linalg.solve(damped, vec), rtol=1e-10, atol=1e-12)
    assert torch.allclose(ekfac.matvec(V).T.reshape(-1), ekfac.to_dense() @ vec, rtol=1e-10, atol=1e-12)
    with pytest.raises(Exception, match="damping > 0"):
        ekfac.solve(V, 0.0)


@pytest.mark.parametrize("shared", [False, True])
def test_error1_and_error2_equal_the_dense_ones(shared):
    """Error 1 from ⟨F, F̂⟩ = Σ S ∘ S_batch and ‖F̂‖² = Σ S², Error 2 from spec(F̂) = {S_ij}, both against
    dense eigvalsh / norms — for the batch's own EKFAC and for an EMA estimate that is not."""
    a, g = statistics(shared)
    F = dense_fisher(a, g)
    fisher = ExactFisher(a, g)
    own = approximate_ekfac(a, g)
    ema = approximate_ekfac(*statistics(shared, seed=4), prior=None)
    ema = approximate_ekfac(a, g, prior=ema, decay=0.6, new_basis=True)
    for ekfac in (own, ema):
        F_hat = ekfac.to_dense()
        errors = eigenbasis_errors(fisher, ekfac)
        assert math.isclose(errors.error1.value, relative_error(F, F_hat), rel_tol=1e-8)
        spec_F, spec_hat = torch.linalg.eigvalsh(F).flip(0), torch.linalg.eigvalsh(F_hat).flip(0)
        dense_error2 = float(torch.linalg.norm(spec_F - spec_hat) / torch.linalg.norm(spec_F))
        assert math.isclose(errors.error2.value, dense_error2, rel_tol=1e-8)
        assert errors.path == "gram/diag"
    assert eigenbasis_errors(fisher, ema).error1.value > eigenbasis_errors(fisher, own).error1.value


def test_kfac_eigenvalues_refitted_never_farther_than_kfac():
    """EKFAC's diagonal is optimal in K-FAC's own eigenbasis, where K-FAC's diagonal is γ_i α_j."""
    a, g = statistics(False)
    F = dense_fisher(a, g)
    A, G = kfac_factors(a, g, None, 0.0)
    assert relative_error(F, approximate_ekfac(a, g).to_dense()) <= relative_error(F, kron_dense(A, G)) + 1e-12
