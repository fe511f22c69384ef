"""The names the command line offers as choices, and the one dataset-name check, importable without torch
(``fimbench --help`` stays fast).

:class:`fimbench.curvature.Method` and :mod:`fimbench.data` are the engines' sources of truth; the test
suite checks that these tuples match them.
"""

from __future__ import annotations

from typing import Sequence

from fimbench.errors import FimbenchError

DATASETS: tuple[str, ...] = ("curves", "mnist", "faces", "curves-synth")
DOWNLOADABLE: tuple[str, ...] = ("curves", "mnist", "faces")
METHODS: tuple[str, ...] = ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected", "sgd", "adam")
"""Every optimizer, in :class:`fimbench.curvature.Method`'s order."""
KRONECKER_METHODS: tuple[str, ...] = METHODS[:5]
"""The methods that precondition with a Kronecker approximation."""
STEP_RULES: tuple[str, ...] = ("fixed", "qmodel")
"""How a Kronecker method's step is sized: the torch optimizer's lr and momentum, or the quadratic model
(:mod:`fimbench.step_rule`)."""


def check_dataset(name: str, choices: Sequence[str] = DATASETS) -> str:
    """``name`` if it is one of ``choices`` (every dataset by default); else the one "unknown dataset" error."""
    if name not in choices:
        raise FimbenchError(f"unknown dataset '{name}'; choose from {', '.join(choices)}")
    return name
