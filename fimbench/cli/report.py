"""``fimbench report``: compare runs and sweeps per dataset (paper §4.2), Figure 2, performance profiles, JSON and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fimbench.cli.common import user_errors
from fimbench.cli.options import check_out, json_option, quiet_option
from fimbench.cli.output import current, with_output

if TYPE_CHECKING:
    from fimbench.engines.comparison import Comparison


def print_comparison(comparison: Comparison) -> None:
    """The warnings (stderr) and, per dataset, the comparison table and the differences vs KFAC and Adam."""
    from fimbench.cli.tables import comparison_table, differences_table

    for warning in comparison.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for dataset in comparison.datasets:
        current().summary(comparison_table(dataset))
        if dataset.differences:
            current().summary(differences_table(dataset))


@user_errors
@with_output
def report(
    paths: list[Path] = typer.Argument(
        ..., help="Run directories, sweep directories (best point per method), or folders holding either, at any depth."
    ),
    target: float | None = typer.Option(
        None, help="Train loss per pixel for the to-target columns (default: each dataset's worst final train loss)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write figure2.png, profile.png (performance profiles) and report.json into this directory."),
    csv: Path | None = typer.Option(None, "--csv", help="Write the comparison table as CSV."),
    json_output: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Compare methods per dataset: losses, times, epochs and seconds to a target, speed-ups vs KFAC and Adam,
    and performance profiles of the methods over (dataset, seed) on both clocks.

    Example: fimbench report sweeps/curves-synth --out benchmarks/curves-synth
    """
    from fimbench.engines.comparison import PROFILE_FILE, compare, write_csv, write_report

    if out is not None:
        check_out(out)
    comparison = compare(paths, target)
    output = current()
    print_comparison(comparison)
    if out is not None:
        written = write_report(comparison, out)
        output.note(f"{', '.join(path.name for path in written)} in [bold]{out}[/bold]")
        if out / PROFILE_FILE not in written:
            output.note(f"no {PROFILE_FILE}: no dataset has a target (no train loss per pixel logged)")
    if csv is not None:
        write_csv(comparison, csv)
    output.document(comparison.to_dict())
