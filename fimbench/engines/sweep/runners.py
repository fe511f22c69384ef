"""Where a sweep's points run: :class:`LocalRunner` (worker processes on this machine) and
:class:`SubmititRunner` (submitit: SLURM on a cluster, or its local and debug executors).

Both run a :data:`Worker`, ``worker(run_dir, threads) -> status``, which the caller supplies
(``fimbench sweep`` passes :func:`fimbench.engines.train.run_point`), through :func:`run_worker`: the local
runner starts ``python -m fimbench.engines.sweep.worker MODULE:FUNCTION RUN_DIR THREADS`` per point
(:mod:`fimbench.engines.sweep.worker`), submitit pickles the functions themselves. An unexpected exception in
a point (a bug) leaves its traceback in the point's ``crash.log``, and the point fails with one line naming it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import submitit

from fimbench.engines.sweep.state import PointState
from fimbench.errors import FimbenchError, report_crash

WORKER_LOG = "worker.log"
WORKER_MODULE = "fimbench.engines.sweep.worker"
"""What the local runner runs per point: ``python -m WORKER_MODULE MODULE:FUNCTION RUN_DIR THREADS``."""
CLOSE_GRACE_SECONDS = 30.0  # after Ctrl-C, time for workers to record "interrupted" before they are killed

Worker = Callable[[str, int], str]
"""Trains the point whose resolved config is ``run_dir/config.yaml`` with ``threads`` torch threads; returns
its status. A module-level function: the local runner's process imports it by name."""


class Runner(Protocol):
    """Runs the :data:`Worker` for points somewhere and says which have ended."""

    def submit(self, states: Sequence[PointState]) -> None: ...
    def poll(self) -> list[tuple[PointState, str | None]]: ...  # ended since the last poll, with the error if any
    def close(self) -> None: ...  # stop what still runs (Ctrl-C)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_worker(worker: Worker, run_dir: str, threads: int) -> str:
    """Run ``worker`` on the point in ``run_dir`` with ``threads`` torch threads, as both runners do.

    Args:
        worker: The :data:`Worker`.
        run_dir: The point's run directory.
        threads: Torch threads.

    Returns:
        The point's status, as ``worker`` returns it.

    Raises:
        FimbenchError: What ``worker`` raises (an ``OSError`` passes through too); any other exception, a bug,
            becomes an :class:`~fimbench.errors.InternalError` naming it and the point's ``crash.log``, which holds
            its traceback.
    """
    try:
        return worker(run_dir, threads)
    except (FimbenchError, OSError):
        raise
    except Exception as error:
        raise report_crash(f"sweep point {Path(run_dir).name}", error, Path(run_dir)) from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class LocalRunner:
    """``jobs`` worker processes on this machine, ``max(1, cores // jobs)`` torch threads each."""

    def __init__(self, jobs: int = 1, *, worker: Worker) -> None:
        if jobs < 1:
            raise FimbenchError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.threads = max(1, available_cores() // jobs)
        self.worker = f"{worker.__module__}:{worker.__qualname__}"
        self._queue: deque[PointState] = deque()
        self._running: list[tuple[subprocess.Popen[bytes], PointState]] = []

    def submit(self, states: Sequence[PointState]) -> None:
        self._queue.extend(states)
        self._launch()

    def _launch(self) -> None:
        while self._queue and len(self._running) < self.jobs:
            state = self._queue.popleft()
            with open(state.run_dir / WORKER_LOG, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, self.worker, str(state.run_dir.absolute()), str(self.threads)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the sweep, which interrupts workers itself
                )
            self._running.append((process, state))

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended: list[tuple[PointState, str | None]] = []
        for process, state in list(self._running):
            if process.poll() is not None:
                self._running.remove((process, state))
                error = None
                if process.returncode != 0:
                    log = (state.run_dir / WORKER_LOG).read_text(encoding="utf-8", errors="replace")
                    error = f"worker exited with status {process.returncode}: {_last_line(log)}"
                ended.append((state, error))
        self._launch()
        return ended

    def close(self) -> None:
        """Interrupt the running workers (they record ``interrupted``); kill those that do not stop."""
        self._queue.clear()
        for process, _ in self._running:
            process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for process, _ in self._running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running.clear()


class SubmititRunner:
    """Points as submitit jobs in ``folder``: ``cluster="slurm"`` on a cluster; ``"local"`` or ``"debug"``
    run them on this machine. ``jobs`` caps how many run at once on SLURM (its array parallelism)."""

    def __init__(
        self,
        folder: Path,
        cluster: str = "slurm",
        partition: str | None = None,
        time_minutes: int = 240,
        gpus_per_job: int = 0,
        cpus_per_job: int = 4,
        jobs: int | None = None,
        *,
        worker: Worker,
    ) -> None:
        if time_minutes < 1 or gpus_per_job < 0 or cpus_per_job < 1 or (jobs is not None and jobs < 1):
            raise FimbenchError("--time, --cpus-per-job and --jobs must be at least 1, --gpus-per-job at least 0")
        self.threads = cpus_per_job
        self.worker = worker
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            self.executor.update_parameters(
                name="fimbench-sweep",
                timeout_min=time_minutes,
                gpus_per_node=gpus_per_job or None,  # no --gpus-per-node=0 line for CPU partitions
                cpus_per_task=cpus_per_job,
                slurm_partition=partition,
                slurm_array_parallelism=jobs,
            )
        except (RuntimeError, ValueError, NameError) as error:  # e.g. no srun: not on a SLURM cluster
            raise FimbenchError(f"submitit cannot use the {cluster} executor here: {_last_line(str(error))}") from None
        self._jobs: list[tuple[submitit.Job[str], PointState]] = []

    def submit(self, states: Sequence[PointState]) -> None:
        if not states:
            return
        try:
            with self.executor.batch():
                jobs = [
                    self.executor.submit(run_worker, self.worker, str(state.run_dir.absolute()), self.threads) for state in states
                ]
        except Exception as error:  # sbatch missing or refusing: whatever submitit raises, one clear line
            raise FimbenchError(
                f"submitting {len(states)} job(s) through submitit ({self.executor.cluster}) failed: {_last_line(str(error))}"
            ) from None
        self._jobs.extend(zip(jobs, states))

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended: list[tuple[PointState, str | None]] = []
        for job, state in list(self._jobs):
            if job.done():
                self._jobs.remove((job, state))
                try:
                    job.result()
                    ended.append((state, None))
                except Exception as error:  # the job's exception or submitit's (timeout, node failure)
                    ended.append((state, f"job {job.job_id}: {_last_line(str(error))}"))
        return ended

    def close(self) -> None:
        """Cancel the jobs still queued or running, so a rerun does not race them."""
        for job, _ in self._jobs:
            job.cancel(check=False)
        self._jobs.clear()
