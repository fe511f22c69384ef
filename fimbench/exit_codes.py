"""Exit statuses of the ``fimbench`` command, one per kind of outcome, so scripts and CI can tell them apart."""

from __future__ import annotations

OK = 0
"""Success."""
USAGE = 2
"""Usage error or bad input: an unknown option or value, a malformed config, missing data, a corrupt file."""
DIVERGED = 3
"""A training run stopped on a non-finite loss (what it logged is kept)."""
SWEEP_FAILED = 4
"""A sweep finished, but some of its points failed (rerunning the same command retries them)."""
INTERNAL_ERROR = 5
"""An unexpected exception: a bug. One ``error:`` line names it and the crash log holding its traceback
(``crash.log`` in the run directory, else a temporary file); what was logged is kept."""
INTERRUPTED = 130
"""Interrupted (Ctrl-C, SIGINT or SIGTERM: :mod:`fimbench.termination`); what was logged is kept."""

MEANINGS: dict[int, str] = {
    OK: "success",
    USAGE: "usage error or bad input",
    DIVERGED: "run diverged (non-finite loss)",
    SWEEP_FAILED: "a sweep finished with failed points",
    INTERNAL_ERROR: "internal error (a bug: the traceback is in crash.log)",
    INTERRUPTED: "interrupted",
}


def help_text() -> str:
    """The exit statuses as one paragraph of ``--help``."""
    return "Exit status: " + "; ".join(f"{code} {meaning}" for code, meaning in MEANINGS.items()) + "."
