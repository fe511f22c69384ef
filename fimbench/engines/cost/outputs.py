"""The cost profile's run directory: ``cost.json`` and, for a sweep, ``cost.png``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.typing import LineStyleType

from fimbench.engines.cost.model import STEADY_PHASES, point_layer
from fimbench.engines.cost.results import DatasetCost, SweepCost
from fimbench.engines.plots import METHOD_COLORS, METHOD_LABELS, new_figure, save_png
from fimbench.files import atomic_write_json


def sweep_figure(sweep: SweepCost) -> Figure:
    """Log-log seconds (median, bars min–max) of every steady phase vs d (a line style per m) and vs m
    (a line style per d); one colour per method, the SGD step of the same layer and batch in black."""
    linestyles: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")
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
                    timings = [point_layer(point, name).times[phase] for point in points]
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


def write_outputs(result: DatasetCost | SweepCost, run_dir: Path) -> None:
    """``cost.json`` (everything, fits under ``exponents``) and, for a sweep, ``cost.png`` — atomically."""
    atomic_write_json(run_dir / "cost.json", result.to_dict())
    if isinstance(result, SweepCost):
        save_png(sweep_figure(result), run_dir / "cost.png")
