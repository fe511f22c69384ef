"""Shared pieces of the CLI layer: error handling, console, device and list parsing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from fimbench import exit_codes
from fimbench.cli.output import console
from fimbench.errors import FimbenchError

__all__ = ["console", "split_list", "user_errors"]

F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F) -> F:
    """Turn a :class:`FimbenchError` into ``error: <message>`` on stderr and its exit status
    (:mod:`fimbench.exit_codes`); an unhandled Ctrl-C and an operating-system error (a file that cannot be
    written, say) likewise end with one ``error:`` line, never a traceback. Any other exception is a bug, left
    to :class:`fimbench.cli.OneLineErrors` (one line, the traceback in a crash log)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except FimbenchError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(exit_codes.INTERRUPTED) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            typer.echo(f"error: {where}{error.strerror or error}", err=True)
            raise typer.Exit(exit_codes.USAGE) from None

    return wrapper  # type: ignore[return-value]


def split_list(text: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty or None -> ``[]``."""
    if not text:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]
