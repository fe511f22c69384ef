"""The settings of an optimizer, each default written once here.

:class:`PreconditionerSettings` is what :class:`fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` consumes as-is;
:class:`FirstOrderSettings` is what the torch optimizer takes. :class:`fimbench.engines.config.OptimizerConfig`
is both (first-order fields first, as in ``config.yaml``), so the config, ``--set`` and the command-line
options all derive their keys from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fimbench.curvature.kronecker_sum import DEFAULT_MIN_CURVATURE_RATIO, FACTORED, TRACE_SPLIT
from fimbench.curvature.options import ApproximationOptions
from fimbench.names import STEP_RULES
from fimbench.preconditioner.damping import DEFAULT_ADAPT_EVERY, DEFAULT_DAMPING_MAX, DEFAULT_DAMPING_MIN, FIXED
from fimbench.preconditioner.two_level import NO_COARSE

_APPROXIMATION = ApproximationOptions()


@dataclass(frozen=True)
class FirstOrderSettings:
    """The method and the torch optimizer's settings (momentum SGD for every method but Adam)."""

    method: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (SGD and the Kronecker methods' momentum)
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass(frozen=True)
class PreconditionerSettings:
    """Damping (docs/design.md §5), KL-clipping, the step rule (§19), the T1 / T2 schedule, the EMA, the Fisher sub-batch, and
    the approximation options (:meth:`approximation_options`; their defaults are
    :class:`~fimbench.curvature.options.ApproximationOptions`')."""

    damping: float = 1e-3  # λ of the factored Tikhonov damping (§2.2); the initial λ when adaptive
    pi: float | str = TRACE_SPLIT  # damping split: "trace" (§2.2) or a fixed π (curvature/kronecker_sum.py)
    damping_form: str = FACTORED  # factored (A₁ + π√λI) ⊗ (G₁ + √λ/π I) | exact A₁ ⊗ G₁ + λI (curvature/kronecker_sum.py)
    coarse: str = NO_COARSE  # none | nicolaides | spectral | residual: two-level correction (fimbench/preconditioner/two_level.py)
    damping_schedule: str = FIXED  # fixed | adaptive (Levenberg–Marquardt, fimbench/preconditioner/damping.py)
    damping_every: int = DEFAULT_ADAPT_EVERY  # T3: steps between adaptations of λ
    damping_min: float = DEFAULT_DAMPING_MIN  # bounds of the adaptive λ
    damping_max: float = DEFAULT_DAMPING_MAX
    kl_clip: float | None = 1e-2  # c of App. E; null disables clipping
    step_rule: str = STEP_RULES[0]  # fixed (the torch optimizer's lr, momentum) | qmodel (fimbench/preconditioner/step_rule.py)
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
        """The options every block's :func:`~fimbench.curvature.approximate` runs with."""
        return ApproximationOptions(tol=self.tol, max_iterations=self.max_iterations, rank=self.lanczos_rank, krylov_dim=self.krylov_dim)
