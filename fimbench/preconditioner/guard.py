"""The refresh guard: a non-finite approximation or a failed factorisation never reaches an update.

Every part of a curvature that is updated or re-factorised on its own (a layer's block, the exact natural
gradient's Gram factorisation, the two-level correction's coarse matrix) runs that operation through
:func:`guarded`. When the operation raises a factorisation error (:class:`~fimbench.errors.FactorisationError`,
``torch.linalg.LinAlgError``) or leaves a non-finite tensor behind, the part's attributes are put back as
they were: the layer keeps its previous estimate (update) or its previous inverse (refresh), and the
curvature records a :class:`Failure`. The preconditioner turns each failure into a :class:`GuardEvent`
(layer, method, step, phase, reason) that it keeps in ``guard_events`` and reports in its diagnostics.

A part with nothing to fall back on (its first update or first factorisation failed) cannot precondition:
the preconditioner raises :class:`~fimbench.errors.CurvatureFailedError` (exit status 3, a diverged run),
whose message names the layer, the method and the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fimbench.errors import CurvatureFailedError, FactorisationError

UPDATE = "update"
REFRESH = "refresh"
NETWORK = "network"
"""The part name of a curvature that couples every layer (the exact natural gradient)."""
COARSE = "coarse"
"""The part name of the two-level correction's coarse matrix."""


class Failure(NamedTuple):
    """One guarded operation whose result was dropped: ``part`` is a layer index or a name (``"network"``,
    ``"coarse"``), ``fatal`` is true when the part had no earlier result to keep."""

    part: int | str
    phase: str  # UPDATE or REFRESH
    reason: str
    fatal: bool


@dataclass(frozen=True)
class GuardEvent:
    """A guard activation as the preconditioner reports it (``metrics.jsonl``, ``summary.json``); ``step`` is the
    1-based number of the step being taken, as in the training log."""

    step: int
    layer: str
    method: str
    phase: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The event as plain data (a JSON object)."""
        return asdict(self)


def _tensors(value: object, seen: set[int]) -> Iterator[Tensor]:
    """Every tensor reachable from ``value`` through containers and fimbench's own data objects (not through
    callables, so a block's approximating function does not lead back to its preconditioner)."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, seen)
    elif type(value).__module__.startswith("fimbench.") and not callable(value) and hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from _tensors(item, seen)


def all_finite(part: object) -> bool:
    """Whether every floating tensor held by ``part`` is finite (one host sync)."""
    checks = [torch.isfinite(tensor).all() for tensor in _tensors(part, set()) if tensor.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def guarded(part: object, operation: Callable[[], object]) -> str | None:
    """Run ``operation``, which replaces attributes of ``part``; on a factorisation error or a non-finite
    result restore them and say why.

    Args:
        part: The object the operation updates (a block, a curvature); its attributes are snapshot first.
        operation: The update or refresh to run.

    Returns:
        None when the result was kept, else the reason it was dropped.
    """
    saved = dict(vars(part))
    try:
        operation()
    except (FactorisationError, torch.linalg.LinAlgError) as error:
        reason = f"factorisation failed: {str(error).splitlines()[0]}"
    else:
        if all_finite(part):
            return None
        reason = "non-finite result"
    vars(part).clear()
    vars(part).update(saved)
    return reason


def guard_events(failures: Sequence[Failure], layer_names: Sequence[str], method: str, step: int) -> list[GuardEvent]:
    """The events of a preconditioner's ``failures`` at ``step``.

    Args:
        failures: What the curvature's ``pop_failures`` returned.
        layer_names: The preconditioned layers' names (a failure's integer part indexes them).
        method: The method's name.
        step: The preconditioner's step.

    Returns:
        One :class:`GuardEvent` per failure.

    Raises:
        CurvatureFailedError: For the first failure with nothing to fall back on.
    """
    events = [
        GuardEvent(step, layer_names[failure.part] if isinstance(failure.part, int) else failure.part, method, failure.phase, failure.reason)
        for failure in failures
    ]
    for failure, event in zip(failures, events):
        if failure.fatal:
            kept = "estimate" if failure.phase == UPDATE else "inverse"
            raise CurvatureFailedError(
                f"the {method} {failure.phase} of layer {event.layer} failed at step {step} ({failure.reason}) and there is no "
                f"earlier {kept} to keep; raise the damping or lower the learning rate",
                step,
            )
    return events
