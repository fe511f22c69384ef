"""Sweep planning: the grid (paper §4.2) in fimbench's or the authors' scale, expanded into points.

Grid scale. The paper's grid (:data:`PAPER_GRID`) is in the authors' loss scale and damping split,
which differ from fimbench's (:mod:`fimbench.engines.authors_scale`: κ = 1/P for BCE, 2/P for MSE, and a fixed π per
method). With ``authors_scale`` every value, given or the paper's, is converted per method and dataset by
:func:`fimbench.engines.authors_scale.from_authors_scale` (a converted damping also sets the point's ``pi``), so the
sweep explores exactly the optimizers the paper explored. Otherwise values are in fimbench's scale (that
of ``fimbench train --lr`` and of ``config.yaml``, with the base config's ``pi``), and the Kronecker
methods' default grid is :data:`KRONECKER_GRID`, fimbench's own around its presets, where the curvature
acts; SGD and Adam keep the paper's learning rates, converted (their conversion involves no damping).
SGD and Adam tune ``lr`` only; the Kronecker methods tune ``lr``, ``damping`` and ``clip`` (the KL-clip c,
invariant under the conversion) — or, with ``optimizer.step_rule: qmodel``, ``damping`` only, since the
quadratic model chooses the step size and there is no KL-clip (:mod:`fimbench.preconditioner.step_rule`). The step rule
applies to the Kronecker methods; SGD and Adam keep their learning rates. Every point resolves through
:func:`fimbench.engines.config.resolve_config`, its grid values as the user's: under qmodel a point's damping is therefore
a fixed λ, unless the schedule is set adaptive (``--set optimizer.damping_schedule=adaptive``), when it is λ₀. A point's
values are checked when it runs (:func:`fimbench.engines.train.run_point` loads it with ``load_config``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fimbench.engines.authors_scale import authors_damping, from_authors_scale, loss_scale
from fimbench.engines.config import RunConfig, resolve_config
from fimbench.engines.models import ARCHITECTURES, Architecture, resolve_architecture
from fimbench.errors import FimbenchError
from fimbench.methods import Command, Method, methods_of, parse_method
from fimbench.names import STEP_RULES, StepRule, check_dataset

_PAPER_VALUES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_GRID: dict[str, tuple[float, ...]] = {"lr": _PAPER_VALUES, "damping": _PAPER_VALUES, "clip": (1e-2, 1e-3)}
"""§4.2's grid, in the authors' loss scale."""
KRONECKER_GRID: dict[str, tuple[float, ...]] = {"lr": (1.0, 0.3, 0.1, 0.03), "damping": (1.0, 0.1, 1e-2, 1e-3), "clip": (1e-2, 1e-3)}
"""The Kronecker methods' default grid in fimbench's scale (trace π): around the presets of configs/."""
GRID_KEYS: dict[str, str] = {"lr": "optimizer.lr", "damping": "optimizer.damping", "clip": "optimizer.kl_clip"}


def tunable_keys(method: Method, step_rule: str = STEP_RULES[0]) -> tuple[str, ...]:
    """The grid keys a method tunes: SGD and Adam have no damping and no KL-clipping; under the qmodel step
    rule a preconditioned method has no learning rate and no KL-clipping."""
    if not method.is_preconditioned:
        return ("lr",)
    return ("damping",) if step_rule == StepRule.QMODEL else tuple(GRID_KEYS)


def parse_grid(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["lr=1e-1,3e-2", "clip=1e-2"]`` -> ``{"lr": [0.1, 0.03], "clip": [0.01]}``."""
    grid: dict[str, list[float]] = {}
    for spec in specs:
        key, separator, text = spec.partition("=")
        key = key.strip()
        if not separator or key not in GRID_KEYS:
            raise FimbenchError(f"--grid takes KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}; got '{spec}'")
        if key in grid:
            raise FimbenchError(f"--grid {key} is given twice; list all its values in one --grid {key}=...")
        try:
            values = [float(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise FimbenchError(f"--grid {key}: values must be numbers, got '{text}'") from None
        if not values or not all(math.isfinite(value) and value > 0 for value in values):
            raise FimbenchError(f"--grid {key}: give one or more positive numbers, got '{text}'")
        grid[key] = values
    return grid


def format_value(value: float) -> str:
    """Six significant digits, no padding: 0.03 -> ``3e-2``, 78.4 -> ``7.84e1``."""
    mantissa, exponent = f"{value:.5e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def point_name(method: str, values: Mapping[str, float], seed: int | None = None) -> str:
    """The point's run directory name: ``kfac-lr_3e-2-damping_1e-3-clip_1e-2``, ``…-seed_1`` with a seed."""
    parts = [method, *(f"{key}_{format_value(value)}" for key, value in values.items())]
    return "-".join(parts + ([f"seed_{seed}"] if seed is not None else []))


def to_fimbench_scale(method: Method, architecture: Architecture, key: str, value: float) -> float:
    """A grid value of the authors' scale in fimbench's (module docstring); the KL-clip c is invariant."""
    pixels = architecture.layers[0]
    if key == "lr":
        return from_authors_scale(method, architecture.likelihood, pixels, lr=value)["lr"]
    if key == "damping":
        return from_authors_scale(method, architecture.likelihood, pixels, lr=1.0, damping=value)["damping"]
    return value


@dataclass(frozen=True)
class GridAxis:
    key: str  # lr | damping | clip
    values: tuple[float, ...]  # fimbench's scale
    authors_values: tuple[float, ...] | None  # the same, in the authors' scale, when converted from it


@dataclass(frozen=True)
class SweepPoint:
    name: str
    method: str
    values: dict[str, float]  # grid key -> value in fimbench's scale
    authors_values: dict[str, float]  # the keys whose values were converted from the authors' scale
    config: RunConfig
    seed: int | None = None  # set when the sweep runs several seeds per setting (also in config.training.seed)

    @property
    def setting(self) -> str:
        """The point's name without its seed: what the runs of one group share."""
        return point_name(self.method, self.values)


@dataclass(frozen=True)
class SweepPlan:
    out: Path
    dataset: str
    grids: dict[str, tuple[GridAxis, ...]]  # method -> its axes
    points: tuple[SweepPoint, ...]
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its tuning record (sweep.json)


SettingsRule = Callable[[str, tuple[GridAxis, ...]], list[dict[str, float]]]
"""``rule(method, axes) -> settings``: the settings a method runs, each a grid key -> value mapping in its axis'
scale (the authors' where the axis was converted from it, :func:`axis_scale_values`); default :func:`grid_settings`."""


def axis_scale_values(axis: GridAxis) -> tuple[float, ...]:
    """An axis' values in the scale it was given in: the authors' where converted from it, else fimbench's."""
    return axis.authors_values if axis.authors_values is not None else axis.values


def setting_values(point: SweepPoint) -> dict[str, float]:
    """A point's grid values in each axis' own scale (:func:`axis_scale_values`): what a :data:`SettingsRule` gives."""
    return {key: point.authors_values.get(key, value) for key, value in point.values.items()}


def grid_settings(method: str, axes: tuple[GridAxis, ...]) -> list[dict[str, float]]:
    """Every combination of the axes' values: the grid search's settings (a :data:`SettingsRule`).

    Args:
        method: The method (every method's grid is the product of its axes).
        axes: The method's axes.

    Returns:
        The settings, in the axes' own scale, first axis slowest.
    """
    return [dict(zip((axis.key for axis in axes), values)) for values in itertools.product(*map(axis_scale_values, axes))]


def _axis(method: Method, architecture: Architecture, key: str, given: Sequence[float] | None, authors_scale: bool) -> GridAxis:
    if given is None and method.is_preconditioned and not authors_scale:
        return GridAxis(key, KRONECKER_GRID[key], None)
    raw = tuple(given) if given is not None else PAPER_GRID[key]
    converted = authors_scale or given is None
    values = tuple(to_fimbench_scale(method, architecture, key, value) for value in raw) if converted else raw
    first: dict[str, int] = {}  # one point per distinct run name
    for index, value in enumerate(values):
        first.setdefault(format_value(value), index)
    kept = sorted(first.values())
    return GridAxis(key, tuple(values[i] for i in kept), tuple(raw[i] for i in kept) if converted else None)


def _setting(
    method: Method, architecture: Architecture, axes: tuple[GridAxis, ...], setting: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """A setting (values in its axes' own scale) as the point's values in fimbench's scale, the values in the
    authors' scale (the converted axes'), and the point's config overrides."""
    values: dict[str, float] = {}
    authors: dict[str, float] = {}
    for axis in axes:
        value = setting[axis.key]
        if axis.authors_values is None:
            values[axis.key] = value
        else:
            values[axis.key], authors[axis.key] = to_fimbench_scale(method, architecture, axis.key, value), value
    point_overrides: dict[str, Any] = {GRID_KEYS[key]: value for key, value in values.items()}
    if "damping" in authors:  # the authors' damping comes with their split
        kappa = loss_scale(architecture.likelihood, architecture.layers[0])
        point_overrides["optimizer.pi"] = authors_damping(method, authors["damping"], kappa)[1]
    point_overrides["optimizer.method"] = method.value
    return values, authors, point_overrides


def plan_sweep(
    out: Path,
    methods: Sequence[str] = (),
    grid: Mapping[str, Sequence[float]] | None = None,
    authors_scale: bool = False,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    settings: SettingsRule = grid_settings,
) -> SweepPlan:
    """Expand each method's grid into points (module docstring).

    ``methods``: default every :class:`~fimbench.methods.Method`. ``grid``: values per key (:func:`parse_grid`); keys left out take the
    default grid (module docstring). ``config_path`` and dotted ``overrides`` (``data.dataset``, ``training.epochs``, ...) are
    resolved as by ``fimbench train`` for every point, before the point's own values. ``seeds``: each
    setting runs once per seed (``training.seed``, named ``…-seed_S``); by default once, with the config's seed.
    ``settings``: which settings of its axes a method runs (:data:`SettingsRule`; default the grid, every
    combination); a setting whose run name another one already has is left out.
    """
    grid = dict(grid or {})
    overrides = dict(overrides or {})
    accepted = methods_of(command=Command.SWEEP)
    chosen = list(dict.fromkeys(parse_method(name, choices=accepted) for name in methods)) or list(accepted)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise FimbenchError(f"unknown grid key(s) {', '.join(unknown)}; use {', '.join(GRID_KEYS)}")
    bases = {method: resolve_config(config_path, {**overrides, "optimizer.method": method.value}) for method in chosen}
    tuned = {method: tunable_keys(method, bases[method].optimizer.step_rule) for method in chosen}
    unused = sorted(set(grid) - {key for keys in tuned.values() for key in keys})
    if unused:
        raise FimbenchError(
            f"--grid {', '.join(unused)} is tuned by none of {', '.join(m.value for m in chosen)} (SGD and Adam tune lr "
            "only; with step rule qmodel the Kronecker methods tune damping only)"
        )
    grids: dict[str, tuple[GridAxis, ...]] = {}
    points: list[SweepPoint] = []
    dataset = ""
    for method in chosen:
        dataset = bases[method].data.dataset
        check_dataset(dataset)
        architecture = resolve_architecture(bases[method], ARCHITECTURES[dataset].layers[0])
        axes = tuple(_axis(method, architecture, key, grid.get(key), authors_scale) for key in tuned[method])
        grids[method.value] = axes
        named: set[str] = set()
        for setting in settings(method.value, axes):
            values, authors, point_overrides = _setting(method, architecture, axes, setting)
            if point_name(method.value, values) not in named:
                named.add(point_name(method.value, values))
                points.extend(_seeded_points(method.value, values, authors, config_path, {**overrides, **point_overrides}, seeds))
    return SweepPlan(Path(out), dataset, grids, tuple(points))


def plan_best_runs(
    out: Path, best: Mapping[str, tuple[SweepPoint, Path]], seeds: Sequence[int], overrides: Mapping[str, Any] | None = None
) -> SweepPlan:
    """The runs of each method's chosen setting, once per seed: ``best`` maps a method to its point (of a
    sweep) and the config file holding that point's resolved settings (its ``best/<method>.yaml``), read
    with ``overrides`` (``training.epochs``, ...) on top. The plan is an ordinary sweep plan with one value
    per axis, so it runs, resumes and reports as a sweep does."""
    grids: dict[str, tuple[GridAxis, ...]] = {}
    points: list[SweepPoint] = []
    for method, (point, config_path) in best.items():
        grids[method] = tuple(
            GridAxis(key, (value,), (point.authors_values[key],) if key in point.authors_values else None)
            for key, value in point.values.items()
        )
        method_overrides = {**(overrides or {}), "optimizer.method": method}
        points.extend(_seeded_points(method, point.values, point.authors_values, config_path, method_overrides, seeds))
    if not points:
        raise FimbenchError("no method has a completed sweep point to run from")
    return SweepPlan(Path(out), points[0].config.data.dataset, grids, tuple(points))


def _seeded_points(
    method: str,
    values: dict[str, float],
    authors: dict[str, float],
    config_path: Path | None,
    overrides: Mapping[str, Any],
    seeds: Sequence[int] | None,
) -> list[SweepPoint]:
    """One setting's points: one run with the config's seed, or one per seed of ``seeds``."""
    if seeds is None:
        return [SweepPoint(point_name(method, values), method, values, authors, resolve_config(config_path, dict(overrides)))]
    if overrides.get("training.seed") is not None:
        raise FimbenchError("give either a seed (--seed, training.seed) or --seeds, not both")
    return [
        SweepPoint(
            point_name(method, values, seed), method, values, authors,
            resolve_config(config_path, {**overrides, "training.seed": seed}), seed,
        )
        for seed in seeds
    ]
