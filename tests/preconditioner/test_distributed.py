"""Data-parallel preconditioning: 2 gloo processes on CPU against one process on the full batch.

With the empirical Fisher and ``fisher_fraction=1`` each rank's Fisher sub-batch is its whole shard, so
the gathered statistics rows are exactly the full batch's rows, and DDP's averaged gradient of the mean
loss is the full batch's gradient: the two runs compute the same quantities, up to summation order.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fimbench.engines.launch import end_process
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

LIKELIHOOD = Likelihood.GAUSSIAN
SETTINGS = dict(damping=0.05, stats_every=1, inverse_every=1, fisher_fraction=1.0, empirical_fisher=True, kl_clip=1e-2)
STEPS, BATCH, RANKS = 5, 16, 2


def model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4, bias=False)).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 6, generator=generator, dtype=torch.float64)
    return model, x, torch.randn(STEPS, BATCH, 4, generator=generator, dtype=torch.float64)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "deflation") -> torch.Tensor:
    """``STEPS`` steps of preconditioned momentum SGD; the parameters after them, flattened."""
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, method, **SETTINGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    for step in range(STEPS):
        optimizer.zero_grad()
        LIKELIHOOD.nll(model(x[step]), y[step]).mean().backward()
        preconditioner.step(x[step], y[step])
        optimizer.step()
    return torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])


def worker(rank: int, port: int, out: str, method: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    try:
        model, x, y = model_and_data()
        shard = slice(rank * BATCH // RANKS, (rank + 1) * BATCH // RANKS)
        parameters = train(nn.parallel.DistributedDataParallel(model), x[:, shard], y[:, shard], method)
        torch.save(parameters, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    end_process(0)  # without the interpreter's shutdown, which gloo's threads can abort (its docstring)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["deflation", "exact-ng"])
def test_two_ranks_are_identical_and_equal_one_process_on_the_full_batch(tmp_path, method):
    """exact-ng: the gathered statistics give every rank the whole batch's sub-batch Fisher, one system."""
    mp.spawn(worker, args=(free_port(), str(tmp_path), method), nprocs=RANKS)
    replicas = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(RANKS)]
    assert float((replicas[0] - replicas[1]).abs().max()) <= 1e-6
    model, x, y = model_and_data()
    start = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    single = train(model, x, y, method)
    assert float((replicas[0] - single).norm() / single.norm()) <= 1e-4
    assert float((single - start).norm() / start.norm()) > 1e-2  # the runs moved: the comparison has teeth


def test_train_nproc_2_matches_one_process(tmp_path):
    """``fimbench train --nproc 2``: rank 0's epoch rows equal the one-process run's (same exactness
    argument as above: empirical Fisher, Fisher fraction 1, the global batch split in two)."""
    from helpers import runner, tiny_config

    from fimbench.cli import app
    from fimbench.engines.rundir import read_metrics

    config = tiny_config(tmp_path, method="kfac", empirical_fisher=True, fisher_fraction=1.0, stats_every=2, inverse_every=2)
    rows = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        args = ["train", "--config", str(config), "--max-steps", "12", "--nproc", str(nproc), "--out", str(out), "--quiet"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows[nproc], _ = read_metrics(out / "metrics.jsonl")
    assert len(rows[2]) == len(rows[1]) == 2
    for single, parallel in zip(rows[1], rows[2]):
        for key in ("train_loss", "val_loss", "val_reconstruction_error"):
            assert abs(parallel[key] - single[key]) <= 1e-4 * abs(single[key]), key
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["processes"] == 2


@pytest.mark.parametrize("batch_size", [3, 1])
def test_train_nproc_2_with_an_uneven_or_empty_shard_matches_one_process(tmp_path, batch_size):
    """A mini-batch of 3 splits 2 + 1 over two ranks, one of 1 leaves rank 1 empty at every step: each rank's
    loss is its term ``(R/B) Σ ℓ_t`` of the batch mean, so the gradients DDP averages, the logged losses and
    adaptive damping's ρ are the one-process run's (a rank's own mean would weight the short shard twice, and
    an empty shard's would be NaN)."""
    from helpers import runner, tiny_config

    from fimbench.cli import app
    from fimbench.engines.rundir import read_metrics

    config = tiny_config(
        tmp_path, method="kfac", empirical_fisher=True, fisher_fraction=1.0, stats_every=2, inverse_every=2,
        damping_schedule="adaptive", damping_every=2, damping=1.0,
    )
    rows = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        args = ["train", "--config", str(config), "--set", f"training.batch_size={batch_size}", "--set", "training.epochs=1",
                "--max-steps", "6", "--nproc", str(nproc), "--out", str(out), "--quiet"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows[nproc], _ = read_metrics(out / "metrics.jsonl")
    single, parallel = rows[1][-1], rows[2][-1]
    assert math.isfinite(parallel["train_loss"]) and parallel["damping_adaptations"] == single["damping_adaptations"] >= 1
    for key in ("train_loss", "train_loss_per_pixel", "train_reconstruction_error", "val_loss", "damping"):
        assert abs(parallel[key] - single[key]) <= 1e-4 * abs(single[key]), key


# ------------------------------------------------- uneven and empty shards, sampled targets, adaptive damping

ADAPTIVE = dict(damping_schedule="adaptive", damping_every=2, damping=0.05)
SIZES = [(10, 6), (16, 0), (0, 16), (7, 9), (3, 13)]  # rank 0's and rank 1's share of each batch of 16


def train_shards(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict, ranks: int, rank: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    """Preconditioned SGD on this rank's share of each batch (all of it on one process); the loss is
    ``Σ_shard ℓ · R / B``, so DDP's mean over ranks is the full batch's mean loss, an empty shard included.
    Returns the flattened parameters and λ after every step."""
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "deflation", generator=generator, **settings)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    dampings = []
    for step, sizes in enumerate(SIZES):
        start = sum(sizes[:rank]) if ranks > 1 else 0
        part = slice(start, start + sizes[rank]) if ranks > 1 else slice(0, BATCH)
        xs, ys = x[step, part], y[step, part]
        optimizer.zero_grad()
        loss = LIKELIHOOD.nll(model(xs), ys).sum() * ranks / BATCH
        loss.backward()
        preconditioner.step(xs, ys)
        optimizer.step()
        if preconditioner.awaiting_loss:
            with torch.no_grad():
                preconditioner.adapt_damping(loss.detach(), LIKELIHOOD.nll(model(xs), ys).sum() * ranks / BATCH)
        dampings.append(preconditioner.damping)
    return torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()]), dampings


EXACT = {**SETTINGS, **ADAPTIVE}
SAMPLED = {**SETTINGS, **ADAPTIVE, "empirical_fisher": False, "fisher_fraction": 0.5}


def uneven_worker(rank: int, port: int, out: str) -> None:
    """Both scenarios on 2 gloo ranks; the sampled one with the same generator seed on both ranks, and
    every gathered statistics batch recorded."""
    import fimbench.preconditioner.sub_batch as preconditioner_module

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    gather = preconditioner_module.gather_statistics
    gathered: list[list] = []
    preconditioner_module.gather_statistics = lambda statistics: gathered.append(gather(statistics)) or gathered[-1]
    try:
        results = {}
        for name, settings in (("exact", EXACT), ("sampled", SAMPLED)):
            model, x, y = model_and_data()
            parameters, dampings = train_shards(nn.parallel.DistributedDataParallel(model), x, y, settings, RANKS, rank,
                                                torch.Generator().manual_seed(7))
            results[name] = (parameters, dampings)
        rows = [len(batch[1].g) for batch in gathered[len(SIZES):]]
        model, x, y = model_and_data()  # the same 16 examples on both ranks, true Fisher, one step
        gathered.clear()
        one_step = {**SETTINGS, "empirical_fisher": False}
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", generator=torch.Generator().manual_seed(7), **one_step)
        LIKELIHOOD.nll(model(x[0]), y[0]).mean().backward()
        preconditioner.step(x[0])
        torch.save({"results": results, "rows": rows, "noise": gathered[0][1].g}, Path(out) / f"uneven{rank}.pt")
    finally:
        dist.destroy_process_group()
    end_process(0)


def test_uneven_and_empty_shards_with_sampled_targets_and_adaptive_damping(tmp_path):
    """Two ranks on shards of 10/6, 16/0, 0/16, … examples: the run neither fails nor hangs on an empty
    shard, the replicas stay identical (λ included, from the global loss), and with the empirical Fisher
    and fraction 1 they equal one process on the whole batches. With sampled targets and the same
    generator seed on both ranks, the ranks draw different noise: the rows of two ranks whose Fisher
    sub-batches hold the same examples would otherwise coincide."""
    mp.spawn(uneven_worker, args=(free_port(), str(tmp_path)), nprocs=RANKS)
    saved = [torch.load(tmp_path / f"uneven{rank}.pt") for rank in range(RANKS)]
    for name in ("exact", "sampled"):
        (first, dampings0), (second, dampings1) = saved[0]["results"][name], saved[1]["results"][name]
        assert torch.equal(first, second), name
        assert dampings0 == dampings1, name
    assert len(set(saved[0]["results"]["sampled"][1])) > 1  # λ adapted
    model, x, y = model_and_data()
    start = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    single, dampings = train_shards(model, x, y, EXACT, 1, 0)
    parallel, parallel_dampings = saved[0]["results"]["exact"]
    assert float((parallel - single).norm() / single.norm()) <= 1e-6
    assert parallel_dampings == dampings and len(set(dampings)) > 1
    assert float((single - start).norm() / start.norm()) > 1e-2
    assert saved[0]["rows"] == saved[1]["rows"] == [5 + 3, 8, 8, 4 + 4, 2 + 6]  # round(m_r / 2) rows per rank
    noise = saved[0]["noise"]  # g = z − y = −ε at the output layer: rank 0's rows, then rank 1's
    assert noise.shape == (2 * BATCH, 4) and torch.equal(noise, saved[1]["noise"])
    assert float((noise[:BATCH] - noise[BATCH:]).abs().min()) > 0.0

