"""``fimbench cost-profile``: the paper's Table 1 (App. C) measured — build F̂, invert it, apply F̂⁻¹∇h."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fimbench.cli.common import console, split_list, user_errors
from fimbench.cli.options import DatasetName, dataset_value, default_run_dir, json_option, methods_option, quiet_option, run_directory
from fimbench.cli.output import current, with_output
from fimbench.cli.parsers import parse_methods, parse_sizes
from fimbench.errors import FimbenchError
from fimbench.methods import Command, Family, methods_of

if TYPE_CHECKING:
    from fimbench.engines.cost import SweepCost

DEFAULT_WIDTHS = "128,256,512,1024"
DEFAULT_BATCHES = "64,256,1024"
NO_METHOD = "no method to profile; pass --methods all or a list such as kfac,deflation"

PROFILED: tuple[str, ...] = tuple(method.value for method in methods_of(*Family, command=Command.COST_PROFILE))
"""What ``--methods all`` profiles, family by family (the Kronecker methods, EKFAC, the exact references)."""


@user_errors
@with_output
def cost_profile(
    dataset: DatasetName | None = typer.Option(
        None, "--dataset", "-d", help="Profile every layer of this dataset's App. D autoencoder (random inputs: no data needed).",
        case_sensitive=False,
    ),
    widths: str | None = typer.Option(None, help=f"Sweep: layer widths d (default {DEFAULT_WIDTHS})."),
    batches: str | None = typer.Option(None, help=f"Sweep: Fisher batch sizes m (default {DEFAULT_BATCHES})."),
    methods: str = methods_option("all", f"all, or a comma-separated list of {', '.join(PROFILED)}."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    repeats: int = typer.Option(5, help="Timed repeats of every measurement (after one warm-up call)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/cost-<time>)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="With --dataset: a YAML config overriding the preset (e.g. configs/curves-conv.yaml)."
    ),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Measure the cost of building, inverting and applying each Kronecker approximation (Table 1).

    Example: fimbench cost-profile --widths 128,256,512 --batches 64,256
    """
    from fimbench.cli.tables import dataset_tables, sweep_tables
    from fimbench.engines.cost import DatasetCost, profile_dataset, profile_sweep, write_outputs
    from fimbench.engines.device import resolve_device

    if dataset is not None and (widths is not None or batches is not None):
        raise FimbenchError("choose either --dataset or --widths/--batches, not both")
    if config is not None and dataset is None:
        raise FimbenchError("--config needs --dataset (the sweep profiles synthetic layers)")
    chosen = parse_methods(split_list(methods), empty=NO_METHOD, repeats=True, allow_all=True, choices=PROFILED)
    if repeats < 1:
        raise FimbenchError(f"--repeats must be at least 1, got {repeats}")
    grid: tuple[list[int], list[int]] = ([], []) if dataset is not None else (
        parse_sizes(widths or DEFAULT_WIDTHS, "--widths"), parse_sizes(batches or DEFAULT_BATCHES, "--batches")
    )
    target = resolve_device(device)
    run_dir = out or default_run_dir("cost")
    output = current()
    result: DatasetCost | SweepCost
    with run_directory(run_dir):
        with console.status("profiling") if output.progress else nullcontext() as status:
            def progress(message: str) -> None:
                if status is not None:
                    status.update(f"profiling {message}")

            if dataset is not None:
                result = profile_dataset(str(dataset_value(dataset)), chosen, target, repeats, progress=progress, config=config)
            else:
                result = profile_sweep(*grid, chosen, target, repeats, progress=progress)
        write_outputs(result, run_dir)
    summary, *details = dataset_tables(result) if isinstance(result, DatasetCost) else sweep_tables(result)
    output.summary(summary)
    for table in details:
        output.note(table)
    output.note(f"results in [bold]{run_dir}[/bold]")
    output.document({"run_dir": str(run_dir), **result.to_dict()})
