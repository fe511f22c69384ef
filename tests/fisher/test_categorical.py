"""The categorical likelihood: a softmax classifier's Fisher, from capture, against per-example gradients.

``ℓ = −log softmax(z)_y`` with class-index targets; true-Fisher targets are sampled from
``Categorical(softmax(z))``; ``g = softmax(z) − e_y`` at the output, so ``E_y[g gᵀ] = diag(p) − p pᵀ``.
"""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, fisher_from_gradients, nll_ref, per_example_weight_gradients
from torch import nn

from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import exact_block
from fimbench.fisher.capture import capture_statistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

EXACT = 1e-12  # relative: float64 identities
CLASSES, FEATURES = 4, 6


def classifier(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 5), nn.Tanh(), nn.Linear(5, CLASSES)).to(DTYPE)


def inputs(m: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, FEATURES, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def test_nll_mean_and_sampling() -> None:
    logits = torch.randn(7, CLASSES, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    labels = torch.tensor([0, 3, 1, 2, 2, 0, 1])
    likelihood = Likelihood("categorical")
    assert torch.allclose(likelihood.nll(logits, labels), nll_ref(logits, labels, "categorical"), rtol=EXACT)
    assert torch.allclose(likelihood.mean(logits).sum(dim=1), torch.ones(7, dtype=DTYPE), rtol=EXACT)
    probabilities = torch.softmax(torch.tensor([[0.3, -1.0, 2.0, 0.0]], dtype=DTYPE), dim=-1)
    draws = likelihood.sample(probabilities.log().expand(40000, CLASSES), torch.Generator().manual_seed(3))
    frequencies = torch.bincount(draws, minlength=CLASSES).to(DTYPE) / draws.shape[0]
    assert draws.dtype == torch.int64 and draws.shape == (40000,)
    assert torch.allclose(frequencies, probabilities[0], atol=0.01)  # 4σ of a 40000-draw frequency


@pytest.mark.parametrize("sampled", [True, False], ids=["true-fisher", "empirical"])
def test_captured_fisher_is_the_per_example_gradient_fisher(sampled: bool) -> None:
    model, x = classifier(), inputs(24)
    labels = torch.randint(0, CLASSES, (24,), generator=torch.Generator().manual_seed(4))
    layers = [module for module in model if isinstance(module, nn.Linear)]
    generator = torch.Generator().manual_seed(5)
    statistics = capture_statistics(model, x, Likelihood.CATEGORICAL, layers, None if sampled else labels, generator)
    if sampled:  # the targets that were drawn: g_out = softmax(z) − e_y
        with torch.no_grad():
            labels = torch.argmax(torch.softmax(model(x), dim=-1) - statistics[-1].g, dim=-1)
    per_example = per_example_weight_gradients(model, x, labels, "categorical")
    for stats, gradients in zip(statistics, per_example):
        expected = fisher_from_gradients(gradients)
        assert torch.allclose(exact_block(stats.a, stats.g), expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))


def test_output_factor_is_the_true_fisher_in_expectation() -> None:
    """One input repeated: the sampled ``E[g gᵀ]`` at the output converges to ``diag(p) − p pᵀ``."""
    model = classifier(seed=6)
    x = inputs(1, seed=7).expand(20000, FEATURES)
    layer = model[2]
    (stats,) = capture_statistics(model, x, Likelihood.CATEGORICAL, [layer], None, torch.Generator().manual_seed(8))
    with torch.no_grad():
        p = torch.softmax(model(x[:1]), dim=-1)[0]
    expected = torch.diag(p) - torch.outer(p, p)
    assert torch.allclose(stats.g.T @ stats.g / x.shape[0], expected, atol=0.01)


@pytest.mark.parametrize("method", ["kfac", "deflation"])
def test_natural_gradient_trains_a_classifier(method: str) -> None:
    """Four Gaussian clusters, true Fisher: 30 preconditioned steps lower the loss to a fraction of it."""
    generator = torch.Generator().manual_seed(9)
    centres = 3.0 * torch.randn(CLASSES, FEATURES, generator=generator, dtype=DTYPE)
    labels = torch.randint(0, CLASSES, (256,), generator=generator)
    x = centres[labels] + torch.randn(256, FEATURES, generator=generator, dtype=DTYPE)
    model = classifier(seed=10)
    preconditioner = KroneckerPreconditioner(model, Likelihood.CATEGORICAL, method, damping=0.01, stats_every=5,
                                             inverse_every=5, generator=torch.Generator().manual_seed(11))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    with torch.no_grad():
        initial = float(Likelihood.CATEGORICAL.nll(model(x), labels).mean())
    for _ in range(30):
        optimizer.zero_grad()
        Likelihood.CATEGORICAL.nll(model(x), labels).mean().backward()
        preconditioner.step(x)
        optimizer.step()
    with torch.no_grad():
        final = float(Likelihood.CATEGORICAL.nll(model(x), labels).mean())
    assert final < 0.25 * initial
    assert preconditioner.alignment is not None and preconditioner.alignment < 0.99


def test_likelihood_is_checked_at_construction() -> None:
    model = classifier()
    assert KroneckerPreconditioner(model, "categorical", "kfac").likelihood is Likelihood.CATEGORICAL
    with pytest.raises(FimbenchError, match="bernoulli, gaussian, categorical.*CrossEntropyLoss"):
        KroneckerPreconditioner(model, nn.CrossEntropyLoss(), "kfac")  # type: ignore[arg-type]


@pytest.mark.parametrize("tokens", [CLASSES, 3], ids=["T-equals-C", "T-differs"])
def test_sequence_outputs_take_classes_from_the_last_dimension(tokens: int) -> None:
    """Outputs (m, T, C): the NLL is the per-token cross-entropy over the last dimension summed over the
    T tokens (when T == C, treating dimension 1 as classes would be silently wrong), the true-Fisher
    targets are (m, T) class indices, and a preconditioned step on a token model decreases the loss."""
    model = classifier()
    x = torch.randn(16, tokens, FEATURES, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    y = torch.randint(0, CLASSES, (16, tokens), generator=torch.Generator().manual_seed(2))
    likelihood = Likelihood.CATEGORICAL
    with torch.no_grad():
        z = model(x)
    expected = -torch.log_softmax(z, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(dim=1)
    assert torch.allclose(likelihood.nll(z, y), expected, rtol=EXACT)
    assert likelihood.loss_per_pixel(z, y) == pytest.approx(float(expected.sum()) / (16 * tokens), rel=EXACT)
    assert likelihood.sample(z, torch.Generator().manual_seed(3)).shape == (16, tokens)
    with pytest.raises(FimbenchError, match=rf"class indices of shape \(16, {tokens}\)"):
        likelihood.nll(z, y[:, 0])
    with pytest.raises(FimbenchError, match=rf"class indices of shape \(16, {tokens}\)"):
        likelihood.loss_per_pixel(z, y[:, 0])
    before = float(likelihood.nll(model(x), y).detach().mean())
    preconditioner = KroneckerPreconditioner(model, likelihood, "deflation", damping=1e-2, stats_every=1, fisher_fraction=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        likelihood.nll(model(x), y).mean().backward()
        preconditioner.step(x)
        optimizer.step()
    assert preconditioner.approximations[-1].terms[0][1].shape == (CLASSES, CLASSES)
    assert float(likelihood.nll(model(x), y).detach().mean()) < before
