"""Data-parallel training for ``fimbench train --nproc``: the model in ``DistributedDataParallel`` and each
rank's part of a global mini-batch. The statistics collectives are the preconditioner's
(:mod:`fimbench.preconditioner.distributed`)."""

from __future__ import annotations

import torch

from fimbench.preconditioner.distributed import rank, world_size


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` under an initialised process group (gradients averaged
    over the ranks, on the model's CUDA device or on CPU); ``model`` itself otherwise."""
    if world_size() == 1:
        return model
    parameter = next(model.parameters())
    device_ids = [parameter.device] if parameter.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global mini-batch's example indices (all of it on one process)."""
    return index.tensor_split(world_size())[rank()]
