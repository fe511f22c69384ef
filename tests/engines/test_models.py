"""Autoencoder shapes, initialisation, likelihoods and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from fimbench.engines.models import ARCHITECTURES, Architecture, Autoencoder, build_model, evaluate
from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood

EXACT = 1e-12
SAMPLING = 0.02  # Monte-Carlo tolerance for 10⁵ samples


@pytest.mark.parametrize("dataset, widths", [("curves", 13), ("mnist", 9), ("faces", 9)])
def test_paper_architectures(dataset: str, widths: int) -> None:
    architecture = ARCHITECTURES[dataset]
    assert len(architecture.layers) == widths and architecture.layers[0] == architecture.layers[-1]
    model = Autoencoder(architecture)
    layers = model.linear_layers()
    assert [(layer.in_features, layer.out_features) for layer in layers] == list(
        zip(architecture.layers[:-1], architecture.layers[1:])
    )
    relus = sum(isinstance(module, torch.nn.ReLU) for module in model.net)
    assert relus == len(layers) - 1  # App. D: ReLU everywhere but the output layer
    assert model(torch.zeros(3, architecture.layers[0])).shape == (3, architecture.layers[-1])


def test_likelihoods_of_the_benchmarks() -> None:
    assert ARCHITECTURES["curves"].likelihood is Likelihood.BERNOULLI
    assert ARCHITECTURES["mnist"].likelihood is Likelihood.BERNOULLI
    assert ARCHITECTURES["faces"].likelihood is Likelihood.GAUSSIAN


def test_initialisation_is_seeded_xavier_with_small_biases() -> None:
    architecture = Architecture((20, 10, 20), Likelihood.BERNOULLI)
    first, again, other = build_model(architecture, 3), build_model(architecture, 3), build_model(architecture, 4)
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(first.net[0].weight, other.net[0].weight)
    layer = first.net[0]
    assert float(layer.weight.detach().abs().max()) <= math.sqrt(6.0 / 30.0)
    assert torch.all(layer.bias == 0.01)


def test_unknown_activation() -> None:
    with pytest.raises(FimbenchError, match="unknown activation 'swish'"):
        Autoencoder(Architecture((4, 2, 4), Likelihood.BERNOULLI, "swish"))


def test_bernoulli_nll_is_summed_bce_from_logits() -> None:
    z = torch.tensor([[0.3, -2.0, 5.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    p = torch.sigmoid(z)
    expected = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum(dim=1)
    assert torch.allclose(Likelihood.BERNOULLI.nll(z, y), expected, atol=EXACT)
    assert float(Likelihood.BERNOULLI.loss_per_pixel(z, y)) == pytest.approx(float(expected) / 3)


def test_gaussian_nll_and_paper_loss() -> None:
    z = torch.tensor([[0.3, -2.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.zeros_like(z)
    assert torch.allclose(Likelihood.GAUSSIAN.nll(z, y), 0.5 * (z**2).sum(dim=1), atol=EXACT)
    assert float(Likelihood.GAUSSIAN.loss_per_pixel(z, y)) == pytest.approx(float((z**2).mean()))


def test_sampling_matches_the_predictive_distribution() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.full((100_000, 2), 0.0, dtype=torch.float64)
    logits[:, 1] = 2.0
    samples = Likelihood.BERNOULLI.sample(logits, generator)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    assert samples.mean(dim=0).tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-2))], abs=SAMPLING)
    means = torch.full((100_000, 1), 3.0, dtype=torch.float64)
    draws = Likelihood.GAUSSIAN.sample(means, generator)
    assert float(draws.mean()) == pytest.approx(3.0, abs=SAMPLING) and float(draws.var()) == pytest.approx(1.0, abs=SAMPLING)


def test_evaluate_reports_objective_paper_loss_and_reconstruction_error() -> None:
    architecture = Architecture((6, 3, 6), Likelihood.BERNOULLI)
    model = build_model(architecture, 0).double()
    data = torch.rand(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    metrics = evaluate(model, data, batch_size=3)  # chunking must not change the averages
    with torch.no_grad():
        output = model(data)
    assert metrics.loss == pytest.approx(float(Likelihood.BERNOULLI.nll(output, data).mean()))
    assert metrics.loss_per_pixel == pytest.approx(metrics.loss / 6)
    assert metrics.reconstruction_error == pytest.approx(float((torch.sigmoid(output) - data).square().sum(1).mean()))
