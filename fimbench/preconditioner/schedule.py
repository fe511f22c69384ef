"""When a preconditioner captures statistics and refactorises: the T1 / T2 schedule and the EMA decay.

Every T1 steps (``stats_every``), or again at the next step when the last statistics batch was skipped
(not finite under a GradScaler), the statistics of a Fisher sub-batch move the estimate towards
``ρ_k F̂_old + (1 − ρ_k) F_batch`` with ``ρ_k = min(1 − 1/k, α)`` for the k-th update (α = ``ema_decay``);
every T2 steps (``inverse_every``), or at the step after λ moved, the damped curvature is refactorised.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RefreshSchedule:
    """The counters of the schedule (module docstring).

    Attributes:
        stats_every: T1.
        inverse_every: T2.
        ema_decay: α.
        steps: the steps taken.
        updates: the statistics updates made.
        refresh_due: no factorisation yet, or λ moved since the last one.
        statistics_due: the last statistics batch was skipped: capture again at the next step.
    """

    stats_every: int
    inverse_every: int
    ema_decay: float
    steps: int = 0
    updates: int = 0
    refresh_due: bool = True
    statistics_due: bool = False

    def statistics_now(self) -> bool:
        """Whether this step captures statistics (every T1 steps, or after a skipped batch)."""
        return self.steps % self.stats_every == 0 or self.statistics_due

    def refresh_now(self) -> bool:
        """Whether this step refactorises (every T2 steps, or after λ moved)."""
        return self.steps % self.inverse_every == 0 or self.refresh_due

    def next_decay(self) -> float:
        """Count one more statistics update k and return its ``ρ_k = min(1 − 1/k, α)``."""
        self.updates += 1
        return min(1.0 - 1.0 / self.updates, self.ema_decay)
