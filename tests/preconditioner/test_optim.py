"""``KroneckerPreconditioner`` + torch SGD: updates recomputed by hand from dense linear algebra.

The expected update of layer i is ``−lr · ν · P_i`` with ``P_i = MAT(F̃_i⁻¹ vec(∇_i))`` solved densely from
the preconditioner's stored approximation (``damped(λ).to_dense()``) and
``ν = min(1, sqrt(c / Σ_i |⟨P_i, ∇_i⟩|))`` (App. E); momentum and weight decay are torch SGD's, applied
to ``ν P``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reference import DTYPE, mat_ref, vec_ref

from fimbench.curvature import KroneckerSum, approximate
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import capture_statistics, weight_gradient
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

UPDATE = 1e-10  # relative: parameter updates vs the hand computation (float64, dense solves)

METHODS = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]
WIDTHS = (6, 5, 3, 6)
LIKELIHOOD = Likelihood.BERNOULLI
BATCH = 16


def batch(seed: int = 0) -> torch.Tensor:
    return (torch.rand(BATCH, WIDTHS[0], generator=torch.Generator().manual_seed(seed), dtype=DTYPE) > 0.5).to(DTYPE)


def parameters_as_matrices(model) -> list[torch.Tensor]:
    """Each layer's ``[W | b]`` (bias column last), detached copies."""
    return [torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1).detach().clone() for layer in model.linear_layers()]


def backward(model, x: torch.Tensor) -> list[torch.Tensor]:
    """``h = mean_t ℓ_t``; returns the raw gradients ``∇_i`` before preconditioning."""
    LIKELIHOOD.nll(model(x), x).mean().backward()
    return [weight_gradient(layer).detach().clone() for layer in model.linear_layers()]


def dense_direction(approximation: KroneckerSum, gradient: torch.Tensor, damping: float) -> torch.Tensor:
    q, p = gradient.shape
    return mat_ref(torch.linalg.solve(approximation.damped(damping).to_dense(), vec_ref(gradient)), q, p)


def clip_factor(directions: list[torch.Tensor], gradients: list[torch.Tensor], c: float | None) -> float:
    if c is None:
        return 1.0
    inner = sum(abs(float((d * grad).sum())) for d, grad in zip(directions, gradients))
    return min(1.0, math.sqrt(c / inner))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> None:
    assert float((actual - expected).abs().max()) <= UPDATE * max(float(scale.abs().max()), 1e-3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kl_clip", [None, 1e-5])
def test_one_step_is_clipped_natural_gradient(make_mlp, method, kl_clip):
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=1)
    lr, damping = 0.3, 0.05
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, method, damping=damping, kl_clip=kl_clip, stats_every=1, inverse_every=1,
        fisher_fraction=0.5, generator=torch.Generator().manual_seed(7),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    x = batch()
    before = copy.deepcopy(model)
    start = parameters_as_matrices(model)
    gradients = backward(model, x)
    nu = preconditioner.step(x)
    optimizer.step()

    # the stored approximations are those of the statistics on the Fisher sub-batch (first half of x)
    stats = capture_statistics(before, x[: BATCH // 2], LIKELIHOOD, before.linear_layers(), generator=torch.Generator().manual_seed(7))
    for stored, layer_stats in zip(preconditioner.approximations, stats):
        assert layer_stats.a.shape[0] == BATCH // 2
        fresh = approximate(method, layer_stats.a, layer_stats.g)
        assert torch.allclose(stored.to_dense(), fresh.to_dense(), rtol=0, atol=1e-12 * float(fresh.to_dense().abs().max()))

    directions = [dense_direction(ks, grad, damping) for ks, grad in zip(preconditioner.approximations, gradients)]
    expected_nu = clip_factor(directions, gradients, kl_clip)
    assert math.isclose(float(nu), expected_nu, rel_tol=1e-10)
    if kl_clip is None:
        assert float(nu) == 1.0
    else:
        assert expected_nu < 1.0  # the clip is active in this case
    for old, new, direction in zip(start, parameters_as_matrices(model), directions):
        assert_close(new - old, -lr * expected_nu * direction, lr * direction)
    # the gradients the torch optimizer saw are ν P (the preconditioner wrote them back)
    for layer, direction in zip(model.linear_layers(), directions):
        assert_close(weight_gradient(layer), expected_nu * direction, direction)


@pytest.mark.parametrize("method", ["kfac", "deflation"])
def test_two_steps_with_momentum_and_stale_inverse(make_mlp, method):
    """Momentum 0.9 over two steps; statistics every step but inverses every 2: step 2 reuses step 1's inverse."""
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=2)
    lr, damping, c, momentum = 0.2, 0.1, 1e-3, 0.9
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, method, damping=damping, kl_clip=c, stats_every=1, inverse_every=2,
        fisher_fraction=1.0, generator=torch.Generator().manual_seed(3),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    start = parameters_as_matrices(model)
    updates = []
    inverted = None
    for step in range(2):
        optimizer.zero_grad()
        gradients = backward(model, batch(step))
        preconditioner.step(batch(step))
        if step == 0:
            inverted = [copy.deepcopy(ks) for ks in preconditioner.approximations]
        else:  # statistics were refreshed, the inverse was not
            assert preconditioner.updates == 2
            assert any(
                not torch.equal(old.terms[0][0], new.terms[0][0])
                for old, new in zip(inverted, preconditioner.approximations)
            )
        directions = [dense_direction(ks, grad, damping) for ks, grad in zip(inverted, gradients)]
        nu = clip_factor(directions, gradients, c)
        updates.append([nu * d for d in directions])
        optimizer.step()
    for i, (old, new) in enumerate(zip(start, parameters_as_matrices(model))):
        d1, d2 = updates[0][i], updates[1][i]
        expected = -lr * d1 - lr * (momentum * d1 + d2)
        assert_close(new - old, expected, lr * (d1.abs() + d2.abs()))


def test_weight_decay_is_torch_sgd_on_the_preconditioned_gradient(make_mlp):
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=4)
    lr, damping, wd = 0.1, 0.1, 0.01
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, "kpsvd", damping=damping, kl_clip=None, stats_every=1, inverse_every=1,
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=wd)
    start = parameters_as_matrices(model)
    gradients = backward(model, batch())
    preconditioner.step(batch())
    optimizer.step()
    for old, new, ks, grad in zip(start, parameters_as_matrices(model), preconditioner.approximations, gradients):
        direction = dense_direction(ks, grad, damping)
        assert_close(new - old, -lr * (direction + wd * old), lr * direction)


def test_schedule_statistics_every_t1_inverses_every_t2(make_mlp, monkeypatch):
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=5)
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, "kpsvd", damping=0.1, stats_every=3, inverse_every=2, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    statistics_steps, inverse_steps = [], []
    update, refresh = preconditioner.update_statistics, preconditioner.refresh_inverses

    def spy_update(*args, **kwargs):
        statistics_steps.append(preconditioner.steps)
        return update(*args, **kwargs)

    def spy_refresh():
        inverse_steps.append(preconditioner.steps)
        return refresh()

    monkeypatch.setattr(preconditioner, "update_statistics", spy_update)
    monkeypatch.setattr(preconditioner, "refresh_inverses", spy_refresh)
    approximations, inverses = None, None
    for step in range(8):
        optimizer.zero_grad()
        backward(model, batch(step))
        preconditioner.step(batch(step))
        optimizer.step()
        if step % 3 != 0:
            assert all(a is b for a, b in zip(approximations, preconditioner.approximations))
        if step % 2 != 0:
            assert all(a is b for a, b in zip(inverses, preconditioner.inverses))
        approximations, inverses = list(preconditioner.approximations), list(preconditioner.inverses)
    assert statistics_steps == [0, 3, 6]
    assert inverse_steps == [0, 2, 4, 6]
    diagnostics = preconditioner.pop_diagnostics()
    assert diagnostics["statistics_updates"] == 3 and diagnostics["inverse_refreshes"] == 4
    assert diagnostics["iterations_max"] > 0 and diagnostics["residual_max"] <= 1e-6


@pytest.mark.parametrize("method", ["kfac", "deflation"])
def test_ema_decay_schedule(make_mlp, monkeypatch, method):
    """ρ = min(1 − 1/k, α) for the k-th statistics update; the prior and warm start are the previous solution."""
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=6)
    alpha = 0.7
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, method, damping=0.1, stats_every=1, inverse_every=1, ema_decay=alpha,
        fisher_fraction=1.0, generator=torch.Generator().manual_seed(0),
    )
    calls = []

    def spy(real):
        def approximator(a, g, options, prior):
            result = real(a, g, options, prior)
            calls.append({"a": a, "g": g, "result": result, "decay": prior.decay, "prior": prior.estimate, "warm_start": prior.warm_start})
            return result

        return approximator

    for block in preconditioner.kronecker_blocks:
        monkeypatch.setattr(block, "approximator", spy(block.approximator))
    layers = len(model.linear_layers())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(5):
        optimizer.zero_grad()
        backward(model, batch(step))
        preconditioner.step(batch(step))
        optimizer.step()
    assert len(calls) == 5 * layers
    expected = [min(1 - 1 / k, alpha) for k in range(1, 6)]
    assert expected == pytest.approx([0.0, 0.5, 2 / 3, 0.7, 0.7])
    for k in range(5):
        for i in range(layers):
            call = calls[k * layers + i]
            assert call["decay"] == pytest.approx(expected[k], abs=1e-15)
            previous = calls[(k - 1) * layers + i]["result"] if k else None
            assert call["prior"] is previous and call["warm_start"] is previous
            if method == "kfac" and previous is not None:  # the EMA of the factors, concretely
                m = call["a"].shape[0]
                A = call["result"].terms[0][0]
                A_expected = expected[k] * previous.terms[0][0] + (1 - expected[k]) * call["a"].T @ call["a"] / m
                assert torch.allclose(A, A_expected, rtol=1e-12, atol=1e-12)


def test_empirical_fisher_uses_the_data_targets(make_mlp):
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=7)
    x = batch()
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, "kfac", damping=0.1, stats_every=1, inverse_every=1, fisher_fraction=0.25, empirical_fisher=True
    )
    m = preconditioner.sub_batch.size(BATCH)
    assert m == 4
    stats = capture_statistics(model, x[:m], LIKELIHOOD, model.linear_layers(), targets=x[:m])
    backward(model, x)
    preconditioner.step(x, x)
    for stored, layer_stats in zip(preconditioner.approximations, stats):
        assert torch.allclose(stored.to_dense(), approximate("kfac", layer_stats.a, layer_stats.g).to_dense(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["kpsvd", "kfac-corrected"])
def test_seeded_reproducibility(make_mlp, method):
    def run(seed: int) -> list[torch.Tensor]:
        model = make_mlp(WIDTHS, LIKELIHOOD, seed=8)
        preconditioner = KroneckerPreconditioner(
            model, LIKELIHOOD, method, damping=0.1, stats_every=2, inverse_every=2, generator=torch.Generator().manual_seed(seed)
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(4):
            optimizer.zero_grad()
            backward(model, batch(step))
            preconditioner.step(batch(step))
            optimizer.step()
        return parameters_as_matrices(model)

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))  # the sampled targets matter


def test_invalid_method_or_model_raise(make_mlp):
    model = make_mlp(WIDTHS, LIKELIHOOD)
    for method in ("sgd", "adam", "newton"):
        with pytest.raises(FimbenchError):
            KroneckerPreconditioner(model, LIKELIHOOD, method)
    with pytest.raises(FimbenchError):
        KroneckerPreconditioner(torch.nn.Sequential(torch.nn.ReLU()), LIKELIHOOD, "kfac")
