"""Tuning-free steps: the learning rate and the momentum from the quadratic model (Martens & Grosse 2015, §7).

With ``step_rule="qmodel"`` a Kronecker method takes no learning rate and no momentum. Let ``η`` be the
weight decay, ``g = ∇h + η θ`` the gradient of the regularised objective ``h + (η/2)‖θ‖²``,
``Δ = −F̃⁻¹ g`` the preconditioned direction and ``δ₀`` the previous update. The step is
``δ = α Δ + μ δ₀`` with ``(α, μ)`` the minimiser of the quadratic model

    M(δ) = gᵀδ + ½ δᵀ C δ,   C = F + (λ + η) I,

where ``F = JᵀJ/m`` is the exact Fisher of the Fisher sub-batch (:mod:`fimbench.fisher.sub_batch`) and λ
the current damping. On the span of Δ and δ₀ the model is a 2 × 2 problem in ``c = (α, μ)``:

    M(c) = bᵀc + ½ cᵀ A c,   b = (gᵀΔ, gᵀδ₀),   A = [[ΔᵀCΔ, ΔᵀCδ₀], [ΔᵀCδ₀, δ₀ᵀCδ₀]],

with ``uᵀFv = (J u)·(J v)/m``: two Jacobian products per step, no P × P matrix. Its minimiser is
``c = −A⁻¹ b``. When δ₀ = 0 (the first step) or A is singular (``det A ≤ ε A₀₀ A₁₁``: Δ and δ₀ are
collinear in the C inner product to within ε, :func:`singular_tolerance`), the step is α-only:
``α = −gᵀΔ / ΔᵀCΔ``, ``μ = 0``.

Which examples F is of: the current mini-batch's, the ``m`` after the Fisher sub-batch of the statistics
(``inputs[m:2m]``, :func:`model_batch`) when the batch holds ``2m``. Taken from the statistics' own sub-batch,
at a statistics update F would be the Fisher that built F̃: in the directions that m-example sub-batch does
not span both see only λ, and the model trusts a step of ``‖g‖/λ`` there (exact-ng and EKFAC diverged at
the first update after step 0 in every seed on curves-synth, benchmarks/RESULTS.md "Stability").

Why F and not F̃: Δ solves ``F̃_λ Δ = −g``, so with ``C = F̃_λ`` the α-only model would give
``α = −gᵀΔ / ΔᵀF̃_λΔ = 1`` whatever the approximation — it cannot see how wrong F̃ is. The exact F of
the sub-batch measures the curvature along Δ and δ₀, which is what sizes the step. The ℓ2 term's
Hessian is ``η I``, hence ``λ + η``.

The adaptive damping of :mod:`fimbench.preconditioner.damping` judges the step actually taken by the model of h alone,
``M_h(δ) = ∇hᵀδ + ½ δᵀ(F + λI)δ = M(δ) − η (θᵀδ + ½‖δ‖²)`` (the regulariser's change is exact),
against ``h(θ + δ) − h(θ)``.

The preconditioner takes the step itself (θ ← θ + δ, with no torch optimizer), so no learning rate,
momentum or KL-clip can be applied on top (docs/design.md §19).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import (
    KroneckerLayer,
    add_to_weight,
    clear_weight_gradient,
    set_weight_gradient,
    weight_gradient,
    weight_of,
)
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.names import StepRule
from fimbench.preconditioner.amp import GradScalerLike
from fimbench.preconditioner.selection import raw_gradient_modules, warn_raw_gradients

MODEL_DTYPE = torch.float64
"""The 2 × 2 system is formed and solved in float64 (its entries are inner products of the factor dtype)."""


def model_batch(inputs: Tensor, targets: Tensor | None, statistics_size: int) -> tuple[Tensor, Tensor | None]:
    """The examples whose Fisher the quadratic model uses: the mini-batch after the statistics' Fisher
    sub-batch (its first ``statistics_size`` examples) when it holds twice that many, else the whole batch.

    Args:
        inputs: The mini-batch.
        targets: Its data targets (empirical Fisher), or None.
        statistics_size: m, the size of the statistics' Fisher sub-batch.

    Returns:
        ``(inputs, targets)`` from which the model's Fisher sub-batch (their first m examples) is captured.
    """
    if inputs.shape[0] < 2 * statistics_size:
        return inputs, targets
    return inputs[statistics_size:], None if targets is None else targets[statistics_size:]


def singular_tolerance(dtype: torch.dtype) -> float:
    """ε of the singularity test ``det A ≤ ε A₀₀ A₁₁``: 1000 × the machine epsilon of the dtype the
    inner products are computed in (2e-13 in float64, 1e-4 in float32), well above their rounding."""
    return 1000.0 * torch.finfo(dtype).eps


def span_minimiser(linear: Tensor, curvature: Tensor, tolerance: float) -> Tensor:
    """``c = (α, μ)`` minimising ``bᵀc + ½ cᵀAc`` (``linear`` = b, ``curvature`` = A, positive
    semi-definite), or the α-only minimiser ``(−b₀/A₀₀, 0)`` when ``det A ≤ tolerance · A₀₀ A₁₁``
    (``(0, 0)`` when ``A₀₀ = 0``). Branch-free: no host synchronisation."""
    (a00, a01), (_, a11) = curvature
    b0, b1 = linear
    determinant = a00 * a11 - a01 * a01
    two_dimensional = determinant > tolerance * a00 * a11
    divisor = torch.where(two_dimensional, determinant, torch.ones_like(determinant))
    alpha_2d = (a01 * b1 - a11 * b0) / divisor
    mu_2d = (a01 * b0 - a00 * b1) / divisor
    curved = a00 > 0
    alpha_1d = torch.where(curved, -b0 / torch.where(curved, a00, torch.ones_like(a00)), torch.zeros_like(b0))
    return torch.stack([torch.where(two_dimensional, alpha_2d, alpha_1d), torch.where(two_dimensional, mu_2d, torch.zeros_like(b1))])


def model_value(coefficients: Tensor, linear: Tensor, curvature: Tensor) -> Tensor:
    """``M(c) = bᵀc + ½ cᵀAc``."""
    return linear @ coefficients + 0.5 * coefficients @ curvature @ coefficients


def inner(left: Sequence[Tensor], right: Sequence[Tensor]) -> Tensor:
    """``Σ_l ⟨U_l, V_l⟩_F`` over the layers (a 0-d tensor)."""
    return torch.stack([torch.vdot(u.reshape(-1), v.reshape(-1)) for u, v in zip(left, right)]).sum()


@dataclass
class QuadraticStep:
    """One step of the rule: ``δ = α Δ + μ δ₀`` per layer, ``(α, μ)``, ``M(δ)`` and ``M_h(δ)``."""

    delta: list[Tensor]
    coefficients: Tensor  # (α, μ), float64
    predicted: Tensor  # M(δ), the model of the regularised objective
    predicted_h: Tensor  # M_h(δ), the model of h alone (for the reduction ratio)


class QuadraticStepRule:
    """The step of the module docstring, and its state: the previous update δ₀ and the sums of α, μ and
    the predicted decrease ``−M(δ)`` since the last :meth:`pop_summary` (kept on the device)."""

    def __init__(self, weight_decay: float = 0.0) -> None:
        self.weight_decay = weight_decay
        self.previous: list[Tensor] | None = None
        self.sums: Tensor | None = None  # (Σα, Σμ, Σ −M(δ)) in float64
        self.steps = 0

    def objective_gradients(self, layers: Sequence[KroneckerLayer], dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
        """``(g, θ)`` per layer in ``dtype``; with weight decay, ``g = ∇h + η θ`` is also written into
        the layers' ``.grad``, so that the preconditioner solves with it."""
        parameters = [weight_of(layer).detach().to(dtype, copy=True) for layer in layers]
        gradients = [weight_gradient(layer).to(dtype, copy=True) for layer in layers]
        if self.weight_decay:
            gradients = [gradient + self.weight_decay * theta for gradient, theta in zip(gradients, parameters)]
            for layer, gradient in zip(layers, gradients):
                set_weight_gradient(layer, gradient)
        return gradients, parameters

    def take_step(
        self,
        layers: Sequence[KroneckerLayer],
        gradients: Sequence[Tensor],
        parameters: Sequence[Tensor],
        fisher: SubBatchFisher,
        damping: float,
    ) -> QuadraticStep:
        """θ ← θ + δ for the layers whose ``.grad`` holds ``F̃⁻¹ g`` (``g`` = ``gradients``, θ =
        ``parameters`` before the step); their ``.grad`` is then cleared, so that a torch optimizer
        stepped by mistake leaves them alone. δ becomes the next step's δ₀."""
        directions = [-weight_gradient(layer).to(gradients[0].dtype) for layer in layers]
        step = self.step(directions, gradients, parameters, fisher, damping)
        for layer, delta in zip(layers, step.delta):
            add_to_weight(layer, delta)
            clear_weight_gradient(layer)
        self.previous = step.delta
        self.steps += 1
        recorded = torch.cat([step.coefficients, -step.predicted.reshape(1)])
        self.sums = recorded if self.sums is None else self.sums + recorded
        return step

    def step(
        self,
        directions: Sequence[Tensor],
        gradients: Sequence[Tensor],
        parameters: Sequence[Tensor],
        fisher: SubBatchFisher,
        damping: float,
    ) -> QuadraticStep:
        """The step for ``Δ`` = ``directions``, ``g`` = ``gradients`` and θ = ``parameters`` (module
        docstring), from δ₀ = :attr:`previous`; nothing is applied or recorded. On the device, no sync."""
        eta, previous = self.weight_decay, self.previous
        jacobian_direction = fisher.jacobian_product(directions)
        norms = [inner(directions, directions)]
        fisher_terms = [jacobian_direction @ jacobian_direction]
        linear = [inner(gradients, directions)]
        if previous is not None:
            jacobian_previous = fisher.jacobian_product(previous)
            norms += [inner(directions, previous), inner(previous, previous)]
            fisher_terms += [jacobian_direction @ jacobian_previous, jacobian_previous @ jacobian_previous]
            linear += [inner(gradients, previous)]
        norm = _symmetric(torch.stack(norms).to(MODEL_DTYPE))
        curvature = _symmetric(torch.stack(fisher_terms).to(MODEL_DTYPE)) / fisher.m + (damping + eta) * norm
        linear_g = torch.stack(linear).to(MODEL_DTYPE)
        if previous is None:
            linear_g = torch.cat([linear_g, torch.zeros_like(linear_g)])
        coefficients = span_minimiser(linear_g, curvature, singular_tolerance(directions[0].dtype))
        alpha, mu = coefficients.to(directions[0].dtype)
        if previous is None:
            delta = [alpha * direction for direction in directions]
        else:
            delta = [alpha * direction + mu * before for direction, before in zip(directions, previous)]
        predicted = model_value(coefficients, linear_g, curvature)
        regulariser_change = (
            eta * (inner(parameters, delta).to(MODEL_DTYPE) + 0.5 * coefficients @ norm @ coefficients) if eta else 0.0
        )
        return QuadraticStep(delta, coefficients, predicted, predicted - regulariser_change)

    def pop_summary(self) -> dict[str, float | None]:
        """Means over the steps since the last call — ``step_size`` α, ``momentum`` μ and
        ``predicted_decrease`` ``−M(δ)`` — and resets them (one host sync)."""
        if self.sums is None or not self.steps:
            summary: dict[str, float | None] = {"step_size": None, "momentum": None, "predicted_decrease": None}
        else:
            step_size, momentum, decrease = (self.sums / self.steps).tolist()
            summary = {"step_size": step_size, "momentum": momentum, "predicted_decrease": decrease}
        self.sums, self.steps = None, 0
        return summary

    def state_dict(self) -> dict[str, Any]:
        """δ₀ and the sums since the last summary (tensors and plain data)."""
        return {"weight_decay": self.weight_decay, "previous": self.previous, "sums": self.sums, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Continue from :meth:`state_dict`'s ``state``, its tensors moved to ``device``."""
        self.weight_decay = state["weight_decay"]
        self.previous = None if state["previous"] is None else [tensor.to(device) for tensor in state["previous"]]
        self.sums = None if state["sums"] is None else state["sums"].to(device)
        self.steps = state["steps"]


def _symmetric(entries: Tensor) -> Tensor:
    """``[x₀₀]`` → ``[[x₀₀, 0], [0, 0]]``; ``[x₀₀, x₀₁, x₁₁]`` → ``[[x₀₀, x₀₁], [x₀₁, x₁₁]]``."""
    if entries.shape[0] == 1:
        entries = torch.cat([entries, torch.zeros(2, dtype=entries.dtype, device=entries.device)])
    x00, x01, x11 = entries
    return torch.stack([torch.stack([x00, x01]), torch.stack([x01, x11])])


def quadratic_rule_for(
    step_rule: str,
    model: nn.Module,
    layers: list[KroneckerLayer],
    grad_scaler: GradScalerLike | None,
    weight_decay: float,
    overrides: dict[str, Any],
) -> QuadraticStepRule | None:
    """The preconditioner's :class:`QuadraticStepRule` for ``step_rule="qmodel"``, None for the fixed rule (whose
    weight decay and step are the torch optimizer's: a ``weight_decay`` is refused, raw gradients warned of).

    Raises:
        FimbenchError: for what ``qmodel`` cannot do: it takes the whole step, so every trainable parameter
            needs its Fisher block, and there is no torch optimizer for a GradScaler or a KL-clip.
    """
    if step_rule != StepRule.QMODEL:
        if weight_decay:
            raise FimbenchError("weight_decay= is for step_rule='qmodel'; with the fixed step rule weight decay is the torch optimizer's")
        warn_raw_gradients(model, layers)
        return None
    raw = raw_gradient_modules(model, layers)
    if raw:
        raise FimbenchError(
            f"step_rule='qmodel' takes the whole step, but the quadratic model has no Fisher for the trainable "
            f"parameters of {', '.join(raw)}; precondition them (layers=), freeze them, or use step_rule='fixed'"
        )
    if grad_scaler is not None:
        raise FimbenchError(
            "step_rule='qmodel' takes the step itself, without a torch optimizer for a GradScaler to step; "
            "use bfloat16 autocast without a scaler, or step_rule='fixed'"
        )
    if not weight_decay >= 0:
        raise FimbenchError(f"invalid optimizer setting weight_decay={weight_decay}")
    if overrides.get("kl_clip") is not None:
        raise FimbenchError("kl_clip does not apply with step_rule='qmodel': the quadratic model sizes the step; leave it out")
    return QuadraticStepRule(weight_decay)
