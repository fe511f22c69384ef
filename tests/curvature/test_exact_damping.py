"""Exact damping ``A ⊗ G + λI`` in the first term's eigenbasis, against dense float64 solves: K-FAC's
inverse is ``(A ⊗ G + λI)⁻¹``; a rank-2 method's is the inverse of ``A₁ ⊗ G₁ + λI + τ C̄ ⊗ D̄`` (the
correction's part diagonal in the first term's eigenbasis), built here from its definition."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, random_spd, random_statistics, random_symmetric

from fimbench.curvature import KroneckerSum, approximate
from fimbench.errors import FimbenchError

SOLVE_RTOL = 1e-9


def vec(V: torch.Tensor) -> torch.Tensor:
    return V.T.reshape(-1)


def dense_exact_operator(terms: list[tuple[torch.Tensor, torch.Tensor]], damping: float, delta: float) -> torch.Tensor:
    """``A₁ ⊗ G₁ + λI (+ τ C̄ ⊗ D̄)`` from numpy-style dense algebra: C̄ keeps the diagonal of C in A₁'s
    eigenbasis, and τ is the largest in (0, 1] keeping every eigenvalue ≥ δ times the first term's."""
    A1, G1 = terms[0]
    p, q = A1.shape[0], G1.shape[0]
    first = torch.kron(A1, G1) + damping * torch.eye(p * q, dtype=DTYPE)
    if len(terms) == 1:
        return first
    C, D = terms[1]
    Q_A, Q_G = torch.linalg.eigh(A1)[1], torch.linalg.eigh(G1)[1]
    C_bar = Q_A @ torch.diag(torch.diag(Q_A.T @ C @ Q_A)) @ Q_A.T
    D_bar = Q_G @ torch.diag(torch.diag(Q_G.T @ D @ Q_G)) @ Q_G.T
    Q = torch.kron(Q_A, Q_G)
    ratios = torch.diag(Q.T @ torch.kron(C_bar, D_bar) @ Q) / torch.diag(Q.T @ first @ Q)
    tau = min(1.0, (1.0 - delta) / float(-ratios.min())) if float(-ratios.min()) > 1.0 - delta else 1.0
    return first + tau * torch.kron(C_bar, D_bar)


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"])
def test_exact_damping_inverts_its_dense_operator(method):
    a, g = random_statistics(8, 5, 4, torch.Generator().manual_seed(0))
    approximation = approximate(method, a, g)
    V = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    inverse = approximation.inverse(0.05, 0.1, form="exact")
    dense = dense_exact_operator(approximation.terms, 0.05, 0.1)
    assert torch.allclose(inverse.operator.to_dense(), dense, rtol=SOLVE_RTOL, atol=1e-12)
    assert torch.allclose(vec(inverse.apply(V)), torch.linalg.solve(dense, vec(V)), rtol=SOLVE_RTOL, atol=1e-12)
    if method == "kfac":  # exactly (A ⊗ G + λI)⁻¹
        exact = approximation.to_dense() + 0.05 * torch.eye(20, dtype=DTYPE)
        assert torch.allclose(vec(inverse.apply(V)), torch.linalg.solve(exact, vec(V)), rtol=SOLVE_RTOL, atol=1e-12)


def test_exact_damping_differs_from_factored_damping():
    a, g = random_statistics(8, 5, 4, torch.Generator().manual_seed(0))
    kfac = approximate("kfac", a, g)
    V = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    assert not torch.allclose(kfac.solve(V, 0.05, form="exact"), kfac.solve(V, 0.05, form="factored"), rtol=1e-3)


def test_indefinite_correction_is_shrunk_to_the_curvature_ratio():
    """A strongly negative correction: τ < 1 and the smallest eigenvalue ratio to the damped first term is δ."""
    generator = torch.Generator().manual_seed(2)
    A1, G1 = random_spd(4, generator), random_spd(3, generator)
    C, D = -3.0 * random_spd(4, generator), random_spd(3, generator) + random_symmetric(3, generator) * 0.1
    approximation = KroneckerSum([(A1, G1), (C, D)])
    inverse = approximation.inverse(0.01, 0.2, form="exact")
    assert inverse.correction_scale < 1.0
    dense = dense_exact_operator(approximation.terms, 0.01, 0.2)
    assert torch.allclose(inverse.operator.to_dense(), dense, rtol=SOLVE_RTOL, atol=1e-12)
    Q = torch.kron(torch.linalg.eigh(A1)[1], torch.linalg.eigh(G1)[1])
    first = torch.diag(Q.T @ (torch.kron(A1, G1) + 0.01 * torch.eye(12, dtype=DTYPE)) @ Q)
    ratios = torch.diag(Q.T @ dense @ Q) / first
    assert abs(float(ratios.min()) - 0.2) < 1e-10


def test_unknown_damping_form_is_one_clear_error():
    a, g = random_statistics(4, 3, 2, torch.Generator().manual_seed(0))
    with pytest.raises(FimbenchError, match="damping form"):
        approximate("kfac", a, g).inverse(0.1, form="tikhonov")


def test_adaptive_damping_quadratic_uses_the_exactly_damped_operator():
    """KroneckerBlock's ``δᵀ F̃ δ`` (adaptive damping's M(δ)) is ``vec(δ)ᵀ (A ⊗ G + λI) vec(δ)`` with exact damping."""
    from fimbench.fisher.capture import LayerStatistics
    from fimbench.methods import Method
    from fimbench.preconditioner.blocks import BlockSettings
    from fimbench.preconditioner.kronecker_block import KroneckerBlock

    a, g = random_statistics(8, 5, 4, torch.Generator().manual_seed(0))
    block = KroneckerBlock(Method.KFAC, BlockSettings(min_curvature_ratio=0.1, damping_form="exact"))
    block.update(LayerStatistics(a, g), 0.0)
    block.refresh(0.05)
    delta = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    dense = block.approximation.to_dense() + 0.05 * torch.eye(20, dtype=DTYPE)
    assert torch.allclose(block.quadratic(delta), vec(delta) @ dense @ vec(delta), rtol=1e-12)
    assert block.correction_scale is None  # one Kronecker term: no safeguard, although the operator has two
