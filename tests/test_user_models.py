"""The preconditioner on models users bring: layer selection, bias-free layers, other parameterised modules,
``torch.compile``, GradScaler, bfloat16 and autocast.

References: a bias-free layer's update is checked against the dense solve of its stored block; a compiled
model and a GradScaler run are checked against the plain float32 run of the same seeds.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import mat_ref, vec_ref
from torch import nn

from fimbench.errors import FimbenchError
from fimbench.models import Likelihood
from fimbench.optim import KroneckerPreconditioner

LIKELIHOOD = Likelihood.GAUSSIAN
SETTINGS = dict(damping=0.05, stats_every=1, inverse_every=1, fisher_fraction=1.0, empirical_fisher=True, kl_clip=1e-3)


def network(dtype: torch.dtype = torch.float32, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5, bias=bias), nn.Tanh(), nn.Linear(5, 4)).to(dtype)


def data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=generator).to(dtype), torch.randn(16, 4, generator=generator).to(dtype)


def train(model: nn.Module, preconditioner: KroneckerPreconditioner, steps: int = 4, scaler=None) -> None:
    x, y = data(next(model.parameters()).dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = LIKELIHOOD.nll(model(x), y).mean()
        (loss if scaler is None else scaler.scale(loss)).backward()
        preconditioner.step(x, y)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().reshape(-1).double() for parameter in model.parameters()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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


def test_layers_and_skip_layers_select_by_object_or_name():
    model = network()
    with pytest.warns(UserWarning, match=r"raw gradient of 1 module\(s\).*: 2 \(Linear\)$"):
        assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["0"]).layers == [model[0]]
    with pytest.warns(UserWarning, match=r": 0 \(Linear\)$"):
        assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=[model[0]]).layers == [model[2]]
    with pytest.raises(FimbenchError, match=r"no module named 'fc'.*its layers are '0', '2'"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["fc"])
    with pytest.raises(FimbenchError, match="not a trainable nn.Linear"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["1"])
    with pytest.raises(FimbenchError, match="not a module of the model"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=[nn.Linear(2, 2)])


def test_other_parameterised_modules_keep_their_raw_gradient_and_are_named_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    assert [str(w.message) for w in caught] == [
        "KroneckerPreconditioner leaves the raw gradient of 1 module(s) with trainable parameters: 1"
    ]
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    norm_grad, linear_grad = model[1].weight.grad.clone(), model[0].weight.grad.clone()
    preconditioner.step(x, y)
    assert torch.equal(model[1].weight.grad, norm_grad)
    assert not torch.allclose(model[0].weight.grad, linear_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model of Linear layers only: no warning
        KroneckerPreconditioner(network(), LIKELIHOOD, "kfac")


def test_compiled_model_matches_the_eager_run():
    eager, compiled_source = network(), network()
    train(eager, KroneckerPreconditioner(eager, LIKELIHOOD, "deflation", **SETTINGS))
    compiled = torch.compile(compiled_source, backend="eager")
    preconditioner = KroneckerPreconditioner(compiled, LIKELIHOOD, "deflation", **SETTINGS)
    assert preconditioner.layers == [compiled_source[0], compiled_source[2]]
    train(compiled, preconditioner)
    assert relative(flat(compiled_source), flat(eager)) <= 1e-5
    assert relative(flat(compiled_source), flat(network())) > 1e-2  # it trained


def test_grad_scaler_run_matches_the_unscaled_run():
    plain, scaled = network(), network()
    train(plain, KroneckerPreconditioner(plain, LIKELIHOOD, "kfac", **SETTINGS), steps=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train(scaled, KroneckerPreconditioner(scaled, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS), steps=5, scaler=scaler)
    assert relative(flat(scaled), flat(plain)) <= 1e-4
    assert relative(flat(scaled), flat(network())) > 1e-2


def test_grad_scaler_skips_a_step_with_infinite_gradients():
    model = network()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data()
    scaler.scale(LIKELIHOOD.nll(model(x), y).mean()).backward()
    model[2].bias.grad[0] = float("inf")
    before, grads = flat(model), [p.grad.clone() for p in model.parameters()]
    preconditioner.step(x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))  # left for the scaler
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(flat(model), before) and scaler.get_scale() == 512.0


def test_bfloat16_model_trains_with_float32_factors():
    model = network(torch.bfloat16)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "deflation", **SETTINGS)
    x, y = data(torch.bfloat16)
    with torch.no_grad():
        start = float(LIKELIHOOD.nll(model(x).float(), y.float()).mean())
    train(model, preconditioner, steps=5)
    assert preconditioner.approximations[0].terms[0][0].dtype == torch.float32
    assert model[0].weight.dtype == model[0].weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert float(LIKELIHOOD.nll(model(x).float(), y.float()).mean()) < start
    assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", factor_dtype=torch.float64).factor_dtype == torch.float64


def test_step_inside_autocast_matches_the_step_outside():
    outside, inside = network(), network()
    x, y = data()
    for model, autocast in ((outside, False), (inside, True)):
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
        LIKELIHOOD.nll(model(x), y).mean().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            preconditioner.step(x, y)
        assert preconditioner.approximations[0].terms[0][0].dtype == torch.float32
    for a, b in zip(outside.parameters(), inside.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9)
