"""kl_forward / kl_reverse (fimbench.fisher.gaussian_divergence) against the dense float64 definition
``KL(N(0, Σ₀) ‖ N(0, Σ₁)) = ½ [tr(Σ₁⁻¹ Σ₀) − d + log det Σ₁ − log det Σ₀]``, for every damped operator fimbench
inverts, per layer, for shared weights and for a block-diagonal approximation of a two-layer network."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, fisher_from_statistics, random_spd, random_statistics, random_symmetric

from fimbench.curvature import KroneckerSum
from fimbench.curvature.diagonalisation import KroneckerDiagonalisation
from fimbench.curvature.ekfac import approximate_ekfac
from fimbench.fisher.block_errors import ExactFisher, exact_block
from fimbench.fisher.gaussian_divergence import diagonalised_terms, exact_terms, kl_divergences

EXACT = 1e-9  # relative: identities exact in real arithmetic, float64 round-off only (sums over d log λ cancel)
DAMPING = 0.05


def dense_kl(first: torch.Tensor, second: torch.Tensor) -> float:
    """``KL(N(0, first) ‖ N(0, second))`` from the definition, dense."""
    d = first.shape[0]
    return 0.5 * float(
        torch.trace(torch.linalg.solve(second, first)) - d + torch.linalg.slogdet(second).logabsdet - torch.linalg.slogdet(first).logabsdet
    )


def gram(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``K̃ = J Jᵀ / m`` of the rows ``vec(DW_n)``."""
    m = a.shape[0]
    rows = (torch.einsum("ntq,ntp->npq", g, a) if a.ndim == 3 else a[:, :, None] * g[:, None, :]).reshape(m, -1)
    return rows @ rows.T / m


def damped_reference(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    F = exact_block(a, g)
    return F + DAMPING * torch.eye(F.shape[0], dtype=DTYPE)


def check_against_dense(a: torch.Tensor, g: torch.Tensor, operator: KroneckerDiagonalisation, dense_operator: torch.Tensor) -> None:
    forward, reverse = kl_divergences(gram(a, g), DAMPING, diagonalised_terms(ExactFisher(a, g), operator))
    exact = damped_reference(a, g)
    assert forward == pytest.approx(dense_kl(dense_operator, exact), rel=EXACT)
    assert reverse == pytest.approx(dense_kl(exact, dense_operator), rel=EXACT)
    assert forward > 0.01 and reverse > 0.01  # a genuinely different operator: the comparison is not 0 = 0


def kronecker_terms(p: int, q: int, rank: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    terms = [(random_spd(p, generator), random_spd(q, generator))]
    if rank == 2:
        terms.append((0.4 * random_symmetric(p, generator), 0.4 * random_symmetric(q, generator)))  # indefinite
    return terms


@pytest.mark.parametrize("m, p, q", [(7, 4, 3), (30, 4, 3), (2, 5, 4)])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("form", ["factored", "exact"])
def test_kronecker_damped_operators_match_the_dense_divergences(m, p, q, rank, form):
    a, g = random_statistics(m, p, q, torch.Generator().manual_seed(m))
    inverse = KroneckerSum(kronecker_terms(p, q, rank, seed=p)).inverse(DAMPING, form=form)
    operator = KroneckerDiagonalisation.of_inverse(inverse)
    dense = inverse.operator.to_dense()
    B = torch.kron(*operator.basis)  # the congruence itself: F̂_λ = B diag(vec D) Bᵀ, C = B⁻ᵀ
    assert torch.allclose(B @ torch.diag(operator.diagonal.T.reshape(-1)) @ B.T, dense, atol=EXACT * float(dense.abs().max()))
    assert torch.allclose(torch.kron(*operator.inverse_basis), torch.linalg.inv(B).T, atol=1e-8)
    assert operator.log_determinant() == pytest.approx(float(torch.linalg.slogdet(dense).logabsdet), rel=EXACT)
    assert operator.trace() == pytest.approx(float(torch.trace(dense)), rel=EXACT)
    assert operator.inverse_trace() == pytest.approx(float(torch.trace(torch.linalg.inv(dense))), rel=EXACT)
    check_against_dense(a, g, operator, dense)


@pytest.mark.parametrize("shared", [False, True])
def test_eigenbasis_operator_matches_the_dense_divergences(shared):
    """EKFAC's ``F̂ + λI`` through the chunked sandwich (no Kronecker-sum shortcut), per-layer and shared weights."""
    generator = torch.Generator().manual_seed(3)
    if shared:
        a, g = torch.randn(6, 3, 4, generator=generator, dtype=DTYPE), torch.randn(6, 3, 3, generator=generator, dtype=DTYPE)
    else:
        a, g = random_statistics(9, 4, 3, generator)
    approximation = approximate_ekfac(a, g)
    operator = KroneckerDiagonalisation.orthonormal(approximation.bases, approximation.scales + DAMPING)
    dense = approximation.to_dense() + DAMPING * torch.eye(12, dtype=DTYPE)
    check_against_dense(a, g, operator, dense)


def test_chunked_sandwich_equals_one_chunk(monkeypatch):
    """The chunking of the eigenbasis sandwich changes nothing (one row of D per chunk against all at once)."""
    from fimbench.fisher import gaussian_divergence

    a, g = random_statistics(8, 5, 4, torch.Generator().manual_seed(4))
    approximation = approximate_ekfac(a, g)
    operator = KroneckerDiagonalisation.orthonormal(approximation.bases, approximation.scales + DAMPING)
    whole = diagonalised_terms(ExactFisher(a, g), operator)
    monkeypatch.setattr(gaussian_divergence, "CHUNK_ELEMENTS", 1)
    chunked = diagonalised_terms(ExactFisher(a, g), operator)
    assert torch.allclose(whole.sandwich, chunked.sandwich, rtol=1e-12)
    assert torch.allclose(whole.inverse_diagonal, chunked.inverse_diagonal, rtol=1e-12)


def test_exact_approximation_gives_zero_both_ways():
    """F̂ = F: the exact block's own terms, and K-FAC of one example (F = āāᵀ ⊗ ggᵀ) damped exactly, give 0 and 0."""
    a, g = random_statistics(5, 4, 3, torch.Generator().manual_seed(5))
    forward, reverse = kl_divergences(gram(a, g), DAMPING, exact_terms(gram(a, g), DAMPING, 12))
    assert abs(forward) < EXACT and abs(reverse) < EXACT
    one_a, one_g = a[:1], g[:1]
    kfac = KroneckerSum([(torch.outer(one_a[0], one_a[0]), torch.outer(one_g[0], one_g[0]))])
    assert torch.allclose(kfac.to_dense(), fisher_from_statistics(one_a, one_g))
    operator = KroneckerDiagonalisation.of_inverse(kfac.inverse(DAMPING, form="exact"))
    forward, reverse = kl_divergences(gram(one_a, one_g), DAMPING, diagonalised_terms(ExactFisher(one_a, one_g), operator))
    assert abs(forward) < EXACT and abs(reverse) < EXACT


def test_exact_terms_when_the_batch_exceeds_the_dimension():
    """m > d: K̃ has m − d structural zeros beyond F's d eigenvalues; tr F_λ⁻¹ still counts d eigenvalues."""
    a, g = random_statistics(20, 3, 2, torch.Generator().manual_seed(6))
    terms = exact_terms(gram(a, g), DAMPING, 6)
    dense = damped_reference(a, g)
    assert terms.inverse_trace == pytest.approx(float(torch.trace(torch.linalg.inv(dense))), rel=EXACT)
    assert terms.log_determinant == pytest.approx(float(torch.linalg.slogdet(dense).logabsdet), rel=EXACT)


def test_block_diagonal_network_divergence_matches_dense():
    """Two layers on one batch: blockdiag(F̂₁, F̂₂) against the coupled network F = JᵀJ/m (the terms add)."""
    generator = torch.Generator().manual_seed(7)
    m = 6
    layers = [random_statistics(m, 3, 2, generator), random_statistics(m, 4, 2, generator)]
    inverses = [KroneckerSum(kronecker_terms(a.shape[1], g.shape[1], 2, seed=i)).inverse(DAMPING) for i, (a, g) in enumerate(layers)]
    first, second = (diagonalised_terms(ExactFisher(a, g), KroneckerDiagonalisation.of_inverse(inverse)) for (a, g), inverse in zip(layers, inverses))
    total = first + second
    network_gram = sum(gram(a, g) for a, g in layers)
    forward, reverse = kl_divergences(network_gram, DAMPING, total)
    rows = torch.cat([(a[:, :, None] * g[:, None, :]).reshape(m, -1) for a, g in layers], dim=1)
    exact = rows.T @ rows / m + DAMPING * torch.eye(rows.shape[1], dtype=DTYPE)
    approximate = torch.block_diag(*[inverse.operator.to_dense() for inverse in inverses])
    assert forward == pytest.approx(dense_kl(approximate, exact), rel=EXACT)
    assert reverse == pytest.approx(dense_kl(exact, approximate), rel=EXACT)
