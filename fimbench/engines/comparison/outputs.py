"""The files of a comparison: Figure 2 (``figure2.png``), the performance profiles (``profile.png``),
``report.json`` and ``report.csv``; :func:`write_report` writes the first three into a report folder."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from fimbench.engines.comparison.results import (
    CLOCKS,
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
FIGURE2_FILE, PROFILE_FILE, REPORT_FILE = "figure2.png", "profile.png", "report.json"
"""The files of a report folder (:func:`write_report`)."""
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
    each group's mean curve over its seeds with a min–max band (:func:`group_curve`).

    Args:
        comparison: what :func:`~fimbench.engines.comparison.compare.compare` returned.
        path: the PNG file to write (``figure2.png``).
    """
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


def write_profile(comparison: Comparison, path: Path) -> bool:
    """The performance profiles (:mod:`~fimbench.engines.comparison.profiles`): one panel per clock (epochs, then
    training seconds to target), ρ(τ) of each solver as a step plot in its method's colour and marker (markers at
    its jumps), τ on a log axis from 1 to the clock's τ_max.

    Args:
        comparison: what :func:`~fimbench.engines.comparison.compare.compare` returned.
        path: the PNG file to write (``profile.png``).

    Returns:
        Whether it was written: False, and nothing written, when no dataset has a target (``comparison.profiles``
        is None).
    """
    profiles = comparison.profiles
    if profiles is None:
        return False
    from matplotlib.ticker import FormatStrFormatter

    from fimbench.engines.plots import METHOD_LABELS, method_color, method_marker, new_figure, save_png

    figure, axes = new_figure(1, len(CLOCKS), width=5.5)
    for ax, (clock, _, description) in zip(axes[0], CLOCKS):
        profile = profiles.clocks[clock]
        for index, solver in enumerate(profiles.solvers if profiles.problems else []):
            method = profiles.methods[solver]
            jumps = sorted({row[solver] for row in profile.ratios if 1.0 < row[solver] < profile.tau_max})
            xs = [1.0, *jumps, profile.tau_max]
            ax.step(
                xs, [profile.rho_at(solver, tau) for tau in xs], where="post", color=method_color(method),
                marker=method_marker(method), markersize=6, markevery=slice(0, len(xs) - 1), alpha=0.85, clip_on=False,
                linewidth=max(1.0, 2.6 - 0.3 * index),  # wider first: a later solver on the same steps stays visible
                label=METHOD_LABELS.get(method, method) + solver[len(method):],
            )
        if not profiles.problems:
            ax.text(0.5, 0.5, "no problem: no (dataset, seed) that every method ran", transform=ax.transAxes, ha="center")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlim(1.0, profile.tau_max)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel(f"τ: {clock} over the best method's on the problem")
        ax.set_ylabel("ρ(τ): fraction of problems")
        ax.set_title(f"{description} (τ_max = {profile.tau_max:g})")
        ax.grid(True, which="both", alpha=0.3)
    if profiles.problems:
        axes[0][0].legend(fontsize="small", loc="lower right")
    targets = "; ".join(f"{d.dataset} {d.target:.4g}" for d in comparison.datasets if d.target is not None)
    figure.suptitle(f"performance profiles over {len(profiles.problems)} problems (dataset, seed); target train loss/pixel: {targets}",
                    fontsize="medium")
    save_png(figure, path)
    return True


def write_report_json(comparison: Comparison, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """``comparison`` as one JSON document (:meth:`~fimbench.engines.comparison.results.Comparison.to_dict`).

    Args:
        comparison: what :func:`~fimbench.engines.comparison.compare.compare` returned.
        path: the file to write (``report.json``).
        extra: sections the comparison does not know, added at the top level (``reproduce``'s ``tuning``).
    """
    atomic_write_json(path, {**comparison.to_dict(), **(extra or {})})


def write_report(comparison: Comparison, folder: Path, extra: Mapping[str, Any] | None = None) -> list[Path]:
    """The report folder: ``figure2.png``, ``profile.png`` (when a dataset has a target) and ``report.json``.

    Args:
        comparison: what :func:`~fimbench.engines.comparison.compare.compare` returned.
        folder: the folder to write into (made if missing).
        extra: sections added to ``report.json`` (:func:`write_report_json`).

    Returns:
        The files written.
    """
    written = [folder / FIGURE2_FILE]
    write_figure2(comparison, written[0])
    if write_profile(comparison, folder / PROFILE_FILE):
        written.append(folder / PROFILE_FILE)
    written.append(folder / REPORT_FILE)
    write_report_json(comparison, written[-1], extra)
    return written


GROUP_COLUMNS: tuple[str, ...] = (
    "group", "group_target_reached", "group_epochs_to_target_mean", "group_epochs_to_target_sd",
    "group_seconds_to_target_mean", "group_seconds_to_target_sd",
)
"""The CSV's columns of each run's group of seeds: its name, how many counted seeds reached the target
(``2/3``), and the mean and sample sd of their epochs and seconds to target (the table's cells)."""


def _group_cells(group: GroupResult) -> dict[str, object]:
    cells: dict[str, object] = {"group": group.name, "group_target_reached": f"{len(group.reached)}/{len(group.counted)}"}
    for metric in ("epochs_to_target", "seconds_to_target"):
        stat = group.stats[metric]
        cells[f"group_{metric}_mean"], cells[f"group_{metric}_sd"] = (stat.mean, stat.sd) if stat is not None else (None, None)
    return cells


def write_csv(comparison: Comparison, path: Path) -> None:
    """One row per compared run, with the dataset's target and its group's to-target statistics (GROUP_COLUMNS).

    Args:
        comparison: what :func:`~fimbench.engines.comparison.compare.compare` returned.
        path: the CSV file to write.
    """
    columns = ["dataset", "target"] + [f.name for f in fields(MethodResult) if f.name not in ("dataset", "rows")] + list(GROUP_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for dataset in comparison.datasets:
        group_of = {id(run): group for group in dataset.groups for run in group.runs}
        for result in dataset.results:
            writer.writerow({"target": dataset.target, **result.to_dict(), **_group_cells(group_of[id(result)])})
    atomic_write_text(path, buffer.getvalue())
