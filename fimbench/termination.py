"""Stopping a command from outside: SIGTERM (``kill``, ``timeout``, SLURM at a job's time limit, a
session that ends) stops it as Ctrl-C does. It raises :class:`KeyboardInterrupt` in the main thread, so a
run records ``interrupted`` after its last whole epoch, a sweep stops its workers and saves ``sweep.json``,
and rerunning continues (a sweep's points from their checkpoints).

A sweep's worker also restores Ctrl-C's own handler: a process that a shell starts in the background (``&``,
``nohup``) inherits SIGINT ignored, and the sweep stops its workers with SIGINT.
"""

from __future__ import annotations

import signal
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_termination() -> None:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread (a command's entry point calls this)."""
    signal.signal(signal.SIGTERM, _interrupt)


def stop_on_interrupt_or_termination() -> None:
    """SIGTERM and SIGINT both raise ``KeyboardInterrupt``, even where SIGINT was inherited ignored (a sweep's
    worker, which its sweep stops with SIGINT)."""
    stop_on_termination()
    signal.signal(signal.SIGINT, signal.default_int_handler)
