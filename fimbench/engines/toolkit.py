"""Setup toolkit shared by the engines (train, fisher_error, cost, sweep): device, dataset, architecture,
first-order optimizer, the preconditioner of a configuration, and the one environment stamp written into every summary.

The engines import this module and never each other.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fimbench import __version__
from fimbench.data import DatasetSplits, load_dataset
from fimbench.engines.config import OptimizerConfig, RunConfig
from fimbench.engines.models import Architecture, default_architecture
from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.preconditioner.step_rule import QMODEL
from fimbench.timing import PhaseTimer


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FimbenchError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FimbenchError("device 'cuda' requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise FimbenchError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def resolve_architecture(config: RunConfig, input_dim: int) -> Architecture:
    """The dataset's App. D autoencoder (or ``model.architecture``'s default), or the layers / likelihood the config names."""
    default = default_architecture(config.data.dataset, config.model.architecture)
    layers = tuple(config.model.layers) if config.model.layers else default.layers
    try:
        likelihood = Likelihood(config.model.likelihood) if config.model.likelihood else default.likelihood
    except ValueError:
        raise FimbenchError(f"unknown likelihood '{config.model.likelihood}'; choose bernoulli or gaussian") from None
    if layers[0] != input_dim or layers[-1] != input_dim:
        raise FimbenchError(
            f"model.layers must start and end with the data width {input_dim}, got {list(layers)}"
        )
    return Architecture(layers, likelihood, config.model.activation, default.kind)


def load_configured_dataset(config: RunConfig, batch_size: int | None = None) -> DatasetSplits:
    """The dataset ``config.data`` names; with ``batch_size``, check that one batch fits in it."""
    data = config.data
    dataset = load_dataset(
        data.dataset,
        data_dir=Path(data.data_dir) if data.data_dir else None,
        split_seed=data.split_seed,
        synth_train=data.synth_train,
        synth_test=data.synth_test,
    )
    if batch_size is not None:
        check_batch_size(batch_size, dataset)
    return dataset


def check_batch_size(batch_size: int, dataset: DatasetSplits) -> None:
    """A mini-batch must fit in the training split."""
    if batch_size > dataset.train.shape[0]:
        raise FimbenchError(f"batch size {batch_size} exceeds the {dataset.train.shape[0]} training examples")


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
    weight_decay = config.weight_decay if config.step_rule == QMODEL else 0.0
    return KroneckerPreconditioner(model, likelihood, config.method, config, generator=generator, timer=timer, weight_decay=weight_decay)


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """The environment stamp of every engine's ``summary.json``: device, versions, host."""
    return {
        "device": device_description(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "fimbench": __version__,
        "host": platform.node(),
    }
