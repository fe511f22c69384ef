"""``fimbench sweep``: the paper's grid search (§4.2), resumable, on this machine or a SLURM cluster."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live
from rich.table import Table

from fimbench.cli.common import console, split_list, user_errors
from fimbench.cli.options import (
    DatasetName,
    Executor,
    check_out,
    config_overrides,
    data_dir_option,
    dataset_option,
    dataset_value,
    executor_options,
    json_option,
    methods_option,
    quiet_option,
    seeds_option,
    set_option,
    step_rule_option,
    tensorboard_option,
    with_sets,
)
from fimbench.cli.output import current, with_output
from fimbench.errors import Interrupted, SweepFailedError
from fimbench.names import DEFAULT_EXTEND, METHODS, TUNING_LIMITS, Search

if TYPE_CHECKING:
    from fimbench.engines.sweep import Planner, PointState, Runner, SweepPlan, TunedSweep, Tuning


POINTS = executor_options("points")
def tuning_options() -> dict[str, Any]:
    """``--budget``, ``--search`` and ``--extend`` of ``sweep`` and ``reproduce figure2``, as parameter name -> option."""
    return {
        "budget": typer.Option(
            None, "--budget",
            help="Trials per method, the same for every method: a trial is one run of one point (one seed). The grid "
            "counts against it (a grid larger than the budget is an error), then the edge extension. "
            "Default: no budget (the grid, extended within --extend).",
        ),
        "search": typer.Option(
            Search.GRID, "--search",
            help="grid: the grid, then one grid step past the edge where a method's best point lies on it, repeated "
            "(--extend); quasi-random: --budget points per method from a scrambled Sobol sequence (seed 0) over the "
            "log box of the grid (each key from its smallest to its largest value), no extension.",
        ),
        "extend": typer.Option(
            DEFAULT_EXTEND, "--extend",
            help="Most edge-extension steps per axis and direction (0: none); a step also stays within "
            + ", ".join(f"{key} in [{low:g}, {high:g}]" for key, (low, high) in TUNING_LIMITS.items())
            + " (in the grid's scale).",
        ),
    }


TUNING = tuning_options()


class LiveSweepTable:
    """Redraws :func:`fimbench.cli.tables.sweep_table` in place, as tall as the terminal allows; the live view
    is transient, the final table is printed once. With ``draw`` false it only keeps the latest states."""

    def __init__(self, draw: bool = True) -> None:
        self.draw = draw
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self.states: Sequence[PointState] = []

    def update(self, states: Sequence[PointState]) -> None:
        from fimbench.cli.tables import sweep_table

        self.states = states
        if self.draw:
            self.live.update(sweep_table(states, limit=max(5, console.height - 10)), refresh=True)


def _default_sweep_dir(config: Path | None, dataset: str | None) -> Path:
    """``sweeps/<dataset>``: a fixed name, so rerunning the same command resumes."""
    from fimbench.engines.config import resolve_config

    return Path("sweeps") / resolve_config(config, {"data.dataset": dataset}).data.dataset


@user_errors
@with_output
def sweep(
    dataset: DatasetName | None = dataset_option(),
    methods: str | None = methods_option(None, f"Comma-separated methods (default: all of {', '.join(METHODS)})."),
    grid: list[str] | None = typer.Option(
        None,
        "--grid",
        "-g",
        help="KEY=V1,V2,... with KEY lr, damping or clip; repeat per key. Keys not given take the default grid: "
        "Kronecker methods lr ∈ {1, 0.3, 0.1, 0.03}, damping ∈ {1, 0.1, 0.01, 0.001} (fimbench's scale, the config's π), "
        "clip ∈ {1e-2, 1e-3} (with --step-rule qmodel: damping only, a fixed λ unless --set optimizer.damping_schedule=adaptive); with --authors-scale the paper's lr, damping ∈ {3e-1 … 1e-4}, converted with the authors' "
        "damping split. SGD/Adam tune lr only (the paper's grid, converted).",
    ),
    authors_scale: bool = typer.Option(
        False,
        "--authors-scale",
        help="--grid values and the default grid are the authors' (mean over pixels, their damping split) and are "
        "converted; without it they are in fimbench's scale, as in fimbench train --lr.",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Base YAML config for every point."),
    step_rule: str | None = step_rule_option(),
    epochs: int | None = typer.Option(None, help="Epochs per point."),
    batch_size: int | None = typer.Option(None, help="Mini-batch size."),
    max_steps: int | None = typer.Option(None, help="Stop each point after this many steps (smoke sweeps)."),
    seed: int | None = typer.Option(None, help="Seed of every point."),
    seeds: str | None = seeds_option("Run every setting once per seed: a count (3: seeds 0, 1, 2) or a list (0,4,7)."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    data_dir: Path | None = data_dir_option(),
    tensorboard: bool | None = tensorboard_option(),
    jobs: int | None = POINTS["jobs"],
    executor: Executor = POINTS["executor"],
    partition: str | None = POINTS["partition"],
    time_minutes: int = POINTS["time_minutes"],
    gpus_per_job: int = POINTS["gpus_per_job"],
    cpus_per_job: int = POINTS["cpus_per_job"],
    budget: int | None = TUNING["budget"],
    search: Search = TUNING["search"],
    extend: int = TUNING["extend"],
    out: Path | None = typer.Option(None, "--out", "-o", help="Sweep directory (default: sweeps/<dataset>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the points and what is already finished; run nothing."),
    sets: list[str] | None = set_option(),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Grid-search each method (paper §4.2); every point is an ordinary train run directory.

    Rerunning the same command resumes: finished points (completed or diverged) are kept, interrupted or
    killed ones continue from their last epoch's checkpoint, failed ones rerun. The best point per method (lowest final train loss) is written to
    <out>/best/<method>.yaml for fimbench train --config. Where it lies on the edge of the grid, a point one
    grid step beyond is added and run, up to --extend steps per axis and direction (default 2) and within
    --budget trials per method; each method's trials, extensions and final state are reported and kept in
    <out>/sweep.json. Exit status 4 if a point failed.

    Example: fimbench sweep -d curves-synth -m kfac,adam --grid lr=1e-1,1e-2 --authors-scale --epochs 5 -j 2 --budget 12
    """
    from functools import partial

    from fimbench.cli.parsers import parse_seeds
    from fimbench.engines.sweep import Tuning, parse_grid, plan_sweep, plan_tuned

    overrides = {
        "data.dataset": dataset_value(dataset),
        "data.data_dir": str(data_dir) if data_dir is not None else None,
        "optimizer.step_rule": step_rule,
        **config_overrides(locals(), ("training",)),
    }
    seed_list = parse_seeds(seeds) if seeds is not None else None
    overrides = with_sets(overrides, sets)
    target = out or _default_sweep_dir(config, dataset_value(dataset))
    check_out(target)
    tuning = Tuning(budget, search.value, extend)
    planner: Planner = partial(plan_sweep, target, split_list(methods), parse_grid(grid or []), authors_scale, config, overrides, seed_list)
    runs_per_setting = len(seed_list) if seed_list else 1
    plan = plan_tuned(planner, tuning, runs_per_setting)
    if dry_run:
        _dry_run(plan, tuning)
        return
    runner = make_runner(plan, executor, jobs, partition, time_minutes, gpus_per_job, cpus_per_job)
    _run(plan, planner, tuning, runs_per_setting, runner)


def _dry_run(plan: SweepPlan, tuning: Tuning) -> None:
    """List the plan's points (the first round's, with tuning) and what is already finished."""
    from fimbench.cli.tables import sweep_table
    from fimbench.engines.sweep import inspect_points

    output = current()
    states = inspect_points(plan)
    output.summary(sweep_table(states))
    later = " (then edge extensions, where a best point lies on an edge)" if tuning.search == Search.GRID.value and tuning.extend else ""
    output.note(f"{len(states)} points, {sum(s.status == 'pending' for s in states)} to run{later}, in [bold]{plan.out}[/bold]")
    output.document(_document(plan, states, {}))


def make_runner(
    plan: SweepPlan, executor: Executor, jobs: int | None, partition: str | None, time_minutes: int, gpus_per_job: int, cpus_per_job: int
) -> Runner:
    """Worker processes here (``local``), or SLURM jobs through submitit; each runs :func:`fimbench.engines.train.run_point`."""
    from fimbench.engines.sweep import LocalRunner, SubmititRunner
    from fimbench.engines.train import run_point

    if executor is Executor.LOCAL:
        return LocalRunner(jobs or 1, worker=run_point)
    return SubmititRunner(
        plan.out / "submitit", "slurm", partition, time_minutes, gpus_per_job, cpus_per_job, jobs, worker=run_point
    )


def tuning_table(records: dict[str, dict[str, Any]]) -> Table:
    """Per method: the trials used of the budget, the edge extensions made and where the tuning ended.

    Args:
        records: Method -> its tuning record (:meth:`fimbench.engines.sweep.TuningRecord.to_dict`).

    Returns:
        The table.
    """
    table = Table(title="tuning", header_style="bold")
    for header in ("method", "search", "trials", "extensions", "state"):
        table.add_column(header, justify="right" if header == "trials" else "left", overflow="fold")
    for method, record in records.items():
        extensions = ", ".join(
            f"{item['axis']} {'↑' if item['direction'] == 'up' else '↓'} {item['value']:.4g}" for item in record["extensions"]
        )
        table.add_row(method, record["search"], record["trials_of_budget"], extensions or "–", record["state"])
    return table


def _run(plan: SweepPlan, planner: Planner, tuning: Tuning, runs_per_setting: int, runner: Runner) -> None:
    """Run the tuned sweep with the live table, then print the table, the tuning, the best configs and the failures."""
    from fimbench.cli.tables import sweep_table
    from fimbench.engines.sweep import run_tuned_sweep

    output = current()
    progress = LiveSweepTable(draw=output.progress)
    try:
        with progress.live if output.progress else nullcontext():
            tuned: TunedSweep = run_tuned_sweep(planner, tuning, runner, progress, runs_per_setting=runs_per_setting)
    except KeyboardInterrupt:
        output.summary(sweep_table(progress.states))
        output.document(_document(plan, progress.states, {}))
        raise Interrupted(f"interrupted; rerun the same command to resume the sweep in {plan.out}") from None
    result = tuned.result
    output.summary(sweep_table(result.states))
    output.summary(tuning_table(result.plan.tuning))
    for method, path in result.best.items():
        output.note(f"best {method}: [bold]{path}[/bold]")
    output.document(_document(result.plan, result.states, result.best))
    if result.failed:
        for state in result.failed:
            typer.echo(f"failed: {state.point.name}: {state.message}", err=True)
        raise SweepFailedError(f"{len(result.failed)} point(s) failed; rerun the same command to retry them")


def _document(plan: SweepPlan, states: Sequence[PointState], best: dict[str, Path]) -> dict[str, Any]:
    """The sweep's JSON summary: every point's state and run directory, and each method's best config."""
    return {
        "out": str(plan.out),
        "dataset": plan.dataset,
        "points": [
            {
                "name": state.point.name,
                "method": state.point.method,
                "values": state.point.values,
                "seed": state.point.seed,
                "status": state.status,
                "resumed": state.resumed,
                "epoch": state.epoch,
                "train_loss": state.train_loss,
                "val_loss": state.val_loss,
                "message": state.message,
                "run_dir": str(state.run_dir),
            }
            for state in states
        ],
        "counts": {status: sum(state.status == status for state in states) for status in sorted({s.status for s in states})},
        "best": {method: str(path) for method, path in best.items()},
        "tuning": plan.tuning,
    }
