"""Cost profile engine: the paper's Table 1 (App. C), measured on the code paths ``train`` runs.

Per method and per layer it times, with a :class:`KroneckerPreconditioner`'s own settings,

* ``build_cold`` / ``build_warm`` — ``F̂`` from the statistics ``(ā, g)`` of the Fisher sub-batch by
  :func:`fimbench.curvature.approximate`, incl. the power-SVD / Lanczos iterations (count k₁ / k₂):
  cold = the first update (no prior), warm = the steady state of training (EMA prior = the previous
  solution on another sub-batch, ρ = ``ema_decay``, warm-started from it), as in ``update_statistics``;
* ``inverse`` — :meth:`KroneckerSum.inverse`: the damped factorisation of ``refresh_inverses`` (§2.2, §3.4);
* ``apply`` — :meth:`KroneckerInverse.apply` on the layer's gradient, ``F̂⁻¹ ∇h``;

per model, the whole :meth:`KroneckerPreconditioner.precondition` step (every layer + KL clip), and the
yardsticks: forward + backward of the batch, one SGD step (forward, backward, momentum step) and the
capture pass of the true Fisher (targets sampled from the model). Each figure is the median and spread of
``repeats`` device-synchronised calls after a warm-up (:func:`fimbench.timing.measure`).

Predicted orders per layer of width d with Fisher batch m (Table 1, ℓ = 1): build ``2md²`` (KFAC),
``4k₁md²`` (KPSVD; + ``2md²`` for Deflation / KFAC-corrected; Lanczos ``4k₂md² + K³ + 2Kd²``); inverse and
apply ``d³``. fimbench runs power SVD and Lanczos in Gram coordinates (curvature/rearranged.py): the
Gram matrices cost ``m²(p + q)``, ‖Z‖_F ``2n³`` and an iteration ``O(n²)`` with ``n = m + r₀`` (r₀ = prior
rank), and every Kronecker factor ``MAT(Φx)`` or prior quadratic form one ``O(m d²)`` weighted Gram — a
build of ``O(m²d + md²)``, not ``O(k m d²)``. :func:`modelled_cost` counts these multiply-adds; the sweep's
fitted exponents are printed beside the paper's and beside the effective exponents of that count on the
same grid, which is the prediction they are checked against. Exponents are fitted to the fastest repeat
(:data:`FIT_STATISTIC`): contention on a shared host only ever adds time; tables report the median.
"""

from __future__ import annotations

import copy
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from fimbench import __version__
from fimbench.capture import KroneckerLayer, capture_statistics, kronecker_layers, set_weight_gradient, weight_gradient
from fimbench.config import OptimizerConfig, load_config
from fimbench.curvature import KroneckerSum, Method, approximate
from fimbench.errors import FimbenchError
from fimbench.models import ARCHITECTURES, Architecture, Autoencoder, ConvAutoencoder, Likelihood, build_model
from fimbench.names import DATASETS
from fimbench.optim import KroneckerPreconditioner
from fimbench.plots import METHOD_COLORS, METHOD_LABELS, new_figure
from fimbench.timing import measure
from fimbench.setup import device_description, resolve_architecture

COST_DATASETS: tuple[str, ...] = DATASETS  # every dataset: a profile needs only its architecture
PHASES: tuple[str, ...] = ("build_cold", "build_warm", "inverse", "apply")
STEADY_PHASES: tuple[str, ...] = ("build_warm", "inverse", "apply")  # what training repeats every T1 / T2 / step
YARDSTICKS: tuple[str, ...] = ("forward_backward", "sgd_step", "capture")
EXPONENT_TOLERANCE = 0.5  # |fitted − predicted| accepted for the dominant phase
FIT_STATISTIC = "low"  # exponents are fitted to the fastest repeat: contention on a shared host only adds time
SWEEP_LIKELIHOOD = Likelihood.GAUSSIAN  # synthetic layers: g = ∂ℓ/∂s of N(s, I) with sampled targets

Progress = Callable[[str], None]

# Table 1's build column per layer (ℓ = 1); inverse and apply are d³ for every method (paper_order).
# MODEL_BUILD: the formula :func:`modelled_cost` evaluates for fimbench's Gram-coordinate builds.
PAPER_BUILD: dict[Method, str] = {
    Method.KFAC: "2md²",
    Method.KPSVD: "4k₁md²",
    Method.DEFLATION: "2md² + 4k₁md²",
    Method.LANCZOS: "4k₂md² + K³ + 2Kd²",
    Method.KFAC_CORRECTED: "2md² + 4k₁md²",
}
MODEL_BUILD: dict[Method, str] = {
    Method.KFAC: "m(p²+q²)",
    Method.KPSVD: "m²(p+q) + (1+r₀)m(p²+q²) + 2n³ + 8kn²",
    Method.DEFLATION: "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²",
    Method.LANCZOS: "m²(p+q) + (r+r₀)m(p²+q²) + 2n³ + 10kn²",
    Method.KFAC_CORRECTED: "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²",
}


def paper_order(method: Method, phase: str) -> tuple[str, float, float]:
    """Table 1's order for one layer: ``(formula, exponent of d, exponent of m)``."""
    if phase in ("build_cold", "build_warm"):
        return PAPER_BUILD[method], 2.0, 1.0
    constant = "2" if method.rank == 1 else ("c₁" if phase == "inverse" else "c₂")
    return f"{constant}d³", 3.0, 0.0


def model_order(method: Method, phase: str) -> str:
    """The multiply-add count of :func:`modelled_cost` as a formula."""
    if phase == "inverse":
        return "p³ + q³"
    if phase == "apply":
        return "pq(p+q)" if method.rank == 1 else "r·pq(p+q)"
    return MODEL_BUILD[method]


def modelled_cost(method: Method, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
    """Leading multiply-adds of fimbench's implementation of one phase for a (q × p) layer.

    ``rank``: Kronecker rank of the result (the warm prior has the same); ``iterations``: k of the run.
    Build: KFAC ``m(p² + q²)``; otherwise the Gram matrices ``m²(p + q)``, one weighted Gram
    ``m(p² + q²)`` per materialised pair, per prior term (its quadratic forms) and for KFAC-corrected's
    K-FAC factors, ``2n³`` for ‖Z‖_F and ``8n²`` (power SVD) or ``10n²`` (Lanczos, re-orthogonalised)
    per iteration, ``n = m + r₀``. Inverse: Cholesky / eigh of both factors ``p³ + q³``; apply:
    ``rank`` pairs of products ``G V A`` = ``pq(p + q)``.
    """
    if phase == "inverse":
        return float(p**3 + q**3)
    if phase == "apply":
        return float(rank * p * q * (p + q))
    weighted_gram = m * (p * p + q * q)
    if method is Method.KFAC:
        return float(weighted_gram)
    prior = rank if phase == "build_warm" else 0
    n = m + prior
    pairs = 1 if method in (Method.KPSVD, Method.KFAC_CORRECTED) else rank
    kfac_factors = 1 if method is Method.KFAC_CORRECTED else 0
    per_iteration = 10 if method is Method.LANCZOS else 8
    return float(
        m * m * (p + q) + (pairs + prior + kfac_factors) * weighted_gram + 2 * n**3 + per_iteration * iterations * n * n
    )


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
    def of(cls, samples: Sequence[float]) -> "Timing":
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
class SweepPoint:
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
    points: list[SweepPoint]
    exponents: list[ExponentFit]
    fit_statistic: str = FIT_STATISTIC

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "sweep", **asdict(self)}

    def point(self, width: int, fisher_batch: int) -> SweepPoint:
        return next(p for p in self.points if p.width == width and p.fisher_batch == fisher_batch)


def _environment(device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    return {
        "device": device_description(device),
        "device_type": device.type,
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
        "fimbench": __version__,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_common(methods: Sequence[Method], repeats: int) -> None:
    if not methods:
        raise FimbenchError("no method to profile; pass --methods all or a list such as kfac,deflation")
    if repeats < 1:
        raise FimbenchError(f"repeats must be at least 1, got {repeats}")


def _restore_gradients(layers: list[KroneckerLayer], gradients: list[Tensor]) -> None:
    for layer, gradient in zip(layers, gradients):
        set_weight_gradient(layer, gradient)


def _yardsticks(
    model: Autoencoder | ConvAutoencoder, inputs: Tensor, sgd: OptimizerConfig, fisher_batch: int, seed: int, repeats: int, warmup: int
) -> dict[str, Timing]:
    """Forward + backward (leaves the batch's gradient in ``model``), an SGD step on a copy, and capture."""
    device, likelihood = inputs.device, model.likelihood

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        likelihood.nll(model(inputs), inputs).mean().backward()

    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)

    def sgd_step() -> None:
        optimizer.zero_grad(set_to_none=False)
        likelihood.nll(twin(inputs), inputs).mean().backward()
        optimizer.step()

    generator = torch.Generator(device=device).manual_seed(seed)
    layers = kronecker_layers(model)
    capture = partial(capture_statistics, model, inputs[:fisher_batch], likelihood, layers, None, generator)
    times = {
        "sgd_step": Timing.of(measure(sgd_step, device, repeats, warmup)),
        "capture": Timing.of(measure(capture, device, repeats, warmup)),
        "forward_backward": Timing.of(measure(forward_backward, device, repeats, warmup)),  # last: leaves ∇h
    }
    return {name: times[name] for name in YARDSTICKS}


def profile_model(
    model: Autoencoder | ConvAutoencoder,
    inputs: Tensor,
    configs: dict[Method, OptimizerConfig],
    sgd: OptimizerConfig,
    repeats: int,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> ModelProfile:
    """Time every phase of every method on ``model`` with the batch ``inputs`` (module docstring).

    Statistics are captured on the Fisher sub-batch ``inputs[:m]`` (as ``update_statistics`` does) and,
    for the warm prior, on ``inputs[-m:]``; each method sees the same ones (same seed).
    """
    device = inputs.device
    layers = kronecker_layers(model)
    batch = inputs.shape[0]
    fractions = {config.fisher_fraction for config in configs.values()}
    if len(fractions) != 1:
        raise FimbenchError("every profiled method must use the same optimizer.fisher_fraction")
    fisher_batch = max(1, round(batch * fractions.pop()))
    yardsticks = _yardsticks(model, inputs, sgd, fisher_batch, seed, repeats, warmup)
    gradients = [weight_gradient(layer).clone() for layer in layers]
    costs: list[MethodCost] = []
    for method, config in configs.items():
        if progress is not None:
            progress(method.value)
        generator = torch.Generator(device=device).manual_seed(seed)
        preconditioner = KroneckerPreconditioner.from_config(model, model.likelihood, config, generator)
        current = capture_statistics(model, inputs[:fisher_batch], model.likelihood, layers, None, generator)
        previous = capture_statistics(model, inputs[-fisher_batch:], model.likelihood, layers, None, generator)
        options = preconditioner.options
        layer_costs: list[LayerCost] = []
        warm_results: list[KroneckerSum] = []
        for index, (now, before, gradient) in enumerate(zip(current, previous, gradients)):
            cold = partial(approximate, preconditioner.method, now.a, now.g, **options)
            prior = approximate(preconditioner.method, before.a, before.g, **options)
            warm = partial(
                approximate, preconditioner.method, now.a, now.g,
                prior=prior, decay=preconditioner.ema_decay, warm_start=prior, **options,
            )
            cold_result, warm_result = cold(), warm()
            invert = partial(warm_result.inverse, preconditioner.damping, preconditioner.min_curvature_ratio)
            apply = partial(invert().apply, gradient)
            calls = {"build_cold": cold, "build_warm": warm, "inverse": invert, "apply": apply}
            iterative = method is not Method.KFAC
            layer_costs.append(
                LayerCost(
                    index=index,
                    p=now.a.shape[-1],
                    q=now.g.shape[-1],
                    rank=warm_result.rank,
                    iterations_cold=cold_result.iterations if iterative else None,
                    iterations_warm=warm_result.iterations if iterative else None,
                    times={phase: Timing.of(measure(calls[phase], device, repeats, warmup)) for phase in PHASES},
                )
            )
            warm_results.append(warm_result)
        preconditioner.approximations = list(warm_results)
        preconditioner.refresh_inverses()
        restore = partial(_restore_gradients, layers, gradients)
        step = Timing.of(measure(preconditioner.precondition, device, repeats, warmup, setup=restore))
        restore()
        costs.append(MethodCost(method.value, asdict(config), layer_costs, step))
    return ModelProfile(batch, fisher_batch, yardsticks, costs)


def _random_inputs(batch: int, width: int, device: torch.device, seed: int) -> Tensor:
    """Pixels in [0, 1] of the benchmark's shape (valid Bernoulli targets; timing needs no real data)."""
    return torch.rand(batch, width, generator=torch.Generator().manual_seed(seed)).to(device)


def profile_dataset(
    dataset: str,
    methods: Sequence[Method],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    config: Path | None = None,
) -> DatasetCost:
    """Profile the App. D autoencoder of ``dataset`` at the benchmark's batch size with its preset settings.

    ``config`` (a YAML file, e.g. configs/curves-conv.yaml) overrides the preset: its model (such as
    ``model.architecture: conv``), batch size and per-method settings.
    """
    if dataset not in COST_DATASETS:
        raise FimbenchError(f"unknown dataset '{dataset}'; choose from {', '.join(COST_DATASETS)}")
    _check_common(methods, repeats)
    configs = {
        method: load_config(config, {"data.dataset": dataset, "optimizer.method": method.value}) for method in methods
    }
    sgd = load_config(config, {"data.dataset": dataset, "optimizer.method": Method.SGD.value})
    architecture = resolve_architecture(sgd, ARCHITECTURES[dataset].layers[0])
    model = build_model(architecture, seed).to(device)
    inputs = _random_inputs(sgd.training.batch_size, architecture.layers[0], device, seed)
    profile = profile_model(
        model,
        inputs,
        {method: config.optimizer for method, config in configs.items()},
        sgd.optimizer,
        repeats,
        warmup,
        seed,
        progress,
    )
    return DatasetCost(dataset, architecture.layers, _environment(device, repeats, warmup), profile)


def _slopes(x: Tensor, y: Tensor) -> Tensor:
    """Least-squares slopes of the columns of ``y`` against ``x`` (both already logarithms)."""
    centred = x - x.mean()
    return (centred.unsqueeze(1) * (y - y.mean(dim=0))).sum(dim=0) / centred.square().sum()


def fit_exponents(
    widths: Sequence[int], batches: Sequence[int], seconds: Tensor
) -> tuple[dict[int, float] | None, dict[int, float] | None]:
    """Slopes of ``log t`` vs ``log d`` for each m and vs ``log m`` for each d; ``seconds`` is (widths, batches).

    A variable with a single value has no slope (``None``).
    """
    log_t = torch.log(seconds.to(torch.float64))
    log_d = torch.log(torch.tensor(list(widths), dtype=torch.float64))
    log_m = torch.log(torch.tensor(list(batches), dtype=torch.float64))
    per_m = dict(zip(batches, _slopes(log_d, log_t).tolist())) if len(widths) > 1 else None
    per_d = dict(zip(widths, _slopes(log_m, log_t.transpose(0, 1)).tolist())) if len(batches) > 1 else None
    return per_m, per_d


def _axis(per: dict[int, float] | None, paper: float, model: dict[int, float] | None) -> AxisFit | None:
    if per is None or model is None:
        return None
    return AxisFit(sum(per.values()) / len(per), per, paper, sum(model.values()) / len(model))


def sweep_exponents(widths: Sequence[int], batches: Sequence[int], points: list[SweepPoint]) -> list[ExponentFit]:
    """Fitted (to :data:`FIT_STATISTIC`), paper and modelled exponents for every method and phase of a
    (widths × batches) sweep; the dominant phase is the slowest steady one at the largest (d, m)."""
    grid = {(point.width, point.fisher_batch): point for point in points}
    largest = grid[(max(widths), max(batches))].profile
    fits: list[ExponentFit] = []
    for cost in largest.methods:
        method = Method(cost.method)
        dominant = max(STEADY_PHASES, key=lambda phase: cost.total(phase, FIT_STATISTIC))
        for phase in PHASES:
            measured = torch.zeros(len(widths), len(batches), dtype=torch.float64)
            modelled = torch.zeros_like(measured)
            for i, d in enumerate(widths):
                for j, m in enumerate(batches):
                    layer = _layer(grid[(d, m)], cost.method)
                    iterations = layer.iterations_cold if phase == "build_cold" else layer.iterations_warm
                    measured[i, j] = getattr(layer.times[phase], FIT_STATISTIC)
                    modelled[i, j] = modelled_cost(method, phase, layer.p, layer.q, m, layer.rank, iterations or 0)
            fitted_d, fitted_m = fit_exponents(widths, batches, measured)
            model_d, model_m = fit_exponents(widths, batches, modelled)
            formula, paper_d, paper_m = paper_order(method, phase)
            axis_d, axis_m = _axis(fitted_d, paper_d, model_d), _axis(fitted_m, paper_m, model_m)
            axes = [axis for axis in (axis_d, axis_m) if axis is not None]
            within = all(abs(axis.fitted - axis.model) <= EXPONENT_TOLERANCE for axis in axes) if axes else None
            fits.append(ExponentFit(
                cost.method, phase, formula, model_order(method, phase), axis_d, axis_m, phase == dominant, within
            ))
    return fits


def _labelled(progress: Progress | None, width: int, fisher_batch: int) -> Progress | None:
    """``progress`` with the sweep point prefixed to every message."""
    if progress is None:
        return None
    return lambda message: progress(f"d={width} m={fisher_batch} {message}")


def profile_sweep(
    widths: Sequence[int],
    batches: Sequence[int],
    methods: Sequence[Method],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> SweepCost:
    """Profile one square layer ``Linear(d, d)`` (p = d + 1, q = d) per width d and Fisher batch m.

    The layer is a one-layer :class:`Autoencoder` with a Gaussian likelihood; its training batch is
    ``m / fisher_fraction`` (4m by default), so the yardsticks are the SGD step whose Fisher sub-batch is m.
    Settings are :class:`OptimizerConfig`'s defaults. Fits: :func:`sweep_exponents`.
    """
    _check_common(methods, repeats)
    if not widths or not batches:
        raise FimbenchError("the sweep needs at least one width and one Fisher batch size")
    for name, values in (("width", widths), ("batch", batches)):
        bad = [value for value in values if value < 1]
        if bad:
            raise FimbenchError(f"every {name} must be a positive integer, got {bad[0]}")
    widths, batches = sorted(set(widths)), sorted(set(batches))
    configs = {method: OptimizerConfig(method=method.value) for method in methods}
    sgd = OptimizerConfig(method=Method.SGD.value)
    points: list[SweepPoint] = []
    for d in widths:
        for m in batches:
            model = build_model(Architecture((d, d), SWEEP_LIKELIHOOD), seed).to(device)
            inputs = _random_inputs(round(m / sgd.fisher_fraction), d, device, seed)
            profile = profile_model(model, inputs, configs, sgd, repeats, warmup, seed, _labelled(progress, d, m))
            points.append(SweepPoint(d, m, profile))
    exponents = sweep_exponents(widths, batches, points)
    return SweepCost(list(widths), list(batches), _environment(device, repeats, warmup), points, exponents)


def _layer(point: SweepPoint, method: str) -> LayerCost:
    """The single layer of a sweep point's profile for ``method``."""
    cost = point.profile.method(method)
    if cost is None:
        raise FimbenchError(f"method '{method}' was not profiled at d={point.width}, m={point.fisher_batch}")
    return cost.layers[0]


def sweep_figure(sweep: SweepCost) -> Figure:
    """Log-log seconds (median, bars min–max) of every steady phase vs d (a line style per m) and vs m
    (a line style per d); one colour per method, the SGD step of the same layer and batch in black."""
    linestyles = ("-", "--", ":", "-.")
    rows = [("d", "width d", sweep.widths, sweep.fisher_batches, "m")]
    if len(sweep.fisher_batches) > 1:
        rows.append(("m", "Fisher batch m", sweep.fisher_batches, sweep.widths, "d"))
    names = [cost.method for cost in sweep.points[0].profile.methods]
    figure, axes = new_figure(len(rows), len(STEADY_PHASES))
    for row, (variable, label, xs, others, other_name) in enumerate(rows):
        for column, phase in enumerate(STEADY_PHASES):
            ax = axes[row][column]
            for style, other in enumerate(others):
                points = [sweep.point(x, other) if variable == "d" else sweep.point(other, x) for x in xs]
                dash = linestyles[style % len(linestyles)]
                for name in names:
                    timings = [_layer(point, name).times[phase] for point in points]
                    medians = [t.median for t in timings]
                    bars = [[t.median - t.low for t in timings], [t.high - t.median for t in timings]]
                    ax.errorbar(xs, medians, yerr=bars, linestyle=dash, marker="o", markersize=3, capsize=2,
                                color=METHOD_COLORS[name])
                ax.plot(xs, [point.profile.yardsticks["sgd_step"].median for point in points], dash,
                        color="black", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("seconds")
            ax.set_title(f"{phase.replace('_', ' ')} vs {variable}")
            ax.grid(True, which="both", alpha=0.3)
        handles = [Line2D([], [], color=METHOD_COLORS[name], marker="o", label=METHOD_LABELS[name]) for name in names]
        handles.append(Line2D([], [], color="black", linewidth=0.8, label="SGD step"))
        handles += [
            Line2D([], [], color="gray", linestyle=linestyles[i % len(linestyles)], label=f"{other_name}={other}")
            for i, other in enumerate(others)
        ]
        axes[row][0].legend(handles=handles, fontsize="x-small", ncol=2)
    return figure
