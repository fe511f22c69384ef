"""The state of a :class:`~fimbench.preconditioner.KroneckerPreconditioner` as tensors and plain data.

:meth:`KroneckerPreconditioner.state_dict` and :meth:`~KroneckerPreconditioner.load_state_dict` delegate
here. The state holds what the next steps depend on: every block's approximation, the counters, the
current λ (adaptive damping included), the latest alignment and safeguard τ, whether a refresh is due,
the diagnostics gathered since the last ``pop_diagnostics``, a pending damping trial, the statistics of
the latest Fisher sub-batch (:attr:`~KroneckerPreconditioner.fisher`), the quadratic step rule's previous
update and sums (``step_rule="qmodel"``), and the state of the Fisher-sampling generator. Inverses are not stored: each is rebuilt on load from the approximation
and λ it was factorised from (stored only when the approximation has moved on since, T1 < T2), which
on the same device reproduces it bit for bit. Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch

from fimbench.capture import LayerStatistics, weight_of
from fimbench.curvature import KroneckerSum
from fimbench.errors import FimbenchError
from fimbench.step_rule import FIXED_STEP, QMODEL
from fimbench.sub_batch_fisher import SubBatchFisher

if TYPE_CHECKING:
    from fimbench.preconditioner import KroneckerPreconditioner

STATE_VERSION = 1


def preconditioner_state(preconditioner: KroneckerPreconditioner) -> dict[str, Any]:
    """The state of ``preconditioner`` (module docstring); tensors are shared with it, not copied."""
    inverses: list[dict[str, Any] | None] = []
    for approximation, inverse in zip(preconditioner.approximations, preconditioner.inverses):
        if inverse is None:
            inverses.append(None)
            continue
        source = None if inverse.source is approximation else inverse.source.state_dict()
        inverses.append({"damping": inverse.damping, "source": source})
    diagnostics = preconditioner.diagnostics
    trial = preconditioner.trial
    generator = preconditioner.generator
    fisher = preconditioner.fisher
    rule = preconditioner.quadratic_rule
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
        "approximations": [None if a is None else a.state_dict() for a in preconditioner.approximations],
        "inverses": inverses,
        "diagnostics": {
            item.name: (list(value) if isinstance(value := getattr(diagnostics, item.name), list) else value)
            for item in fields(diagnostics)
        },
        "trial": None if trial is None else {
            "parameters": trial.parameters, "gradients": trial.gradients, "predicted": trial.predicted
        },
        "fisher": None if fisher is None else [{"a": stats.a, "g": stats.g} for stats in fisher.statistics],
        "step_rule": FIXED_STEP if rule is None else QMODEL,
        "quadratic_rule": None if rule is None else rule.state_dict(),
        "generator": None if generator is None else generator.get_state(),
    }


def load_preconditioner_state(preconditioner: KroneckerPreconditioner, state: dict[str, Any]) -> None:
    """Make ``preconditioner`` continue exactly where the one that gave ``state`` was; the state must come
    from a preconditioner of the same method on layers of the same shapes."""
    from fimbench.preconditioner import DampingTrial, PreconditionerDiagnostics

    _check_compatible(preconditioner, state)
    device = weight_of(preconditioner.layers[0]).device
    approximations = [
        None if entry is None else KroneckerSum.from_state_dict(entry, device) for entry in state["approximations"]
    ]
    inverses = []
    for approximation, entry in zip(approximations, state["inverses"]):
        if entry is None:
            inverses.append(None)
            continue
        source = approximation if entry["source"] is None else KroneckerSum.from_state_dict(entry["source"], device)
        inverses.append(source.inverse(entry["damping"], preconditioner.min_curvature_ratio, preconditioner.pi))  # type: ignore[union-attr]
    preconditioner.approximations = approximations
    preconditioner.inverses = inverses
    preconditioner.steps = state["steps"]
    preconditioner.updates = state["updates"]
    preconditioner.damping = state["damping"]
    preconditioner.refresh_due = state["refresh_due"]
    alignment = state["alignment"]
    preconditioner._alignment = None if alignment is None else alignment.to(device)
    preconditioner.correction_scale = state["correction_scale"]
    diagnostics = {
        name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in state["diagnostics"].items()
    }
    preconditioner.diagnostics = PreconditionerDiagnostics(**diagnostics)
    trial = state["trial"]
    preconditioner.trial = None if trial is None else DampingTrial(
        [tensor.to(device) for tensor in trial["parameters"]],
        [tensor.to(device) for tensor in trial["gradients"]],
        None if trial.get("predicted") is None else trial["predicted"].to(device),
    )
    fisher = state.get("fisher")
    preconditioner.fisher = None if fisher is None else SubBatchFisher(
        [LayerStatistics(entry["a"].to(device), entry["g"].to(device)) for entry in fisher]
    )
    if preconditioner.quadratic_rule is not None:
        preconditioner.quadratic_rule.load_state_dict(state["quadratic_rule"], device)
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
    rule = FIXED_STEP if preconditioner.quadratic_rule is None else QMODEL
    if state.get("step_rule", FIXED_STEP) != rule:
        raise FimbenchError(f"the state is of step rule {state.get('step_rule', FIXED_STEP)}, this preconditioner's is {rule}")
    if state["generator"] is not None and preconditioner.generator is None:
        raise FimbenchError("the state continues a sampling generator; build the preconditioner with generator=")
