"""Typer application: one module per subcommand, each a thin layer over an engine.

User mistakes raise :class:`fimbench.errors.FimbenchError`; every command is wrapped by
:func:`fimbench.cli.common.user_errors`, which prints them as one line on stderr and exits with
status 2, never with a traceback.
"""

from __future__ import annotations

import typer

from fimbench import __version__

app = typer.Typer(
    name="fimbench",
    help="Kronecker-factored Fisher approximations (K-FAC, KPSVD, Deflation, Lanczos, KFAC-corrected): "
    "train, measure their error against the exact Fisher, and profile their cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fimbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
) -> None:
    """fimbench command-line interface."""


from fimbench.cli import cost as _cost  # noqa: E402
from fimbench.cli import download as _download  # noqa: E402
from fimbench.cli import fisher_error as _fisher_error  # noqa: E402
from fimbench.cli import report as _report  # noqa: E402
from fimbench.cli import sweep as _sweep  # noqa: E402
from fimbench.cli import train as _train  # noqa: E402

app.command("train")(_train.train)
app.command("fisher-error")(_fisher_error.fisher_error)
app.command("cost-profile")(_cost.cost_profile)
app.command("sweep")(_sweep.sweep)
app.command("report")(_report.report)
app.command("download-data")(_download.download_data)


def main() -> None:
    """Console-script entry point."""
    app()
