"""The files of a comparison: Figure 2 (``figure2.png``), ``report.json`` and ``report.csv``."""

from __future__ import annotations

import csv
import io
from dataclasses import fields
from pathlib import Path

from fimbench.engines.comparison.results import (
    Comparison,
    GroupResult,
    MethodResult,
)
from fimbench.engines.rundir import (
    is_number,
)
from fimbench.files import atomic_write_json, atomic_write_text

FIGURE2_PANELS: tuple[tuple[str, str, str], ...] = (
    ("train_loss_per_pixel", "epoch", "train loss vs epoch"),
    ("train_loss_per_pixel", "wall_time", "train loss vs time"),
    ("val_loss_per_pixel", "epoch", "validation loss vs epoch"),
    ("val_loss_per_pixel", "wall_time", "validation loss vs time"),
)
"""(y, x, title) of each panel; curves are means over seeds with a min–max band, x the mean over seeds."""
_LINESTYLES = ("-", "--", ":", "-.")


def group_curve(group: GroupResult, y_key: str, x_key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """A group's curve over its counted seeds: at each epoch logged by every one, the mean of ``x_key`` (the
    epoch, or the training seconds), and the mean, min and max of ``y_key`` (positive values only)."""
    series = [[row for row in run.rows if is_number(row.get(y_key)) and row[y_key] > 0] for run in group.counted]
    length = min(len(rows) for rows in series)
    xs, means, lows, highs = [], [], [], []
    for index in range(length):
        ys = [rows[index][y_key] for rows in series]
        xs.append(sum(rows[index][x_key] for rows in series) / len(series))
        means.append(sum(ys) / len(ys))
        lows.append(min(ys))
        highs.append(max(ys))
    return xs, means, lows, highs


def write_figure2(comparison: Comparison, path: Path) -> None:
    """The paper's Figure 2: one row per dataset, four panels (FIGURE2_PANELS), log-scale loss per pixel;
    each group's mean curve over its seeds with a min–max band (:func:`group_curve`)."""
    from matplotlib.ticker import MaxNLocator  # matplotlib only where a figure is drawn, not in sweep workers

    from fimbench.engines.plots import METHOD_LABELS, method_color, new_figure, save_png

    figure, axes = new_figure(len(comparison.datasets), len(FIGURE2_PANELS))
    for row_index, dataset in enumerate(comparison.datasets):
        methods = [group.method for group in dataset.groups]
        for column, (y_key, x_key, title) in enumerate(FIGURE2_PANELS):
            ax = axes[row_index][column]
            seen: dict[str, int] = {}
            for group in dataset.groups:
                repeat = seen[group.method] = seen.get(group.method, -1) + 1
                label = METHOD_LABELS.get(group.method, group.method)
                if methods.count(group.method) > 1:
                    label = f"{label} ({group.name})"
                if len(group.counted) > 1:
                    label = f"{label}, {len(group.counted)} seeds"
                xs, means, lows, highs = group_curve(group, y_key, x_key)
                color = method_color(group.method)
                ax.plot(
                    xs, means, color=color, linestyle=_LINESTYLES[repeat % len(_LINESTYLES)],
                    marker="." if len(xs) < 30 else None, label=label,
                )
                if len(group.counted) > 1:
                    ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
            ax.set_yscale("log")
            if x_key == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch" if x_key == "epoch" else "time (s)")
            ax.set_ylabel("loss per pixel")
            ax.set_title(f"{dataset.dataset}: {title}")
            ax.grid(True, which="both", alpha=0.3)
        axes[row_index][0].legend(fontsize="small")
    save_png(figure, path)


def write_report_json(comparison: Comparison, path: Path) -> None:
    atomic_write_json(path, comparison.to_dict())


def write_csv(comparison: Comparison, path: Path) -> None:
    """One row per compared run, with the dataset's target."""
    columns = ["dataset", "target"] + [f.name for f in fields(MethodResult) if f.name not in ("dataset", "rows")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for dataset in comparison.datasets:
        for result in dataset.results:
            writer.writerow({"target": dataset.target, **result.to_dict()})
    atomic_write_text(path, buffer.getvalue())
