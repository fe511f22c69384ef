"""Which Fisher-error measure predicts which method trains faster?

This script tests that question. It takes the training runs of a ``fimbench reproduce figure2`` output folder
and the ``errors.csv`` of one ``fimbench fisher-error`` run per seed. For every (measure, scope) it computes
Spearman's rank correlation, across methods, between the measure and how fast the method trains, and gives
a bootstrap interval over seeds.

    python benchmarks/error_predicts_speed.py --figure2 DIR --errors DIR1,DIR2,DIR3 [--target X] \
        [--methods a,b,...] [--bootstrap 2000] [--seed 0] [--out FILE.json] [--markdown FILE.md]

Inputs:

* ``--figure2``: the output folder of ``fimbench reproduce figure2`` (its ``runs/``; a folder of run or sweep
  directories is read the same way). The runs are read with fimbench's comparison code
  (:func:`fimbench.engines.comparison.compare`), which gives each run's method, seed and per-epoch train loss
  per pixel. Two-level or exactly damped variants (names with ``+``) are left out.
* ``--errors``: ``fimbench fisher-error`` run folders, comma-separated, one per seed (``seed`` of their
  ``summary.json``). Each holds ``errors.csv``, with the columns ``layer``, ``method``, ``rank`` and the measures.

Definitions:

* Measures: ``error1``, ``error2``, ``kl_forward``, ``kl_reverse``, ``direction_error`` (lower is better),
  ``direction_cosine``, ``subspace_alignment`` (higher is better). Each has two scopes. ``layers`` is the mean
  over the per-layer rows: every integer layer at every measured iteration. ``network`` is the mean over the
  cross-layer ``network`` rows. NaN values are skipped. ``error2`` has no network value, so that pair is left
  out. A method measured at several Kronecker ranks is taken at its default rank,
  ``fimbench.methods.Method(name).rank``; a method measured without its default rank is left out. Two-level
  rows (method names with ``+``) are ignored. The average over one fisher-error run is that run's value; a
  method's value is the mean over seeds.
* Target: a train loss per pixel. It is ``--target`` if given. Otherwise it is the largest final train loss
  per pixel among the chosen methods' runs: the completed runs, or every run if none completed. This is the
  rule of fimbench's report, but applied to the chosen methods only, so SGD, Adam and Muon do not set it.
* Time to target: the first logged epoch whose train loss per pixel is at or below the target, and the
  training seconds (``wall_time``) logged at that epoch. This is exactly what ``fimbench report`` computes
  (:func:`fimbench.engines.comparison.compare._reach`): there is no interpolation between epochs. A run that
  never reaches the target has time infinity. It ranks last, and its method's mean over seeds is infinite.
  The output says how many runs did not reach the target.
* Final train loss: the train loss per pixel of the last logged epoch.
* Spearman's ρ (``scipy.stats.spearmanr``, ties averaged): one value per (measure, scope) and outcome (epochs
  to target, seconds to target, final train loss), computed across methods from the per-method means over
  seeds. Methods whose value is NaN are left out of that pair, and a pair needs at least 3 methods.
  Sign convention: for a measure where lower is better (the errors and the KL divergences), a positive ρ means
  the measure predicts speed (lower error goes with less time or loss). For ``direction_cosine`` and
  ``subspace_alignment`` (higher is better), a negative ρ means the measure predicts speed.
* Bootstrap over seeds: ``--bootstrap`` B resamples (2000 by default); ``--seed`` fixes numpy's generator.
  Each resample draws as many seeds as there are, with replacement. When the fisher-error seeds and the
  training seeds are the same set, one draw serves both sides, so seed s of the measures is paired with seed s
  of the training runs. When the sets differ, each side's seeds are drawn independently and every side uses
  all of its own seeds; the output says so. Each resample recomputes the per-method means and ρ. The output
  gives the 2.5 and 97.5 percentiles of ρ (a 95 % percentile interval) and the fraction of resamples in which ρ
  has the predicting sign. Resamples where ρ is undefined (a constant column) are not counted.

By default the methods are those present in both inputs, so the methods without fisher-error rows (SGD, Adam,
Muon) drop out. The seeds used are those that every chosen method has on each side. Output: ``--out`` is a
JSON file with everything above and the per-method table of means. ``--markdown`` is a Markdown file for
benchmarks/RESULTS.md with two tables, ρ and its interval per (measure, scope) and outcome, then each method's
mean measures and outcomes. The Markdown is also printed. Bad input gives one ``error:`` line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from fimbench.engines.comparison.compare import _default_target, _reach, compare
from fimbench.engines.comparison.results import MethodResult
from fimbench.errors import FimbenchError
from fimbench.exit_codes import USAGE
from fimbench.methods import Method

MEASURES: tuple[str, ...] = (
    "error1", "error2", "kl_forward", "kl_reverse", "direction_error", "direction_cosine", "subspace_alignment",
)
HIGHER_IS_BETTER = frozenset({"direction_cosine", "subspace_alignment"})
SCOPES: tuple[str, ...] = ("layers", "network")
NETWORK = "network"
PAIRS: tuple[tuple[str, str], ...] = tuple(
    (measure, scope) for measure in MEASURES for scope in SCOPES if not (measure == "error2" and scope == NETWORK)
)
"""The (measure, scope) pairs correlated; Error 2 has no network value."""
OUTCOMES: tuple[str, ...] = ("epochs_to_target", "seconds_to_target", "final_train_loss")
OUTCOME_LABELS = {"epochs_to_target": "epochs to target", "seconds_to_target": "seconds to target", "final_train_loss": "final train loss"}
REQUIRED_COLUMNS: tuple[str, ...] = ("layer", "method", "rank", *MEASURES)
ERRORS_CSV = "errors.csv"
QUESTION = "which Fisher-error measure predicts which method trains faster"
SIGN_CONVENTION = (
    "For a measure where lower is better (error1, error2, kl_forward, kl_reverse, direction_error), a positive rho means the "
    "measure predicts speed (lower error goes with less time or loss). For direction_cosine and subspace_alignment "
    "(higher is better), a negative rho does."
)
MIN_METHODS = 3


def pair_name(measure: str, scope: str) -> str:
    return f"{measure}/{scope}"


def predicting_sign(measure: str) -> int:
    """+1 when a positive ρ means "predicts speed" (lower is better), −1 when a negative ρ does."""
    return -1 if measure in HIGHER_IS_BETTER else 1


# --- fisher-error side -------------------------------------------------------------------------------------


@dataclass
class ErrorRun:
    """One ``fimbench fisher-error`` run folder: each method's run averages at its default rank."""

    path: Path
    seed: int
    dataset: str | None
    optimizer: str | None
    averages: dict[str, dict[str, float]]  # method -> pair_name -> mean over the rows (NaN: no value)
    ranks: dict[str, list[int]]  # method -> every rank it was measured at
    warnings: list[str] = field(default_factory=list)


def _number(text: str | None) -> float:
    """A CSV cell as a float; an empty or unparsable cell is NaN."""
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def read_errors(folder: Path) -> ErrorRun:
    """Read ``folder``'s ``summary.json`` and ``errors.csv`` into an :class:`ErrorRun` (module docstring)."""
    if not folder.is_dir():
        raise FimbenchError(f"fisher-error folder {folder} does not exist")
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FimbenchError(f"{folder} has no readable summary.json (is it a fimbench fisher-error run folder?)") from None
    seed = summary.get("seed") if isinstance(summary, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FimbenchError(f"{folder / 'summary.json'} has no integer 'seed'")
    path = folder / ERRORS_CSV
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise FimbenchError(f"{path} lacks the column(s) {', '.join(missing)}")
            values: dict[tuple[str, int, str], dict[str, list[float]]] = {}
            for number, row in enumerate(reader, start=2):
                method = (row["method"] or "").strip()
                if "+" in method:
                    continue  # a two-level entry
                layer = (row["layer"] or "").strip()
                try:
                    rank = int(row["rank"])
                    if layer != NETWORK:
                        int(layer)  # a layer number
                    scope = NETWORK if layer == NETWORK else "layers"
                except (TypeError, ValueError):
                    raise FimbenchError(f"{path}, line {number}: layer {layer!r} or rank {row['rank']!r} is not understood") from None
                cell = values.setdefault((method, rank, scope), {measure: [] for measure in MEASURES})
                for measure in MEASURES:
                    cell[measure].append(_number(row[measure]))
    except OSError:
        raise FimbenchError(f"{folder} has no readable {ERRORS_CSV}") from None
    except csv.Error as error:
        raise FimbenchError(f"{path} is not a readable CSV file: {error}") from None
    ranks: dict[str, set[int]] = {}
    for method, rank, _ in values:
        ranks.setdefault(method, set()).add(rank)
    averages: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for method, present in ranks.items():
        try:
            default = Method(method).rank
        except ValueError:
            notes.append(f"{path}: method {method!r} is not a fimbench method; ignored")
            continue
        if default not in present:
            notes.append(
                f"{path}: {method} is measured at rank(s) {', '.join(map(str, sorted(present)))} only, "
                f"not at its default rank {default}; left out"
            )
            continue
        averages[method] = {
            pair_name(measure, scope): _mean((values.get((method, default, scope)) or {}).get(measure, []))
            for measure, scope in PAIRS
        }
    return ErrorRun(
        path=folder,
        seed=seed,
        dataset=summary.get("dataset"),
        optimizer=summary.get("optimizer"),
        averages=averages,
        ranks={method: sorted(present) for method, present in ranks.items()},
        warnings=notes,
    )


def _mean(values: Sequence[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else math.nan


# --- training side -----------------------------------------------------------------------------------------


def read_training(figure2: Path, dataset: set[str]) -> tuple[str, dict[str, dict[int, MethodResult]], list[str]]:
    """The runs of ``figure2`` (its ``runs/``), read by :func:`compare`: the dataset compared and the runs by
    method and seed, with warnings. ``dataset`` holds the fisher-error runs' datasets (to pick one of several)."""
    if not figure2.is_dir():
        raise FimbenchError(f"figure2 folder {figure2} does not exist")
    runs = figure2 / "runs" if (figure2 / "runs").is_dir() else figure2
    comparison = compare([runs])
    notes = list(comparison.warnings)
    datasets = {item.dataset: item for item in comparison.datasets}
    if len(datasets) == 1:
        chosen = next(iter(datasets.values()))
    else:
        matching = [name for name in datasets if name in dataset]
        if len(matching) != 1:
            raise FimbenchError(
                f"{runs} holds runs on several datasets ({', '.join(sorted(datasets))}) and the fisher-error runs "
                f"({', '.join(sorted(dataset)) or 'no dataset'}) do not single one out"
            )
        chosen = datasets[matching[0]]
    if dataset and dataset != {chosen.dataset}:
        notes.append(f"the training runs are on {chosen.dataset}, the fisher-error runs on {', '.join(sorted(dataset))}")
    by_method: dict[str, dict[int, MethodResult]] = {}
    for result in chosen.results:
        if "+" in result.method:
            continue
        if result.seed is None:
            notes.append(f"{result.path}: no training.seed in config.yaml; left out")
            continue
        seeds = by_method.setdefault(result.method, {})
        if result.seed in seeds:
            raise FimbenchError(
                f"two {result.method} runs with seed {result.seed} ({seeds[result.seed].path}, {result.path}): pass a "
                "figure2 output folder, or a folder of one run per method and seed"
            )
        seeds[result.seed] = result
    return chosen.dataset, by_method, notes


def outcomes(result: MethodResult) -> dict[str, float]:
    """A run's epochs and seconds to target (infinite when not reached) and final train loss (NaN when unlogged)."""
    return {
        "epochs_to_target": math.inf if result.epochs_to_target is None else float(result.epochs_to_target),
        "seconds_to_target": math.inf if result.seconds_to_target is None else float(result.seconds_to_target),
        "final_train_loss": math.nan if result.final_train_loss is None else float(result.final_train_loss),
    }


# --- statistics ----------------------------------------------------------------------------------------------


def spearman(measures: np.ndarray, outcome_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ρ and its p-value for every (measure column, outcome column) pair across the rows (methods).

    A pair uses the rows where both are not NaN (infinity ranks last), and is NaN with fewer than
    :data:`MIN_METHODS` of them or a constant column. Pairs sharing their rows go through one
    ``scipy.stats.spearmanr`` call.
    """
    count_m, count_o = measures.shape[1], outcome_values.shape[1]
    rho = np.full((count_m, count_o), np.nan)
    p = np.full((count_m, count_o), np.nan)
    groups: dict[bytes, tuple[np.ndarray, list[tuple[int, int]]]] = {}
    for i in range(count_m):
        for j in range(count_o):
            rows = ~np.isnan(measures[:, i]) & ~np.isnan(outcome_values[:, j])
            if rows.sum() < MIN_METHODS or _constant(measures[rows, i]) or _constant(outcome_values[rows, j]):
                continue
            groups.setdefault(rows.tobytes(), (rows, []))[1].append((i, j))
    for rows, pairs in groups.values():
        columns_m = sorted({i for i, _ in pairs})
        columns_o = sorted({j for _, j in pairs})
        table = np.column_stack([measures[rows][:, columns_m], outcome_values[rows][:, columns_o]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = spearmanr(table)
        statistic = np.asarray(result.statistic, dtype=float)
        pvalue = np.asarray(result.pvalue, dtype=float)
        if statistic.ndim == 0:  # two columns: spearmanr returns scalars
            statistic = np.array([[1.0, statistic], [statistic, 1.0]])
            pvalue = np.array([[0.0, pvalue], [pvalue, 0.0]])
        for i, j in pairs:
            a, b = columns_m.index(i), len(columns_m) + columns_o.index(j)
            rho[i, j], p[i, j] = statistic[a, b], pvalue[a, b]
    return rho, p


def _constant(column: np.ndarray) -> bool:
    return bool(np.all(column == column[0]))


def seed_means(values: np.ndarray, draw: np.ndarray | None = None) -> np.ndarray:
    """Per-method means over seeds of ``values`` (methods × seeds × columns), NaN skipped, over the seed
    indices ``draw`` (all seeds by default); a column NaN in every seed drawn stays NaN."""
    chosen = values if draw is None else values[:, draw, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return np.nanmean(chosen, axis=1)


def bootstrap(
    measure_values: np.ndarray, outcome_values: np.ndarray, paired: bool, resamples: int, seed: int
) -> np.ndarray:
    """ρ of ``resamples`` resamples over seeds (module docstring): resamples × measures × outcomes."""
    generator = np.random.default_rng(seed)
    count_e, count_t = measure_values.shape[1], outcome_values.shape[1]
    rhos = np.full((resamples, measure_values.shape[2], outcome_values.shape[2]), np.nan)
    for b in range(resamples):
        draw_e = np.asarray(generator.integers(0, count_e, size=count_e))
        draw_t = draw_e if paired else np.asarray(generator.integers(0, count_t, size=count_t))
        rhos[b], _ = spearman(seed_means(measure_values, draw_e), seed_means(outcome_values, draw_t))
    return rhos


# --- the analysis -------------------------------------------------------------------------------------------


def analyse(
    figure2: Path,
    errors: Sequence[Path],
    target: float | None = None,
    methods: Sequence[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the script reports (module docstring), as a dictionary; numbers may be NaN or infinite."""
    if not errors:
        raise FimbenchError("--errors names no fisher-error folder")
    if target is not None and not target > 0:
        raise FimbenchError(f"--target must be a positive loss per pixel, got {target}")
    if resamples < 0:
        raise FimbenchError(f"--bootstrap must be 0 or more, got {resamples}")
    notes: list[str] = []
    error_runs: dict[int, ErrorRun] = {}
    for folder in errors:
        run = read_errors(folder)
        if run.seed in error_runs:
            raise FimbenchError(f"{error_runs[run.seed].path} and {folder} are both fisher-error runs of seed {run.seed}")
        error_runs[run.seed] = run
        notes.extend(run.warnings)
    optimizers = sorted({str(run.optimizer) for run in error_runs.values()})
    if len(optimizers) > 1:
        notes.append(f"the fisher-error runs trained with different optimizers ({', '.join(optimizers)})")
    dataset, training, training_notes = read_training(figure2, {run.dataset for run in error_runs.values() if run.dataset})
    notes.extend(training_notes)

    measured = {method for run in error_runs.values() for method in run.averages}
    common: list[str] = [str(m.value) for m in Method if m.value in measured and m.value in training]
    if methods:
        absent = [m for m in methods if m not in measured or m not in training]
        if absent:
            raise FimbenchError(
                f"--methods: {', '.join(absent)} lack fisher-error rows or training runs "
                f"(methods with both: {', '.join(common) or 'none'})"
            )
        chosen = list(dict.fromkeys(methods))
    else:
        chosen = common
    if not chosen:
        raise FimbenchError(
            f"no method has both fisher-error rows ({', '.join(sorted(measured)) or 'none'}) and training runs "
            f"({', '.join(sorted(training)) or 'none'})"
        )
    if len(chosen) < MIN_METHODS:
        raise FimbenchError(f"a rank correlation needs at least {MIN_METHODS} methods; only {', '.join(chosen)} have both inputs")

    # Seeds: those every chosen method has, on each side.
    error_seeds = sorted(s for s, run in error_runs.items() if all(m in run.averages for m in chosen))
    training_seeds = sorted(set.intersection(*(set(training[m]) for m in chosen)))
    for s in sorted(set(error_runs) - set(error_seeds)):
        lacking = [m for m in chosen if m not in error_runs[s].averages]
        notes.append(f"fisher-error seed {s} ({error_runs[s].path}) has no rows for {', '.join(lacking)}: seed left out")
    for m in chosen:
        for s in sorted(set(training[m]) - set(training_seeds)):
            notes.append(f"training seed {s} of {m} is not run by every chosen method: left out")
    if not error_seeds or not training_seeds:
        raise FimbenchError(
            "no seed is measured for every chosen method" if not error_seeds else "no seed is trained by every chosen method"
        )
    paired = error_seeds == training_seeds
    if paired:
        resampling = "paired: one draw of seeds (with replacement) for both sides, seed s of the measures with seed s of the training runs"
    else:
        resampling = (
            f"independent: the fisher-error seeds ({', '.join(map(str, error_seeds))}) and the training seeds "
            f"({', '.join(map(str, training_seeds))}) differ, so each side's seeds are drawn independently and each side "
            "uses all of its own seeds"
        )
        notes.append(f"seed sets differ; {resampling}")
    if not paired and not set(error_seeds) & set(training_seeds):
        notes.append("no seed is on both sides")

    # Target and time to target, as fimbench's report computes them.
    runs = [training[m][s] for m in chosen for s in training_seeds]
    if target is None:
        value, _ = _default_target(runs)
        if value is None:
            raise FimbenchError("the chosen methods' runs log no train loss per pixel")
        worst = [r for r in runs if r.final_train_loss == value]
        target_value = float(value)
        target_source = (
            "default: the largest final train loss per pixel among the chosen methods' runs "
            f"(completed runs first; {', '.join(f'{r.method} seed {r.seed}' for r in worst)})"
        )
    else:
        target_value, target_source = float(target), "--target"
    for result in runs:
        result.epochs_to_target = result.seconds_to_target = None
        _reach(result, target_value)
    not_reached = [r for r in runs if r.seconds_to_target is None]
    not_completed = [r for r in runs if r.status != "completed"]
    if not_completed:
        notes.append("runs that did not complete (counted as they ended): " + ", ".join(f"{r.run} ({r.status})" for r in not_completed))

    # methods × seeds × columns
    pair_names = [pair_name(*pair) for pair in PAIRS]
    measure_values = np.array([[[error_runs[s].averages[m][name] for name in pair_names] for s in error_seeds] for m in chosen])
    outcome_values = np.array([[[outcomes(training[m][s])[o] for o in OUTCOMES] for s in training_seeds] for m in chosen])
    measure_means, outcome_means = seed_means(measure_values), seed_means(outcome_values)
    rho, p = spearman(measure_means, outcome_means)
    rhos = bootstrap(measure_values, outcome_values, paired, resamples, seed) if resamples else None

    correlations = []
    for i, (measure, scope) in enumerate(PAIRS):
        sign = predicting_sign(measure)
        cells: dict[str, Any] = {}
        for j, outcome in enumerate(OUTCOMES):
            valid = int(np.sum(~np.isnan(measure_means[:, i]) & ~np.isnan(outcome_means[:, j])))
            cell: dict[str, Any] = {"rho": float(rho[i, j]), "p": float(p[i, j]), "methods": valid}
            if rhos is not None:
                sample = rhos[:, i, j]
                defined = sample[~np.isnan(sample)]
                cell["interval"] = [float(v) for v in np.percentile(defined, [2.5, 97.5])] if defined.size else [math.nan, math.nan]
                cell["predicting_fraction"] = float(np.mean(np.sign(defined) == sign)) if defined.size else math.nan
                cell["undefined_resamples"] = int(sample.size - defined.size)
            cells[outcome] = cell
        correlations.append({
            "measure": measure,
            "scope": scope,
            "better": "higher" if measure in HIGHER_IS_BETTER else "lower",
            "predicting_sign": "+" if sign > 0 else "-",
            "outcomes": cells,
        })

    per_method = []
    for k, m in enumerate(chosen):
        per_method.append({
            "method": m,
            "rank": Method(m).rank,
            "measures": {name: float(measure_means[k, i]) for i, name in enumerate(pair_names)},
            "outcomes": {o: float(outcome_means[k, j]) for j, o in enumerate(OUTCOMES)},
            "not_reached": sum(training[m][s].seconds_to_target is None for s in training_seeds),
            "per_seed_measures": {str(s): error_runs[s].averages[m] for s in error_seeds},
            "per_seed_runs": {
                str(s): {"run": training[m][s].path, "status": training[m][s].status, **outcomes(training[m][s])} for s in training_seeds
            },
        })
    return {
        "question": QUESTION,
        "dataset": dataset,
        "figure2": str(figure2),
        "errors": [str(run.path) for run in error_runs.values()],
        "fisher_error_optimizers": optimizers,
        "methods": chosen,
        "ranks": {m: Method(m).rank for m in chosen},
        "measures": pair_names,
        "outcomes": list(OUTCOMES),
        "seeds": {"paired": paired, "errors": error_seeds, "training": training_seeds},
        "target": {"value": target_value, "source": target_source, "unit": "train loss per pixel"},
        "time_to_target": "first logged epoch whose train loss per pixel is at or below the target, and its wall_time "
        "(fimbench report's rule, no interpolation); infinite when never reached",
        "not_reached": {"count": len(not_reached), "of": len(runs), "runs": [r.run for r in not_reached]},
        "correlation": "Spearman's rho (scipy.stats.spearmanr, ties averaged) across methods of the per-method means over seeds",
        "sign_convention": SIGN_CONVENTION,
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "resampling": resampling,
            "interval": "95 % percentile interval (2.5 and 97.5 percentiles of rho over the resamples where it is defined)",
        },
        "correlations": correlations,
        "per_method": per_method,
        "warnings": notes,
    }


# --- outputs ------------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN and infinity -> None (strict JSON); paths -> strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _number_cell(value: float, digits: str = ".3g") -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return format(value, digits)


def _rho_cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The two Markdown tables (module docstring) with the lines saying what they are."""
    seeds = report["seeds"]
    seed_text = (
        f"seeds {', '.join(map(str, seeds['errors']))}, paired"
        if seeds["paired"]
        else f"fisher-error seeds {', '.join(map(str, seeds['errors']))} and training seeds "
        f"{', '.join(map(str, seeds['training']))}, resampled independently"
    )
    not_reached = report["not_reached"]
    boot = report["bootstrap"]
    lines = [
        f"Does the Fisher error predict training speed? {report['dataset']}, methods {', '.join(report['methods'])} ({seed_text}). "
        f"Target: train loss per pixel {report['target']['value']:.4g} ({report['target']['source']}); "
        f"{not_reached['count']} of {not_reached['of']} runs never reach it (time ∞, ranked last). "
        f"ρ: Spearman across methods of the means over seeds; interval: 95 % percentile bootstrap over seeds "
        f"({boot['resamples']} resamples, seed {boot['seed']}). {report['sign_convention']}",
        "",
    ]
    header = "| measure | scope | better |"
    rule = "|---|---|---|"
    for outcome in report["outcomes"]:
        header += f" ρ {OUTCOME_LABELS[outcome]} | 95 % interval |"
        rule += "---:|---|"
    lines += [header, rule]
    for row in report["correlations"]:
        line = f"| {row['measure']} | {row['scope']} | {row['better']} |"
        for outcome in report["outcomes"]:
            cell = row["outcomes"][outcome]
            interval = cell.get("interval")
            shown = "–" if interval is None or math.isnan(interval[0]) else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
            line += f" {_rho_cell(cell['rho'])} | {shown} |"
        lines.append(line)
    lines += ["", "Per method, means over seeds (measures: run averages; ∞: some seed never reached the target):", ""]
    names = report["measures"]
    header = "| method | rank | " + " | ".join(names) + " | " + " | ".join(OUTCOME_LABELS[o] for o in report["outcomes"]) + " |"
    rule = "|---|---:|" + "---:|" * (len(names) + len(report["outcomes"]))
    lines += [header, rule]
    for row in report["per_method"]:
        cells = [_number_cell(row["measures"][name]) for name in names]
        cells += [
            _number_cell(row["outcomes"]["epochs_to_target"], ".3g"),
            _number_cell(row["outcomes"]["seconds_to_target"], ".3g"),
            _number_cell(row["outcomes"]["final_train_loss"], ".4f"),
        ]
        lines.append(f"| {row['method']} | {row['rank']} | " + " | ".join(cells) + " |")
    if report["warnings"]:
        lines += ["", *(f"- {note}" for note in report["warnings"])]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise FimbenchError(f"cannot write {path}: {error.strerror or error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure2", type=Path, required=True, help="a fimbench reproduce figure2 output folder")
    parser.add_argument("--errors", required=True, help="fimbench fisher-error run folders, comma-separated (one per seed)")
    parser.add_argument("--target", type=float, default=None, help="train loss per pixel (default: the chosen methods' worst final)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method in both inputs)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples over seeds (0: no interval)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--markdown", type=Path, default=None, help="Markdown file to write")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    try:
        report = analyse(
            args.figure2,
            [Path(item.strip()) for item in args.errors.split(",") if item.strip()],
            args.target,
            [item.strip() for item in args.methods.split(",") if item.strip()] if args.methods else None,
            args.bootstrap,
            args.seed,
        )
        report = {"command": "python benchmarks/error_predicts_speed.py " + shlex.join(arguments), **report}
        text = markdown(report)
        if args.out is not None:
            _write(args.out, json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
        if args.markdown is not None:
            _write(args.markdown, text)
    except FimbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
