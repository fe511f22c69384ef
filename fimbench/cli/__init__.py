"""Typer application: one module per subcommand, each a thin layer over an engine.

User mistakes raise :class:`fimbench.errors.FimbenchError`; every command is wrapped by
:func:`fimbench.cli.common.user_errors`, which prints them as one line on stderr and exits with the
error's status (:mod:`fimbench.exit_codes`), never with a traceback. Usage errors found while parsing the
command line (an unknown option, a value not among the choices) are one ``error:`` line too, and so is any
other exception, a bug (:class:`OneLineErrors`): its traceback goes to a crash log.

Nothing is imported here or by the command modules at import time that pulls in torch, matplotlib or
scipy: ``fimbench --help``, ``--version`` and every ``--help`` stay fast; each command imports its engine
when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from fimbench import __version__, exit_codes
from fimbench.cli.options import record_out, recorded_out
from fimbench.errors import report_crash
from fimbench.termination import stop_on_termination

ClickException: type[Exception] = next(
    base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException"
)
"""The base of every command-line parsing error (Typer's bundled Click)."""


class OneLineErrors(TyperGroup):
    """Prints a parsing error as ``error: <message>`` on one line (exit status 2), like every other error.

    An exception that no command turned into a :class:`~fimbench.errors.FimbenchError` is a bug: its traceback
    goes to ``crash.log`` in the command's run directory (:func:`fimbench.cli.options.record_out`), else to a
    temporary file, and one line names it and that file (exit status 5,
    :data:`fimbench.exit_codes.INTERNAL_ERROR`). What the command logged is kept.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        arguments = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not arguments:  # no arguments: the help, as no_args_is_help asks
            return super().main(arguments, prog_name, complete_var, standalone_mode, **extra)
        record_out(None)  # the command records its run directory once it knows it
        try:
            status = super().main(arguments, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as error:
            message = error.format_message()  # type: ignore[attr-defined]
            context = getattr(error, "ctx", None)
            hint = f" (see: {context.command_path} --help)" if context is not None else ""
            typer.echo(f"error: {message}{hint}", err=True)
            sys.exit(getattr(error, "exit_code", exit_codes.USAGE))
        except typer.Abort:  # Ctrl-C before a command ran (in one, user_errors reports it)
            typer.echo("error: interrupted", err=True)
            sys.exit(exit_codes.INTERRUPTED)
        except Exception as error:  # a bug
            crash = report_crash(_command_path(self, arguments), error, recorded_out())
            typer.echo(f"error: {crash}", err=True)
            sys.exit(crash.exit_code)
        sys.exit(status if isinstance(status, int) else exit_codes.OK)


def _command_path(group: Any, arguments: Sequence[str]) -> str:
    """The names of the (sub)commands ``arguments`` begin with: ``train``, ``reproduce figure2``."""
    names: list[str] = []
    for argument in arguments:
        command = getattr(group, "commands", {}).get(argument)
        if command is None:
            break
        names.append(argument)
        group = command
    return " ".join(names) or "fimbench"


app = typer.Typer(
    name="fimbench",
    cls=OneLineErrors,
    help="Kronecker-factored Fisher approximations (K-FAC, KPSVD, Deflation, Lanczos, KFAC-corrected, EKFAC), "
    "with SGD, Adam and the exact natural gradient as references: train, measure their error against the exact "
    "Fisher, and profile their cost.",
    epilog=exit_codes.help_text(),
    no_args_is_help=True,
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
from fimbench.cli import reproduce as _reproduce  # noqa: E402
from fimbench.cli import sweep as _sweep  # noqa: E402
from fimbench.cli import train as _train  # noqa: E402

EPILOG = exit_codes.help_text()
app.command("train", epilog=EPILOG)(_train.train)
app.command("fisher-error", epilog=EPILOG)(_fisher_error.fisher_error)
app.command("cost-profile", epilog=EPILOG)(_cost.cost_profile)
app.command("sweep", epilog=EPILOG)(_sweep.sweep)
app.command("report", epilog=EPILOG)(_report.report)
app.command("download-data", epilog=EPILOG)(_download.download_data)
app.add_typer(_reproduce.app, name="reproduce", epilog=EPILOG)


def main() -> None:
    """Console-script entry point; SIGTERM stops a command as Ctrl-C does (:mod:`fimbench.termination`)."""
    stop_on_termination()
    app()
