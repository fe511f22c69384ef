"""Figure 1 outputs: per-entry summaries, and the run directory's ``errors.csv``, ``summary.json`` and
``figure1.png``."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fimbench.engines.fisher_error.records import CSV_COLUMNS, Entry, ErrorRow, FisherErrorResult
from fimbench.engines.plots import method_color, new_figure, save_png
from fimbench.files import atomic_write_json, atomic_write_text
from fimbench.fisher.network_error import NETWORK
from fimbench.methods import REFERENCE_METHOD
from fimbench.preconditioner.two_level import CoarseSpace


@dataclass(frozen=True)
class EntrySummary:
    """Statistics of one entry over a run (all layers' blocks, one layer, or the ``network`` rows): median /
    mean / max of both errors (NaNs skipped), the fraction of measurements where it beats KFAC (``None`` for
    KFAC itself or without KFAC), mean iterations and seconds, and the paths its numbers came from. Over
    all layers, ``network_error1_median`` / ``_mean`` summarise the cross-layer Error 1 beside them."""

    method: str
    rank: int
    layer: int | str | None
    measurements: int
    error1_median: float
    error1_mean: float
    error1_max: float
    error2_median: float
    error2_mean: float
    error2_max: float
    beats_kfac_error1: float | None
    beats_kfac_error2: float | None
    iterations_mean: float
    seconds_mean: float
    paths: str
    network_error1_median: float | None = None
    network_error1_mean: float | None = None


def _stats(values: list[float]) -> tuple[float, float, float]:
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.median(finite), statistics.fmean(finite), max(finite)


def summarise(result: FisherErrorResult, by_layer: bool = False) -> list[EntrySummary]:
    """One :class:`EntrySummary` per entry (over all layers' blocks, with the network error beside), or per
    (layer, entry) with ``by_layer``, the ``network`` rows last as a layer of their own."""
    kfac = {(row.iteration, row.layer): row for row in result.rows if row.method == REFERENCE_METHOD.value}
    layers: list[int | str] = [*result.layers, NETWORK]
    groups = [(layer, entry) for layer in layers for entry in result.entries] if by_layer else [
        (None, entry) for entry in result.entries
    ]
    summaries = []
    for layer, entry in groups:
        rows = [
            row
            for row in result.rows
            if row.method == entry.name and row.rank == entry.rank and (row.layer == layer or layer is None and row.layer != NETWORK)
        ]
        network = [
            row.error1 for row in result.rows if row.method == entry.name and row.rank == entry.rank and row.layer == NETWORK
        ] if layer is None else []
        if not rows and not network:
            continue
        compared = [] if entry.name == REFERENCE_METHOD.value else [
            (row, kfac[(row.iteration, row.layer)]) for row in rows if (row.iteration, row.layer) in kfac
        ]
        e1, e2 = _stats([row.error1 for row in rows]), _stats([row.error2 for row in rows])
        summaries.append(
            EntrySummary(
                method=entry.name,
                rank=entry.rank,
                layer=layer,
                measurements=len(rows) or len(network),
                error1_median=e1[0],
                error1_mean=e1[1],
                error1_max=e1[2],
                error2_median=e2[0],
                error2_mean=e2[1],
                error2_max=e2[2],
                beats_kfac_error1=statistics.fmean(row.error1 < base.error1 for row, base in compared) if compared else None,
                beats_kfac_error2=statistics.fmean(row.error2 < base.error2 for row, base in compared) if compared else None,
                iterations_mean=statistics.fmean(row.iterations for row in rows) if rows else math.nan,
                seconds_mean=statistics.fmean(row.seconds for row in rows) if rows else math.nan,
                paths=",".join(sorted({row.path for row in rows})),
                network_error1_median=_stats(network)[0] if network else None,
                network_error1_mean=_stats(network)[1] if network else None,
            )
        )
    return summaries


def errors_csv(rows: list[ErrorRow]) -> str:
    """``errors.csv``: one row per iteration × layer × method (× Lanczos rank), columns ``CSV_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([repr(value) if isinstance(value, float) else value for value in (getattr(row, name) for name in CSV_COLUMNS)])
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def summary_json(result: FisherErrorResult) -> dict[str, Any]:
    """``summary.json``: the run's settings and environment, per-entry and per-layer summaries, losses."""
    return _json_safe(
        {
            **result.info,
            "layer_shapes": {str(layer): {"p": p, "q": q, "block_size": p * q} for layer, (p, q) in result.layer_shapes.items()},
            "measurements": len({row.iteration for row in result.rows}),
            "summary": [asdict(summary) for summary in summarise(result)],
            "summary_by_layer": [asdict(summary) for summary in summarise(result, by_layer=True)],
            "training_loss": [{"iteration": iteration, "loss": loss} for iteration, loss in result.losses],
            "loss_convention": "per-example negative log-likelihood summed over pixels, mean over the batch",
            "errors": "error1 = ‖F − F̂‖_F/‖F‖_F, error2 = ‖spec(F) − spec(F̂)‖₂/‖spec(F)‖₂ (paper §4.1); "
            "path = error1 path/error2 path (gram, kron, dense, lanczos; see fimbench.fisher.block_errors; exact: the exact "
            "block itself); layer 'network': error1 of the multi-layer Fisher over the chosen layers "
            "(fimbench.fisher.network_error)",
        }
    )


FIGURE_PANEL = (5.0, 3.6)  # inches per panel (plots.new_figure)
ROWS_PER_LAYER_MAX = 4  # up to this many layers: one row (Error 1 | Error 2) per layer
GRID_COLUMNS = 4  # more layers: a grid of Error 1 panels above a grid of Error 2 panels


def figure_layout(layers: int) -> tuple[int, int]:
    """(rows, columns) of ``figure1.png`` for ``layers`` plotted layers."""
    if layers <= ROWS_PER_LAYER_MAX:
        return layers, 2
    return 2 * math.ceil(layers / GRID_COLUMNS), GRID_COLUMNS


def _panel(index: int, metric: int, layers: int) -> tuple[int, int]:
    """Grid position of layer ``index``'s Error ``metric + 1`` panel."""
    if layers <= ROWS_PER_LAYER_MAX:
        return index, metric
    block = math.ceil(layers / GRID_COLUMNS)
    return metric * block + index // GRID_COLUMNS, index % GRID_COLUMNS


def _line_style(entry: Entry) -> str:
    """Solid at the method's own rank; Lanczos at other ranks dotted (r = 1) or dashed (r > its 2)."""
    if entry.rank == entry.method.rank:
        return "-"
    return ":" if entry.rank == 1 else "--"


def plot_figure1(result: FisherErrorResult, path: Path) -> None:
    """Error 1 and Error 2 against iteration, one line per entry, in the layout of the paper's Figure 1,
    and last the network panel: the cross-layer Error 1 over the chosen layers (its Error 2 panel is empty).

    Like the paper's MNIST panel, an axis whose errors exceed 1 is clipped to [0, 1] (and says so).
    """
    panels: list[int | str] = [*result.layers, NETWORK] if any(r.layer == NETWORK for r in result.rows) else list(result.layers)
    count = len(panels)
    rows, columns = figure_layout(count)
    figure, axes = new_figure(rows, columns, *FIGURE_PANEL)
    for index, layer in enumerate(panels):
        for metric, name in enumerate(("Error 1", "Error 2")):
            row, column = _panel(index, metric, count)
            if layer == NETWORK and metric == 1:
                axes[row][column].set_visible(False)
                continue
            ax = axes[row][column]
            peak = 0.0
            for entry in result.entries:
                selected = [r for r in result.rows if r.layer == layer and r.method == entry.name and r.rank == entry.rank]
                if not selected:
                    continue  # a two-level entry has the network panel only
                values = [r.error2 if metric else r.error1 for r in selected]
                peak = max([peak] + [value for value in values if math.isfinite(value)])
                ax.plot(
                    [r.iteration for r in selected],
                    values,
                    _line_style(entry) if entry.coarse == CoarseSpace.NONE else "-.",
                    color=method_color(entry.method.value),
                    label=entry.label,
                    linewidth=1.4,
                    marker=entry.method.record.marker,  # Deflation's and Lanczos' curves coincide (eq. 5): markers keep both visible
                    markersize=4,
                    markevery=max(1, len(selected) // 12),
                    fillstyle="none",
                )
            clipped = peak > 1.0
            ax.set_ylim(0.0, 1.0 if clipped else max(1.05 * peak, 1e-12))
            if layer == NETWORK:
                heading = f"network ({len(result.layers)} layers): cross-layer {name}"
            else:
                p, q = result.layer_shapes[layer]  # type: ignore[index]
                heading = f"layer {layer} (p={p}, q={q}): {name}"
            ax.set_title(heading + (", clipped at 1" if clipped else ""), fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
    if count > ROWS_PER_LAYER_MAX:
        for index in range(count, math.ceil(count / GRID_COLUMNS) * GRID_COLUMNS):
            for metric in (0, 1):
                row, column = _panel(index, metric, count)
                axes[row][column].set_visible(False)
    axes[0][0].legend(fontsize=8, title=f"{result.dataset}, {result.info['optimizer']}", title_fontsize=8)
    save_png(figure, path)


def write_run(result: FisherErrorResult, run_dir: Path) -> dict[str, Path]:
    """Write ``errors.csv``, ``summary.json`` and ``figure1.png`` atomically; returns their paths."""
    paths = {name: Path(run_dir) / name for name in ("errors.csv", "summary.json", "figure1.png")}
    atomic_write_text(paths["errors.csv"], errors_csv(result.rows))
    atomic_write_json(paths["summary.json"], summary_json(result))
    plot_figure1(result, paths["figure1.png"])
    return paths
