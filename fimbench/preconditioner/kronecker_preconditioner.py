"""The natural-gradient preconditioner :class:`KroneckerPreconditioner`: every T1 steps the statistics
``(ā, g)`` of a Fisher sub-batch move the estimate of the Fisher towards ``ρ F̂_old + (1 − ρ) F_batch``, every
T2 steps the damped approximation is re-factorised, and every step each gradient becomes ``ν F̃⁻¹ ∇`` (the
usage and the whole step: the package docstring, :mod:`fimbench.preconditioner`).

Its parts, one responsibility each: the schedule (:class:`~fimbench.preconditioner.schedule.RefreshSchedule`),
the damping λ and its adaptation (:class:`~fimbench.preconditioner.damping.Damping`), the damped Fisher
approximation it inverts (:class:`~fimbench.preconditioner.damped_fisher.DampedFisher`, per-layer blocks for
the block-diagonal methods), the step (KL-clip, or the quadratic model's own step), and its saved state
(:mod:`fimbench.preconditioner.state`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from fimbench.curvature import KroneckerInverse, KroneckerSum
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics, set_weight_gradient, weight_gradient, weight_of
from fimbench.fisher.likelihood import Likelihood, parse_likelihood
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.methods import PRECONDITIONED_METHODS, Method, parse_method
from fimbench.preconditioner.amp import (
    GradScalerLike,
    all_finite,
    autocast_off,
    check_still_scaled,
    gradient_scale,
    resolve_factor_dtype,
    skipped_step,
)
from fimbench.preconditioner.blocks import CurvatureBlock
from fimbench.preconditioner.damped_fisher import damped_fisher_of, layer_blocks
from fimbench.preconditioner.damping import Damping
from fimbench.preconditioner.diagnostics import DampingTrial, PreconditionerDiagnostics
from fimbench.preconditioner.distributed import sampling_generator
from fimbench.preconditioner.guard import GuardEvent, guard_events
from fimbench.preconditioner.kl_clip import kl_clip_factor, mean_alignment
from fimbench.preconditioner.kronecker_block import KroneckerBlock
from fimbench.preconditioner.schedule import RefreshSchedule
from fimbench.preconditioner.selection import LayerSpec, check_gradients, select_layers, without_wrappers
from fimbench.preconditioner.settings import PreconditionerSettings, check_settings
from fimbench.preconditioner.state import load_preconditioner_state, preconditioner_state
from fimbench.preconditioner.step_rule import model_batch, quadratic_rule_for
from fimbench.preconditioner.sub_batch import SubBatchCapture
from fimbench.timing import PhaseTimer


class KroneckerPreconditioner:
    """Replaces each ``nn.Linear`` and ``nn.Conv2d`` gradient by its natural gradient ``ν F̃⁻¹ ∇`` (module
    docstring; a convolution's gradient as the (out, C·k_h·k_w + 1) matrix of capture.py).

    Args:
        model: the network; compiled or DDP-wrapped is fine (the wrappers are looked through).
        likelihood: its predictive distribution (:class:`~fimbench.fisher.likelihood.Likelihood` or its name).
        method: one of :data:`~fimbench.methods.PRECONDITIONED_METHODS` (``"kfac"``, ``"deflation"``, ``"exact-ng"``, ...).
        settings: the :class:`PreconditionerSettings` (default: its defaults, which own every default).
        generator: the generator the Fisher targets are sampled from (default: one seeded from torch's seed;
            per rank under a process group, :func:`~fimbench.preconditioner.distributed.sampling_generator`).
        timer: a :class:`~fimbench.timing.PhaseTimer` that times the phases, or None.
        layers: the layers to precondition (modules or qualified names; default: every trainable supported one).
        skip_layers: layers to leave out (:mod:`~fimbench.preconditioner.selection`).
        grad_scaler: the AMP GradScaler whose scaled gradients ``step`` sees (:mod:`~fimbench.preconditioner.amp`).
        factor_dtype: the dtype of the statistics, approximations and solves (default: the model's, float32 for
            a half-precision model).
        weight_decay: η, only with ``step_rule="qmodel"``, which takes the step itself; with the fixed rule
            weight decay is the torch optimizer's.
        **overrides: any :class:`PreconditionerSettings` field on top of ``settings``
            (``KroneckerPreconditioner(model, likelihood, "kfac", damping=1e-2)``).

    Raises:
        FimbenchError: for a setting out of range, a model without a layer to precondition, or what the chosen
            step rule cannot do (each named in the message).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        method: str | Method,
        settings: PreconditionerSettings | None = None,
        *,
        generator: torch.Generator | None = None,
        timer: PhaseTimer | None = None,
        layers: Sequence[LayerSpec] | None = None,
        skip_layers: Sequence[LayerSpec] | None = None,
        grad_scaler: GradScalerLike | None = None,
        factor_dtype: torch.dtype | None = None,
        weight_decay: float = 0.0,
        **overrides: Any,
    ) -> None:
        self.method = parse_method(method, choices=PRECONDITIONED_METHODS)
        self.settings = settings = dataclasses.replace(settings or PreconditionerSettings(), **overrides)
        check_settings(settings, self.method)
        self.model = without_wrappers(model)
        self.likelihood = parse_likelihood(likelihood)
        self.layers = select_layers(self.model, layers, skip_layers)
        if not self.layers:
            raise FimbenchError("the model has no nn.Linear or nn.Conv2d layer to precondition")
        names = {id(module): name for name, module in self.model.named_modules()}
        self.layer_names = [names[id(layer)] for layer in self.layers]
        self.quadratic_rule = quadratic_rule_for(settings.step_rule, self.model, self.layers, grad_scaler, weight_decay, overrides)
        self.grad_scaler = grad_scaler
        self.factor_dtype = resolve_factor_dtype(self.model, factor_dtype)
        self.generator = sampling_generator(generator, self.layers[0].weight.device)
        self.sub_batch = SubBatchCapture(
            self.model, self.likelihood, self.layers, self.generator, self.factor_dtype, grad_scaler,
            settings.fisher_fraction, settings.empirical_fisher,
        )
        self.timer = timer
        self.schedule = RefreshSchedule(settings.stats_every, settings.inverse_every, settings.ema_decay)
        self.damping_state = Damping.of(settings.damping, settings.damping_schedule, settings.damping_every, settings.damping_min, settings.damping_max)
        self.damped_fisher = damped_fisher_of(self.method, len(self.layers), settings)
        self.fisher: SubBatchFisher | None = None  # the exact Fisher of the latest Fisher sub-batch
        self.diagnostics = PreconditionerDiagnostics()
        self.guard_events: list[GuardEvent] = []  # every update or refresh the guard dropped, in order
        self.alignment_at_refresh: Tensor | None = None  # mean cos(F̃⁻¹∇, ∇) at the latest refresh, on the device
        self.correction_scale: float | None = None  # smallest τ over layers at the latest refresh (rank 2)

    @property
    def steps(self) -> int:
        """The steps taken."""
        return self.schedule.steps

    @property
    def updates(self) -> int:
        """The statistics updates made."""
        return self.schedule.updates

    @property
    def damping(self) -> float:
        """λ now (it moves under adaptive damping)."""
        return self.damping_state.value

    @damping.setter
    def damping(self, value: float) -> None:
        self.damping_state.value = value

    @property
    def blocks(self) -> list[CurvatureBlock]:
        """The per-layer blocks of a block-diagonal method, in :attr:`layers` order; a clear error otherwise."""
        return layer_blocks(self.damped_fisher, self.method)

    @property
    def kronecker_blocks(self) -> list[KroneckerBlock]:
        """The Kronecker-sum blocks of a Kronecker method; a clear error otherwise."""
        blocks = self.blocks
        if not self.method.is_kronecker:
            raise FimbenchError(f"method {self.method.value} has no Kronecker-sum blocks")
        return blocks  # type: ignore[return-value]

    @property
    def approximations(self) -> list[KroneckerSum | None]:
        """Every layer's Kronecker approximation (None before the first update)."""
        return [block.approximation for block in self.kronecker_blocks]

    @property
    def inverses(self) -> list[KroneckerInverse | None]:
        """Every layer's factorised damped block (None before the first refresh)."""
        return [block.inverse for block in self.kronecker_blocks]

    def _phase(self, name: str) -> AbstractContextManager[None]:
        return self.timer.phase(name) if self.timer is not None else nullcontext()

    def update_statistics(self, inputs: Tensor, targets: Tensor | None = None) -> None:
        """Capture ``(ā, g)`` on a Fisher sub-batch and move the curvature's estimate towards its Fisher
        (T1 event); a skipped batch (:meth:`capture_fisher`) leaves the estimate and is captured again.

        Args:
            inputs: the mini-batch (its first ``max(1, round(B · fisher_fraction))`` examples are the Fisher sub-batch).
            targets: the data targets, used only with ``empirical_fisher`` (default: sampled from the model).
        """
        statistics = self.capture_fisher(inputs, targets)
        self.schedule.statistics_due = statistics is None
        if statistics is None:
            return
        decay = self.schedule.next_decay()
        with self._phase("approximate"):
            for report in self.damped_fisher.update(statistics, decay):
                self.diagnostics.iterations.append(report.iterations)
                self.diagnostics.residuals.append(report.residual)
        self._record_guard()
        self.diagnostics.updates += 1

    def _record_guard(self) -> None:
        """Keep the dropped updates and refreshes as :attr:`guard_events`; raises CurvatureFailedError when a part
        had no earlier estimate or inverse to keep (:mod:`~fimbench.preconditioner.guard`)."""
        events = guard_events(self.damped_fisher.pop_failures(), self.layer_names, self.method.value, self.steps + 1)
        self.guard_events.extend(events)
        self.diagnostics.guard_events.extend(events)

    def capture_fisher(self, inputs: Tensor, targets: Tensor | None = None, size: int | None = None) -> list[LayerStatistics] | None:
        """``(ā, g)`` of every layer on the Fisher sub-batch of ``inputs`` (gathered over ranks); they
        become :attr:`fisher`, the exact Fisher ``JᵀJ/m`` of that sub-batch.

        Args:
            inputs: the mini-batch.
            targets: the data targets, used only with ``empirical_fisher``.
            size: how many of its first examples (default: the Fisher sub-batch's, :mod:`~fimbench.preconditioner.sub_batch`).

        Returns:
            One :class:`~fimbench.fisher.capture.LayerStatistics` per layer, or None for a non-finite batch
            skipped under a GradScaler (:func:`~fimbench.preconditioner.amp.usable_statistics`).

        Raises:
            FimbenchError: for an empty Fisher sub-batch, or non-finite statistics without a GradScaler.
        """
        with self._phase("statistics"):
            statistics = self.sub_batch.capture(inputs, targets, size or self.sub_batch.size(inputs.shape[0]))
        if statistics is not None:
            self.fisher = SubBatchFisher(statistics)
        return statistics

    def refresh_inverses(self) -> None:
        """Factorise the damped Fisher approximation (T2 event, or the step after λ moved)."""
        with self._phase("invert"):
            self.damped_fisher.refresh(self.damping)
        self._record_guard()
        self.correction_scale = self.damped_fisher.correction_scale
        self.schedule.refresh_due = False
        self.diagnostics.refreshes += 1

    @property
    def alignment(self) -> float | None:
        """Mean over layers of ``cos(F̃⁻¹∇, ∇)`` at the latest refresh (a host sync); None before one."""
        return None if self.alignment_at_refresh is None else float(self.alignment_at_refresh)

    def precondition(self, measure_alignment: bool = False) -> Tensor:
        """``grad ← ν F̃⁻¹ grad`` for every layer, ``ν`` the KL-clip factor (1 without a clip).

        Args:
            measure_alignment: also record the mean ``cos(F̃⁻¹∇, ∇)`` over layers (:attr:`alignment`).

        Returns:
            ν, a 0-d tensor on the device (no host sync).
        """
        with self._phase("precondition"):
            scale = gradient_scale(self.grad_scaler)
            gradients = [weight_gradient(layer).to(self.factor_dtype) / scale for layer in self.layers]
            if self.grad_scaler is not None and not all_finite(gradients):  # left for the scaler to skip
                return torch.ones((), device=gradients[0].device)
            directions = self.damped_fisher.apply(gradients)
            self._record_guard()  # the two-level correction rebuilds its coarse level here
            if measure_alignment:
                self.alignment_at_refresh = mean_alignment(directions, gradients)
            clip = None if self.quadratic_rule is not None else self.settings.kl_clip  # the model sizes its step
            nu = kl_clip_factor(directions, gradients, clip)
            for layer, direction in zip(self.layers, directions):
                set_weight_gradient(layer, direction, scale=nu * scale)
        return nu

    def step(self, inputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """One preconditioning step after ``loss.backward()`` (module docstring).

        With adaptive damping, on every T3-th step ``awaiting_loss`` becomes true: after
        ``optimizer.step()`` the loop evaluates the loss again on the same batch and calls
        :meth:`adapt_damping`.

        Args:
            inputs: the mini-batch the gradients are of (its Fisher sub-batch gives the statistics).
            targets: the data targets, needed with ``empirical_fisher`` (an autoencoder's are its inputs).

        Returns:
            The KL-clip factor ν, a 0-d tensor on the device.

        Raises:
            FimbenchError: for a layer without a gradient or frozen since, a missing ``targets`` with the
                empirical Fisher, or a first statistics batch that is not finite while the gradients are.
        """
        with autocast_off(self.layers[0].weight.device):
            return self._step(inputs, targets)

    def _check_step(self, targets: Tensor | None) -> None:
        """One error for a step that cannot be preconditioned as asked (before anything is touched)."""
        if self.settings.empirical_fisher and targets is None:
            raise FimbenchError(
                "empirical_fisher=True takes the data targets: call step(inputs, targets) (an autoencoder's are its inputs)"
            )
        check_still_scaled(self.grad_scaler)
        check_gradients(self.layer_names, self.layers)

    def _step(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        """:meth:`step` with autocast off."""
        self._check_step(targets)
        if self.schedule.statistics_now():
            self.update_statistics(inputs, targets)
        if self.quadratic_rule is not None:  # the model's F: this batch's, not the statistics' sub-batch
            m = self.sub_batch.size(inputs.shape[0])
            self.capture_fisher(*model_batch(inputs, targets, m), size=m)
        if self.updates == 0:  # the first statistics batch was skipped: nothing to precondition with
            return skipped_step([weight_gradient(layer) for layer in self.layers])
        refresh = self.schedule.refresh_now()
        if refresh:
            self.refresh_inverses()
        judged = self.damping_state.judges(self.steps)
        if judged and self.quadratic_rule is None:
            self.damping_state.trial = DampingTrial.before_update(self.layers, self.factor_dtype, gradient_scale(self.grad_scaler))
        if self.quadratic_rule is None:
            nu = self.precondition(measure_alignment=refresh)
        else:
            gradients, parameters = self.quadratic_rule.objective_gradients(self.layers, self.factor_dtype)
            nu = self.precondition(measure_alignment=refresh)  # grad ← F̃⁻¹ g, unclipped
            with self._phase("step_rule"):
                step = self.quadratic_rule.take_step(self.layers, gradients, parameters, self.fisher, self.damping)  # type: ignore[arg-type]
            if judged:
                self.damping_state.trial = DampingTrial([], [], step.predicted_h)
        self.schedule.steps += 1
        self.diagnostics.steps += 1
        clip_sum = self.diagnostics.clip_sum
        self.diagnostics.clip_sum = nu.detach() if clip_sum is None else clip_sum + nu.detach()
        return nu

    @property
    def awaiting_loss(self) -> bool:
        """True between a T3 step of adaptive damping and its :meth:`adapt_damping` call."""
        return self.damping_state.trial is not None

    def predicted_change(self, trial: DampingTrial) -> Tensor:
        """``M(δ)`` of the update applied since ``trial`` (:meth:`DampingTrial.model_change`).

        Args:
            trial: θ and ∇h per layer before the update.

        Returns:
            ``M(δ)``, a 0-d tensor on the device.
        """
        return trial.model_change([weight_of(layer).detach() for layer in self.layers], self.damped_fisher.quadratic)

    def adapt_damping(self, loss_before: Tensor | float, loss_after: Tensor | float) -> float:
        """One Levenberg–Marquardt update of λ (:mod:`fimbench.preconditioner.damping`) from ``h(θ)`` and ``h(θ + δ)``
        on the batch of the last T3 step; returns ρ. The blocks are re-factorised at the next step if λ moved.

        Under a process group the two losses are first averaged over the ranks (a collective; every rank
        calls it, since ``awaiting_loss`` is true on all of them at once): ρ is then that of the objective
        whose gradient DDP averages, the mean of the ranks' losses, and λ stays the same on every rank.

        Args:
            loss_before: ``h(θ)`` on the batch of the judged step.
            loss_after: ``h(θ + δ)`` on the same batch, after the update.

        Returns:
            ρ = (h(θ + δ) − h(θ)) / M(δ).

        Raises:
            FimbenchError: when no step is awaiting its loss (call it once after each such step).
        """
        trial = self.damping_state.trial
        if trial is None:
            raise FimbenchError("adapt_damping is called once after each step whose awaiting_loss is true")
        predicted = float(trial.predicted if trial.predicted is not None else self.predicted_change(trial))
        before = self.damping
        rho = self.damping_state.adapt(loss_before, loss_after, predicted, self.layers[0].weight.device)
        self.schedule.refresh_due = self.schedule.refresh_due or self.damping != before
        self.diagnostics.reduction_ratios.append(rho)
        return rho

    def pop_diagnostics(self) -> dict[str, Any]:
        """Summary since the last call (iterations, residuals, ν, adaptations, guard events, and under ``qmodel``
        the means of α, μ and the predicted decrease; resets them) and the state now: λ, and ``alignment`` and
        ``correction_scale`` at the latest refresh.

        Returns:
            The summary, as plain data (None where there was nothing to average).
        """
        summary = self.diagnostics.summary()
        summary.update(damping=self.damping, alignment=self.alignment, correction_scale=self.correction_scale)
        if self.quadratic_rule is not None:
            summary.update(self.quadratic_rule.pop_summary())
        self.diagnostics = PreconditionerDiagnostics()
        return summary

    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on, as tensors and plain data that load with
        ``torch.load(weights_only=True)`` (:mod:`fimbench.preconditioner.state`).

        Returns:
            The state, whose tensors are shared with the preconditioner (not copied).
        """
        return preconditioner_state(self)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue exactly where the preconditioner that gave ``state`` (:meth:`state_dict`) was; its
        inverses are rebuilt here (:mod:`fimbench.preconditioner.state`, also for ``strict``).

        Args:
            state: what :meth:`state_dict` returned (possibly through ``torch.save`` / ``torch.load``).
            strict: require the same layer names and settings too.

        Raises:
            FimbenchError: for a state of another version, method, layer layout, keys or (strict) settings.
        """
        load_preconditioner_state(self, state, strict)
