"""The settings a tuned sweep adds to or puts in place of the grid (docs/design.md §22): one step beyond the
edge of the grid where a method's best point lies on it, and the scrambled Sobol points of the quasi-random search.

Every value here is in its axis' own scale (:func:`~fimbench.engines.sweep.plan.axis_scale_values`: the authors'
where the axis was converted from it, else fimbench's), the scale the grid was given in; the limits of
:data:`~fimbench.names.TUNING_LIMITS` are too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fimbench.engines.sweep.plan import GridAxis, axis_scale_values, format_value
from fimbench.errors import FimbenchError
from fimbench.names import TUNING_LIMITS

SOBOL_SEED = 0
"""The scramble seed of the quasi-random search (the same for every method: each gets the same draws in its box)."""
UP, DOWN = "up", "down"


@dataclass(frozen=True)
class Edge:
    """No point was tried beyond the best one along axis ``key`` in ``direction``: ``beyond`` is the next value
    there, the axis' next value (a fill) or, past the axis' outermost value, one grid step further (an edge)."""

    key: str
    direction: str  # up | down
    value: float  # the best point's
    beyond: float
    fill: bool  # beyond is a value the axis already has (at other coordinates), not a new one


@dataclass(frozen=True)
class Extension:
    """A setting added beyond an edge: the best point's setting with ``key`` at ``value``."""

    key: str
    direction: str
    edge: float  # the best point's value, from which it stepped
    value: float
    fill: bool
    setting: dict[str, float]


def edges(settings: Sequence[Mapping[str, float]], best: Mapping[str, float]) -> list[Edge]:
    """The directions, per axis with two values or more, in which no setting beyond ``best`` was tried along the
    line through it (the other keys at ``best``'s values).

    On the grid (every combination) that is where ``best`` lies on the grid's edge. Once extensions were
    added, the line through ``best`` may lack values the axis has elsewhere: the next of those is tried
    first (a fill), so that an optimum beyond a corner of the grid is reached.

    Args:
        settings: Every setting of the method tried so far (finished or not, diverged and failed ones included).
        best: The best setting's values.

    Returns:
        One :class:`Edge` per such axis and direction, in the order of ``best``'s keys, up before down. Past the
        axis' outermost value the step is the ratio of its two outermost values on that side (a geometric
        grid keeps its ratio), the new value rounded to the six significant digits of run names.
    """
    found: list[Edge] = []
    for key, value in best.items():
        axis = sorted({setting[key] for setting in settings})
        if len(axis) < 2:
            continue
        line = [setting[key] for setting in settings if all(setting[k] == v for k, v in best.items() if k != key)]
        if value >= max(line):
            above = [other for other in axis if other > value]
            beyond = above[0] if above else _rounded(value * axis[-1] / axis[-2])
            found.append(Edge(key, UP, value, beyond, bool(above)))
        if value <= min(line):
            below = [other for other in axis if other < value]
            beyond = below[-1] if below else _rounded(value * axis[0] / axis[1])
            found.append(Edge(key, DOWN, value, beyond, bool(below)))
    return found


def _rounded(value: float) -> float:
    """``value`` to the six significant digits of its run name (:func:`format_value`), so that config and name agree."""
    return float(format_value(value))


def stopped(edge: Edge, made: Sequence[Extension], extend: int) -> str | None:
    """Why no step is taken beyond ``edge`` (the bound), or ``None``; a fill is never stopped.

    Args:
        edge: The edge.
        made: The extensions made so far for the method.
        extend: The most steps past the axis' outermost value per axis and direction (fills do not count).

    Returns:
        ``"--extend N"`` when that many steps were made in its direction, ``"limit KEY in [LOW, HIGH]"`` when the
        step would leave :data:`~fimbench.names.TUNING_LIMITS`, else ``None``.
    """
    if edge.fill:
        return None
    if sum(item.key == edge.key and item.direction == edge.direction and not item.fill for item in made) >= extend:
        return f"--extend {extend}"
    low, high = TUNING_LIMITS[edge.key]
    if not low <= edge.beyond <= high:
        return f"limit {edge.key} in [{format_value(low)}, {format_value(high)}]"
    return None


def quasi_random_settings(axes: Sequence[GridAxis], count: int, seed: int = SOBOL_SEED) -> list[dict[str, float]]:
    """``count`` settings from a scrambled Sobol sequence over the log box of the axes.

    Each axis with two values or more spans, in log space, from its smallest to its largest value; an axis with
    one value stays at it. Values are rounded to the six significant digits of run names (:func:`format_value`).

    Args:
        axes: The method's axes (its grid).
        count: How many settings.
        seed: The Sobol scramble seed; the same seed gives the same settings.

    Returns:
        The settings, in the axes' own scale, in the sequence's order.

    Raises:
        FimbenchError: When no axis has two values (there is no box), or the box is too narrow for ``count``
            distinct run names.
    """
    spans = {axis.key: (min(axis_scale_values(axis)), max(axis_scale_values(axis))) for axis in axes}
    varied = [key for key, (low, high) in spans.items() if low < high]
    if not varied:
        raise FimbenchError(
            "--search quasi-random samples the box of the grid, and every tuned key has one value; give one key two values "
            "(--grid lr=1e-3,1 spans lr from 1e-3 to 1)"
        )
    engine = torch.quasirandom.SobolEngine(len(varied), scramble=True, seed=seed)
    settings: list[dict[str, float]] = []
    for row in engine.draw(count, dtype=torch.float64).tolist():
        setting = {key: low for key, (low, _) in spans.items()}
        for key, fraction in zip(varied, row):
            low, high = spans[key]
            setting[key] = _rounded(math.exp(math.log(low) + fraction * math.log(high / low)))
        settings.append(setting)
    if len({tuple(setting.values()) for setting in settings}) < count:
        raise FimbenchError(f"the box of the grid is too narrow for {count} distinct points; widen the --grid")
    return settings
