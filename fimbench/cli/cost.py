"""``fimbench cost-profile``: the paper's Table 1 (App. C) measured — build F̂, invert it, apply F̂⁻¹∇h."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from fimbench.cli.common import console, split_list, user_errors
from fimbench.cli.options import DatasetName, dataset_value, json_option, methods_option, quiet_option, run_directory
from fimbench.cli.output import current, with_output
from fimbench.cli.parsers import parse_methods
from fimbench.errors import FimbenchError

if TYPE_CHECKING:
    from fimbench.cost import AxisFit, DatasetCost, MethodCost, ModelProfile, SweepCost, Timing
    from fimbench.curvature import Method

DEFAULT_WIDTHS = "128,256,512,1024"
DEFAULT_BATCHES = "64,256,1024"
PHASE_HEADERS: dict[str, str] = {
    "build_cold": "F̂ build, cold",
    "build_warm": "F̂ build, warm",
    "inverse": "F̂⁻¹ inverse",
    "apply": "F̂⁻¹∇h apply",
}
NO_METHOD = "no method to profile; pass --methods all or a list such as kfac,deflation"
LEGEND = (
    "median seconds; ×KFAC: ratio to KFAC's same phase; ×SGD: ratio to one SGD step (forward, backward, "
    "momentum step) of the same model and batch. Build and inverse run every T1 / T2 steps, apply every step."
)


def parse_sizes(text: str, option: str) -> list[int]:
    """``"128,256"`` -> ``[128, 256]``; every entry must be a positive integer."""
    sizes: list[int] = []
    for item in split_list(text):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1:
            raise FimbenchError(f"{option} takes positive integers, got '{item}'")
        sizes.append(value)
    if not sizes:
        raise FimbenchError(f"{option} needs at least one positive integer")
    return sizes


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _spread(timing: Timing) -> str:
    return f"{format_seconds(timing.median)} ({format_seconds(timing.low)}–{format_seconds(timing.high)})"


def _ratio_cell(seconds: float, kfac: float | None, sgd: float) -> str:
    """Seconds, then the ratios to KFAC (when profiled) and to the SGD step, one per line."""
    versus_kfac = [f"×{seconds / kfac:.3g} KFAC"] if kfac else []
    return "\n".join([format_seconds(seconds), *versus_kfac, f"×{seconds / sgd:.2g} SGD"])


def _iterations(cost: MethodCost) -> str:
    """Mean k over layers, cold → warm (power-SVD iterations, or Lanczos products, in pairs)."""
    if cost.layers[0].iterations_cold is None:
        return "–"
    cold = sum(layer.iterations_cold or 0 for layer in cost.layers) / len(cost.layers)
    warm = sum(layer.iterations_warm or 0 for layer in cost.layers) / len(cost.layers)
    return f"{cold:.3g} → {warm:.3g}"


def _method_rows(profile: ModelProfile, phases: dict[str, str]) -> list[list[str]]:
    """One row per method: k, each phase summed over layers and the precondition step, with ratios."""
    from fimbench.curvature import Method
    from fimbench.plots import METHOD_LABELS

    kfac = profile.method(Method.KFAC.value)
    sgd = profile.yardsticks["sgd_step"].median
    rows: list[list[str]] = []
    for cost in profile.methods:
        cells = [_ratio_cell(cost.total(phase), kfac.total(phase) if kfac else None, sgd) for phase in phases]
        step = _ratio_cell(cost.precondition.median, kfac.precondition.median if kfac else None, sgd)
        rows.append([METHOD_LABELS[cost.method], _iterations(cost), *cells, step])
    return rows


def _yardstick_line(profile: ModelProfile) -> str:
    y = profile.yardsticks
    return (
        f"yardsticks: forward+backward {_spread(y['forward_backward'])}, SGD step {_spread(y['sgd_step'])}, "
        f"capture (ā, g) on the Fisher batch {_spread(y['capture'])}"
    )


def dataset_tables(result: DatasetCost) -> list[Table]:
    """Table 1's layout for the whole model (Σ over layers) and a per-layer table with spreads."""
    from fimbench.plots import METHOD_LABELS

    profile, env = result.profile, result.environment
    layers = len(result.layers) - 1
    summary = Table(
        title=f"Table 1, measured — {result.dataset} autoencoder ({layers} layers), batch {profile.batch_size}, "
        f"Fisher batch {profile.fisher_batch_size} — {env['device']}, {env['repeats']} repeats",
        caption=f"{_yardstick_line(profile)}\nΣ over layers of per-layer medians; {LEGEND}",
        header_style="bold",
    )
    for header in ["method", "k cold → warm", *PHASE_HEADERS.values(), "precondition step"]:
        summary.add_column(header, justify="right" if header != "method" else "left")
    for row in _method_rows(profile, PHASE_HEADERS):
        summary.add_row(*row)

    per_layer = Table(title="per layer: median (min–max)", header_style="bold")
    for header in ["layer", "method", "k cold → warm", *PHASE_HEADERS.values()]:
        per_layer.add_column(header, justify="right" if header not in ("layer", "method") else "left")
    for index in range(layers):
        for position, cost in enumerate(profile.methods):
            layer = cost.layers[index]
            name = f"{index + 1}: {layer.q}×{layer.p}" if position == 0 else ""
            k = "–" if layer.iterations_cold is None else f"{layer.iterations_cold} → {layer.iterations_warm}"
            per_layer.add_row(
                name, METHOD_LABELS[cost.method], k, *(_spread(layer.times[phase]) for phase in PHASE_HEADERS),
                end_section=position == len(profile.methods) - 1,
            )
    return [summary, per_layer]


def _axis_cells(axis: AxisFit | None) -> list[str]:
    """Fitted exponent of one variable, the range of its per-value slopes, the paper's and the model's."""
    if axis is None:
        return ["–"] * 4
    slopes = axis.per_other.values()
    spread = f"{min(slopes):.2f}…{max(slopes):.2f}" if len(slopes) > 1 else ""
    return [f"{axis.fitted:.2f}", spread, f"{axis.paper:g}", f"{axis.model:.2f}"]


def sweep_tables(result: SweepCost) -> list[Table]:
    """A compact per-(d, m) view in Table 1's layout, and the fitted exponents beside the predictions."""
    from fimbench.cost import EXPONENT_TOLERANCE, PHASES, STEADY_PHASES
    from fimbench.plots import METHOD_LABELS

    steady_phases = {phase: PHASE_HEADERS[phase] for phase in STEADY_PHASES}  # cold builds: in cost.json
    env = result.environment
    sample = result.points[0].profile
    points = Table(
        title=f"Table 1, measured — one layer Linear(d, d), Fisher batch m (batch "
        f"{sample.batch_size / sample.fisher_batch_size:g}m) — {env['device']}, "
        f"{env['repeats']} repeats",
        caption=LEGEND,
        header_style="bold",
    )
    for header in ["d", "m", "method", "k cold → warm", *steady_phases.values(), "precondition step", "SGD step"]:
        points.add_column(header, justify="left" if header == "method" else "right")
    for point in result.points:
        rows = _method_rows(point.profile, steady_phases)
        sgd = format_seconds(point.profile.yardsticks["sgd_step"].median)
        for position, row in enumerate(rows):
            first = position == 0
            key = [str(point.width), str(point.fisher_batch)] if first else ["", ""]
            points.add_row(*key, *row, sgd if first else "", end_section=position == len(rows) - 1)

    exponents = Table(
        title=f"fitted exponents of cost (fastest repeat) vs d and vs m; ★ = the method's dominant phase, "
        f"✓ = within ±{EXPONENT_TOLERANCE} of fimbench's modelled exponent",
        caption="fitted: mean slope over the other variable (range: its per-value slopes); paper: Table 1; "
        "model: effective exponent of fimbench's multiply-add count on the same grid (orders below)",
        header_style="bold",
    )
    exponents.add_column("method")
    exponents.add_column("phase")
    for header in ["d: fitted", "range", "paper", "model", "m: fitted", "range", "paper", "model", "check"]:
        exponents.add_column(header, justify="right")
    for fit in result.exponents:
        check = "–" if fit.within_tolerance is None else ("✓" if fit.within_tolerance else "✗")
        exponents.add_row(
            METHOD_LABELS[fit.method] if fit.phase == PHASES[0] else "",
            ("★ " if fit.dominant else "") + fit.phase.replace("_", " "),
            *_axis_cells(fit.d),
            *_axis_cells(fit.m),
            check,
            end_section=fit.phase == PHASES[-1],
        )

    orders = Table(
        title="predicted orders per layer (d = width, m = Fisher batch, k = iterations)",
        caption="inverse ∝ d³ (model p³ + q³) and apply ∝ d³ (model r·pq(p+q)) for every method; fimbench's "
        "power SVD / Lanczos run in Gram coordinates (O(m²d + md²) build); p = d + 1, q = d, r₀ = prior rank, "
        "n = m + r₀",
        header_style="bold",
    )
    for header in ["method", "build: paper (Table 1)", "build: fimbench model"]:
        orders.add_column(header)
    for fit in result.exponents:
        if fit.phase == "build_warm":
            orders.add_row(METHOD_LABELS[fit.method], fit.paper_order, fit.model_order)
    return [points, exponents, orders]


def write_outputs(result: DatasetCost | SweepCost, run_dir: Path) -> None:
    """``cost.json`` (everything, fits under ``exponents``) and, for a sweep, ``cost.png`` — atomically."""
    from fimbench.cost import SweepCost, sweep_figure
    from fimbench.io import atomic_write_json
    from fimbench.plots import save_png

    atomic_write_json(run_dir / "cost.json", result.to_dict())
    if isinstance(result, SweepCost):
        save_png(sweep_figure(result), run_dir / "cost.png")


def _default_out() -> Path:
    return Path("runs") / f"cost-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@user_errors
@with_output
def cost_profile(
    dataset: Optional[DatasetName] = typer.Option(
        None, "--dataset", "-d", help="Profile every layer of this dataset's App. D autoencoder (random inputs: no data needed).",
        case_sensitive=False,
    ),
    widths: Optional[str] = typer.Option(None, help=f"Sweep: layer widths d (default {DEFAULT_WIDTHS})."),
    batches: Optional[str] = typer.Option(None, help=f"Sweep: Fisher batch sizes m (default {DEFAULT_BATCHES})."),
    methods: str = methods_option("all", "all, or a comma-separated list of Kronecker methods."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    repeats: int = typer.Option(5, help="Timed repeats of every measurement (after one warm-up call)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/cost-<time>)."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="With --dataset: a YAML config overriding the preset (e.g. configs/curves-conv.yaml)."
    ),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Measure the cost of building, inverting and applying each Kronecker approximation (Table 1).

    Example: fimbench cost-profile --widths 128,256,512 --batches 64,256
    """
    from fimbench.cost import DatasetCost, profile_dataset, profile_sweep
    from fimbench.setup import resolve_device

    if dataset is not None and (widths is not None or batches is not None):
        raise FimbenchError("choose either --dataset or --widths/--batches, not both")
    if config is not None and dataset is None:
        raise FimbenchError("--config needs --dataset (the sweep profiles synthetic layers)")
    chosen = parse_methods(split_list(methods), empty=NO_METHOD, repeats=True, allow_all=True)
    if repeats < 1:
        raise FimbenchError(f"--repeats must be at least 1, got {repeats}")
    grid: tuple[list[int], list[int]] = ([], []) if dataset is not None else (
        parse_sizes(widths or DEFAULT_WIDTHS, "--widths"), parse_sizes(batches or DEFAULT_BATCHES, "--batches")
    )
    target = resolve_device(device)
    run_dir = out or _default_out()
    output = current()
    result: DatasetCost | SweepCost
    with run_directory(run_dir):
        with console.status("profiling") if output.progress else nullcontext() as status:
            def progress(message: str) -> None:
                if status is not None:
                    status.update(f"profiling {message}")

            if dataset is not None:
                result = profile_dataset(str(dataset_value(dataset)), chosen, target, repeats, progress=progress, config=config)
            else:
                result = profile_sweep(*grid, chosen, target, repeats, progress=progress)
        write_outputs(result, run_dir)
    summary, *details = dataset_tables(result) if isinstance(result, DatasetCost) else sweep_tables(result)
    output.summary(summary)
    for table in details:
        output.note(table)
    output.note(f"results in [bold]{run_dir}[/bold]")
    output.document({"run_dir": str(run_dir), **result.to_dict()})
