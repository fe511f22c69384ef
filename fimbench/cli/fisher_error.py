"""``fimbench fisher-error``: the paper's Figure 1 — every approximation's error against the exact block."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.live import Live
from rich.table import Table

from fimbench.cli.common import console, split_list, user_errors
from fimbench.cli.options import (
    DatasetName,
    data_dir_option,
    dataset_option,
    dataset_value,
    default_run_dir,
    empirical_fisher_option,
    json_option,
    methods_option,
    quiet_option,
    run_directory,
)
from fimbench.cli.output import current, with_output
from fimbench.cli.parsers import parse_layers, parse_methods
from fimbench.errors import FimbenchError, Interrupted
from fimbench.methods import Command
from fimbench.names import KRONECKER_METHODS, command_methods

if TYPE_CHECKING:
    from fimbench.engines.fisher_error import EntrySummary, ErrorRow, FisherErrorResult


def _number(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


class LiveErrorTable:
    """A live rich table: the latest measurement of every layer × method, under the training progress."""

    def __init__(self) -> None:
        self.live = Live(Table(), console=console, refresh_per_second=4, transient=not console.is_terminal)
        self.latest: list[ErrorRow] = []
        self.measured_count = 0
        self.measurements = 0
        self.iteration = 0
        self.loss: float | None = None
        self.title = ""

    def start(self, result: FisherErrorResult, measurements: int) -> None:
        self.measurements = measurements
        self.title = f"{result.dataset}: Fisher errors while training with {result.info['optimizer']} — {result.info['device']}"
        self.live.start()
        self.live.update(self._table())

    def step(self, iteration: int, loss: float) -> None:
        self.iteration, self.loss = iteration, loss
        self.live.update(self._table())

    def measured(self, iteration: int, rows: list[ErrorRow]) -> None:
        self.latest, self.iteration = rows, iteration
        self.measured_count += 1
        self.live.update(self._table())

    def stop(self) -> None:
        if self.live.is_started:
            self.live.stop()
            if not console.is_terminal:  # the live view is transient there: its last frame, whole (FittingConsole)
                console.print(self._table())

    def _table(self) -> Table:
        from fimbench.engines.fisher_error import entry_label

        caption = (
            f"iteration {self.iteration}, training loss {_number(self.loss)}, "
            f"measurement {self.measured_count}/{self.measurements}"
        )
        table = Table(title=self.title, caption=caption, header_style="bold")
        headers = ("iteration", "layer", "method", "Error 1", "Error 2", "KL rev", "dir cos", "align", "iterations", "seconds", "path")
        for header in headers:
            table.add_column(header, justify="left" if header in ("method", "path") else "right")
        for row in self.latest:
            table.add_row(
                str(row.iteration),
                str(row.layer),
                entry_label(row.method, row.rank),
                _number(row.error1),
                _number(row.error2),
                _number(row.kl_reverse, ".3g"),
                _number(row.direction_cosine, ".3f"),
                _number(row.subspace_alignment, ".3f"),
                str(row.iterations),
                _number(row.seconds, ".3f"),
                row.path,
            )
        return table


def _summary_table(title: str, caption: str, headers: list[str]) -> Table:
    """An empty summary table: ``method`` and ``paths`` left-aligned, numbers right-aligned."""
    table = Table(title=title, caption=caption, header_style="bold")
    for header in headers:
        table.add_column(header, justify="left" if header in ("method", "paths") else "right")
    return table


def summary_table(summaries: list[EntrySummary], title: str) -> Table:
    """Per method: median / mean / max of Error 1 and Error 2, how often it beats KFAC, cost, paths."""
    from fimbench.engines.fisher_error import entry_label

    table = _summary_table(
        title,
        "E1 = ‖F − F̂‖/‖F‖, E2 = ‖spec F − spec F̂‖/‖spec F‖ per block; net E1: E1 of the multi-layer Fisher "
        "over the chosen layers; <KFAC: share of measurements below KFAC; "
        "iters, s: mean power-SVD/Lanczos iterations and seconds per approximation",
        ["method", "E1 med", "E1 mean", "E1 max", "E2 med", "E2 mean", "E2 max", "net E1 med", "net E1 mean", "E1<KFAC", "E2<KFAC", "iters", "s", "paths"],
    )
    for s in summaries:
        table.add_row(
            entry_label(s.method, s.rank),
            _number(s.error1_median, ".3g"),
            _number(s.error1_mean, ".3g"),
            _number(s.error1_max, ".3g"),
            _number(s.error2_median, ".3g"),
            _number(s.error2_mean, ".3g"),
            _number(s.error2_max, ".3g"),
            _number(s.network_error1_median, ".3g"),
            _number(s.network_error1_mean, ".3g"),
            _percent(s.beats_kfac_error1),
            _percent(s.beats_kfac_error2),
            _number(s.iterations_mean, ".1f"),
            _number(s.seconds_mean, ".3f"),
            s.paths,
        )
    return table


MEASURE_HEADERS = {
    "kl_forward": "KL fwd",
    "kl_reverse": "KL rev",
    "direction_error": "dir err",
    "direction_cosine": "dir cos",
    "subspace_alignment": "align",
}
"""Short headers of the damped measures (:data:`fimbench.engines.fisher_error.records.MEASURES`)."""


def measures_table(summaries: list[EntrySummary], title: str) -> Table:
    """Per method: the median of each damped measure over the blocks, then over the network rows."""
    from fimbench.engines.fisher_error import entry_label

    table = _summary_table(
        title,
        "medians over measurements; KL fwd/rev = KL(N(0,F̂_λ)‖N(0,F_λ)) / KL(N(0,F_λ)‖N(0,F̂_λ)) in nats; "
        "dir err = ‖F̂_λ⁻¹∇ − F_λ⁻¹∇‖/‖F_λ⁻¹∇‖, dir cos their cosine; align = mean cos² of the principal angles of the "
        "top-k eigenspaces; net: blockdiag(F̂_l) against the multi-layer F",
        ["method", *(prefix + header for prefix in ("", "net ") for header in MEASURE_HEADERS.values())],
    )
    for s in summaries:
        network = s.network_measures_median or {}
        table.add_row(
            entry_label(s.method, s.rank),
            *(_number(s.measures_median.get(name), ".3g") for name in MEASURE_HEADERS),
            *(_number(network.get(name), ".3g") for name in MEASURE_HEADERS),
        )
    return table


def _coarse_spaces(text: str | None) -> tuple[str, ...]:
    """``--coarse nicolaides,spectral`` -> the coarse spaces whose two-level network rows are measured."""
    spaces = tuple(dict.fromkeys(split_list(text or "")))
    for space in spaces:
        if space not in ("nicolaides", "spectral"):
            raise FimbenchError(f"--coarse takes nicolaides and/or spectral (the residual space needs a gradient), got '{space}'")
    return spaces


@user_errors
@with_output
def fisher_error(
    dataset: DatasetName | None = dataset_option(),
    layer: str = typer.Option("5", "--layer", help="Linear layer(s), 1-based as in the paper: 5, a list 1,5,9, or all."),
    methods: str = methods_option(
        ",".join(KRONECKER_METHODS), f"Comma-separated methods to measure, of {', '.join(command_methods(Command.FISHER_ERROR))}."
    ),
    coarse: str | None = typer.Option(
        None, "--coarse",
        help="Also the network row of each block method's two-level version (F̂ = P⁻¹, undamped): nicolaides, spectral or both, comma-separated.",
    ),
    optimizer: str = typer.Option(
        "adam", "--optimizer", help=f"The method that trains the network, along whose path the errors are measured: {', '.join(command_methods(Command.TRAIN))}."
    ),
    iterations: int = typer.Option(1000, "--iterations", help="Training iterations."),
    every: int = typer.Option(20, "--every", help="Measure every K iterations (and at 0)."),
    lanczos_rank: int | None = typer.Option(None, "--lanczos-rank", help="Measure Lanczos at ranks 1..R (instead of rank 2 only)."),
    damping: float | None = typer.Option(None, "--damping", help="λ of the damped measures and of a preconditioned --optimizer (default: the config's)."),
    top_k: int | None = typer.Option(
        None, "--top-k", help="k of subspace_alignment: the dimension of the top eigenspaces compared (default: 10, fimbench.fisher.subspace.DEFAULT_TOP_K)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of initialisation, data order and target sampling."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/fisher-error-<dataset>-<time>)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; CLI options override it."),
    empirical: bool = empirical_fisher_option(False),
    data_dir: Path | None = data_dir_option(),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Mini-batch size (default: the dataset's, 256/512/1024)."),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Figure 1 (§4.1): Error 1 = ‖F − F̂‖/‖F‖ and Error 2 = ‖spec F − spec F̂‖/‖spec F‖ of every method
    on the exact Fisher block of the chosen layer(s), along training with any method; beside them the KL
    divergences of the damped blocks, the error of the damped direction and the top-k eigenspace alignment.

    Example: fimbench fisher-error --dataset curves-synth --iterations 200 --every 20
    """
    from fimbench.engines.config import resolve_config
    from fimbench.engines.fisher_error import (
        DEFAULT_METHODS,
        FisherErrorSettings,
        run_fisher_error,
        write_run,
    )

    default_methods, choices = ", ".join(m.value for m in DEFAULT_METHODS), command_methods(Command.FISHER_ERROR)
    settings = FisherErrorSettings(
        layers=parse_layers(layer),
        methods=tuple(parse_methods(split_list(methods), empty=f"--methods needs at least one of {default_methods}", choices=choices)),
        iterations=iterations,
        every=every,
        lanczos_rank=lanczos_rank,
        empirical=empirical,
        coarse=_coarse_spaces(coarse),
    )
    if top_k is not None:
        settings = replace(settings, top_k=top_k)
    resolved = resolve_config(
        config,
        {
            "data.dataset": dataset_value(dataset),
            "data.data_dir": str(data_dir) if data_dir is not None else None,
            "optimizer.method": optimizer,
            "optimizer.damping": damping,
            "training.batch_size": batch_size,
            "training.seed": seed,
            "training.device": device,
        },
    )
    run_dir = out or default_run_dir("fisher-error", resolved.data.dataset)
    output = current()
    live = LiveErrorTable() if output.progress else None
    with run_directory(run_dir):
        try:
            result = run_fisher_error(resolved, settings, live)
        finally:
            if live is not None:
                live.stop()
        paths = write_run(result, run_dir)
    _report(result, run_dir, paths)


def _report(result: FisherErrorResult, run_dir: Path, paths: dict[str, Path]) -> None:
    """The two summary tables, the closing note and the JSON document of a finished (or interrupted) run."""
    from fimbench.engines.fisher_error import summarise, summary_json

    output = current()
    measurements = len({row.iteration for row in result.rows})
    summaries = summarise(result)
    where = f"{result.dataset}, layer(s) {', '.join(map(str, result.layers))}"
    output.summary(summary_table(summaries, f"{where}: errors over {measurements} measurements"))
    output.summary(measures_table(summaries, f"{where}: damped measures at λ = {result.info['damping']:g}, k = {result.info['top_k']}"))
    output.note(f"{result.status} in {result.info['seconds']:.1f} s; {', '.join(str(p) for p in paths.values())}")
    output.document({"run_dir": str(run_dir), "files": {name: str(path) for name, path in paths.items()}, **summary_json(result)})
    if result.status == "interrupted":
        raise Interrupted(f"interrupted; what was measured is in {run_dir}")
