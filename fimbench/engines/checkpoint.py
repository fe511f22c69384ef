"""What a training run's ``checkpoint.pt`` holds, and putting a freshly built run back into that state.

``fimbench train`` writes the checkpoint after every epoch's ``metrics.jsonl`` row (:mod:`fimbench.engines.rundir`
writes and reads the file, atomically and with ``weights_only=True``): the model's and the torch
optimizer's state dicts (no optimizer when the preconditioner takes the step, ``step_rule: qmodel``), the preconditioner's (:mod:`fimbench.preconditioner.state`, with the
Fisher-sampling generator), the data-order generator (each epoch draws its permutation from it, so its
state after epoch k fixes every later epoch's order), torch's global CPU RNG and, on a GPU, the device's
RNG, and the :class:`Counters`. Only tensors and plain Python data, so ``torch.load(weights_only=True)``
loads it. Restored on the same device type with the same config, a run continues bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch

from fimbench.engines.rundir import CHECKPOINT, CHECKPOINT_FORMAT
from fimbench.errors import FimbenchError
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner


@dataclass
class Counters:
    """Where the run stands at the checkpoint."""

    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    train_seconds: float
    started: str  # ISO time the run first started
    alignment_first_refresh: float | None
    metrics_bytes: int  # length of metrics.jsonl when the checkpoint was written


def training_checkpoint(
    counters: Counters,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    preconditioner: KroneckerPreconditioner | None,
    order_generator: torch.Generator,
    device: torch.device,
) -> dict[str, Any]:
    """The content of ``checkpoint.pt`` (module docstring); tensors are shared with the run, not copied."""
    return {
        "format": CHECKPOINT_FORMAT,
        "device_type": device.type,
        "counters": dataclasses.asdict(counters),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "preconditioner": None if preconditioner is None else preconditioner.state_dict(),
        "rng": {
            "order": order_generator.get_state(),
            "torch": torch.get_rng_state(),
            "device": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }


def restore_training(
    checkpoint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    preconditioner: KroneckerPreconditioner | None,
    order_generator: torch.Generator,
    device: torch.device,
) -> Counters:
    """Put a run freshly built from the checkpoint's config into the checkpoint's state; returns its counters.
    A checkpoint that does not fit (another device type, model, method or optimizer) is a one-line error."""
    if checkpoint.get("device_type") != device.type:
        raise FimbenchError(
            f"{CHECKPOINT} was written on {checkpoint.get('device_type')}, this run is on {device.type}; "
            f"resume it with --device {checkpoint.get('device_type')}"
        )
    try:
        counters = Counters(**checkpoint["counters"])
        datetime.fromisoformat(counters.started)
        if not all(isinstance(count, int) for count in (counters.epoch, counters.step, counters.metrics_bytes)):
            raise TypeError("its counters are not integers")
        model.load_state_dict(checkpoint["model"])
        if (optimizer is None) != (checkpoint["optimizer"] is None):
            raise FimbenchError("its torch optimizer and the configured step rule's do not match")
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if preconditioner is not None:
            preconditioner.load_state_dict(checkpoint["preconditioner"])
        elif checkpoint["preconditioner"] is not None:
            raise FimbenchError("it holds a preconditioner, and the configured method has none")
        rng = checkpoint["rng"]
        order_generator.set_state(rng["order"].cpu())
        torch.set_rng_state(rng["torch"].cpu())
        if rng["device"] is not None:
            torch.cuda.set_rng_state(rng["device"].cpu(), device)
    except FimbenchError as error:
        raise FimbenchError(f"{CHECKPOINT} does not fit the run's config.yaml: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FimbenchError(f"{CHECKPOINT} does not fit the run's config.yaml ({reason})") from None
    return counters
