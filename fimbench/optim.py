"""Natural-gradient preconditioning with Kronecker-factored Fisher blocks (§2.2, App. E).

Usage in a plain PyTorch loop::

    preconditioner = KroneckerPreconditioner(model, Likelihood.BERNOULLI, "deflation", damping=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for x in batches:
        optimizer.zero_grad()
        model.likelihood.nll(model(x), x).mean().backward()
        preconditioner.step(x)          # statistics every T1, inverses every T2, grad ← ν F̃⁻¹ grad
        optimizer.step()                # momentum SGD on the preconditioned gradient

Per layer, every step: ``P = F̃⁻¹ ∇_W h`` — ``G_inv @ grad @ A_inv`` for one term, §3.4's solve for two.
Then KL-clipping (App. E): ``ν = min(1, sqrt(c / Σ_i |⟨P_i, ∇_{W_i} h⟩|))`` and ``grad ← ν P``.
Every T1 steps the statistics ``(ā, g)`` are captured on a Fisher sub-batch with targets sampled from
the model, and each block's approximation is refreshed towards the EMA estimate
``ρ F̂_old + (1 − ρ) F_batch`` (K-FAC: its factors), ``ρ = min(1 − 1/k, α)`` for the k-th update,
warm-started from the previous solution. Every T2 steps the damped blocks are re-factorised.
Weight decay and momentum are those of the torch optimizer, applied to ``ν P`` as in the authors' code.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ContextManager

import torch
from torch import Tensor, nn

from fimbench.capture import capture_statistics, kronecker_layers, set_weight_gradient, weight_gradient
from fimbench.config import OptimizerConfig
from fimbench.curvature import (
    DEFAULT_KRYLOV_DIM,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_MIN_CURVATURE_RATIO,
    DEFAULT_TOL,
    KroneckerInverse,
    KroneckerSum,
    Method,
    approximate,
    parse_method,
)
from fimbench.errors import FimbenchError
from fimbench.models import Likelihood
from fimbench.timing import PhaseTimer


@dataclass
class PreconditionerDiagnostics:
    """What happened since the last :meth:`KroneckerPreconditioner.pop_diagnostics` call."""

    updates: int = 0  # statistics updates (T1 events)
    refreshes: int = 0  # inversions (T2 events)
    iterations: list[int] = field(default_factory=list)  # per layer and update
    residuals: list[float] = field(default_factory=list)
    clip_sum: Tensor | None = None  # Σ ν over steps, kept on the device
    steps: int = 0

    def summary(self) -> dict[str, float | int | None]:
        return {
            "statistics_updates": self.updates,
            "inverse_refreshes": self.refreshes,
            "iterations_mean": sum(self.iterations) / len(self.iterations) if self.iterations else None,
            "iterations_max": max(self.iterations) if self.iterations else None,
            "residual_mean": sum(self.residuals) / len(self.residuals) if self.residuals else None,
            "residual_max": max(self.residuals) if self.residuals else None,
            "kl_clip_factor": float(self.clip_sum) / self.steps if self.clip_sum is not None and self.steps else None,
        }


class KroneckerPreconditioner:
    """Replaces each ``nn.Linear`` and ``nn.Conv2d`` gradient by its Kronecker-factored natural gradient
    (module docstring; a convolution's gradient as the (out, C·k_h·k_w + 1) matrix of capture.py)."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood,
        method: "str | Method",
        *,
        damping: float = 1e-3,
        kl_clip: float | None = 1e-2,
        stats_every: int = 100,
        inverse_every: int = 100,
        ema_decay: float = 0.95,
        fisher_fraction: float = 0.25,
        empirical_fisher: bool = False,
        tol: float = DEFAULT_TOL,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        lanczos_rank: int = 2,
        krylov_dim: int = DEFAULT_KRYLOV_DIM,
        min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO,
        generator: torch.Generator | None = None,
        timer: PhaseTimer | None = None,
    ) -> None:
        self.method = parse_method(method, kronecker_only=True)
        checks = {
            "damping": damping > 0,
            "stats_every": stats_every >= 1,
            "inverse_every": inverse_every >= 1,
            "ema_decay": 0.0 <= ema_decay < 1.0,
            "fisher_fraction": 0.0 < fisher_fraction <= 1.0,
            "kl_clip": kl_clip is None or kl_clip > 0,
            "lanczos_rank": lanczos_rank in (1, 2),
        }
        for name, valid in checks.items():
            if not valid:
                value = locals()[name]
                raise FimbenchError(f"invalid optimizer setting {name}={value}")
        self.model = model
        self.likelihood = likelihood
        self.layers = kronecker_layers(model)
        if not self.layers:
            raise FimbenchError("the model has no nn.Linear or nn.Conv2d layer to precondition")
        self.damping = damping
        self.kl_clip = kl_clip
        self.stats_every = stats_every
        self.inverse_every = inverse_every
        self.ema_decay = ema_decay
        self.fisher_fraction = fisher_fraction
        self.empirical_fisher = empirical_fisher
        self.min_curvature_ratio = min_curvature_ratio
        self.options = dict(tol=tol, max_iterations=max_iterations, rank=lanczos_rank, krylov_dim=krylov_dim)
        self.generator = generator
        self.timer = timer
        self.steps = 0
        self.updates = 0
        self.approximations: list[KroneckerSum | None] = [None] * len(self.layers)
        self.inverses: list[KroneckerInverse | None] = [None] * len(self.layers)
        self.diagnostics = PreconditionerDiagnostics()

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        likelihood: Likelihood,
        config: OptimizerConfig,
        generator: torch.Generator | None = None,
        timer: PhaseTimer | None = None,
    ) -> "KroneckerPreconditioner":
        return cls(
            model,
            likelihood,
            config.method,
            damping=config.damping,
            kl_clip=config.kl_clip,
            stats_every=config.stats_every,
            inverse_every=config.inverse_every,
            ema_decay=config.ema_decay,
            fisher_fraction=config.fisher_fraction,
            empirical_fisher=config.empirical_fisher,
            tol=config.tol,
            max_iterations=config.max_iterations,
            lanczos_rank=config.lanczos_rank,
            krylov_dim=config.krylov_dim,
            min_curvature_ratio=config.min_curvature_ratio,
            generator=generator,
            timer=timer,
        )

    def _phase(self, name: str) -> ContextManager[None]:
        return self.timer.phase(name) if self.timer is not None else nullcontext()

    def fisher_batch_size(self, batch_size: int) -> int:
        return max(1, round(batch_size * self.fisher_fraction))

    def update_statistics(self, inputs: Tensor, targets: Tensor | None = None) -> None:
        """Capture ``(ā, g)`` on a Fisher sub-batch and refresh every block's approximation (T1 event)."""
        m = self.fisher_batch_size(inputs.shape[0])
        sub_targets = None
        if self.empirical_fisher:
            sub_targets = (targets if targets is not None else inputs)[:m]
        with self._phase("statistics"):
            statistics = capture_statistics(
                self.model, inputs[:m], self.likelihood, self.layers, sub_targets, self.generator
            )
        self.updates += 1
        decay = min(1.0 - 1.0 / self.updates, self.ema_decay)
        with self._phase("approximate"):
            for index, stats in enumerate(statistics):
                previous = self.approximations[index]
                updated = approximate(
                    self.method, stats.a, stats.g, prior=previous, decay=decay, warm_start=previous, **self.options
                )
                self.approximations[index] = updated
                if updated.method != Method.KFAC.value:
                    self.diagnostics.iterations.append(updated.iterations)
                    self.diagnostics.residuals.append(updated.residual)
        self.diagnostics.updates += 1

    def refresh_inverses(self) -> None:
        """Factorise every damped block (T2 event)."""
        with self._phase("invert"):
            self.inverses = [
                approximation.inverse(self.damping, self.min_curvature_ratio)  # type: ignore[union-attr]
                for approximation in self.approximations
            ]
        self.diagnostics.refreshes += 1

    def precondition(self) -> Tensor:
        """``grad ← ν F̃⁻¹ grad`` for every layer; returns ν (a 0-d tensor on the device, no sync)."""
        with self._phase("precondition"):
            gradients = [weight_gradient(layer) for layer in self.layers]
            directions = [inverse.apply(grad) for inverse, grad in zip(self.inverses, gradients)]  # type: ignore[union-attr]
            if self.kl_clip is None:
                nu = torch.ones((), device=gradients[0].device)
            else:
                inner = torch.stack(
                    [torch.vdot(d.reshape(-1), grad.reshape(-1)).abs() for d, grad in zip(directions, gradients)]
                ).sum()
                nu = torch.clamp(torch.sqrt(self.kl_clip / (inner + 1e-30)), max=1.0)
            for layer, direction in zip(self.layers, directions):
                set_weight_gradient(layer, direction, scale=nu)
        return nu

    def step(self, inputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """One preconditioning step after ``loss.backward()``; returns the KL-clip factor ν."""
        if self.steps % self.stats_every == 0:
            self.update_statistics(inputs, targets)
        if self.steps % self.inverse_every == 0 or self.inverses[0] is None:
            self.refresh_inverses()
        nu = self.precondition()
        self.steps += 1
        self.diagnostics.steps += 1
        clip_sum = self.diagnostics.clip_sum
        self.diagnostics.clip_sum = nu.detach() if clip_sum is None else clip_sum + nu.detach()
        return nu

    def pop_diagnostics(self) -> dict[str, float | int | None]:
        """Summary of iterations, residuals and ν since the last call; resets them."""
        summary = self.diagnostics.summary()
        self.diagnostics = PreconditionerDiagnostics()
        return summary
