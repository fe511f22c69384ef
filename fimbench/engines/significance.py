"""Whether two optimizers differ: the spread of a quantity over seeds and Welch's t interval of a difference.

For samples ``a`` (n_a seeds) and ``b`` (n_b seeds) of a quantity, the difference of means
``d = ā − b̄`` has standard error ``se = √(s_a²/n_a + s_b²/n_b)`` (``s²``: the unbiased sample variance)
and Welch–Satterthwaite degrees of freedom

    ν = se⁴ / ((s_a²/n_a)² / (n_a − 1) + (s_b²/n_b)² / (n_b − 1)),

so the two-sided ``confidence`` interval is ``d ± t_{(1+confidence)/2, ν} · se``; the difference is
significant at level ``1 − confidence`` when the interval excludes 0 (equivalently, Welch's two-sided
t test rejects equal means). Welch's test does not assume equal variances, which two optimizers'
seed-to-seed spreads rarely have. With a single seed on either side there is no variance to test
against: the interval and the verdict are ``None``. With no spread on either side (identical seeds)
the interval is the point ``[d, d]`` and any non-zero difference is significant.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
"""Confidence of the intervals (significance at 1 − CONFIDENCE = 5 %)."""
TEST_NAME = "Welch's t (unequal variances), two-sided"


@dataclass(frozen=True)
class Spread:
    """A quantity over seeds: its values, mean, sample standard deviation (0 for one value), min and max."""

    values: tuple[float, ...]
    mean: float
    sd: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | int]:
        return {"n": len(self.values), "mean": self.mean, "sd": self.sd, "min": self.low, "max": self.high}


def spread(values: Sequence[float]) -> Spread | None:
    """:class:`Spread` of ``values``, or ``None`` when there are none."""
    if not values:
        return None
    kept = tuple(float(value) for value in values)
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return Spread(kept, statistics.fmean(kept), sd, min(kept), max(kept))


@dataclass(frozen=True)
class Difference:
    """``mean(a) − mean(b)`` with Welch's interval (module docstring); ``None`` fields for a single seed."""

    difference: float
    interval: tuple[float, float] | None
    significant: bool | None
    degrees_of_freedom: float | None


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """The difference of the means of ``a`` and ``b`` and its Welch t interval (module docstring)."""
    from scipy.stats import t as student_t

    difference = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(difference, None, None, None)
    share_a, share_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(share_a + share_b)
    if se == 0.0:
        return Difference(difference, (difference, difference), difference != 0.0, None)
    dof = se**4 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    half = float(student_t.ppf((1.0 + confidence) / 2.0, dof)) * se
    low, high = difference - half, difference + half
    return Difference(difference, (low, high), not (low <= 0.0 <= high), dof)
