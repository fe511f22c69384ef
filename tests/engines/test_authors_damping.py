"""The authors' damping, rebuilt from their definitions, equals fimbench's under ``from_authors_scale``.

Their code sees ``κ``-scaled statistics ``(ā, κ g)`` and damps with ``pi=False``:

* K-FAC: ``(E[ā āᵀ] + √λ_a I) ⊗ (E[g_a g_aᵀ] + √λ_a I)``;
* KPSVD: ``(R_a + √λ_a I) ⊗ (S_a + √λ_a I)`` with ``R_a = √σ MAT(u)``, ``S_a = √σ MAT(v)`` the leading pair
  of ``Z(F_a)`` (their power SVD starts from a PSD matrix, so ``R_a`` is PSD);
* Deflation, Lanczos (the paper's rank-2 pairs), KFAC-corrected (K-FAC's pair plus the best rank-1
  correction): first term damped by ``λ_a`` on both factors (``fractional_power(X, λ_a)``), second term as
  it is.

Here their factors come from a dense SVD of the explicit ``Z(F_a)``. The damped operators must agree up to
``κ²`` for all five methods, and one full step (KL-clipping, weight decay, learning rate) must be the same
update. Their closed-form rank-2 solve takes ``abs()`` of the whitened eigenvalues; the step here inverts
their damped operator exactly, which is what that solve computes when the correction is semidefinite
(fimbench's own safeguard is tested in test_solve.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import DTYPE, fisher_from_statistics, mat_ref, rearrange_ref, vec_ref

from fimbench.curvature import approximate
from fimbench.engines.authors_scale import from_authors_scale, loss_scale
from fimbench.fisher.capture import capture_statistics, weight_gradient, weight_of
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method
from fimbench.optim import KroneckerPreconditioner

DAMPED = 1e-10  # relative: damped operators (dense SVD vs power SVD / Lanczos run to tol 1e-14)
STEP = 1e-10  # relative: parameter updates
PIXELS = 6
KAPPA = loss_scale(Likelihood.BERNOULLI, PIXELS)
KRONECKER = [Method.KFAC, Method.KPSVD, Method.DEFLATION, Method.LANCZOS, Method.KFAC_CORRECTED]
ACCURATE = dict(tol=1e-14, max_iterations=20000)
AUTHORS_LR, AUTHORS_DAMPING, AUTHORS_WEIGHT_DECAY, CLIP = 0.1, 0.3, 1e-3, 1e-2


def leading_pairs(Z: torch.Tensor, p: int, q: int, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(√σ_k MAT(u_k), √σ_k MAT(v_k))`` of an explicit rearranged matrix, the first pair PSD-signed."""
    U, sigma, Vh = torch.linalg.svd(Z, full_matrices=False)
    pairs = []
    for k in range(rank):
        root = math.sqrt(float(sigma[k]))
        R, S = root * mat_ref(U[:, k], p, p), root * mat_ref(Vh[k], q, q)
        pairs.append((-R, -S) if float(torch.trace(R)) < 0 else (R, S))
    return pairs


def authors_damped(method: Method, a: torch.Tensor, g_a: torch.Tensor, damping_a: float) -> torch.Tensor:
    """The authors' damped Fisher block (dense) on their statistics ``(ā, g_a)`` (module docstring)."""
    m, p = a.shape
    q = g_a.shape[1]
    Z = rearrange_ref(fisher_from_statistics(a, g_a), p, q)
    I_p, I_q = torch.eye(p, dtype=DTYPE), torch.eye(q, dtype=DTYPE)
    A_kfac, G_kfac = a.T @ a / m, g_a.T @ g_a / m
    if method is Method.KFAC:
        return torch.kron(A_kfac + math.sqrt(damping_a) * I_p, G_kfac + math.sqrt(damping_a) * I_q)
    if method is Method.KPSVD:
        (R, S), = leading_pairs(Z, p, q, 1)
        return torch.kron(R + math.sqrt(damping_a) * I_p, S + math.sqrt(damping_a) * I_q)
    if method is Method.KFAC_CORRECTED:
        (C, D), = leading_pairs(Z - torch.outer(vec_ref(A_kfac), vec_ref(G_kfac)), p, q, 1)
        return torch.kron(A_kfac + damping_a * I_p, G_kfac + damping_a * I_q) + torch.kron(C, D)
    (R, S), (C, D) = leading_pairs(Z, p, q, 2)
    return torch.kron(R + damping_a * I_p, S + damping_a * I_q) + torch.kron(C, D)


@pytest.mark.parametrize("method", KRONECKER, ids=lambda m: m.value)
def test_damped_operator_is_the_authors_over_kappa_squared(method: Method, make_statistics) -> None:
    a, g = make_statistics(40, 5, 4, seed=3)
    converted = from_authors_scale(method, Likelihood.BERNOULLI, PIXELS, AUTHORS_LR, AUTHORS_DAMPING, AUTHORS_WEIGHT_DECAY)
    ks = approximate(method, a, g, **ACCURATE)
    inverse = ks.inverse(converted["damping"], pi=converted["pi"])
    assert inverse.correction_scale == 1.0  # the safeguard is idle: both operators are the plain damped sums
    expected = authors_damped(method, a, KAPPA * g, AUTHORS_DAMPING)
    actual = KAPPA**2 * inverse.operator.to_dense()
    assert torch.allclose(actual, expected, rtol=DAMPED, atol=DAMPED * float(expected.abs().max()))


@pytest.mark.parametrize("method", KRONECKER, ids=lambda m: m.value)
def test_one_step_is_the_authors_update(method: Method, make_mlp) -> None:
    """θ' = θ − lr_a (ν_a P_a + wd_a θ) with ``P_a = F̃_a⁻¹ ∇h_a``, ``h_a = κ h``, against fimbench's step."""
    model = make_mlp((PIXELS, 4, PIXELS), Likelihood.BERNOULLI, seed=1)
    x = (torch.rand(32, PIXELS, generator=torch.Generator().manual_seed(2), dtype=DTYPE) > 0.5).to(DTYPE)
    layers = model.linear_layers()
    converted = from_authors_scale(method, Likelihood.BERNOULLI, PIXELS, AUTHORS_LR, AUTHORS_DAMPING, AUTHORS_WEIGHT_DECAY)

    statistics = capture_statistics(model, x, Likelihood.BERNOULLI, layers, targets=x)
    Likelihood.BERNOULLI.nll(model(x), x).mean().backward()
    before = [weight_of(layer).detach().clone() for layer in layers]
    gradients = [KAPPA * weight_gradient(layer) for layer in layers]  # ∇h_a
    directions = []
    for stats, gradient in zip(statistics, gradients):
        operator = authors_damped(method, stats.a, KAPPA * stats.g, AUTHORS_DAMPING)
        q, p = gradient.shape
        directions.append(mat_ref(torch.linalg.solve(operator, vec_ref(gradient)), q, p))
    inner = sum(abs(float((d * grad).sum())) for d, grad in zip(directions, gradients))
    nu = min(1.0, math.sqrt(CLIP / inner))
    expected = [theta - AUTHORS_LR * (nu * d + AUTHORS_WEIGHT_DECAY * theta) for theta, d in zip(before, directions)]

    preconditioner = KroneckerPreconditioner(
        model, Likelihood.BERNOULLI, method, damping=converted["damping"], pi=converted["pi"], kl_clip=CLIP,
        fisher_fraction=1.0, empirical_fisher=True, **ACCURATE,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=converted["lr"], momentum=0.9, weight_decay=converted["weight_decay"])
    preconditioner.step(x, x)
    optimizer.step()
    assert nu < 1.0  # the clipping is part of what is compared
    for layer, want in zip(layers, expected):
        got = weight_of(layer).detach()
        assert torch.allclose(got, want, rtol=STEP, atol=STEP * float(want.abs().max()))


def test_conversion_table() -> None:
    """λ and π per method (the table of fimbench.engines.authors_scale), for a κ that is not 1."""
    lam = 1e-3
    for method, (damping, pi) in {
        Method.KFAC: (lam / KAPPA**2, KAPPA),
        Method.KPSVD: (lam / KAPPA**2, 1.0),
        Method.DEFLATION: (lam**2 / KAPPA**2, 1.0),
        Method.LANCZOS: (lam**2 / KAPPA**2, 1.0),
        Method.KFAC_CORRECTED: (lam**2 / KAPPA**2, KAPPA),
    }.items():
        converted = from_authors_scale(method, Likelihood.BERNOULLI, PIXELS, 0.1, lam)
        assert converted["damping"] == pytest.approx(damping, rel=1e-12)
        assert converted["pi"] == pytest.approx(pi, rel=1e-12)
    sgd = from_authors_scale(Method.SGD, Likelihood.BERNOULLI, PIXELS, 0.3, weight_decay=1e-3)
    assert sgd == pytest.approx({"lr": 0.3 * KAPPA, "weight_decay": 1e-3 / KAPPA})  # κ lr_a (∇h + wd θ) = lr_a (∇h_a + wd_a θ)
    adam = from_authors_scale(Method.ADAM, Likelihood.BERNOULLI, PIXELS, 1e-3, weight_decay=1e-3)
    assert adam == pytest.approx({"lr": 1e-3, "weight_decay": 1e-3 / KAPPA})  # Adam is invariant to the gradient's scale
