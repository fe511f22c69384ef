"""The state of a :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` as tensors and plain data.

:meth:`KroneckerPreconditioner.state_dict` and :meth:`~KroneckerPreconditioner.load_state_dict` delegate
here. The state holds what the next steps depend on: the curvature's estimate (every block's
approximation, or the exact methods' sub-batch statistics), the counters, the current λ (adaptive damping
included), the latest alignment and safeguard τ, whether a refresh is due, the diagnostics gathered since
the last ``pop_diagnostics``, a pending damping trial, the statistics of the latest Fisher sub-batch
(:attr:`~KroneckerPreconditioner.fisher`), the quadratic step rule's previous update and sums
(``step_rule="qmodel"``), and the state of the Fisher-sampling generator.
Factorisations are not stored: each is rebuilt on load from the estimate and λ it was factorised from
(the estimate stored again only when it has moved on since, T1 < T2), which on the same device
reproduces it bit for bit. Everything loads with ``torch.load(weights_only=True)``.

The state also says what it belongs to: the method, each layer's qualified name and shape, and the
:class:`~fimbench.preconditioner.settings.PreconditionerSettings` it was built with. Loading always requires the same
method and shapes, and every key (a missing or unknown one is an error); ``strict=True`` (the default)
also requires the same layer names and settings, naming the first difference, so one layer never gets
another's curvature and the saved λ, δ, π and schedule are never silently exchanged for the constructor's.
``strict=False`` matches the layers by position and keeps this preconditioner's settings: it takes the
state's curvature (approximations, counters, generator), keeps its own λ, drops a pending damping
trial, starts the quadratic step rule afresh (its first step α-only) and refactorises at the next
step. The tensors are cast to this preconditioner's factor dtype
(a float32 state continues a model made float64).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Protocol

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import KroneckerLayer, LayerStatistics, weight_of
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.methods import Method
from fimbench.preconditioner.damped_fisher import DampedFisher
from fimbench.preconditioner.damping import Damping
from fimbench.preconditioner.diagnostics import DampingTrial, PreconditionerDiagnostics
from fimbench.preconditioner.schedule import RefreshSchedule
from fimbench.preconditioner.settings import PreconditionerSettings
from fimbench.preconditioner.step_rule import QuadraticStepRule

STATE_VERSION = 3
KEYS = (
    "version", "method", "layers", "shapes", "settings", "steps", "updates", "damping", "refresh_due", "statistics_due",
    "alignment", "correction_scale", "diagnostics", "trial", "sub_batch_fisher", "quadratic_rule", "generator",
)
"""The keys of every state; the curvature's own keys (``approximations`` and ``inverses`` of the
block-diagonal methods, ``fisher`` and ``inverse`` of the exact references, ``two_level``) come beside them."""


class Stateful(Protocol):
    """What the state is read from and written into: the attributes of a
    :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` that the next steps depend on."""

    method: Method
    layer_names: list[str]
    layers: list[KroneckerLayer]
    settings: PreconditionerSettings
    factor_dtype: torch.dtype
    damped_fisher: DampedFisher
    schedule: RefreshSchedule
    damping_state: Damping
    alignment_at_refresh: Tensor | None
    correction_scale: float | None
    diagnostics: PreconditionerDiagnostics
    fisher: SubBatchFisher | None
    quadratic_rule: QuadraticStepRule | None
    generator: torch.Generator


def settings_state(preconditioner: Stateful) -> dict[str, Any]:
    """The :class:`PreconditionerSettings` fields of the preconditioner's settings, as plain data."""
    return {item.name: getattr(preconditioner.settings, item.name) for item in fields(PreconditionerSettings)}


def preconditioner_state(preconditioner: Stateful) -> dict[str, Any]:
    """The state of ``preconditioner`` (module docstring); tensors are shared with it, not copied."""
    diagnostics, schedule = preconditioner.diagnostics, preconditioner.schedule
    trial = preconditioner.damping_state.trial
    generator = preconditioner.generator
    fisher = preconditioner.fisher
    rule = preconditioner.quadratic_rule
    return {
        "version": STATE_VERSION,
        "method": preconditioner.method.value,
        "layers": list(preconditioner.layer_names),
        "settings": settings_state(preconditioner),
        "shapes": [list(weight_of(layer).shape) for layer in preconditioner.layers],
        "steps": schedule.steps,
        "updates": schedule.updates,
        "damping": preconditioner.damping_state.value,
        "refresh_due": schedule.refresh_due,
        "statistics_due": schedule.statistics_due,
        "alignment": preconditioner.alignment_at_refresh,
        "correction_scale": preconditioner.correction_scale,
        **preconditioner.damped_fisher.state_dict(),
        "diagnostics": {
            item.name: (list(value) if isinstance(value := getattr(diagnostics, item.name), list) else value)
            for item in fields(diagnostics)
        },
        "trial": None if trial is None else {
            "parameters": trial.parameters, "gradients": trial.gradients, "predicted": trial.predicted
        },
        "sub_batch_fisher": None if fisher is None else [[stats.a, stats.g] for stats in fisher.statistics],
        "quadratic_rule": None if rule is None else rule.state_dict(),
        "generator": None if generator is None else generator.get_state(),
    }


def load_preconditioner_state(preconditioner: Stateful, state: dict[str, Any], strict: bool = True) -> None:
    """Make ``preconditioner`` continue where the one that gave ``state`` was (module docstring for
    ``strict``); one error, before anything is changed, for a state that does not fit."""
    _check_compatible(preconditioner, state, strict)
    device = weight_of(preconditioner.layers[0]).device
    dtype = preconditioner.factor_dtype
    preconditioner.damped_fisher.load_state_dict(state, device, dtype)
    schedule, damping = preconditioner.schedule, preconditioner.damping_state
    schedule.steps, schedule.updates, schedule.statistics_due = state["steps"], state["updates"], state["statistics_due"]
    alignment = state["alignment"]
    preconditioner.alignment_at_refresh = None if alignment is None else alignment.to(device)
    preconditioner.correction_scale = state["correction_scale"]
    diagnostics: dict[str, Any] = {
        name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in state["diagnostics"].items()
    }
    preconditioner.diagnostics = PreconditionerDiagnostics(**diagnostics)
    fisher = state["sub_batch_fisher"]
    preconditioner.fisher = None if fisher is None else SubBatchFisher(
        [LayerStatistics(a.to(device, dtype), g.to(device, dtype)) for a, g in fisher]
    )
    if state["generator"] is not None:
        preconditioner.generator.set_state(state["generator"].cpu())
    if not strict:  # this preconditioner's settings: its own λ, no trial, factorised afresh
        damping.trial = None
        schedule.refresh_due = True
        return
    damping.value = state["damping"]
    schedule.refresh_due = state["refresh_due"]
    trial = state["trial"]
    damping.trial = None if trial is None else DampingTrial(
        [tensor.to(device, dtype) for tensor in trial["parameters"]],
        [tensor.to(device, dtype) for tensor in trial["gradients"]],
        None if trial["predicted"] is None else trial["predicted"].to(device),
    )
    if preconditioner.quadratic_rule is not None:
        preconditioner.quadratic_rule.load_state_dict(state["quadratic_rule"], device)


def _check_compatible(preconditioner: Stateful, state: dict[str, Any], strict: bool) -> None:
    """One-line errors for a state of another version, with missing or unknown keys, of another method or
    layer layout, or (``strict``) of other layer names or settings."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FimbenchError(f"not a preconditioner state of version {STATE_VERSION} (this fimbench's); start the run afresh")
    if state.get("method") != preconditioner.method.value:
        raise FimbenchError(f"the state is of method {state['method']}, this preconditioner's is {preconditioner.method.value}")
    keys = (*KEYS, *preconditioner.damped_fisher.state_dict())
    missing = [key for key in keys if key not in state]
    unknown = [key for key in state if key not in keys]
    if missing or unknown:
        raise FimbenchError(f"the preconditioner state lacks keys {missing} and has unknown keys {unknown}; it was not made by state_dict()")
    shapes = [list(weight_of(layer).shape) for layer in preconditioner.layers]
    if len(state["shapes"]) != len(shapes):
        raise FimbenchError(f"the state has {len(state['shapes'])} layers ({state['layers']}), this preconditioner {len(shapes)} ({preconditioner.layer_names})")
    for index, (name, theirs, ours) in enumerate(zip(preconditioner.layer_names, state["shapes"], shapes)):
        if strict and state["layers"][index] != name:
            raise FimbenchError(
                f"layer {index} of the state is {state['layers'][index]!r}, of this preconditioner {name!r}: select the same "
                "layers (or load with strict=False to match them by position)"
            )
        if theirs != ours:
            raise FimbenchError(f"layer {name!r} has shape {ours} here, {theirs} in the state")
    if strict:
        ours_rule, theirs_rule = preconditioner.quadratic_rule, state["quadratic_rule"]
        if ours_rule is not None and theirs_rule is not None and theirs_rule["weight_decay"] != ours_rule.weight_decay:
            raise FimbenchError(
                f"the state was saved with weight_decay={theirs_rule['weight_decay']!r}, this preconditioner has "
                f"weight_decay={ours_rule.weight_decay!r}: build it with the state's (or load with strict=False to keep its own)"
            )
        ours_settings = settings_state(preconditioner)
        for key, value in state["settings"].items():
            if ours_settings.get(key) != value:
                raise FimbenchError(
                    f"the state was saved with {key}={value!r}, this preconditioner has {key}={ours_settings.get(key)!r}: "
                    "build it with the state's settings (or load with strict=False to keep its own)"
                )

