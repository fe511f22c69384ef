"""The device a run uses, and the environment stamp (device, versions, host) written into every engine's summary."""

from __future__ import annotations

import platform
from typing import Any

import torch

from fimbench import __version__
from fimbench.errors import FimbenchError


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
