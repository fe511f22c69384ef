"""``capture_statistics`` against per-example gradients from ``torch.func`` on a real MLP.

For every layer, the per-example weight gradient of ``[W | b]`` (bias column LAST) must be ``g_t ā_tᵀ``,
with ``g`` captured by fimbench's hooks and the gradient computed by ``vmap(grad(...))``. With sampled
targets the test recovers the targets the hooks used from the output layer's ``g`` (``∂ℓ/∂z`` is
``σ(z) − y`` or ``z − y``) and then checks every layer against torch.func with those targets.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    DTYPE,
    fisher_from_gradients,
    linear_names,
    nll_ref,
    output_derivative,
    per_example_weight_gradients,
    targets_from_output_derivative,
)
from torch import nn

from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import exact_block
from fimbench.fisher.capture import augment, capture_statistics, kronecker_layers, set_weight_gradient, weight_gradient
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

EXACT = 1e-12  # relative: the same derivatives by two autodiff routes in float64
STATISTICAL = 5.0  # z-score bound for Monte-Carlo checks with fixed seeds

LIKELIHOODS = [Likelihood.BERNOULLI, Likelihood.GAUSSIAN]
WIDTHS = (6, 5, 3, 4, 6)  # four layers, p = 7, 6, 4, 5 and q = 5, 3, 4, 6


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = EXACT) -> bool:
    return float((actual - expected).abs().max()) <= tol * max(float(expected.abs().max()), 1.0)


def inputs(m: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(m, WIDTHS[0], generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def layer_inputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of each nn.Linear, by running the Sequential one module at a time."""
    seen = []
    h = x
    for module in model.net:
        if isinstance(module, torch.nn.Linear):
            seen.append(h)
        h = module(h)
    return seen


def check_against_torch_func(model, x, targets, stats, likelihood) -> None:
    per_example = per_example_weight_gradients(model, x, targets, likelihood.value)
    assert len(per_example) == len(stats) == len(linear_names(model))
    for layer_stats, DW, a_in in zip(stats, per_example, layer_inputs(model, x)):
        m, p = layer_stats.a.shape
        q = layer_stats.g.shape[1]
        assert DW.shape == (m, q, p)
        assert torch.equal(layer_stats.a[:, -1], torch.ones(m, dtype=DTYPE))  # bias column last
        assert close(layer_stats.a[:, :-1], a_in.detach())
        outer = layer_stats.g.unsqueeze(2) * layer_stats.a.unsqueeze(1)  # g_t ā_tᵀ
        assert close(outer, DW)
        # the Fisher block is the second moment of these per-example gradients
        assert close(exact_block(layer_stats.a, layer_stats.g), fisher_from_gradients(DW))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_empirical_targets_match_per_example_gradients(make_mlp, likelihood):
    model = make_mlp(WIDTHS, likelihood, seed=3)
    x = inputs(9)
    targets = x if likelihood is Likelihood.GAUSSIAN else (x > 0.5).to(DTYPE)
    stats = capture_statistics(model, x, likelihood, model.linear_layers(), targets=targets)
    check_against_torch_func(model, x, targets, stats, likelihood)
    assert all(parameter.grad is None for parameter in model.parameters())  # no parameter gradient touched


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sampled_targets_match_per_example_gradients(make_mlp, likelihood):
    model = make_mlp(WIDTHS, likelihood, seed=4)
    x = inputs(11)
    stats = capture_statistics(model, x, likelihood, model.linear_layers(), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        output = model(x)
    targets = targets_from_output_derivative(output, stats[-1].g, likelihood.value)
    if likelihood is Likelihood.BERNOULLI:
        assert torch.all((targets.round() - targets).abs() <= 1e-12)
        assert set(targets.round().unique().tolist()) <= {0.0, 1.0}
        targets = targets.round()
    assert not close(targets, x, tol=1e-3)  # sampled, not the data
    check_against_torch_func(model, x, targets, stats, likelihood)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sampling_is_seeded(make_mlp, likelihood):
    model = make_mlp(WIDTHS, likelihood, seed=4)
    x = inputs(8)
    layers = model.linear_layers()

    def run(seed):
        return capture_statistics(model, x, likelihood, layers, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(1), run(1), run(2)
    for s1, s2, s3 in zip(first, again, other):
        assert torch.equal(s1.g, s2.g) and torch.equal(s1.a, s2.a)
        assert torch.equal(s1.a, s3.a)
    assert not torch.equal(first[-1].g, other[-1].g)


def test_output_layer_fisher_is_the_true_fisher(make_mlp):
    """With sampled targets ``E[g gᵀ]`` at the output is ``diag(σ(1−σ))`` (Bernoulli) or ``I`` (Gaussian),
    whatever the data — the empirical Fisher would instead depend on the targets."""
    x = inputs(1).repeat(4000, 1)
    for likelihood in LIKELIHOODS:
        model = make_mlp(WIDTHS, likelihood, seed=6)
        stats = capture_statistics(model, x, likelihood, model.linear_layers(), generator=torch.Generator().manual_seed(7))
        g = stats[-1].g
        G = g.T @ g / g.shape[0]
        with torch.no_grad():
            z = model(x[:1])[0]
        if likelihood is Likelihood.BERNOULLI:
            probability = torch.sigmoid(z)
            expected = torch.diag(probability * (1 - probability))
            spread = 0.5 / math.sqrt(g.shape[0])  # each entry of g g^T is bounded by 1
        else:
            expected = torch.eye(z.shape[0], dtype=DTYPE)
            spread = 2.0 / math.sqrt(g.shape[0])  # var(ε_i ε_j) ≤ 2
        assert float((G - expected).abs().max()) <= STATISTICAL * spread
        mean_g = g.mean(dim=0)  # E[∂ℓ/∂z] = 0 under the model's own distribution
        assert float(mean_g.abs().max()) <= STATISTICAL / math.sqrt(g.shape[0])


def test_likelihood_sample_distribution():
    gen = torch.Generator().manual_seed(0)
    z = torch.linspace(-3, 3, 7, dtype=DTYPE).repeat(20000, 1)
    y = Likelihood.BERNOULLI.sample(z, torch.Generator().manual_seed(1))
    assert y.dtype == DTYPE and set(y.unique().tolist()) <= {0.0, 1.0}
    probability = torch.sigmoid(z[0])
    standard_error = torch.sqrt(probability * (1 - probability) / z.shape[0])
    assert torch.all((y.mean(dim=0) - probability).abs() <= STATISTICAL * standard_error)
    noise = Likelihood.GAUSSIAN.sample(z, gen) - z
    n = noise.numel()
    assert abs(float(noise.mean())) <= STATISTICAL / math.sqrt(n)
    assert abs(float(noise.var()) - 1.0) <= STATISTICAL * math.sqrt(2.0 / n)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_nll_and_output_derivative_match_textbook(likelihood):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, 4, generator=gen, dtype=DTYPE, requires_grad=True)
    y = torch.rand(5, 4, generator=gen, dtype=DTYPE)
    if likelihood is Likelihood.BERNOULLI:
        y = (y > 0.5).to(DTYPE)
    loss = likelihood.nll(z, y)
    assert loss.shape == (5,)
    assert close(loss.detach(), nll_ref(z.detach(), y, likelihood.value))
    (derivative,) = torch.autograd.grad(loss.sum(), z)
    assert close(derivative, output_derivative(z.detach(), y, likelihood.value))


def test_weight_gradient_layout_bias_last(make_mlp):
    """``weight_gradient`` is ``[∇W | ∇b]``: the mean of the per-example ``g_t ā_tᵀ``."""
    likelihood = Likelihood.BERNOULLI
    model = make_mlp(WIDTHS, likelihood, seed=8)
    x = inputs(7)
    model.zero_grad()
    likelihood.nll(model(x), x).mean().backward()
    per_example = per_example_weight_gradients(model, x, x, likelihood.value)
    for layer, DW in zip(model.linear_layers(), per_example):
        gradient = weight_gradient(layer)
        assert gradient.shape == (layer.out_features, layer.in_features + 1)
        assert close(gradient, DW.mean(dim=0))
        assert torch.equal(gradient[:, -1], layer.bias.grad)
        replacement = torch.arange(gradient.numel(), dtype=DTYPE).reshape(gradient.shape)
        set_weight_gradient(layer, replacement)
        assert torch.equal(layer.weight.grad, replacement[:, :-1])
        assert torch.equal(layer.bias.grad, replacement[:, -1])
        assert torch.equal(weight_gradient(layer), replacement)


def test_augment_appends_ones_last():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    a = augment(x)
    assert a.shape == (3, 3) and a.dtype == DTYPE
    assert torch.equal(a[:, :2], x) and torch.equal(a[:, 2], torch.ones(3, dtype=DTYPE))


def test_frozen_layers_are_left_out_and_keep_their_gradient(make_mlp):
    """A frozen first layer: no block for it, and a preconditioned step leaves it untouched."""
    model = make_mlp((6, 5, 6), Likelihood.BERNOULLI)
    first, second = model.linear_layers()
    first.requires_grad_(False)
    assert kronecker_layers(model) == [second]
    x = (torch.rand(8, 6, generator=torch.Generator().manual_seed(0), dtype=DTYPE) > 0.5).to(DTYPE)
    Likelihood.BERNOULLI.nll(model(x), x).mean().backward()
    preconditioner = KroneckerPreconditioner(model, Likelihood.BERNOULLI, "kfac", fisher_fraction=1.0)
    preconditioner.step(x)
    assert first.weight.grad is None and preconditioner.layers == [second]
    first.weight.requires_grad_(True)  # a weight that trains with a frozen bias has no block to fill
    with pytest.raises(FimbenchError, match="freeze or train both"):
        kronecker_layers(model)


def test_a_layer_called_twice_is_refused():
    shared = nn.Linear(4, 4).double()
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(5, 4, dtype=DTYPE)
    with pytest.raises(FimbenchError, match="more than once"):
        capture_statistics(model, x, Likelihood.GAUSSIAN, [shared])


def test_layers_the_capture_cannot_form_are_refused_when_passed_directly():
    """A grouped or same-padded convolution, or a module that is no layer, given to capture_statistics itself
    (not through kronecker_layers or the preconditioner's selection): one error, nothing captured."""
    x = torch.randn(3, 4, 6, 6, dtype=DTYPE)
    for layer, named in (
        (nn.Conv2d(4, 4, 3, groups=2).double(), "groups=2"),
        (nn.Conv2d(4, 4, 3, padding="same").double(), "padding='same'"),
    ):
        with pytest.raises(FimbenchError, match=named):
            capture_statistics(nn.Sequential(layer), x, Likelihood.GAUSSIAN, [layer])
    activation = nn.Tanh()
    with pytest.raises(FimbenchError, match="neither nn.Linear nor nn.Conv2d"):
        capture_statistics(nn.Sequential(nn.Flatten(), activation), x, Likelihood.GAUSSIAN, [activation])  # type: ignore[list-item]
