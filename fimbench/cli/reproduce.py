"""``fimbench reproduce``: a figure of the paper from scratch, in one resumable command."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fimbench.cli.common import split_list, user_errors
from fimbench.cli.options import (
    DatasetName,
    Executor,
    check_out,
    data_dir_option,
    dataset_option,
    dataset_value,
    executor_options,
    json_option,
    methods_option,
    quiet_option,
    seeds_option,
    set_option,
    tensorboard_option,
    with_sets,
)
from fimbench.cli.output import current, with_output
from fimbench.cli.report import print_comparison
from fimbench.cli.sweep import TUNING, make_runner, tuning_table
from fimbench.errors import Interrupted, SweepFailedError
from fimbench.names import METHODS, PAPER_METHODS, Search

if TYPE_CHECKING:
    from fimbench.engines.sweep import PointState, Runner, SweepPlan

DEFAULT_SEEDS = "3"
"""``--seeds`` of ``reproduce figure2``: seeds 0, 1, 2."""
DEFAULT_SWEEP_EPOCHS = 20
"""``--sweep-epochs`` of ``reproduce figure2``: each grid point's epochs."""
FIGURE2_METHODS_HELP = (
    f"Comma-separated methods (default: the paper's seven ({', '.join(PAPER_METHODS)}); "
    f"{', '.join(name for name in METHODS if name not in PAPER_METHODS)} only when named)."
)
"""``--methods`` of ``reproduce figure2``: the paper's methods by default, the others on request."""
RUNS = executor_options("runs")
PROGRESS_EVERY_SECONDS = 60.0  # a progress line at least this often while runs go on

app = typer.Typer(help="Reproduce a figure of the paper from scratch: every stage in one resumable folder.", no_args_is_help=True)


class ProgressLines:
    """One line per change of a stage's counts (and at least every minute): stage, runs done and left,
    the estimated time left. Lines, not a live view, so that a log file of a long run reads well."""

    def __init__(self, draw: bool) -> None:
        self.draw = draw
        self.name = ""
        self.last: tuple[int, int] | None = None
        self.printed = 0.0

    def stage(self, name: str, plan: SweepPlan | None) -> None:
        from fimbench.engines.figure2 import STAGES

        self.name, self.last = name, None
        where = f": {len(plan.points)} runs in {plan.out}" if plan is not None else ""
        if self.draw:
            current().note(f"[bold]stage {STAGES.index(name) + 1}/{len(STAGES)} {name}[/bold]{where}")

    def update(self, states: Sequence[PointState], seconds_left: float | None) -> None:
        left = sum(state.status in ("pending", "running") for state in states)
        counts = (len(states) - left, left)
        now = time.monotonic()
        if not self.draw or (counts == self.last and now - self.printed < PROGRESS_EVERY_SECONDS):
            return
        self.last, self.printed = counts, now
        eta = "estimating the time left" if seconds_left is None else f"about {_duration(seconds_left)} left in all"
        running = sum(state.status == "running" for state in states)
        current().note(f"{self.name}: {counts[0]} runs done, {left} left ({running} running); {eta}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command("figure2")
@user_errors
@with_output
def figure2(
    dataset: DatasetName | None = dataset_option(),
    methods: str | None = methods_option(None, FIGURE2_METHODS_HELP),
    grid: list[str] | None = typer.Option(
        None, "--grid", "-g", help="The sweep's KEY=V1,V2,... (lr, damping, clip), as in fimbench sweep --grid; default: its grid."
    ),
    authors_scale: bool = typer.Option(False, "--authors-scale", help="Sweep the paper's own grid (the authors' scale, converted), as fimbench sweep --authors-scale."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Base YAML config of every run."),
    sweep_epochs: int = typer.Option(DEFAULT_SWEEP_EPOCHS, "--sweep-epochs", help="Epochs of each sweep point."),
    epochs: int | None = typer.Option(None, help="Epochs of each seeded run of the best settings (default: the config's)."),
    seeds: str = seeds_option("Seeds of the runs of each method's best setting: a count (3: seeds 0, 1, 2) or a list; the sweep uses the first."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    data_dir: Path | None = data_dir_option(),
    tensorboard: bool | None = tensorboard_option(),
    jobs: int | None = RUNS["jobs"],
    executor: Executor = RUNS["executor"],
    partition: str | None = RUNS["partition"],
    time_minutes: int = RUNS["time_minutes"],
    gpus_per_job: int = RUNS["gpus_per_job"],
    cpus_per_job: int = RUNS["cpus_per_job"],
    budget: int | None = TUNING["budget"],
    search: Search = TUNING["search"],
    extend: int = TUNING["extend"],
    target: float | None = typer.Option(None, help="Train loss per pixel of the report's to-target columns (default: the worst final)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder of every stage (default: reproduce/figure2-<dataset>)."),
    sets: list[str] | None = set_option(),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """The paper's §4.2 protocol: sweep every method, take each one's best setting, train it once per
    seed, and report Figure 2 with mean, spread and which differences are real.

    Stages, each a folder of --out: sweep/ (the grid search, tuned as --budget, --search and --extend say,
    as in fimbench sweep), sweep/best/ (each method's best setting), runs/ (the seeded runs) and report/
    (figure2.png, profile.png, report.json, which says the tuning each method got). Rerunning the same command resumes:
    finished runs are kept, interrupted ones rerun, and the report is rewritten.

    Example: fimbench reproduce figure2 -d curves-synth --sweep-epochs 5 --epochs 20 --seeds 3 -j 2 --budget 40
    """
    from fimbench.cli.parsers import parse_seeds
    from fimbench.engines.config import resolve_config
    from fimbench.engines.figure2 import plan_figure2, run_figure2
    from fimbench.engines.sweep import Tuning, parse_grid

    overrides = {
        "data.dataset": dataset_value(dataset),
        "data.data_dir": str(data_dir) if data_dir is not None else None,
        "training.device": device,
        "training.tensorboard": tensorboard,
    }
    overrides = with_sets(overrides, sets)
    target_dir = out or Path("reproduce") / f"figure2-{resolve_config(config, {'data.dataset': dataset_value(dataset)}).data.dataset}"
    check_out(target_dir)
    plan = plan_figure2(
        target_dir, split_list(methods), parse_grid(grid or []), authors_scale, config, overrides,
        sweep_epochs, epochs, parse_seeds(seeds or DEFAULT_SEEDS), Tuning(budget, search.value, extend),
    )
    output = current()
    progress = ProgressLines(draw=output.progress)

    def runner(stage: SweepPlan) -> Runner:
        return make_runner(stage, executor, jobs, partition, time_minutes, gpus_per_job, cpus_per_job)

    try:
        result = run_figure2(plan, runner, progress, target=target)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; rerun the same command to resume in {plan.out}") from None
    print_comparison(result.comparison)
    output.summary(tuning_table(result.tuning))
    output.note(f"figure2.png, profile.png and report.json in [bold]{result.report_dir}[/bold]")
    output.document({"out": str(plan.out), **result.to_dict()})
    if result.failed:
        for path in result.failed:
            typer.echo(f"failed: {path} (see its worker.log)", err=True)
        raise SweepFailedError(
            f"{len(result.failed)} run(s) failed and are left out of the report; rerun the same command to retry them"
        )
