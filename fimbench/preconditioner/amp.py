"""Mixed precision around :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`.

* Factor dtype: the statistics ``(ā, g)``, the approximations, their factorisations and the solves run in
  ``factor_dtype`` whatever the model's dtype — float32 for a bfloat16 or float16 model (cuSOLVER and
  LAPACK have no half-precision Cholesky), the model's own dtype for a float32 or float64 model, or the
  dtype asked for.
* Autocast: the whole preconditioning step runs with autocast off, so the statistics pass runs in the
  model's dtype and the solves in ``factor_dtype``, whether or not ``step()`` is called inside
  ``torch.autocast``.
* ``torch.amp.GradScaler``: after ``scaler.scale(loss).backward()`` the gradients are ``s ∇h``. The
  preconditioner solves with ``∇h = grad / s`` (so KL-clipping's ``Σ_i |⟨P_i, ∇_i⟩|`` is the unscaled one)
  and writes back ``s ν P``, which ``scaler.step(optimizer)`` unscales as usual. If any gradient is inf or
  NaN it is left as it is, so that the scaler skips the step and lowers its scale, as it would without
  the preconditioner. The order is ``scaler.scale(loss).backward()``, ``preconditioner.step(x)``, then
  optionally ``scaler.unscale_(optimizer)`` and clipping, then ``scaler.step(optimizer)``:
  :func:`check_still_scaled` refuses a ``scaler.unscale_`` that ran before ``preconditioner.step`` (the
  gradients would be divided by ``s`` twice).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.amp.grad_scaler import OptState

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics

HALF_DTYPES = (torch.float16, torch.bfloat16)


class GradScalerLike(Protocol):
    """What the preconditioner uses of ``torch.amp.GradScaler``."""

    def get_scale(self) -> float: ...

    def is_enabled(self) -> bool: ...


def resolve_factor_dtype(model: nn.Module, requested: torch.dtype | None) -> torch.dtype:
    """``requested``, else the dtype of the model's first floating parameter, promoted to float32 when it
    is a half dtype."""
    if requested is not None:
        return requested
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.float32 if dtype in HALF_DTYPES else dtype


def autocast_off(device: torch.device) -> ExitStack:
    """Autocast disabled for CPU and for ``device``'s type (a no-op outside autocast)."""
    stack = ExitStack()
    for device_type in {"cpu", device.type}:
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def gradient_scale(scaler: GradScalerLike | None) -> float:
    """``s``, the factor the gradients carry (1 without an enabled scaler; a host sync otherwise)."""
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


def check_still_scaled(scaler: GradScalerLike | None) -> None:
    """One error if ``scaler.unscale_(optimizer)`` already ran for this step. The scaler records it per
    optimizer (``_per_optimizer_states[id(optimizer)]["stage"]`` is ``OptState.UNSCALED`` until
    ``scaler.update()``); which parameters an optimizer owns is not recorded, so any unscaled optimizer
    is refused rather than guessed about."""
    states = getattr(scaler, "_per_optimizer_states", None) or {}
    if any(state.get("stage") is OptState.UNSCALED for state in states.values()):
        raise FimbenchError(
            "scaler.unscale_(optimizer) ran before preconditioner.step(): call preconditioner.step() right after "
            "scaler.scale(loss).backward(), then scaler.unscale_(optimizer) (and clip), then scaler.step(optimizer)"
        )


def all_finite(gradients: list[Tensor]) -> bool:
    """Whether every gradient entry is finite (one host sync)."""
    return bool(torch.stack([torch.isfinite(gradient).all() for gradient in gradients]).all())


def usable_statistics(statistics: list[LayerStatistics], grad_scaler: GradScalerLike | None) -> bool:
    """Whether the (gathered) statistics can enter the EMA: one error for an empty Fisher batch; for a
    non-finite one, one error, or with a GradScaler False (the batch is skipped, the EMA keeps its
    value and the next step captures again). Checked after the gather, so every rank decides alike."""
    if statistics[0].a.shape[0] == 0:
        raise FimbenchError("the Fisher sub-batch is empty on every rank; call step() with a non-empty batch")
    if all_finite([tensor for stats in statistics for tensor in (stats.a, stats.g)]):
        return True
    if grad_scaler is None:
        raise FimbenchError(
            "the Fisher statistics of this batch are not finite (the model's outputs or their derivatives "
            "overflow); lower the learning rate or raise the damping, or pass grad_scaler= to skip such batches"
        )
    return False


def skipped_step(gradients: list[Tensor]) -> Tensor:
    """ν = 1 for a step before any statistics: the first Fisher batch was skipped as non-finite, which under a
    GradScaler comes with non-finite gradients the scaler skips too; one error when the gradients are finite."""
    if all_finite(gradients):
        raise FimbenchError("the first Fisher statistics batch is not finite while the gradients are; lower the learning rate")
    return torch.ones((), device=gradients[0].device)
