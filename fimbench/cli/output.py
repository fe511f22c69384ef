"""Where a command's output goes: ``--json``, ``--quiet``, and tables that stay whole in logs.

Every command prints through the one :data:`console`. By default progress, tables and notes go to stdout.
With ``--json`` they go to stderr and stdout carries exactly one JSON document, the command's final
summary; with ``--quiet`` there is no progress and no notes, only the summary table. Where the output is
not a terminal (CI logs, ``| tee``, sweep logs) tables are drawn as wide as their content instead of
Rich's 80-column default, so no cell is cut to ``0.1…``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

TABLE_ROWS = 20
"""Rows a long per-epoch table shows (evenly spaced), plus the last one, unless ``--full-table``."""
_UNBOUNDED = 100_000  # width offered to a table to learn how wide it wants to be

F = TypeVar("F", bound=Callable[..., Any])


class FittingConsole(Console):
    """A Rich console that, when its output is not a terminal, widens itself for each table printed to
    the table's natural width (a terminal keeps its own width, where Rich folds what does not fit)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        tables = [item for item in objects if isinstance(item, Table)]
        if self.is_terminal or not tables or kwargs.get("width") is not None:
            super().print(*objects, **kwargs)
            return
        options = self.options.update_width(_UNBOUNDED)
        needed = max(Measurement.get(self, options, table).maximum for table in tables)
        saved = self._width
        self._width = max(needed, self.width)
        try:
            super().print(*objects, **kwargs)
        finally:
            self._width = saved


console = FittingConsole(stderr=False)


@dataclass
class Output:
    """The output mode of the running command."""

    json: bool = False
    quiet: bool = False

    @property
    def progress(self) -> bool:
        """Whether live progress (bars, live tables, spinners) is drawn."""
        return not self.quiet

    def note(self, *objects: Any, **kwargs: Any) -> None:
        """Secondary output (extra tables, where results went): left out by ``--quiet``."""
        if not self.quiet:
            console.print(*objects, **kwargs)

    def summary(self, *objects: Any, **kwargs: Any) -> None:
        """The summary table: printed in every mode (on stderr with ``--json``)."""
        console.print(*objects, **kwargs)

    def document(self, document: dict[str, Any]) -> None:
        """With ``--json``: ``document`` as the one JSON document on stdout."""
        if self.json:
            typer.echo(json_text(document))


_current = Output()


def current() -> Output:
    """The output mode set by :func:`with_output` for the running command."""
    return _current


@contextmanager
def output_mode(json_output: bool, quiet: bool) -> Iterator[Output]:
    """Route the console to stderr for ``--json`` and record the mode, restoring both afterwards."""
    global _current
    saved, saved_stderr = _current, console.stderr
    _current = Output(json=json_output, quiet=quiet)
    console.stderr = json_output
    try:
        yield _current
    finally:
        _current, console.stderr = saved, saved_stderr


def with_output(command: F) -> F:
    """Run ``command`` in the output mode its ``json_output`` and ``quiet`` parameters ask for."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with output_mode(bool(kwargs.get("json_output")), bool(kwargs.get("quiet"))):
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """``value`` with paths as strings, tuples as lists and non-finite floats as ``null`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(document: dict[str, Any]) -> str:
    """``document`` as strict JSON (no NaN or Infinity), indented."""
    return json.dumps(_plain(document), indent=2, allow_nan=False)


def thin_rows(rows: Sequence[dict[str, Any]], limit: int = TABLE_ROWS) -> list[dict[str, Any]]:
    """At most ``limit`` evenly spaced rows of ``rows``, always ending with the last one."""
    if len(rows) <= limit + 1:
        return list(rows)
    step = len(rows) / limit
    picked = sorted({int(index * step) for index in range(limit)} | {len(rows) - 1})
    return [rows[index] for index in picked]
