"""The state of a :class:`~fimbench.preconditioner.KroneckerPreconditioner` as tensors and plain data.

:meth:`KroneckerPreconditioner.state_dict` and :meth:`~KroneckerPreconditioner.load_state_dict` delegate
here. The state holds what the next steps depend on: the curvature's estimate (every block's
approximation, or the exact methods' sub-batch statistics), the counters, the current λ (adaptive damping
included), the latest alignment and safeguard τ, whether a refresh is due, the diagnostics gathered since
the last ``pop_diagnostics``, a pending damping trial, and the state of the Fisher-sampling generator.
Factorisations are not stored: each is rebuilt on load from the estimate and λ it was factorised from
(the estimate stored again only when it has moved on since, T1 < T2), which on the same device
reproduces it bit for bit. Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch

from fimbench.capture import weight_of
from fimbench.errors import FimbenchError

if TYPE_CHECKING:
    from fimbench.preconditioner import KroneckerPreconditioner

STATE_VERSION = 1


def preconditioner_state(preconditioner: KroneckerPreconditioner) -> dict[str, Any]:
    """The state of ``preconditioner`` (module docstring); tensors are shared with it, not copied."""
    diagnostics = preconditioner.diagnostics
    trial = preconditioner.trial
    generator = preconditioner.generator
    return {
        "version": STATE_VERSION,
        "method": preconditioner.method.value,
        "shapes": [list(weight_of(layer).shape) for layer in preconditioner.layers],
        "steps": preconditioner.steps,
        "updates": preconditioner.updates,
        "damping": preconditioner.damping,
        "refresh_due": preconditioner.refresh_due,
        "alignment": preconditioner._alignment,
        "correction_scale": preconditioner.correction_scale,
        **preconditioner.curvature.state_dict(),
        "diagnostics": {
            item.name: (list(value) if isinstance(value := getattr(diagnostics, item.name), list) else value)
            for item in fields(diagnostics)
        },
        "trial": None if trial is None else {"parameters": trial.parameters, "gradients": trial.gradients},
        "generator": None if generator is None else generator.get_state(),
    }


def load_preconditioner_state(preconditioner: KroneckerPreconditioner, state: dict[str, Any]) -> None:
    """Make ``preconditioner`` continue exactly where the one that gave ``state`` was; the state must come
    from a preconditioner of the same method on layers of the same shapes."""
    from fimbench.preconditioner import DampingTrial, PreconditionerDiagnostics

    _check_compatible(preconditioner, state)
    device = weight_of(preconditioner.layers[0]).device
    preconditioner.curvature.load_state_dict(state, device)
    preconditioner.steps = state["steps"]
    preconditioner.updates = state["updates"]
    preconditioner.damping = state["damping"]
    preconditioner.refresh_due = state["refresh_due"]
    alignment = state["alignment"]
    preconditioner._alignment = None if alignment is None else alignment.to(device)
    preconditioner.correction_scale = state["correction_scale"]
    diagnostics = dict(state["diagnostics"])
    if diagnostics["clip_sum"] is not None:
        diagnostics["clip_sum"] = diagnostics["clip_sum"].to(device)
    preconditioner.diagnostics = PreconditionerDiagnostics(**diagnostics)
    trial = state["trial"]
    preconditioner.trial = None if trial is None else DampingTrial(
        [tensor.to(device) for tensor in trial["parameters"]], [tensor.to(device) for tensor in trial["gradients"]]
    )
    if state["generator"] is not None:
        preconditioner.generator.set_state(state["generator"].cpu())  # type: ignore[union-attr]


def _check_compatible(preconditioner: KroneckerPreconditioner, state: dict[str, Any]) -> None:
    """One-line errors for a state of another version, method or layer layout, or one that needs a generator."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FimbenchError(f"not a preconditioner state of version {STATE_VERSION}")
    if state["method"] != preconditioner.method.value:
        raise FimbenchError(f"the state is of method {state['method']}, this preconditioner's is {preconditioner.method.value}")
    shapes = [list(weight_of(layer).shape) for layer in preconditioner.layers]
    if state["shapes"] != shapes:
        raise FimbenchError(f"the state's layers have shapes {state['shapes']}, this preconditioner's {shapes}")
    if state["generator"] is not None and preconditioner.generator is None:
        raise FimbenchError("the state continues a sampling generator; build the preconditioner with generator=")
