"""``exact-ng`` and ``exact-ng-block`` through ``KroneckerPreconditioner``, against the dense float64 network
Fisher ``F = JᵀJ/m`` of the Fisher sub-batch built from torch.func per-example gradients: the step is
``−lr ν (F + λI)⁻¹ ∇`` (whole network) or ``−lr ν (F_ll + λI)⁻¹ ∇_l`` (per block), adaptive damping's
``M(δ)`` uses ``F + λI``, and a checkpoint resumes exactly. Data targets (``empirical_fisher``) make the
sub-batch's Fisher reproducible outside the preconditioner."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import weight_gradient, weight_of
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

DTYPE = torch.float64
UPDATE = 1e-9
"""Relative: the preconditioned gradient vs a dense float64 solve of a system of ≈ 100 parameters."""
LIKELIHOOD = Likelihood.GAUSSIAN
BATCH, FISHER = 12, 8


def network(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 4)).to(DTYPE)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 4, generator=generator, dtype=DTYPE), torch.randn(BATCH, 4, generator=generator, dtype=DTYPE)


def dense_jacobian(model: nn.Module, layers: list[nn.Linear], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Rows ``j_n``: ``∂ℓ_n/∂[W_l | b_l]`` of the chosen layers, each flattened row-major as its (q, p) matrix."""
    params = {name: value.detach() for name, value in model.named_parameters()}
    names = {id(module): name for name, module in model.named_modules()}

    def loss_one(parameters: dict[str, torch.Tensor], x_n: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
        return LIKELIHOOD.nll(functional_call(model, parameters, (x_n.unsqueeze(0),)), y_n.unsqueeze(0)).sum()

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    blocks = []
    for layer in layers:
        name = names[id(layer)]
        W = grads[f"{name}.weight"]
        if layer.bias is not None:
            W = torch.cat([W, grads[f"{name}.bias"].unsqueeze(-1)], dim=-1)
        blocks.append(W.reshape(x.shape[0], -1))
    return torch.cat(blocks, dim=1)


def dense_solve(J: torch.Tensor, gradient: torch.Tensor, damping: float, sizes: list[int], per_layer: bool) -> torch.Tensor:
    """``(F + λI)⁻¹ ∇`` with ``F = JᵀJ/m``, or block by block with ``F_ll``."""
    F = J.T @ J / J.shape[0]
    if per_layer:
        mask = torch.block_diag(*[torch.ones(size, size, dtype=DTYPE) for size in sizes])
        F = F * mask
    return torch.linalg.solve(F + damping * torch.eye(F.shape[0], dtype=DTYPE), gradient)


def flat(matrices: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([matrix.reshape(-1) for matrix in matrices])


@pytest.mark.parametrize("method", ["exact-ng", "exact-ng-block"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kl_clip", [None, 1e-4])
def test_step_is_the_damped_exact_natural_gradient(method, bias, kl_clip):
    model = network(bias)
    damping = 0.03
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, method, damping=damping, kl_clip=kl_clip, fisher_fraction=FISHER / BATCH, empirical_fisher=True,
    )
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    gradients = [weight_gradient(layer).detach().clone() for layer in preconditioner.layers]
    nu = float(preconditioner.step(x, y))
    J = dense_jacobian(model, preconditioner.layers, x[:FISHER], y[:FISHER])
    sizes = [gradient.numel() for gradient in gradients]
    expected = dense_solve(J, flat(gradients), damping, sizes, per_layer=method == "exact-ng-block")
    inner = float(expected @ flat(gradients))
    expected_nu = 1.0 if kl_clip is None else min(1.0, math.sqrt(kl_clip / abs(inner)))
    assert nu == pytest.approx(expected_nu, rel=UPDATE)
    actual = flat([weight_gradient(layer) for layer in preconditioner.layers])
    assert float((actual - expected_nu * expected).norm() / (expected_nu * expected).norm()) < UPDATE
    assert preconditioner.fisher is not None and preconditioner.fisher.m == FISHER
    assert preconditioner.correction_scale is None


def test_the_whole_network_differs_from_its_blocks():
    """The cross-layer terms change the direction: exact-ng ≠ exact-ng-block on the same system."""
    directions = []
    for method in ("exact-ng", "exact-ng-block"):
        model = network()
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, method, damping=0.03, kl_clip=None, empirical_fisher=True)
        x, y = data()
        LIKELIHOOD.nll(model(x), y).mean().backward()
        preconditioner.step(x, y)
        directions.append(flat([weight_gradient(layer) for layer in preconditioner.layers]))
    assert float((directions[0] - directions[1]).norm() / directions[1].norm()) > 1e-2


def test_frozen_layer_is_left_out_of_the_fisher():
    model = network()
    model[2].requires_grad_(False)
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, "exact-ng", damping=0.03, kl_clip=None, empirical_fisher=True, fisher_fraction=FISHER / BATCH
    )
    assert preconditioner.layers == [model[0], model[4]]
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    gradients = [weight_gradient(layer).detach().clone() for layer in preconditioner.layers]
    preconditioner.step(x, y)
    J = dense_jacobian(model, preconditioner.layers, x[:FISHER], y[:FISHER])
    expected = dense_solve(J, flat(gradients), 0.03, [g.numel() for g in gradients], per_layer=False)
    actual = flat([weight_gradient(layer) for layer in preconditioner.layers])
    assert float((actual - expected).norm() / expected.norm()) < UPDATE


@pytest.mark.parametrize("method", ["exact-ng", "exact-ng-block"])
def test_adaptive_damping_predicts_with_the_damped_sub_batch_fisher(method):
    model = network()
    damping = 0.05
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, method, damping=damping, kl_clip=None, empirical_fisher=True, fisher_fraction=FISHER / BATCH,
        damping_schedule="adaptive", damping_every=1,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data()
    loss = LIKELIHOOD.nll(model(x), y).mean()
    loss.backward()
    loss = loss.detach()
    gradients = [weight_gradient(layer).detach().clone() for layer in preconditioner.layers]
    before = [weight_of(layer).detach().clone() for layer in preconditioner.layers]
    J = dense_jacobian(model, preconditioner.layers, x[:FISHER], y[:FISHER])
    preconditioner.step(x, y)
    optimizer.step()
    assert preconditioner.awaiting_loss
    delta = flat([weight_of(layer).detach() - start for layer, start in zip(preconditioner.layers, before)])
    F = J.T @ J / FISHER
    if method == "exact-ng-block":
        sizes = [g.numel() for g in gradients]
        F = F * torch.block_diag(*[torch.ones(size, size, dtype=DTYPE) for size in sizes])
    expected = float(flat(gradients) @ delta + 0.5 * delta @ (F + damping * torch.eye(F.shape[0], dtype=DTYPE)) @ delta)
    assert float(preconditioner.predicted_change(preconditioner.damping_state.trial)) == pytest.approx(expected, rel=1e-10)
    with torch.no_grad():
        after = LIKELIHOOD.nll(model(x), y).mean()
    rho = preconditioner.adapt_damping(loss, after)
    assert rho == pytest.approx((float(after) - float(loss)) / expected, rel=1e-8)


@pytest.mark.parametrize("method", ["exact-ng", "exact-ng-block"])
def test_state_dict_resumes_exactly(method):
    """T1 = 1 < T2 = 3: the state keeps the older sub-batch the factorisation was built from."""

    def make(model: nn.Module) -> KroneckerPreconditioner:
        return KroneckerPreconditioner(
            model, LIKELIHOOD, method, damping=0.05, stats_every=1, inverse_every=3, generator=torch.Generator().manual_seed(3),
        )

    def train(model: nn.Module, preconditioner: KroneckerPreconditioner, optimizer, steps: range) -> None:
        for step in steps:
            generator = torch.Generator().manual_seed(10 + step)
            x, y = torch.randn(BATCH, 4, generator=generator, dtype=DTYPE), torch.randn(BATCH, 4, generator=generator, dtype=DTYPE)
            optimizer.zero_grad()
            LIKELIHOOD.nll(model(x), y).mean().backward()
            preconditioner.step(x, y)
            optimizer.step()

    model = network()
    preconditioner = make(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, preconditioner, optimizer, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "preconditioner": preconditioner.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert saved["preconditioner"]["inverse"]["source"] is not None  # factorised from an older sub-batch
    train(model, preconditioner, optimizer, range(5, 9))
    restored = network()
    restored.load_state_dict(saved["model"])
    fresh = make(restored)
    fresh_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    fresh.load_state_dict(saved["preconditioner"])
    train(restored, fresh, fresh_optimizer, range(5, 9))
    for resumed, uninterrupted in zip(restored.parameters(), model.parameters()):
        assert torch.equal(resumed, uninterrupted)
    with pytest.raises(FimbenchError, match="method"):
        KroneckerPreconditioner(network(), LIKELIHOOD, "kfac").load_state_dict(saved["preconditioner"])


def test_exact_methods_have_no_kronecker_blocks():
    preconditioner = KroneckerPreconditioner(network(), LIKELIHOOD, "exact-ng")
    with pytest.raises(FimbenchError, match="no per-layer blocks"):
        _ = preconditioner.approximations
    with pytest.raises(FimbenchError, match="unknown method 'sgd'"):
        KroneckerPreconditioner(network(), LIKELIHOOD, "sgd")


def test_float32_model_solves_in_float64_grams():
    """A float32 model: the step matches the float64 dense solve to float32 accuracy (the m × m Gram and its
    Cholesky factor are float64; the products with J stay in the gradient's dtype)."""
    model = network().float()
    preconditioner = KroneckerPreconditioner(
        model, LIKELIHOOD, "exact-ng", damping=0.03, kl_clip=None, fisher_fraction=FISHER / BATCH, empirical_fisher=True
    )
    x, y = (tensor.float() for tensor in data())
    LIKELIHOOD.nll(model(x), y).mean().backward()
    gradients = [weight_gradient(layer).detach().clone().double() for layer in preconditioner.layers]
    preconditioner.step(x, y)
    actual = flat([weight_gradient(layer).double() for layer in preconditioner.layers])
    assert weight_gradient(preconditioner.layers[0]).dtype == torch.float32
    J = dense_jacobian(model.double(), preconditioner.layers, x[:FISHER].double(), y[:FISHER].double())
    expected = dense_solve(J, flat(gradients), 0.03, [g.numel() for g in gradients], per_layer=False)
    assert float((actual - expected).norm() / expected.norm()) < 1e-4
