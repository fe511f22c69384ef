"""The settings of an optimizer, each default written once here, and the check of a preconditioner's.

:class:`PreconditionerSettings` is what :class:`fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` consumes as-is;
:class:`FirstOrderSettings` is what the torch optimizer takes. :class:`fimbench.engines.config.OptimizerConfig`
is both (first-order fields first, as in ``config.yaml``), so the config, ``--set`` and the command-line
options all derive their keys from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fimbench.curvature.kronecker_sum import DEFAULT_MIN_CURVATURE_RATIO, TRACE_SPLIT, DampingForm, DampingSplit
from fimbench.curvature.options import ApproximationOptions
from fimbench.errors import FimbenchError
from fimbench.methods import BLOCK_METHODS, Method
from fimbench.names import STEP_RULES, StepRule
from fimbench.preconditioner.blocks import BlockSettings
from fimbench.preconditioner.damping import DEFAULT_ADAPT_EVERY, DEFAULT_DAMPING_MAX, DEFAULT_DAMPING_MIN, DampingSchedule
from fimbench.preconditioner.two_level import CoarseSpace, check_coarse

_APPROXIMATION = ApproximationOptions()


@dataclass(frozen=True)
class FirstOrderSettings:
    """The method and its torch optimizer's settings (momentum SGD for the preconditioned methods)."""

    method: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (SGD and the Kronecker methods' momentum)
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # also Shampoo's and SOAP's β₁, β₂
    adam_lr: float = 1e-3  # Muon: the AdamW learning rate of the parameters Muon leaves out (biases, first and last layer)


@dataclass(frozen=True)
class PreconditionerSettings:
    """Damping (docs/design.md §5), KL-clipping, the step rule (§19), the T1 / T2 schedule, the EMA, the Fisher sub-batch, and
    the approximation options (:meth:`approximation_options`; their defaults are
    :class:`~fimbench.curvature.options.ApproximationOptions`')."""

    damping: float = 1e-3  # λ of the factored Tikhonov damping (§2.2); the initial λ when adaptive
    pi: float | str = TRACE_SPLIT  # damping split: "trace" (§2.2) or a fixed π (curvature/kronecker_sum.py)
    damping_form: str = DampingForm.FACTORED.value  # factored (A₁ + π√λI) ⊗ (G₁ + √λ/π I) | exact A₁ ⊗ G₁ + λI (curvature/kronecker_sum.py)
    coarse: str = CoarseSpace.NONE.value  # none | nicolaides | spectral | residual: two-level correction (fimbench/preconditioner/two_level.py)
    damping_schedule: str = DampingSchedule.FIXED.value  # fixed | adaptive (Levenberg–Marquardt, fimbench/preconditioner/damping.py)
    damping_every: int = DEFAULT_ADAPT_EVERY  # T3: steps between adaptations of λ
    damping_min: float = DEFAULT_DAMPING_MIN  # bounds of the adaptive λ
    damping_max: float = DEFAULT_DAMPING_MAX
    kl_clip: float | None = 1e-2  # c of App. E; null disables clipping
    step_rule: str = StepRule.FIXED.value  # fixed (the torch optimizer's lr, momentum) | qmodel (fimbench/preconditioner/step_rule.py)
    stats_every: int = 100  # T1
    inverse_every: int = 100  # T2
    ema_decay: float = 0.95  # α in ρ = min(1 − 1/k, α)
    fisher_fraction: float = 0.25  # Fisher sub-batch size / batch size
    empirical_fisher: bool = False
    tol: float = _APPROXIMATION.tol
    max_iterations: int = _APPROXIMATION.max_iterations
    lanczos_rank: int = _APPROXIMATION.rank
    krylov_dim: int = _APPROXIMATION.krylov_dim
    min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO  # δ of the rank-2 safeguard (curvature/kronecker_sum.py)

    def approximation_options(self) -> ApproximationOptions:
        """The options every block's :func:`~fimbench.curvature.approximate` runs with.

        Returns:
            ``tol``, ``max_iterations``, Lanczos' ``rank`` and ``krylov_dim`` of these settings.
        """
        return ApproximationOptions(tol=self.tol, max_iterations=self.max_iterations, rank=self.lanczos_rank, krylov_dim=self.krylov_dim)

    def block_settings(self) -> BlockSettings:
        """What every per-layer block is built with (:class:`~fimbench.preconditioner.blocks.BlockSettings`).

        Returns:
            The approximation options, δ, the damping split π and the damping form of these settings.
        """
        pi = cast(DampingSplit, self.pi)  # BlockSettings checks it
        return BlockSettings(self.approximation_options(), self.min_curvature_ratio, pi, self.damping_form)


def check_settings(settings: PreconditionerSettings, method: Method) -> None:
    """One error naming the first setting a preconditioner of ``method`` cannot run with: a value out of
    range, a coarse space for a method that is not block-diagonal, or an adaptive λ starting outside its
    bounds."""
    checks = {
        "damping": settings.damping > 0,
        "stats_every": settings.stats_every >= 1,
        "inverse_every": settings.inverse_every >= 1,
        "ema_decay": 0.0 <= settings.ema_decay < 1.0,
        "fisher_fraction": 0.0 < settings.fisher_fraction <= 1.0,
        "kl_clip": settings.kl_clip is None or settings.kl_clip > 0,
        "lanczos_rank": settings.lanczos_rank in (1, 2),
        "damping_schedule": settings.damping_schedule in tuple(DampingSchedule),
        "damping_every": settings.damping_every >= 1,
        "damping_min": 0 < settings.damping_min <= settings.damping_max,
        "step_rule": settings.step_rule in STEP_RULES,
    }
    for name, valid in checks.items():
        if not valid:
            raise FimbenchError(f"invalid optimizer setting {name}={getattr(settings, name)}")
    settings.block_settings()  # checks the damping form, π and the approximation options
    if check_coarse(settings.coarse) != CoarseSpace.NONE and method not in BLOCK_METHODS:
        raise FimbenchError(
            f"coarse={settings.coarse} corrects a block-diagonal method ({', '.join(m.value for m in BLOCK_METHODS)}), not {method.value}"
        )
    damping, damping_min, damping_max = settings.damping, settings.damping_min, settings.damping_max
    if settings.damping_schedule == DampingSchedule.ADAPTIVE and not damping_min <= damping <= damping_max:
        raise FimbenchError(
            f"adaptive damping starts inside [damping_min, damping_max] = [{damping_min:g}, {damping_max:g}], got damping={damping:g}"
        )
