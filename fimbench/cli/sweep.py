"""``fimbench sweep``: the paper's grid search (§4.2), resumable, on this machine or a SLURM cluster."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live

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
from fimbench.names import METHODS

if TYPE_CHECKING:
    from fimbench.engines.sweep import PointState, Runner, SweepPlan


POINTS = executor_options("points")


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
    out: Path | None = typer.Option(None, "--out", "-o", help="Sweep directory (default: sweeps/<dataset>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the points and what is already finished; run nothing."),
    sets: list[str] | None = set_option(),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Grid-search each method (paper §4.2); every point is an ordinary train run directory.

    Rerunning the same command resumes: finished points (completed or diverged) are kept, interrupted and
    failed ones rerun. The best point per method (lowest final train loss) is written to
    <out>/best/<method>.yaml for fimbench train --config. Exit status 4 if a point failed.

    Example: fimbench sweep -d curves-synth -m kfac,adam --grid lr=1e-1,1e-2 --authors-scale --epochs 5 -j 2
    """
    from fimbench.cli.parsers import parse_seeds
    from fimbench.cli.tables import sweep_table
    from fimbench.engines.sweep import inspect_points, parse_grid, plan_sweep

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
    plan = plan_sweep(target, split_list(methods), parse_grid(grid or []), authors_scale, config, overrides, seed_list)
    output = current()
    if dry_run:
        states = inspect_points(plan)
        output.summary(sweep_table(states))
        output.note(f"{len(states)} points, {sum(s.status == 'pending' for s in states)} to run, in [bold]{plan.out}[/bold]")
        output.document(_document(plan, states, {}))
        return
    runner = make_runner(plan, executor, jobs, partition, time_minutes, gpus_per_job, cpus_per_job)
    _run(plan, runner)


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


def _run(plan: SweepPlan, runner: Runner) -> None:
    """Run the plan with the live table, then print the table, the best configs and the failures."""
    from fimbench.cli.tables import sweep_table
    from fimbench.engines.sweep import run_sweep

    output = current()
    progress = LiveSweepTable(draw=output.progress)
    try:
        with progress.live if output.progress else nullcontext():
            result = run_sweep(plan, runner, progress)
    except KeyboardInterrupt:
        output.summary(sweep_table(progress.states))
        output.document(_document(plan, progress.states, {}))
        raise Interrupted(f"interrupted; rerun the same command to resume the sweep in {plan.out}") from None
    output.summary(sweep_table(result.states))
    for method, path in result.best.items():
        output.note(f"best {method}: [bold]{path}[/bold]")
    output.document(_document(plan, result.states, result.best))
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
    }
