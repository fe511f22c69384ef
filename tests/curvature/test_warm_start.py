"""Warm starts that used to be fixed points of the iteration: a vanished term and an annihilated start."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, best_kronecker, best_rank1_of_matrix, fisher_from_statistics, kron_sum, mat_ref, rearrange_ref, vec_ref

from fimbench.curvature import approximate

RECOVERED = 1e-6  # relative, as asked of a warm start that falls back to the cold start
DECAY = 0.5  # ρ of the second statistics update, min(1 − 1/2, 0.95)


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "lanczos"])
def test_update_after_a_dead_layer_equals_a_cold_start(method: str, make_statistics) -> None:
    """After an update with ``g ≡ 0`` the approximation is zero; the next one must recover from it.

    The zero prior contributes nothing to ``ρ F̂_old + (1 − ρ) F``, so the result is ``(1 − ρ)`` times the
    cold-start approximation of ``F``.
    """
    a, g = make_statistics(30, 6, 5, seed=1)
    dead = approximate(method, a, torch.zeros_like(g))
    assert all(float(A.abs().max()) == 0.0 for A, _ in dead.terms)
    warm = approximate(method, a, g, prior=dead, decay=DECAY, warm_start=dead)
    cold = approximate(method, a, g)
    assert relative(warm.to_dense(), (1.0 - DECAY) * cold.to_dense()) <= RECOVERED


def test_kfac_corrected_recovers_after_a_dead_layer(make_statistics) -> None:
    """Same for KFAC-corrected, against the dense best correction of ``Z(T) − vec(A) vec(G)ᵀ``, where
    ``T = (1 − ρ) F`` and ``A ⊗ G`` is the EMA of K-FAC's factors: the dead update left ``G = 0`` but its
    ``A`` (same activations) in place, so ``A = A_batch`` and ``G = (1 − ρ) G_batch``."""
    a, g = make_statistics(30, 6, 5, seed=2)
    m, p, q = a.shape[0], a.shape[1], g.shape[1]
    dead = approximate("kfac-corrected", a, torch.zeros_like(g))
    warm = approximate("kfac-corrected", a, g, prior=dead, decay=DECAY, warm_start=dead)
    A, G = a.T @ a / m, (1.0 - DECAY) * g.T @ g / m
    Z = (1.0 - DECAY) * rearrange_ref(fisher_from_statistics(a, g), p, q) - torch.outer(vec_ref(A), vec_ref(G))
    sigma, u, v = best_rank1_of_matrix(Z)
    expected = torch.kron(A, G) + sigma * torch.kron(mat_ref(u, p, p), mat_ref(v, q, q))
    assert relative(warm.to_dense(), expected) <= RECOVERED


def two_groups(m: int = 20, p: int = 5, q: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the examples have ``g = e₁``, the other half ``g = e₂`` and activations rotated by an orthogonal Q.

    ``Z(F) = X₁ f₁ᵀ + X₂ f₂ᵀ`` with ``f_i = vec(e_i e_iᵀ)``, ``‖X₁‖ = ‖X₂‖`` and ``⟨X₁, X₂⟩ > 0``: the leading
    right singular vector is ``(f₁ + f₂)/√2``, which is exactly the cold start ``E[g gᵀ]``, and ``σ₂ > 0``.
    """
    gen = torch.Generator().manual_seed(4)
    half = torch.randn(m // 2, p, generator=gen, dtype=DTYPE)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=DTYPE))
    a = torch.cat([half, half @ Q.T])
    g = torch.zeros(m, q, dtype=DTYPE)
    g[: m // 2, 0] = 1.0
    g[m // 2 :, 1] = 1.0
    return a, g


@pytest.mark.parametrize("method", ["deflation", "lanczos"])
def test_second_pair_survives_a_first_pair_converged_in_one_iteration(method: str) -> None:
    """Deflation's second power SVD must not start along ``v₁``; Lanczos' bidiagonalisation, which breaks
    down after one step from ``v₁``, must go on in the orthogonal complement."""
    a, g = two_groups()
    p, q = a.shape[1], g.shape[1]
    F = fisher_from_statistics(a, g)
    sigma = torch.linalg.svdvals(rearrange_ref(F, p, q))
    assert float(sigma[1]) > 1e-3 * float(sigma[0])
    kpsvd = approximate("kpsvd", a, g)
    assert kpsvd.iterations == 1  # the cold start is the leading right singular vector
    rank2 = approximate(method, a, g)
    assert rank2.singular_values[1] == pytest.approx(float(sigma[1]), rel=RECOVERED)
    terms, _ = best_kronecker(F, p, q, rank=2)
    assert relative(rank2.to_dense(), kron_sum(terms)) <= RECOVERED
