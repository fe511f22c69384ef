"""The exception types for problems the user can fix: the CLI prints the message on one ``error:`` line
and exits with the type's status (:mod:`fimbench.exit_codes`), never with a traceback.

Any other exception is a bug: :func:`report_crash` writes its traceback to a crash log and turns it into an
:class:`InternalError`, reported likewise (exit status :data:`fimbench.exit_codes.INTERNAL_ERROR`).
"""

from __future__ import annotations

import difflib
import os
import platform
import tempfile
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from fimbench import __version__, exit_codes
from fimbench.files import atomic_write_text

CRASH_LOG = "crash.log"
"""The crash log's name in the run directory of the command (or sweep point) that an internal error ended."""


class FimbenchError(Exception):
    """A problem the user can fix (bad option, missing data, malformed config, diverged run)."""

    exit_code: int = exit_codes.USAGE


class DivergedError(FimbenchError):
    """A training run stopped on a non-finite loss; its run directory keeps what was logged."""

    exit_code = exit_codes.DIVERGED


class CurvatureFailedError(DivergedError):
    """A curvature part failed with no earlier estimate or inverse to keep (:mod:`fimbench.preconditioner.guard`)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class FactorisationError(FimbenchError):
    """A damped curvature is not positive definite, so it cannot be factorised (the damping is too small)."""


class NothingToOptimizeError(FimbenchError):
    """An optimizer refuses a model it would leave untouched (Muon on a network without hidden layers)."""


class SweepFailedError(FimbenchError):
    """A sweep finished, but at least one of its points failed."""

    exit_code = exit_codes.SWEEP_FAILED


class Interrupted(FimbenchError):
    """The user interrupted a command (Ctrl-C, SIGINT or SIGTERM); the message says what was kept."""

    exit_code = exit_codes.INTERRUPTED


class InternalError(FimbenchError):
    """An unexpected exception (a bug), already reported: the message names it and the crash log holding its
    traceback (:func:`report_crash`)."""

    exit_code = exit_codes.INTERNAL_ERROR


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'lr'?"`` for the closest of ``choices`` to ``word``, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def report_crash(where: str, error: BaseException, directory: Path | None = None) -> InternalError:
    """Write the traceback of ``error``, an unexpected exception, to a crash log, and say so in one line.

    Args:
        where: What ``error`` ended, for the message: a command (``train``, ``reproduce figure2``) or a sweep point.
        error: The exception, with its traceback.
        directory: The run directory to write ``crash.log`` into (created if need be). Without one, or where it
            cannot be written, the crash log is a new temporary file ``fimbench-crash-*.log``.

    Returns:
        The error to report: ``internal error in <where>: <type>: <message> (traceback in <crash log>)``.
    """
    message = " ".join(str(error).split())  # one line
    header = (
        f"fimbench {__version__} (Python {platform.python_version()}, {platform.platform()}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: internal error in {where}\n"
    )
    try:
        log = f"traceback in {_write_crash_log(header + ''.join(traceback.format_exception(error)), directory)}"
    except OSError as failure:
        log = f"its traceback could not be written: {failure.strerror or failure}"
    return InternalError(f"internal error in {where}: {type(error).__name__}{': ' if message else ''}{message} ({log})")


def _write_crash_log(text: str, directory: Path | None) -> Path:
    """``text`` as ``directory/crash.log`` (the directory created if need be), else, where that cannot be
    written, as a new temporary file; its path."""
    if directory is not None:
        try:
            atomic_write_text(directory / CRASH_LOG, text)
            return directory / CRASH_LOG
        except OSError:
            pass  # not writable: a temporary file instead
    descriptor, name = tempfile.mkstemp(prefix="fimbench-crash-", suffix=".log")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(name)
