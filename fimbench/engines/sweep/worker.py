"""A sweep point's process, as :class:`~fimbench.engines.sweep.runners.LocalRunner` starts it:
``python -m fimbench.engines.sweep.worker MODULE:FUNCTION RUN_DIR THREADS`` runs the :data:`~fimbench.engines.sweep.runners.Worker`
``MODULE.FUNCTION`` on the point in ``RUN_DIR`` (:func:`~fimbench.engines.sweep.runners.run_worker`).

It ends as a command does: a problem is one ``error:`` line (in the point's ``worker.log``, whose last line the
sweep shows for a failed point) and the exit status of :mod:`fimbench.exit_codes`; a bug's traceback is in the
point's ``crash.log``, never in ``worker.log``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from fimbench import exit_codes
from fimbench.engines.sweep.runners import run_worker
from fimbench.errors import FimbenchError
from fimbench.termination import stop_on_interrupt_or_termination


def main(arguments: Sequence[str]) -> int:
    """Run the worker ``arguments`` name (``MODULE:FUNCTION RUN_DIR THREADS``) and say how it ended.

    Args:
        arguments: The command line after the module's name.

    Returns:
        The exit status: 0, or that of the error (one line on stderr).
    """
    stop_on_interrupt_or_termination()  # the sweep stops its workers with SIGINT, even from a background job
    target, run_dir, threads = arguments
    module, _, name = target.partition(":")
    worker = getattr(importlib.import_module(module), name)
    try:
        run_worker(worker, run_dir, int(threads))
    except FimbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:  # the sweep stopping its workers; the run recorded "interrupted"
        print("error: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
