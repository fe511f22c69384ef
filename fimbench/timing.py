"""Device-synchronised timing.

On CUDA, phases are timed with CUDA events recorded on the stream (no host synchronisation in the hot
path); :meth:`PhaseTimer.totals` synchronises once and reads them. On CPU, a wall clock is used.
:func:`measure` times repeated calls, synchronising the device around every timed region (cost profiles).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(function: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """``(seconds, result)`` of ``function()``, synchronising the device before both clock reads."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


class PhaseTimer:
    """Accumulates seconds per named phase: ``with timer.phase("precondition"): ...``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the seconds the ``with`` block takes to phase ``name`` (on CUDA: timed by events)."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events[name].append((start, end))
        else:
            begin = time.perf_counter()
            yield
            self._seconds[name] += time.perf_counter() - begin

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (synchronises the device once on CUDA)."""
        if self._events:
            synchronize(self.device)
            for name, pairs in self._events.items():
                self._seconds[name] += sum(start.elapsed_time(end) for start, end in pairs) / 1000.0
            self._events.clear()
        return dict(self._seconds)

    def reset(self) -> dict[str, float]:
        """Return the totals and start again from zero."""
        totals = self.totals()
        self._seconds.clear()
        return totals


def measure(
    function: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``function``, after ``warmup`` untimed calls.

    Every timed region is ``synchronize → start → function() → end → synchronize``: on CUDA, start and
    end are CUDA events recorded on the current stream (read after the closing synchronisation); on CPU,
    ``time.perf_counter``. ``setup`` (untimed) runs before every call, e.g. to restore an input that
    ``function`` modifies in place.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        function()
    seconds: list[float] = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            synchronize(device)
            seconds.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            function()
            synchronize(device)
            seconds.append(time.perf_counter() - begin)
    return seconds


def time_training_steps(one_step: Callable[[int], None], steps: int, timer: PhaseTimer, device: torch.device) -> dict[str, float]:
    """Seconds per step of ``steps`` calls of ``one_step(step)`` (device-synchronised), and per step the
    preconditioner's phases recorded by ``timer``: statistics, refresh (approximate + invert), precondition
    and the step rule (qmodel's Jacobian products and 2 × 2 model)."""
    timer.reset()
    synchronize(device)
    begin = time.perf_counter()
    for step in range(steps):
        one_step(step)
    synchronize(device)
    elapsed = time.perf_counter() - begin
    phases = timer.reset()
    return {
        "step": elapsed / steps,
        "statistics": phases.get("statistics", 0.0) / steps,
        "refresh": (phases.get("approximate", 0.0) + phases.get("invert", 0.0)) / steps,
        "precondition": phases.get("precondition", 0.0) / steps,
        "step_rule": phases.get("step_rule", 0.0) / steps,
    }
