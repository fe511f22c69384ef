"""Data-parallel statistics: every rank's ``(ā, g)`` rows, gathered, so all ranks build the same blocks.

fimbench's approximations are computed from the statistics rows themselves (the Gram-coordinate
methods of :mod:`fimbench.curvature` work on ``ā`` and ``g``, not on ``AᵀA`` alone), so the exact
combination of the R ranks' Fisher sub-batches is the concatenation of their rows: with rank r holding
``m_r`` rows, ``F_batch = (1/M) Σ_r Σ_{t ≤ m_r} (g_t g_tᵀ) ⊗ (ā_t ā_tᵀ)``, ``M = Σ_r m_r`` — the
single-process Fisher of the concatenated sub-batches. One ``all_gather`` of the rows per statistics
update (after one of the row counts) moves
``M · Σ_layers (p + q)`` numbers per rank (``T`` times that for a layer applied at ``T`` positions); the
alternative of all-reducing K-FAC's factors would move ``Σ_layers (p² + q²)`` and would not carry the
cross terms the other methods need. The gradients themselves are averaged by
``DistributedDataParallel`` (or the user), not here.

Ranks may hold different ``m_r`` (an uneven last batch), down to none at all: the row counts are gathered
first and the rows padded to the largest count.

The true Fisher's targets are sampled on each rank; for the gathered rows to be the Fisher of the
concatenated sub-batches the ranks' draws must be independent, which :func:`sampling_generator` sees to.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from fimbench.fisher.capture import LayerStatistics


def world_size() -> int:
    """The size of the default process group; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_statistics(statistics: list[LayerStatistics]) -> list[LayerStatistics]:
    """Every layer's ``(ā, g)`` with the rows of all ranks, in rank order (unchanged on one process)."""
    ranks = world_size()
    if ranks == 1:
        return statistics
    m = statistics[0].a.shape[0]
    tensors = [tensor for stats in statistics for tensor in (stats.a, stats.g)]
    widths = [math.prod(tensor.shape[1:]) for tensor in tensors]
    rows = torch.cat([tensor.reshape(m, width) for tensor, width in zip(tensors, widths)], dim=1)  # (m, Σ widths)
    counts = [torch.empty(1, dtype=torch.int64, device=rows.device) for _ in range(ranks)]
    dist.all_gather(counts, torch.tensor([m], dtype=torch.int64, device=rows.device))
    sizes = [int(count) for count in counts]
    largest = max(sizes)
    padded = torch.zeros(largest, rows.shape[1], dtype=rows.dtype, device=rows.device)
    padded[:m] = rows
    gathered = [torch.empty_like(padded) for _ in range(ranks)]
    dist.all_gather(gathered, padded)
    columns = torch.cat([block[:size] for block, size in zip(gathered, sizes)]).split(widths, dim=1)
    total = sum(sizes)
    return [
        LayerStatistics(a.reshape(total, *stats.a.shape[1:]), g.reshape(total, *stats.g.shape[1:]))
        for stats, a, g in zip(statistics, columns[0::2], columns[1::2])
    ]


def rank() -> int:
    """This process's rank in the default process group; 0 when torch.distributed is not initialised."""
    return dist.get_rank() if world_size() > 1 else 0


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the ranks (``values`` itself on one process)."""
    if world_size() == 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total / world_size()


RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, about 2⁶⁴/φ: seeds of neighbouring ranks share no low bits


def sampling_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The generator this rank samples the Fisher targets from; the global generators are never drawn from.

    ``generator`` itself when it is given and differs from every other rank's (seeded per rank, as
    ``fimbench train --nproc`` does) or there is one process; when None, a generator on ``device`` seeded
    with ``torch.initial_seed()``. When a rank's generator equals another's (the usual one seed on every
    rank), rank r draws from its own, seeded ``(seed + r · RANK_STRIDE) mod 2⁶⁴``: otherwise every rank
    would sample the same target noise and the gathered rows would not be the Fisher of the concatenated
    sub-batches. One all-gather of the generator state at construction.
    """
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(torch.initial_seed())
    if world_size() == 1:
        return generator
    state = generator.get_state().to(device)
    states = [torch.empty_like(state) for _ in range(world_size())]
    dist.all_gather(states, state)
    if sum(torch.equal(other, state) for other in states) == 1:  # no other rank draws this rank's noise
        return generator
    seed = (generator.initial_seed() + rank() * RANK_STRIDE) % 2**64
    return torch.Generator(device=generator.device).manual_seed(seed)
