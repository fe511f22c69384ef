"""Data-parallel training for ``fimbench train --nproc``: the model in ``DistributedDataParallel``, each
rank's part of a global mini-batch, and each rank's term of a mean over that mini-batch.

With R ranks sharing a mini-batch of B examples, rank r holding ``B_r`` of them (``Σ_r B_r = B``; a shard may
be uneven, or empty when B < R), rank r's term of the batch mean of per-example values ``v`` is
``(R / B) Σ_{t ∈ r} v_t``: DDP (for the gradients) and :func:`~fimbench.preconditioner.distributed.mean_over_ranks`
(for the logged losses and adaptive damping's ρ) average the R terms to ``(1/B) Σ_t v_t``, the one-process
mean. A rank's own mean, averaged over ranks, would weight the examples of a smaller shard more, and an
empty shard's would be 0/0. The statistics collectives are the preconditioner's
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


def batch_share(batch_size: int) -> float | None:
    """``R / B`` for the R ranks sharing a mini-batch of ``batch_size`` = B examples; None on one process."""
    ranks = world_size()
    return None if ranks == 1 else ranks / batch_size


def rank_mean(values: torch.Tensor, share: float | None) -> torch.Tensor:
    """This rank's term ``share · Σ values`` of the batch mean of the per-example ``values`` (module
    docstring); ``values.mean()`` itself on one process (``share`` None)."""
    return values.mean() if share is None else values.sum() * share
