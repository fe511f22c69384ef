"""The float64 problem the optimizer tests train on: a small tanh network, a fixed data set, and a loss whose
mini-batch moves with the step, so that each step sees new examples."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import Tensor, nn

DTYPE = torch.float64
STEPS = 40
Trajectory = list[dict[str, Tensor]]

_DATA = torch.Generator().manual_seed(1)
X, Y = torch.randn(32, 5, generator=_DATA, dtype=DTYPE), torch.randn(32, 5, generator=_DATA, dtype=DTYPE)


def make_model(seed: int = 0, widths: tuple[int, ...] = (5, 6, 5)) -> nn.Sequential:
    """Linear layers of ``widths`` with tanh between them, float64, weights N(0, 0.25) and biases N(0, 0.01)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out, dtype=DTYPE), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=DTYPE) * (0.5 if parameter.dim() == 2 else 0.1))
    return model


def loss_of(model: nn.Module, params: dict[str, Tensor], t: int) -> Tensor:
    """The mean squared error (× 1.5) of step ``t``'s 16 examples, as a function of ``params``."""
    rows = (torch.arange(16) + 3 * t) % X.shape[0]
    return 1.5 * ((torch.func.functional_call(model, params, (X[rows],)) - Y[rows]) ** 2).mean()


def checkpoint_round_trip(
    model: nn.Module, optimizer: torch.optim.Optimizer, new_model: Callable[[int], nn.Module], make: Callable[[nn.Module], torch.optim.Optimizer]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Save model and optimizer, load them (``weights_only=True``) into a differently initialised model (seed 7)
    and a new optimizer."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = new_model(7)
    resumed.load_state_dict(checkpoint["model"])
    new_optimizer = make(resumed)
    new_optimizer.load_state_dict(checkpoint["optimizer"])
    return resumed, new_optimizer


def train(
    new_model: Callable[[int], nn.Module], make: Callable[[nn.Module], torch.optim.Optimizer], steps: int = STEPS, resume_at: int | None = None
) -> Trajectory:
    """The parameters after each of ``steps`` steps of ``make(model)``'s optimizer on :func:`loss_of`, with a
    checkpoint round trip before step ``resume_at``."""
    model = new_model(0)
    optimizer = make(model)
    trajectory = []
    for t in range(steps):
        if t == resume_at:
            model, optimizer = checkpoint_round_trip(model, optimizer, new_model, make)
        optimizer.zero_grad()
        loss_of(model, dict(model.named_parameters()), t).backward()
        optimizer.step()
        trajectory.append({name: p.detach().clone() for name, p in model.named_parameters()})
    return trajectory


def worst(actual: Trajectory, expected: Trajectory) -> float:
    """The largest ``max|θ − θ_ref| / max|θ_ref|`` over steps and tensors."""
    assert len(actual) == len(expected) and all(a.keys() == e.keys() for a, e in zip(actual, expected))
    return max(((a[n] - e[n]).abs().max() / e[n].abs().max()).item() for a, e in zip(actual, expected) for n in e)


def train_reference(model: nn.Module, update: Callable[[str, Tensor, Tensor, dict], Tensor], steps: int = STEPS) -> Trajectory:
    """The parameters after each of ``steps`` steps of a reference: ``update(name, θ, ∇, state)`` per tensor on
    :func:`loss_of`, ``state`` a dict per tensor kept between steps."""
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    states: dict[str, dict] = {name: {} for name in params}
    trajectory = []
    for t in range(steps):
        leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
        grads = torch.autograd.grad(loss_of(model, leaves, t), list(leaves.values()))
        params = {name: update(name, p, g, states[name]) for (name, p), g in zip(params.items(), grads)}
        trajectory.append(params)
    return trajectory
