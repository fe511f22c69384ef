"""Per-step overhead of data-parallel preconditioning: 2 gloo ranks on CPU against one process.

MNIST autoencoder (784-1000-500-250-30-250-500-1000-784, BCE), random data, K-FAC with T1 = T2 =
``--period``, Fisher fraction 0.25, one intra-op thread per process. Each rank of the 2-rank run holds a
shard of ``--shard`` examples of the global batch, wrapped in DistributedDataParallel; the one-process run
trains on one shard-sized batch (the same work per process, no collective). Reported: ms per step of
both, and the ms of :func:`fimbench.preconditioner.distributed.gather_statistics` (the statistics collective: the
Fisher sub-batch rows ``(ā, g)`` of every layer, gathered) per statistics update and amortised per step.

    python benchmarks/ddp.py [--steps 40] [--period 10] [--shard 256]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fimbench.engines.models import ARCHITECTURES, build_model
from fimbench.fisher.capture import capture_statistics
from fimbench.optim import KroneckerPreconditioner
from fimbench.preconditioner.distributed import gather_statistics

FISHER_FRACTION, GATHER_REPEATS = 0.25, 20


def step_time(model: torch.nn.Module, steps: int, period: int, shard: int, seed: int) -> float:
    """Seconds per preconditioned SGD step after one warm-up period (``model`` may be DDP-wrapped)."""
    likelihood = ARCHITECTURES["mnist"].likelihood
    data = (torch.rand(4 * shard, 784, generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    preconditioner = KroneckerPreconditioner(
        model, likelihood, "kfac", damping=61.47, kl_clip=1e-2, stats_every=period, inverse_every=period,
        fisher_fraction=FISHER_FRACTION, generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    start = 0.0
    for step in range(period + steps):
        if step == period:
            start = time.perf_counter()
        x = data[(step % 4) * shard : (step % 4 + 1) * shard]
        optimizer.zero_grad()
        likelihood.nll(model(x), x).mean().backward()
        preconditioner.step(x)
        optimizer.step()
    return (time.perf_counter() - start) / steps


def gather_time(model: torch.nn.Module, shard: int) -> float:
    """Seconds of one :func:`gather_statistics` of the Fisher sub-batch's statistics (median of repeats)."""
    x = (torch.rand(round(shard * FISHER_FRACTION), 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    statistics = capture_statistics(model, x, ARCHITECTURES["mnist"].likelihood, layers)
    times = []
    for _ in range(GATHER_REPEATS):
        dist.barrier()
        start = time.perf_counter()
        gather_statistics(statistics)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = build_model(ARCHITECTURES["mnist"], seed=0)
        per_step = step_time(torch.nn.parallel.DistributedDataParallel(model), args.steps, args.period, args.shard, seed=rank)
        gathered = gather_time(model, args.shard)
        if rank == 0:
            torch.save({"step": per_step, "gather": gathered}, Path(out) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--period", type=int, default=10)
    parser.add_argument("--shard", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    single = step_time(build_model(ARCHITECTURES["mnist"], seed=0), args.steps, args.period, args.shard, seed=0)
    with socket.socket() as s, tempfile.TemporaryDirectory() as out:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(worker, args=(port, args, out), nprocs=2)
        result = torch.load(Path(out) / "ddp.pt")
    rows = round(args.shard * FISHER_FRACTION)
    print(f"shard {args.shard} examples per process, Fisher rows {rows} per rank, T1 = T2 = {args.period}, torch {torch.__version__}")
    print(f"1 process:            {1e3 * single:8.1f} ms/step")
    print(f"2 gloo ranks (DDP):   {1e3 * result['step']:8.1f} ms/step  (÷ 1 process: {result['step'] / single:.2f})")
    print(f"statistics gather:    {1e3 * result['gather']:8.1f} ms per update, {1e3 * result['gather'] / args.period:.2f} ms/step amortised")


if __name__ == "__main__":
    main()
