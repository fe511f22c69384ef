"""Figure 1 outputs: per-entry summaries, and the run directory's ``errors.csv``, ``summary.json`` and
``figure1.png``."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fimbench.engines.fisher_error.records import CSV_COLUMNS, MEASURES, Entry, ErrorRow, FisherErrorResult
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
    all layers, ``network_error1_median`` / ``_mean`` summarise the cross-layer Error 1 beside them.
    ``measures_median``: the median of each damped measure (``kl_forward`` …) over the same rows, and over all
    layers ``network_measures_median`` that of the network rows."""

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
    measures_median: dict[str, float] = field(default_factory=dict)
    network_measures_median: dict[str, float] | None = None


def _medians(rows: list[ErrorRow]) -> dict[str, float]:
    """The median of each damped measure over ``rows`` (NaNs skipped)."""
    return {name: _stats([getattr(row, name) for row in rows])[0] for name in MEASURES}


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
        network_rows = [
            row for row in result.rows if row.method == entry.name and row.rank == entry.rank and row.layer == NETWORK
        ] if layer is None else []
        network = [row.error1 for row in network_rows]
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
                measures_median=_medians(rows),
                network_measures_median=_medians(network_rows) if network_rows else None,
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
            "measures": "kl_forward = KL(N(0, F̂_λ) ‖ N(0, F_λ)), kl_reverse = KL(N(0, F_λ) ‖ N(0, F̂_λ)) in nats, F̂_λ damped as "
            "its preconditioner damps it; direction_error = ‖F̂_λ⁻¹∇ − F_λ⁻¹∇‖/‖F_λ⁻¹∇‖ and direction_cosine for the batch's "
            "gradient ∇; subspace_alignment = mean cos² of the principal angles between the top-k eigenspaces of F and F̂ "
            "(fimbench.fisher.damped_measures; λ: the training method's current damping, else the configured one)",
        }
    )


FIGURE_PANEL = (3.6, 2.6)  # inches per panel (plots.new_figure)
FIGURE_METRICS = (("error1", "Error 1"), ("error2", "Error 2"), *((name, name) for name in MEASURES))
"""The columns of ``figure1.png``: the paper's two errors, then the damped measures."""
LOG_SCALE = ("kl_forward", "kl_reverse")
"""Columns drawn on a log axis (divergences span decades between methods)."""


def figure_layout(panels: int) -> tuple[int, int]:
    """(rows, columns) of ``figure1.png`` for ``panels`` rows of panels (the layers, then the network)."""
    return panels, len(FIGURE_METRICS)


def _line_style(entry: Entry) -> str:
    """Solid at the method's own rank; Lanczos at other ranks dotted (r = 1) or dashed (r > its 2)."""
    if entry.rank == entry.method.rank:
        return "-"
    return ":" if entry.rank == 1 else "--"


def plot_figure1(result: FisherErrorResult, path: Path) -> None:
    """Every metric against iteration, one row of panels per layer and last the network's (the cross-layer
    errors over the chosen layers; its Error 2 panel is empty), one line per entry: Error 1 and Error 2 in
    the layout of the paper's Figure 1, then the damped measures (KL on a log axis).

    Like the paper's MNIST panel, an Error 1 / Error 2 axis whose errors exceed 1 is clipped to [0, 1] (and says so).
    """
    panels: list[int | str] = [*result.layers, NETWORK] if any(r.layer == NETWORK for r in result.rows) else list(result.layers)
    rows, columns = figure_layout(len(panels))
    figure, axes = new_figure(rows, columns, *FIGURE_PANEL)
    for row, layer in enumerate(panels):
        for column, (metric, name) in enumerate(FIGURE_METRICS):
            ax = axes[row][column]
            if layer == NETWORK and metric == "error2":
                ax.set_visible(False)
                continue
            peak = 0.0
            for entry in result.entries:
                selected = [r for r in result.rows if r.layer == layer and r.method == entry.name and r.rank == entry.rank]
                values = [getattr(r, metric) for r in selected]
                if not any(math.isfinite(value) for value in values):
                    continue  # a two-level entry has the network's Error 1 only
                peak = max([peak] + [value for value in values if math.isfinite(value)])
                ax.plot(
                    [r.iteration for r in selected],
                    values,
                    _line_style(entry) if entry.coarse == CoarseSpace.NONE else "-.",
                    color=method_color(entry.method.value),
                    label=entry.label,
                    linewidth=1.2,
                    marker=entry.method.record.marker,  # Deflation's and Lanczos' curves coincide (eq. 5): markers keep both visible
                    markersize=3,
                    markevery=max(1, len(selected) // 12),
                    fillstyle="none",
                )
            clipped = metric in ("error1", "error2") and peak > 1.0
            if metric in LOG_SCALE:
                ax.set_yscale("symlog", linthresh=1e-3)
            elif metric in ("error1", "error2"):
                ax.set_ylim(0.0, 1.0 if clipped else max(1.05 * peak, 1e-12))
            if layer == NETWORK:
                heading = f"network ({len(result.layers)} layers): {name}"
            else:
                p, q = result.layer_shapes[layer]  # type: ignore[index]
                heading = f"layer {layer} (p={p}, q={q}): {name}"
            ax.set_title(heading + (", clipped at 1" if clipped else ""), fontsize=8)
            ax.set_xlabel("iteration", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title=f"{result.dataset}, {result.info['optimizer']}", title_fontsize=7)
    save_png(figure, path)


def write_run(result: FisherErrorResult, run_dir: Path) -> dict[str, Path]:
    """Write ``errors.csv``, ``summary.json`` and ``figure1.png`` atomically; returns their paths."""
    paths = {name: Path(run_dir) / name for name in ("errors.csv", "summary.json", "figure1.png")}
    atomic_write_text(paths["errors.csv"], errors_csv(result.rows))
    atomic_write_json(paths["summary.json"], summary_json(result))
    plot_figure1(result, paths["figure1.png"])
    return paths
