"""The preconditioner on models users bring: layer selection, bias-free layers, other parameterised modules,
``torch.compile``, GradScaler, bfloat16 and autocast.

References: a bias-free layer's update is checked against the dense solve of its stored block; a compiled
model and a GradScaler run are checked against the plain float32 run of the same seeds.
"""

from __future__ import annotations

import pytest
import torch
from reference import mat_ref, vec_ref
from torch import nn
from user_models import LIKELIHOOD, SETTINGS, data, network

from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner


def test_bias_free_linear_step_is_the_dense_natural_gradient():
    model = network(torch.float64, bias=False)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "deflation", **{**SETTINGS, "kl_clip": None})
    x, y = data(torch.float64)
    LIKELIHOOD.nll(model(x), y).mean().backward()
    raw = model[0].weight.grad.clone()
    preconditioner.step(x, y)
    block = preconditioner.approximations[0]
    assert block.terms[0][0].shape == (6, 6)  # no bias column
    expected = mat_ref(torch.linalg.solve(block.damped(0.05).to_dense(), vec_ref(raw)), 5, 6)
    assert torch.allclose(model[0].weight.grad, expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ what the preconditioner leaves alone


def test_statistics_pass_leaves_batchnorm_buffers_dropout_and_rng_streams_alone():
    """After backward, ``step`` (a statistics update) changes no buffer (BatchNorm's running statistics and
    ``num_batches_tracked``) and advances neither the global generator nor the user's; with dropout in the
    model, two statistics passes from the same sampling seed give the same blocks (no mask is drawn)."""
    blocks = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 4))
        with pytest.warns(UserWarning):  # BatchNorm keeps its raw gradient
            preconditioner = KroneckerPreconditioner(
                model, LIKELIHOOD, "kfac", **{**SETTINGS, "empirical_fisher": False}, generator=torch.Generator().manual_seed(3)
            )
        x, y = data()
        LIKELIHOOD.nll(model(x), y).mean().backward()
        buffers = [buffer.clone() for buffer in model.buffers()]
        assert int(model[1].num_batches_tracked) == 1
        rng = torch.get_rng_state()
        preconditioner.step(x)
        assert all(torch.equal(buffer, saved) for buffer, saved in zip(model.buffers(), buffers))
        assert torch.equal(torch.get_rng_state(), rng)
        assert model.training and model[3].training  # the modes are put back
        blocks.append(preconditioner.approximations[0].terms[0][0])
        torch.manual_seed(1)  # another global stream for the second run
    assert torch.equal(blocks[0], blocks[1])


def test_empirical_fisher_without_targets_is_refused():
    model = network()
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    with pytest.raises(FimbenchError, match=r"empirical_fisher=True takes the data targets: call step\(inputs, targets\)"):
        preconditioner.step(x)


@pytest.mark.parametrize("method", ["deflation", "lanczos", "kfac-corrected"])
@pytest.mark.parametrize("seed", range(4))
def test_rank_two_methods_on_a_single_output_head_train_with_the_dense_update(method, seed):
    """A binary classifier's head has q = 1: ``Z(F)`` is rank 1 (Deflation's deflated operator is zero,
    Lanczos' Krylov space one vector). Four preconditioned steps stay finite, and the head's update is the
    dense solve of its damped block."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    y = (torch.rand(16, 1) < 0.5).double()
    likelihood = Likelihood.BERNOULLI
    preconditioner = KroneckerPreconditioner(
        model, likelihood, method, damping=1e-3, stats_every=1, inverse_every=1, fisher_fraction=1.0, kl_clip=None,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        optimizer.zero_grad()
        likelihood.nll(model(x), y).mean().backward()
        raw = torch.cat([model[2].weight.grad, model[2].bias.grad.unsqueeze(1)], dim=1).clone()
        preconditioner.step(x)
        optimizer.step()
        assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    block = preconditioner.approximations[1]
    expected = mat_ref(torch.linalg.solve(block.damped(1e-3).to_dense(), vec_ref(raw)), 1, 6)
    assert torch.allclose(model[2].weight.grad, expected[:, :5], rtol=1e-8, atol=1e-12)
