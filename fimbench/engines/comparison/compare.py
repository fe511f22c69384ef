"""Reading run and sweep directories into a :class:`~fimbench.engines.comparison.results.Comparison`: the
runs per dataset, their groups of seeds, speed-ups and the differences against K-FAC and Adam."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fimbench.engines.comparison.profiles import performance_profiles
from fimbench.engines.comparison.results import (
    GROUP_METRICS,
    SEED_SUFFIX,
    Comparison,
    DatasetComparison,
    GroupDifference,
    GroupResult,
    MethodResult,
)
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
from fimbench.engines.significance import spread, welch_difference
from fimbench.errors import FimbenchError
from fimbench.methods import Method


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
    profiles = performance_profiles(datasets)
    warnings.extend(profiles.warnings if profiles is not None else [])
    return Comparison(datasets, warnings, profiles)


def _group_name(runs: list[MethodResult]) -> str:
    """The runs' directory name without its seed (``kfac-lr_1e-1-seed_2`` -> ``kfac-lr_1e-1``; ``…/x/seed_2`` -> ``x``)."""
    path = Path(runs[0].path)
    name = SEED_SUFFIX.sub("", path.name) if len(runs) > 1 or runs[0].seed is not None else path.name
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
