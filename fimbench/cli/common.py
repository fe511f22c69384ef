"""Shared pieces of the CLI layer: error handling, console, device and list parsing."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

from fimbench.errors import FimbenchError

console = Console(stderr=False)
F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F) -> F:
    """Turn a :class:`FimbenchError` into ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except FimbenchError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def split_list(text: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty or None -> ``[]``."""
    if not text:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]
