"""``fimbench report``: compare runs and sweeps per dataset (paper §4.2), Figure 2, JSON and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fimbench.cli.common import console, user_errors
from fimbench.comparison import compare, write_csv, write_figure2, write_report_json
from fimbench.report import comparison_table


@user_errors
def report(
    paths: list[Path] = typer.Argument(..., help="Run directories and/or sweep directories (best point per method)."),
    target: Optional[float] = typer.Option(
        None, help="Train loss per pixel for the to-target columns (default: each dataset's worst final train loss)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write figure2.png and report.json into this directory."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the comparison table as CSV."),
) -> None:
    """Compare methods per dataset: losses, times, epochs and seconds to a target, speed-ups vs KFAC and Adam.

    Example: fimbench report sweeps/curves-synth --out benchmarks/curves-synth
    """
    comparison = compare(paths, target)
    for warning in comparison.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for dataset in comparison.datasets:
        console.print(comparison_table(dataset))
    if out is not None:
        write_figure2(comparison, out / "figure2.png")
        write_report_json(comparison, out / "report.json")
        console.print(f"figure and JSON in [bold]{out}[/bold]")
    if csv is not None:
        write_csv(comparison, csv)
