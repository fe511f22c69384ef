"""``fimbench train --nproc N``: N local data-parallel workers started by torch's elastic launcher.

The command writes the resolved ``config.yaml`` into the run directory and launches, from its own process, what
``torchrun --standalone --nproc-per-node N -m fimbench.engines.launch RUN_DIR`` would. Each
worker joins the process group (nccl when the config's device is CUDA, one GPU per local rank; gloo on
CPU) and trains the same config: the same seed gives every rank the same initial model and data order,
each rank takes its contiguous part of every global mini-batch (``training.batch_size``; uneven or
empty shards are exact, :mod:`fimbench.engines.data_parallel`),
``DistributedDataParallel`` averages the gradients and the preconditioner gathers the statistics
(:mod:`fimbench.preconditioner.distributed`). Rank 0 writes the run directory; the other ranks log into a scratch
directory that is deleted.

Stopping (Ctrl-C, SIGTERM): the launcher forwards the signal to the workers (they run in sessions of their own, so
only it gets a terminal's Ctrl-C) and waits for them. Rank 0 stops at once and records ``interrupted`` after its
last whole epoch; the other ranks train on until rank 0 has left, so that rank 0 never waits in a collective for a
rank that has stopped, and then leave quietly. The command ends as an interrupted ``train`` does (exit status 130).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from types import FrameType
from typing import NoReturn

import torch
import torch.distributed as dist

from fimbench.engines.config import RunConfig, dump_config, load_config
from fimbench.engines.dataset import load_configured_dataset
from fimbench.engines.device import resolve_device
from fimbench.engines.rundir import CONFIG, write_config
from fimbench.errors import FimbenchError
from fimbench.exit_codes import INTERRUPTED


def launch_training(config: RunConfig, run_dir: Path, nproc: int) -> None:
    """Train ``config`` in ``run_dir`` on ``nproc`` local workers (module docstring)."""
    batch_size = config.training.batch_size
    if nproc < 1:
        raise FimbenchError(f"--nproc must be at least 1, got {nproc}")
    load_configured_dataset(config, batch_size)  # a missing data set is one error line, and a synthetic one is made once
    write_config(run_dir, dump_config(config))
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    standalone = LaunchConfig(  # torchrun --standalone: a one-node rendezvous on a free local port
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
    )
    for name in list(logging.root.manager.loggerDict):  # the launcher's notes on a stop (the error line says it);
        if name.startswith("torch.distributed.elastic"):  # each module's logger has a level of its own
            logging.getLogger(name).setLevel(logging.ERROR)
    caught = [signal.Signals[name.strip()] for name in standalone.signals_to_handle.split(",")]
    handlers = {number: signal.getsignal(number) for number in caught}
    try:  # the agent turns these signals into SignalException after stopping the workers with the same signal
        elastic_launch(standalone, sys.executable)("-m", "fimbench.engines.launch", str(run_dir))
    except SignalException:
        raise KeyboardInterrupt from None
    except ChildFailedError as failed:
        status = failed.get_first_failure()[1].exitcode
        raise FimbenchError(f"the {nproc} training workers stopped with exit status {status} (their messages are above)") from None
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def worker(run_dir: Path) -> int:
    """One rank: join the process group the launcher set up, train, leave; its exit status, 130 when it was stopped
    (module docstring)."""
    from fimbench.engines.train import run_training

    rank = int(os.environ["RANK"])
    stopped = _stop_when_asked(rank)
    config = load_config(run_dir / CONFIG)
    device = resolve_device(config.training.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            run_training(config, run_dir if rank == 0 else Path(scratch))
    except (KeyboardInterrupt, Exception):
        if stopped:  # rank 0's summary says interrupted; a later rank's collective failed when rank 0 left
            return INTERRUPTED
        raise
    finally:
        dist.destroy_process_group()
    return 0


def end_process(status: int) -> NoReturn:
    """Flush the logs and end this worker process at once (``os._exit``), without the interpreter's shutdown.

    ``DistributedDataParallel`` keeps the gloo process group, and with it gloo's worker threads, alive until the
    process ends, ``destroy_process_group`` notwithstanding. A worker thread that lets go of a finished collective's
    tensors during the interpreter's shutdown must take the GIL there, and the process aborts ("terminate called
    without an active exception", SIGABRT) after the work is done: 1 two-rank run in 13 of
    ``tests/preconditioner/test_distributed.py``, still 1 in 100 with a barrier before leaving, and none in 100
    with the shutdown skipped.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _stop_when_asked(rank: int) -> list[int]:
    """SIGTERM and SIGINT are noted in the returned list; rank 0 also stops (``KeyboardInterrupt``), a later rank
    trains on until rank 0 has left."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if rank == 0:
            raise KeyboardInterrupt

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, note)
    return received


if __name__ == "__main__":
    end_process(worker(Path(sys.argv[1])))
