"""``fimbench train --nproc N``: N local data-parallel workers through ``torch.distributed.run``.

The command writes the resolved ``config.yaml`` into the run directory and starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m fimbench.engines.launch RUN_DIR``. Each
worker joins the process group (nccl when the config's device is CUDA, one GPU per local rank; gloo on
CPU) and trains the same config: the same seed gives every rank the same initial model and data order,
each rank takes its contiguous part of every global mini-batch (``training.batch_size``; uneven or
empty shards are exact, :mod:`fimbench.engines.data_parallel`),
``DistributedDataParallel`` averages the gradients and the preconditioner gathers the statistics
(:mod:`fimbench.preconditioner.distributed`). Rank 0 writes the run directory; the other ranks log into a scratch
directory that is deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from fimbench.engines.config import RunConfig, dump_config, load_config
from fimbench.engines.dataset import load_configured_dataset
from fimbench.engines.device import resolve_device
from fimbench.engines.rundir import CONFIG, write_config
from fimbench.errors import FimbenchError


def launch_training(config: RunConfig, run_dir: Path, nproc: int) -> None:
    """Train ``config`` in ``run_dir`` on ``nproc`` local workers (module docstring)."""
    batch_size = config.training.batch_size
    if nproc < 1:
        raise FimbenchError(f"--nproc must be at least 1, got {nproc}")
    load_configured_dataset(config, batch_size)  # a missing data set is one error line, and a synthetic one is made once
    write_config(run_dir, dump_config(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "fimbench.engines.launch", str(run_dir),
    ]
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise FimbenchError(f"the {nproc} training workers stopped with exit status {status} (their messages are above)")


def worker(run_dir: Path) -> None:
    """One rank: join the process group torch.distributed.run set up, train, leave."""
    from fimbench.engines.train import run_training

    config = load_config(run_dir / CONFIG)
    device = resolve_device(config.training.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            run_training(config, run_dir if dist.get_rank() == 0 else Path(scratch))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
