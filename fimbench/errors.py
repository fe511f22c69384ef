"""The exception types for problems the user can fix: the CLI prints the message on one ``error:`` line
and exits with the type's status (:mod:`fimbench.exit_codes`), never with a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from fimbench import exit_codes


class FimbenchError(Exception):
    """A problem the user can fix (bad option, missing data, malformed config, diverged run)."""

    exit_code: int = exit_codes.USAGE


class DivergedError(FimbenchError):
    """A training run stopped on a non-finite loss; its run directory keeps what was logged."""

    exit_code = exit_codes.DIVERGED


class SweepFailedError(FimbenchError):
    """A sweep finished, but at least one of its points failed."""

    exit_code = exit_codes.SWEEP_FAILED


class Interrupted(FimbenchError):
    """The user interrupted a command (Ctrl-C, SIGINT); the message says what was kept."""

    exit_code = exit_codes.INTERRUPTED


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'lr'?"`` for the closest of ``choices`` to ``word``, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
