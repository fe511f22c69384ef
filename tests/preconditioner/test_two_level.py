"""The two-level correction ``P = F̃⁻¹ + R₀ (R₀ᵀ (F + λI) R₀)⁻¹ R₀ᵀ`` against its dense float64 formula, for
each coarse space and for Kronecker and EKFAC blocks: the direction, the coarse matrix's EMA, and the
quadratic form ``δᵀ P⁻¹ δ`` that adaptive damping uses."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics
from fimbench.methods import Method
from fimbench.preconditioner.blocks import BlockDiagonal, BlockSettings
from fimbench.preconditioner.eigenbasis_block import EigenbasisBlock
from fimbench.preconditioner.kronecker_block import KroneckerBlock
from fimbench.preconditioner.two_level import TwoLevel

SHAPES = [(5, 4), (4, 3), (3, 6)]  # (p_l, q_l): the bias column included in p_l
M = 7
DAMPING = 0.05
DIRECTION_RTOL = 1e-9


def vec(V: torch.Tensor) -> torch.Tensor:
    return V.T.reshape(-1)


def layer_statistics(seed: int) -> list[LayerStatistics]:
    generator = torch.Generator().manual_seed(seed)
    return [
        LayerStatistics(torch.randn(M, p, generator=generator, dtype=DTYPE), torch.randn(M, q, generator=generator, dtype=DTYPE))
        for p, q in SHAPES
    ]


def dense_network_fisher(statistics: list[LayerStatistics]) -> torch.Tensor:
    """``JᵀJ/m`` with rows ``j_n = [vec(g_ln ā_lnᵀ)]_l`` (column-major vec, as ``kron(A, G)`` acts)."""
    rows = torch.cat([torch.einsum("nq,np->npq", s.g, s.a).reshape(M, -1) for s in statistics], dim=1)
    return rows.T @ rows / M


def make_blocks(method: str) -> list:
    if method == "ekfac":
        return [EigenbasisBlock() for _ in SHAPES]
    return [KroneckerBlock(Method(method), BlockSettings(min_curvature_ratio=0.1)) for _ in SHAPES]


def dense_block(block) -> torch.Tensor:
    """The damped block the one-level preconditioner inverts, dense."""
    if isinstance(block, EigenbasisBlock):
        p, q = block.source.p, block.source.q
        return block.source.to_dense() + block.damping * torch.eye(p * q, dtype=DTYPE)
    return block.inverse.operator.to_dense()


def coarse_columns(coarse: str, blocks, statistics, gradients, F, F_tilde) -> torch.Tensor:
    """R₀ (P × L) from the definitions: unit-norm r_l in layer l's rows."""
    sizes = [p * q for p, q in SHAPES]
    if coarse == "nicolaides":
        pieces = [torch.ones(size, dtype=DTYPE) for size in sizes]
    elif coarse == "spectral":
        pieces = []
        for block in blocks:
            A, G = block.first_term
            u_A, u_G = torch.linalg.eigh(A)[1][:, 0], torch.linalg.eigh(G)[1][:, 0]
            pieces.append(vec(torch.outer(u_G, u_A)))
    else:
        grad = torch.cat([vec(g) for g in gradients])
        one_level = torch.linalg.solve(F_tilde, grad)
        residual = grad - (F + DAMPING * torch.eye(F.shape[0], dtype=DTYPE)) @ one_level
        preconditioned = torch.linalg.solve(F_tilde, residual)
        pieces = list(torch.split(preconditioned, sizes))
    R0 = torch.zeros(sum(sizes), len(sizes), dtype=DTYPE)
    start = 0
    for index, piece in enumerate(pieces):
        R0[start : start + sizes[index], index] = piece / torch.linalg.norm(piece)
        start += sizes[index]
    return R0


@pytest.mark.parametrize("method", ["kfac", "deflation", "kfac-corrected", "ekfac"])
@pytest.mark.parametrize("coarse", ["nicolaides", "spectral", "residual"])
def test_two_level_direction_and_quadratic_equal_the_dense_formula(method, coarse):
    statistics = layer_statistics(0)
    blocks = make_blocks(method)
    curvature = TwoLevel(BlockDiagonal(blocks), coarse)
    curvature.update(statistics, 0.0)
    curvature.refresh(DAMPING)
    generator = torch.Generator().manual_seed(1)
    gradients = [torch.randn(q, p, generator=generator, dtype=DTYPE) for p, q in SHAPES]
    directions = curvature.apply(gradients)

    F = dense_network_fisher(statistics)
    F_tilde = torch.block_diag(*[dense_block(block) for block in blocks])
    R0 = coarse_columns(coarse, blocks, statistics, gradients, F, F_tilde)
    eye = torch.eye(F.shape[0], dtype=DTYPE)
    P = torch.linalg.inv(F_tilde) + R0 @ torch.linalg.inv(R0.T @ (F + DAMPING * eye) @ R0) @ R0.T
    grad = torch.cat([vec(g) for g in gradients])
    assert torch.allclose(torch.cat([vec(d) for d in directions]), P @ grad, rtol=DIRECTION_RTOL, atol=1e-10)
    one_level = torch.linalg.solve(F_tilde, grad)
    assert not torch.allclose(P @ grad, one_level, rtol=1e-3)  # the correction does something

    deltas = [torch.randn(q, p, generator=generator, dtype=DTYPE) * 1e-2 for p, q in SHAPES]
    delta = torch.cat([vec(d) for d in deltas])
    expected = delta @ torch.linalg.solve(P, delta)
    assert torch.allclose(curvature.quadratic(deltas), expected, rtol=1e-8)


def test_coarse_matrix_is_the_ema_of_the_exact_coarse_fisher():
    """Nicolaides' R₀ is fixed, so after two updates C = R₀ᵀ (ρ F₁ + (1 − ρ) F₂) R₀ exactly."""
    decay = 0.6
    curvature = TwoLevel(BlockDiagonal(make_blocks("kfac")), "nicolaides")
    gradients = [torch.ones(q, p, dtype=DTYPE) for p, q in SHAPES]
    first, second = layer_statistics(0), layer_statistics(1)
    for statistics, rho in ((first, 0.0), (second, decay)):
        curvature.update(statistics, rho)
        curvature.refresh(DAMPING)
        curvature.apply(gradients)
    R0 = coarse_columns("nicolaides", None, None, None, None, None)
    target = decay * dense_network_fisher(first) + (1 - decay) * dense_network_fisher(second)
    assert torch.allclose(curvature.coarse_matrix, R0.T @ target @ R0, rtol=1e-10)


def test_spectral_vector_is_the_smallest_eigenvector_of_the_first_term():
    """``r_l = u_G u_Aᵀ`` satisfies ``G₁ r A₁ = γ_min α_min r`` — for p ≠ q, where the authors' reshape
    of ``kron(u_A, u_G)`` is not even rank one."""
    statistics = layer_statistics(0)
    blocks = make_blocks("kfac")
    curvature = TwoLevel(BlockDiagonal(blocks), "spectral")
    curvature.update(statistics, 0.0)
    curvature.refresh(DAMPING)
    curvature.apply([torch.ones(q, p, dtype=DTYPE) for p, q in SHAPES])
    for block, r in zip(blocks, curvature.vectors):
        A, G = block.first_term
        smallest = torch.linalg.eigvalsh(A)[0] * torch.linalg.eigvalsh(G)[0]
        assert torch.allclose(G @ r @ A, smallest * r, atol=1e-10)
        assert torch.linalg.matrix_rank(r) == 1
        p, q = A.shape[0], G.shape[0]
        if p != q:
            authors = torch.kron(torch.linalg.eigh(A)[1][:, 0], torch.linalg.eigh(G)[1][:, 0]).view(q, p)
            assert torch.linalg.matrix_rank(authors) > 1


def test_two_level_needs_a_coarse_space():
    with pytest.raises(FimbenchError, match="coarse space"):
        TwoLevel(BlockDiagonal(make_blocks("kfac")), "none")
    with pytest.raises(FimbenchError, match="unknown coarse space"):
        TwoLevel(BlockDiagonal(make_blocks("kfac")), "krylov")


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
@pytest.mark.parametrize("coarse", ["nicolaides", "spectral"])
def test_two_level_network_error_equals_the_dense_one(method, coarse):
    """fisher-error's two-level row: ``F̂₂ = (F̂⁻¹ + R₀ (R₀ᵀ F R₀)⁻¹ R₀ᵀ)⁻¹`` (undamped, F̂ = blockdiag(F̂_l)
    invertible here: m = 30 examples), its ‖F − F̂₂‖ / ‖F‖ from m × L quantities equals the dense one."""
    from fimbench.engines.fisher_error.engine import two_level_network_terms
    from fimbench.fisher.block_errors import ExactFisher
    from fimbench.fisher.network_error import network_error, network_squared_norm

    generator = torch.Generator().manual_seed(3)
    statistics = [
        LayerStatistics(torch.randn(30, p, generator=generator, dtype=DTYPE), torch.randn(30, q, generator=generator, dtype=DTYPE))
        for p, q in SHAPES
    ]
    blocks, terms, dense_blocks = make_blocks(method), [], []
    for block, stats in zip(blocks, statistics):
        block.fit(stats)
        terms.append(block.errors(ExactFisher(stats.a, stats.g)).terms)
        dense_blocks.append(block.approximation.to_dense())
    measured = network_error(network_squared_norm(statistics), two_level_network_terms(statistics, blocks, coarse, sum(terms[1:], terms[0])))

    F = torch.cat([torch.einsum("nq,np->npq", s.g, s.a).reshape(30, -1) for s in statistics], dim=1)
    F = F.T @ F / 30
    F_hat = torch.block_diag(*dense_blocks)
    sizes = [p * q for p, q in SHAPES]
    R0 = torch.zeros(sum(sizes), len(sizes), dtype=DTYPE)
    start = 0
    for index, ((p, q), block) in enumerate(zip(SHAPES, blocks)):
        if coarse == "nicolaides":
            piece = torch.ones(p * q, dtype=DTYPE)
        else:
            A, G = block.approximation.factors if method == "ekfac" else block.approximation.terms[0]
            piece = vec(torch.outer(torch.linalg.eigh(G)[1][:, 0], torch.linalg.eigh(A)[1][:, 0]))
        R0[start : start + p * q, index] = piece / torch.linalg.norm(piece)
        start += p * q
    two_level = torch.linalg.inv(torch.linalg.inv(F_hat) + R0 @ torch.linalg.inv(R0.T @ F @ R0) @ R0.T)
    dense = float(torch.linalg.norm(F - two_level) / torch.linalg.norm(F))
    assert abs(measured.value - dense) < 1e-8
    assert abs(dense - float(torch.linalg.norm(F - F_hat) / torch.linalg.norm(F))) > 1e-4  # the coarse space changes F̂
