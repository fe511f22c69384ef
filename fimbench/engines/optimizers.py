"""The optimizers of a run configuration: the torch optimizer of a method (the factory its registry record
names, one per optimizer below), and the natural-gradient preconditioner of an ``optimizer`` section (the one
place the YAML configuration becomes a preconditioner)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fimbench.engines.config import OptimizerConfig
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method, implementation
from fimbench.names import StepRule
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.timing import PhaseTimer


def torch_optimizer(model: torch.nn.Module, method: Method, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """The torch optimizer that steps ``model``'s parameters for ``method``: the one its registry record names
    (momentum SGD for the preconditioned methods, which step along ``ν F̃⁻¹ ∇``)."""
    factory: Callable[[torch.nn.Module, OptimizerConfig], torch.optim.Optimizer] = implementation(method.record.optimizer)
    return factory(model, settings)


def sgd(model: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Momentum SGD with weight decay (Nesterov with ``nesterov``)."""
    return torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=settings.nesterov
    )


def adam(model: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam with ``adam_betas`` and L2 weight decay."""
    betas = (settings.adam_betas[0], settings.adam_betas[1])
    return torch.optim.Adam(model.parameters(), lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)


def shampoo(model: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Shampoo with Adam grafting (:mod:`fimbench.optimizers.shampoo`): ``adam_betas`` are its β₁ (the gradient's
    EMA) and β₂ (the factors' and the grafting's), and its inverse roots are recomputed every T2
    (``inverse_every``) steps."""
    from fimbench.optimizers.shampoo import Shampoo

    betas = (settings.adam_betas[0], settings.adam_betas[1])
    return Shampoo(
        model.parameters(), lr=settings.lr, betas=betas, weight_decay=settings.weight_decay,
        precondition_frequency=settings.inverse_every, grafting_beta2=betas[1],
    )


def soap(model: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """SOAP (:mod:`fimbench.optimizers.soap`): Adam with ``adam_betas`` in Shampoo's eigenbasis, refreshed every
    T2 (``inverse_every``) steps."""
    from fimbench.optimizers.soap import soap as build_soap

    betas = (settings.adam_betas[0], settings.adam_betas[1])
    return build_soap(model.parameters(), lr=settings.lr, betas=betas, weight_decay=settings.weight_decay, precondition_frequency=settings.inverse_every)


def muon(model: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Muon on the hidden layers' weights, AdamW (``adam_lr``, ``adam_betas``) on the rest
    (:mod:`fimbench.optimizers.muon`); ``momentum`` and ``nesterov`` are Muon's."""
    from fimbench.optimizers.muon import MuonWithAdamW

    return MuonWithAdamW(
        model, lr=settings.lr, adam_lr=settings.adam_lr, momentum=settings.momentum, nesterov=settings.nesterov,
        weight_decay=settings.weight_decay, adam_betas=(settings.adam_betas[0], settings.adam_betas[1]),
    )


def configured_preconditioner(
    model: torch.nn.Module,
    likelihood: Likelihood,
    config: OptimizerConfig,
    generator: torch.Generator | None = None,
    timer: PhaseTimer | None = None,
) -> KroneckerPreconditioner:
    """The preconditioner of ``config``: its :class:`~fimbench.preconditioner.settings.PreconditionerSettings`
    part as-is, and its weight decay with ``step_rule="qmodel"`` (that rule takes the step itself, so the
    torch optimizer's weight decay does not reach the preconditioned layers)."""
    weight_decay = config.weight_decay if config.step_rule == StepRule.QMODEL else 0.0
    return KroneckerPreconditioner(model, likelihood, config.method, config, generator=generator, timer=timer, weight_decay=weight_decay)
