"""The small models, data and training loop the preconditioner tests on user models share."""

from __future__ import annotations

import torch
from torch import nn

from fimbench.fisher.likelihood import Likelihood
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
