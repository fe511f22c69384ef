"""Comparison engine (paper §4.2, Figure 2): read run and sweep directories, compare methods per dataset.

Run and sweep directories are read by :mod:`fimbench.engines.rundir`. Losses here are the paper's: per pixel (the
authors' mean BCE / MSE, ``*_loss_per_pixel`` in ``metrics.jsonl``), so the numbers read like the paper's (docs/design.md §3).

A run without ``summary.json`` (still running, or killed) is shown with status ``incomplete``. Nothing
here prints.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fimbench.engines.rundir import (
    SWEEP_MANIFEST,
    RunRecord,
    best_group,
    group_key,
    group_runs,
    is_number,
    is_run_dir,
    read_run,
    sweep_points,
)
from fimbench.engines.significance import CONFIDENCE, TEST_NAME, Spread, spread, welch_difference
from fimbench.errors import FimbenchError
from fimbench.files import atomic_write_json, atomic_write_text
from fimbench.methods import Method

# ----------------------------------------------------------------------------------------------- comparison


@dataclass
class MethodResult:
    """One line of the comparison: a run (the best point of a sweep, or a run directory given)."""

    dataset: str
    method: str
    run: str  # run directory name
    path: str
    status: str
    device: str
    epochs: int
    final_train_loss: float | None  # per pixel, the paper's unit (docs/design.md §3)
    best_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    final_train_objective: float | None  # fimbench's objective: per-example NLL summed over pixels
    final_val_objective: float | None
    final_train_reconstruction_error: float | None
    final_val_reconstruction_error: float | None
    wall_time: float | None  # training seconds (evaluation excluded), as logged
    time_per_epoch: float | None
    alignment: float | None  # cos(F̃⁻¹∇, ∇) at the last refresh (Kronecker methods; 1.0 = the SGD direction)
    correction_scale: float | None  # smallest safeguard τ over layers at the last refresh (rank-2 methods)
    epochs_to_target: int | None = None
    seconds_to_target: float | None = None
    speedup_vs_kfac: float | None = None  # KFAC's seconds-to-target / this run's
    speedup_vs_adam: float | None = None
    seed: int | None = None
    group: str = field(default="", repr=False)  # fimbench.engines.rundir.group_key: equal for runs differing only in the seed
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # for the figure only

    def to_dict(self) -> dict[str, Any]:
        """Every scalar field (the curves and the group key are left out)."""
        return {key: value for key, value in asdict(self).items() if key not in ("rows", "group")}


GROUP_METRICS: tuple[str, ...] = (
    "final_train_loss",
    "best_train_loss",
    "final_val_loss",
    "best_val_loss",
    "epochs_to_target",
    "seconds_to_target",
    "time_per_epoch",
    "wall_time",
    "alignment",
    "correction_scale",
)
"""The per-run quantities a group aggregates over its seeds."""
_SEED_SUFFIX = re.compile(r"-?seed_\d+$")


@dataclass
class GroupResult:
    """The runs of one setting that differ only in the seed (:func:`fimbench.engines.rundir.group_key`)."""

    dataset: str
    method: str
    name: str  # the runs' name without the seed
    runs: list[MethodResult]  # one per seed, by seed
    stats: dict[str, Spread | None]  # GROUP_METRICS over the counted runs that have the value
    speedup_vs_kfac: float | None = None  # KFAC's fastest group's mean seconds-to-target / this group's
    speedup_vs_adam: float | None = None

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def counted(self) -> list[MethodResult]:
        """The runs the statistics and tests use: those that completed (a diverged, failed or unfinished
        seed ended at another epoch), or every run when none did."""
        return [run for run in self.runs if run.status == "completed"] or self.runs

    def values(self, metric: str, runs: Sequence[MethodResult] | None = None) -> list[float | None]:
        """``metric`` of each run (of ``runs``, by default every seed)."""
        return [getattr(run, metric) for run in (self.runs if runs is None else runs)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "name": self.name,
            "seeds": self.seeds,
            "runs": [run.path for run in self.runs],
            "statuses": [run.status for run in self.runs],
            "values": {metric: self.values(metric) for metric in GROUP_METRICS},
            "counted_seeds": [run.seed for run in self.counted],
            "stats": {metric: (stat.to_dict() if stat else None) for metric, stat in self.stats.items()},
            "speedup_vs_kfac": self.speedup_vs_kfac,
            "speedup_vs_adam": self.speedup_vs_adam,
        }


@dataclass
class GroupDifference:
    """``method − baseline`` in final train loss per pixel, with Welch's t interval (:mod:`fimbench.engines.significance`)."""

    dataset: str
    method: str
    group: str
    baseline: str
    baseline_group: str
    seeds: int
    baseline_seeds: int
    difference: float
    interval: tuple[float, float] | None  # None with a single seed on either side
    significant: bool | None  # at 1 − CONFIDENCE; None with a single seed on either side

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "interval": list(self.interval) if self.interval is not None else None,
            "quantity": "final train loss per pixel",
            "test": TEST_NAME,
            "confidence": CONFIDENCE,
        }


@dataclass
class DatasetComparison:
    dataset: str
    target: float | None  # train loss per pixel that "seconds to target" refers to
    target_source: str  # "--target" or "worst final train loss (<method>)"
    results: list[MethodResult]
    groups: list[GroupResult] = field(default_factory=list)
    differences: list[GroupDifference] = field(default_factory=list)


@dataclass
class Comparison:
    datasets: list[DatasetComparison]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "datasets": [
                {
                    "dataset": comparison.dataset,
                    "target": comparison.target,
                    "target_source": comparison.target_source,
                    "results": [result.to_dict() for result in comparison.results],
                    "groups": [group.to_dict() for group in comparison.groups],
                }
                for comparison in self.datasets
            ],
            "comparisons": [item.to_dict() for dataset in self.datasets for item in dataset.differences],
            "significance": f"{TEST_NAME} {CONFIDENCE:.0%} interval of the difference in final train loss per pixel; "
            "significant when it excludes 0; null for a single seed",
            "warnings": self.warnings,
        }


def _column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [row[key] for row in rows if is_number(row.get(key)) and math.isfinite(row[key])]


def _result(record: RunRecord) -> MethodResult:
    rows = record.rows
    last = rows[-1] if rows else {}
    train, val = _column(rows, "train_loss_per_pixel"), _column(rows, "val_loss_per_pixel")
    epochs = int(last.get("epoch", 0))
    wall_time = last.get("wall_time")
    return MethodResult(
        dataset=record.dataset,
        method=record.method,
        run=record.path.name,
        path=str(record.path),
        status=record.status,
        device=record.device,
        epochs=epochs,
        final_train_loss=last.get("train_loss_per_pixel"),
        best_train_loss=min(train, default=None),
        final_val_loss=last.get("val_loss_per_pixel"),
        best_val_loss=min(val, default=None),
        final_train_objective=last.get("train_loss"),
        final_val_objective=last.get("val_loss"),
        final_train_reconstruction_error=last.get("train_reconstruction_error"),
        final_val_reconstruction_error=last.get("val_reconstruction_error"),
        wall_time=wall_time,
        time_per_epoch=wall_time / epochs if wall_time is not None and epochs else None,
        alignment=last.get("alignment"),
        correction_scale=last.get("correction_scale"),
        seed=record.seed,
        group=group_key(record),
        rows=rows,
    )


def discover(folder: Path) -> list[Path]:
    """The run and sweep directories below ``folder`` (at any depth, in name order), whatever made them:
    a sweep directory is listed, not its points, and nothing below a run directory is searched."""
    found: list[Path] = []
    for child in sorted(path for path in folder.iterdir() if path.is_dir() and not path.is_symlink()):
        if (child / SWEEP_MANIFEST).is_file() or is_run_dir(child):
            found.append(child)
        else:
            found.extend(discover(child))
    return found


def _collect(paths: Sequence[Path]) -> tuple[list[RunRecord], list[str]]:
    """The runs to compare: each run directory given, the best setting per method of each sweep (all its
    seeds; a method swept at one setting only, such as the seeded runs of ``reproduce``, shows every seed
    however it ended), and those of the run and sweep directories below any other folder given
    (:func:`discover`)."""
    records: list[RunRecord] = []
    warnings: list[str] = []
    seen: set[Path] = set()

    def add(record: RunRecord) -> None:
        if record.path.resolve() not in seen:
            seen.add(record.path.resolve())
            records.append(record)
            warnings.extend(record.warnings)

    targets: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FimbenchError(f"{path} is not a directory")
        if (path / SWEEP_MANIFEST).is_file() or is_run_dir(path):
            targets.append(path)
        else:
            below = discover(path)
            if not below:
                raise FimbenchError(
                    f"{path} is neither a run directory (metrics.jsonl) nor a sweep directory ({SWEEP_MANIFEST}), "
                    "and holds none below it"
                )
            targets.extend(below)
    for path in targets:
        if (path / SWEEP_MANIFEST).is_file():
            for method, run_dirs in sweep_points(path).items():
                found = [read_run(run_dir) for run_dir in run_dirs if is_run_dir(run_dir)]
                groups = group_runs(found)
                best = best_group(found) or (groups[0] if len(groups) == 1 else None)  # one setting: every seed, as it ended
                if best is None:
                    warnings.append(f"{path}: no completed {method} point yet; {method} is left out")
                else:
                    for record in best:
                        add(record)
        else:
            add(read_run(path))
    return records, warnings


def _method_order(result: MethodResult) -> tuple[int, str, str]:
    order = [method.value for method in Method]
    return (order.index(result.method) if result.method in order else len(order), result.method, result.run)


def _reach(result: MethodResult, target: float) -> None:
    """First logged epoch whose train loss per pixel is at or below ``target``, and its time."""
    for row in result.rows:
        loss = row.get("train_loss_per_pixel")
        if is_number(loss) and loss <= target:
            result.epochs_to_target, result.seconds_to_target = int(row["epoch"]), float(row["wall_time"])
            return


def _speedup(results: list[MethodResult], reference: str, result: MethodResult) -> float | None:
    """``reference``'s seconds-to-target (its fastest run) over ``result``'s."""
    times = [other.seconds_to_target for other in results if other.method == reference and other.seconds_to_target]
    if not times or not result.seconds_to_target:
        return None
    return min(times) / result.seconds_to_target


def _default_target(results: list[MethodResult]) -> tuple[float | None, str]:
    """The worst final train loss among completed runs (all runs if none completed)."""
    finals = [(r.final_train_loss, r.method) for r in results if r.status == "completed" and r.final_train_loss is not None]
    finals = finals or [(r.final_train_loss, r.method) for r in results if r.final_train_loss is not None]
    if not finals:
        return None, "none: no train loss per pixel logged"
    loss, method = max(finals)
    return loss, f"worst final train loss ({method})"


def compare(paths: Sequence[Path], target: float | None = None) -> Comparison:
    """Compare the runs under ``paths`` per dataset (module docstring).

    ``target`` is a train loss per pixel; by default each dataset's is the worst final train loss among
    its completed runs (all runs if none completed), which every such run reaches.
    """
    if target is not None and not target > 0:
        raise FimbenchError(f"--target must be a positive loss per pixel, got {target}")
    records, warnings = _collect(paths)
    if not records:
        raise FimbenchError("nothing to compare: the sweeps given have no completed point yet")
    by_dataset: dict[str, list[MethodResult]] = {}
    for record in records:
        by_dataset.setdefault(record.dataset, []).append(_result(record))
    datasets: list[DatasetComparison] = []
    for dataset, results in by_dataset.items():
        results.sort(key=_method_order)
        dataset_target, source = target, "--target"
        if dataset_target is None:
            dataset_target, source = _default_target(results)
        for result in results:
            if dataset_target is not None:
                _reach(result, dataset_target)
        for result in results:
            result.speedup_vs_kfac = _speedup(results, "kfac", result)
            result.speedup_vs_adam = _speedup(results, "adam", result)
        devices = sorted({result.device for result in results})
        if len(devices) > 1:
            warnings.append(f"{dataset}: runs come from different devices ({'; '.join(devices)}); compare times with care")
        groups = _groups(results)
        datasets.append(DatasetComparison(dataset, dataset_target, source, results, groups, _differences(dataset, groups)))
    return Comparison(datasets, warnings)


def _group_name(runs: list[MethodResult]) -> str:
    """The runs' directory name without its seed (``kfac-lr_1e-1-seed_2`` -> ``kfac-lr_1e-1``; ``…/x/seed_2`` -> ``x``)."""
    path = Path(runs[0].path)
    name = _SEED_SUFFIX.sub("", path.name) if len(runs) > 1 or runs[0].seed is not None else path.name
    return name or path.parent.name or path.name


def _groups(results: list[MethodResult]) -> list[GroupResult]:
    """``results`` (in method order) gathered into groups of seeds, with their spreads and speed-ups."""
    by_key: dict[str, list[MethodResult]] = {}
    for result in results:
        by_key.setdefault(result.group, []).append(result)
    groups = []
    for runs in by_key.values():
        runs.sort(key=lambda run: (run.seed is None, run.seed or 0))
        group = GroupResult(runs[0].dataset, runs[0].method, _group_name(runs), runs, {})
        group.stats = {metric: spread(_numbers(group.values(metric, group.counted))) for metric in GROUP_METRICS}
        groups.append(group)
    for group in groups:
        group.speedup_vs_kfac = _group_speedup(groups, "kfac", group)
        group.speedup_vs_adam = _group_speedup(groups, "adam", group)
    return groups


def _numbers(values: Sequence[Any]) -> list[float]:
    return [value for value in values if is_number(value)]


def _group_speedup(groups: list[GroupResult], reference: str, group: GroupResult) -> float | None:
    """``reference``'s mean seconds-to-target (its fastest group) over ``group``'s."""
    def mean_seconds(candidate: GroupResult) -> float | None:
        stat = candidate.stats["seconds_to_target"]
        return stat.mean if stat is not None and stat.mean > 0 else None

    times = [t for other in groups if other.method == reference and (t := mean_seconds(other)) is not None]
    mine = mean_seconds(group)
    return min(times) / mine if times and mine else None


def _differences(dataset: str, groups: list[GroupResult]) -> list[GroupDifference]:
    """Every group against each K-FAC and each Adam group: the difference in final train loss per pixel."""
    differences = []
    for baseline in ("kfac", "adam"):
        for reference in (group for group in groups if group.method == baseline):
            theirs = _numbers(reference.values("final_train_loss", reference.counted))
            for group in groups:
                mine = _numbers(group.values("final_train_loss", group.counted))
                if group is reference or not mine or not theirs:
                    continue
                test = welch_difference(mine, theirs)
                differences.append(GroupDifference(
                    dataset, group.method, group.name, baseline, reference.name, len(mine), len(theirs),
                    test.difference, test.interval, test.significant,
                ))
    return differences


# ----------------------------------------------------------------------------------------------- outputs

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
