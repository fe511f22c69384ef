"""Finite statistics give finite approximations, for every method and layer shape, including the degenerate
statistics of a real run: dead units (a coordinate of g that is zero over the batch), a batch whose g has one
live coordinate, zero activations, repeated examples, q = 1, p = 1.

The case that crashed Deflation in training (curves-synth, the bottleneck layer 25 → 6 with five dead units
and an EMA prior whose second term is 3e-6 of the first) is :func:`one_live_unit`: the second singular value
of ``Z`` lies below the round-off of Gram-coordinate norms computed from float32 Gram matrices, so power SVD
chased round-off into a zero norm and divided by it. Checked against the dense SVD of ``Z`` in float64.
"""

from __future__ import annotations

import pytest
import torch
from reference import rearrange_ref

from fimbench.curvature import KroneckerSum, approximate, approximate_ekfac
from fimbench.curvature.options import DEFAULT_TOL

KRONECKER_METHODS = ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected")
SINGULAR_VALUE_TOL = DEFAULT_TOL  # relative to σ₁, the power iterations' own stopping rule; σ₂ ≈ 3e-9 σ₁ here,
# and float32 Gram matrices gave NaN, or a σ₂ about 1e-5 σ₁ (4000 times too large)
DECAY = 0.875


def one_live_unit(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, KroneckerSum]:
    """ReLU activations of a 25 → 6 layer whose g is zero except in one output, and a prior of K-FAC's pair
    plus a second term about 1e-5 of it (the shape of the failing bottleneck layer)."""
    generator = torch.Generator().manual_seed(seed)
    m, p, q = 64, 26, 6
    a = torch.cat([torch.relu(torch.randn(m, p - 1, generator=generator)) * 3, torch.ones(m, 1)], dim=1)
    g = torch.zeros(m, q)
    g[:, 4] = torch.randn(m, generator=generator) * 40
    A, G = approximate("kfac", a, g).terms[0]
    C = torch.randn(p, p, generator=generator)
    D = torch.randn(q, q, generator=generator)
    prior = KroneckerSum([(A, G), ((C + C.T) * 1e-3, (D + D.T) * 1e-3)])
    return a.to(dtype), g.to(dtype), KroneckerSum([(A.to(dtype), G.to(dtype)) for A, G in prior.terms])


def dense_target(a: torch.Tensor, g: torch.Tensor, prior: KroneckerSum) -> torch.Tensor:
    """``Z(ρ F̂_old + (1 − ρ) F_batch)`` densely in float64."""
    a, g = a.double(), g.double()
    p, q = a.shape[1], g.shape[1]
    batch = torch.einsum("ti,tj,tk,tl->ijkl", a, a, g, g).reshape(p * p, q * q) / a.shape[0]
    old = sum(torch.outer(A.double().T.reshape(-1), G.double().T.reshape(-1)) for A, G in prior.terms)
    return (1 - DECAY) * batch + DECAY * old


@pytest.mark.parametrize("seed", range(6))
def test_deflation_second_pair_of_a_layer_with_one_live_unit(seed: int) -> None:
    a, g, prior = one_live_unit(seed)
    approximation = approximate("deflation", a, g, prior=prior, decay=DECAY)
    assert all(bool(torch.isfinite(factor).all()) for term in approximation.terms for factor in term)
    expected = torch.linalg.svdvals(dense_target(a, g, prior))[:2]
    sigma = torch.tensor(approximation.singular_values, dtype=torch.float64)
    torch.testing.assert_close(sigma, expected, rtol=0.0, atol=SINGULAR_VALUE_TOL * float(expected[0]))


def test_dense_target_is_the_rearrangement_of_the_dense_block() -> None:
    """The reference above has the singular values of Van Loan's rearrangement of the dense ``ρ F̂_old + (1 − ρ) F``."""
    a, g, prior = one_live_unit(0, torch.float64)
    p, q = a.shape[1], g.shape[1]
    F = (1 - DECAY) * torch.einsum("ti,tj,tk,tl->ikjl", a, a, g, g).reshape(p * q, p * q) / a.shape[0]
    F = F + DECAY * prior.to_dense()
    expected = torch.linalg.svdvals(rearrange_ref(F, p, q))
    torch.testing.assert_close(torch.linalg.svdvals(dense_target(a, g, prior)), expected, rtol=1e-10, atol=1e-12 * float(expected[0]))


def degenerate_statistics(case: str, p: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, g) of a degenerate batch of 16 examples; the activations keep the bias column when p > 1."""
    generator = torch.Generator().manual_seed(p * 31 + q)
    m = 16
    a = torch.randn(m, p, generator=generator)
    g = torch.randn(m, q, generator=generator)
    if p > 1:
        a[:, -1] = 1.0
    if case == "dead-g":
        g.zero_()
    elif case == "one-live-unit":
        g[:, 1:] = 0.0
    elif case == "dead-a":
        a[:, : max(p - 1, 1)] = 0.0
    elif case == "repeated-example":
        a, g = a[:1].repeat(m, 1), g[:1].repeat(m, 1)
    elif case == "huge":
        a, g = a * 1e6, g * 1e6
    elif case == "tiny":
        a, g = a * 1e-6, g * 1e-6
    return a, g


CASES = ("dead-g", "one-live-unit", "dead-a", "repeated-example", "huge", "tiny")
SHAPES = ((1, 1), (1, 4), (4, 1), (2, 2), (26, 6))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"p{shape[0]}q{shape[1]}")
@pytest.mark.parametrize("method", KRONECKER_METHODS)
def test_degenerate_statistics_give_finite_approximations_and_inverses(method: str, shape: tuple[int, int], case: str) -> None:
    """A finite batch gives a finite approximation, alone and as the EMA update of a finite prior (from a
    well-conditioned batch, and from the degenerate batch itself), and a finite damped inverse (with λ relative
    to the block's size: an absolute λ below the round-off of a huge factor is a failed factorisation, which the
    preconditioner's guard handles)."""
    p, q = shape
    a, g = degenerate_statistics(case, p, q)
    healthy = approximate(method, *degenerate_statistics("none", p, q))
    first = approximate(method, a, g)
    for approximation in (first, approximate(method, a, g, prior=healthy, decay=0.95), approximate(method, a, g, prior=first, decay=0.95)):
        assert all(bool(torch.isfinite(factor).all()) for term in approximation.terms for factor in term), approximation
        assert all(value == value for value in approximation.singular_values)
    updated = approximate(method, a, g, prior=healthy, decay=0.95)
    A, G = updated.terms[0]
    scale = max(1.0, float(torch.trace(A)) / p * float(torch.trace(G)) / q)  # λ relative to the block's size
    assert bool(torch.isfinite(updated.solve(torch.ones(q, p), damping=1e-2 * scale)).all())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"p{shape[0]}q{shape[1]}")
def test_degenerate_statistics_give_finite_ekfac(shape: tuple[int, int], case: str) -> None:
    p, q = shape
    a, g = degenerate_statistics(case, p, q)
    prior = approximate_ekfac(*degenerate_statistics("none", p, q))
    for approximation in (approximate_ekfac(a, g), approximate_ekfac(a, g, prior, 0.95), approximate_ekfac(a, g, prior, 0.95, new_basis=False)):
        assert all(bool(torch.isfinite(tensor).all()) for tensor in (*approximation.factors, *approximation.bases, approximation.scales))
