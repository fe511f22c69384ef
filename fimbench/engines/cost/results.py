"""The cost profile's results: timings per phase, layer, method and model, and the exponent fits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

FIT_STATISTIC = "low"  # exponents are fitted to the fastest repeat: contention on a shared host only adds time


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated calls: median, quartiles ``q1``/``q3``, ``low``/``high`` and every sample."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        values = torch.tensor(list(samples), dtype=torch.float64)
        q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        return cls(median, q1, q3, float(values.min()), float(values.max()), tuple(float(s) for s in samples))


@dataclass
class LayerCost:
    """One (q × p) layer: ``times[phase]`` for every phase of :data:`PHASES`; k for iterative methods."""

    index: int
    p: int
    q: int
    rank: int
    iterations_cold: int | None
    iterations_warm: int | None
    times: dict[str, Timing]


@dataclass
class MethodCost:
    method: str
    settings: dict[str, Any]  # the OptimizerConfig the preconditioner was built from
    layers: list[LayerCost]
    precondition: Timing  # KroneckerPreconditioner.precondition(): every layer + KL clip

    def total(self, phase: str, statistic: str = "median") -> float:
        """Σ over layers of the phase's seconds (one update of the whole model); ``statistic``: a
        :class:`Timing` field."""
        return sum(getattr(layer.times[phase], statistic) for layer in self.layers)


@dataclass
class ModelProfile:
    """Every method on one model and batch, and the yardsticks of :data:`YARDSTICKS`."""

    batch_size: int
    fisher_batch_size: int
    yardsticks: dict[str, Timing]
    methods: list[MethodCost]

    def method(self, name: str) -> MethodCost | None:
        return next((cost for cost in self.methods if cost.method == name), None)


@dataclass
class CostPoint:
    width: int  # d: the layer is (d × (d + 1)) with the bias column
    fisher_batch: int  # m
    profile: ModelProfile


@dataclass(frozen=True)
class AxisFit:
    """Exponent of one variable: the slope for each value of the other variable (``per_other``), their
    mean ``fitted`` (= the joint least-squares fit ``log t = c + a log d + b log m`` on a full grid),
    Table 1's (``paper``) and the effective exponent of :func:`modelled_cost` on the grid (``model``)."""

    fitted: float
    per_other: dict[int, float]
    paper: float
    model: float


@dataclass(frozen=True)
class ExponentFit:
    method: str
    phase: str
    paper_order: str
    model_order: str
    d: AxisFit | None  # None with a single width
    m: AxisFit | None  # None with a single Fisher batch
    dominant: bool  # the method's slowest steady phase at the largest (d, m)
    within_tolerance: bool | None  # |fitted − model| ≤ EXPONENT_TOLERANCE on every fitted axis; None: no axis


@dataclass
class DatasetCost:
    dataset: str
    layers: tuple[int, ...]
    environment: dict[str, Any]
    profile: ModelProfile
    exponents: list[ExponentFit] = field(default_factory=list)  # fits need a sweep

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "dataset", **asdict(self)}


@dataclass
class SweepCost:
    widths: list[int]
    fisher_batches: list[int]
    environment: dict[str, Any]
    points: list[CostPoint]
    exponents: list[ExponentFit]
    fit_statistic: str = FIT_STATISTIC

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "sweep", **asdict(self)}

    def point(self, width: int, fisher_batch: int) -> CostPoint:
        return next(p for p in self.points if p.width == width and p.fisher_batch == fisher_batch)
