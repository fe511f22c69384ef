"""The optimizers of a run configuration: the torch optimizer of a method, and the natural-gradient
preconditioner of an ``optimizer`` section (the one place the YAML configuration becomes a preconditioner)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fimbench.engines.config import OptimizerConfig
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method
from fimbench.names import StepRule
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.timing import PhaseTimer


def first_order_optimizer(parameters: Iterable[torch.nn.Parameter], method: Method, settings: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam for ``adam``; momentum SGD (with weight decay) for every other method — the Kronecker
    methods' preconditioned gradient included."""
    if method is Method.ADAM:
        return torch.optim.Adam(
            parameters, lr=settings.lr, betas=tuple(settings.adam_betas), weight_decay=settings.weight_decay  # type: ignore[arg-type]
        )
    return torch.optim.SGD(
        parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=settings.nesterov
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
