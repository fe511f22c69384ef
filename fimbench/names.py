"""The names the command line offers as choices, and the one dataset-name check, importable without torch
(``fimbench --help`` stays fast).

The method names are :class:`fimbench.methods.Method`'s values; :mod:`fimbench.data` is the source of truth of
the datasets (the test suite checks that these tuples match it).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from fimbench import methods
from fimbench.errors import FimbenchError

DATASETS: tuple[str, ...] = ("curves", "mnist", "faces", "curves-synth")
DOWNLOADABLE: tuple[str, ...] = ("curves", "mnist", "faces")
METHODS: tuple[str, ...] = tuple(method.value for method in methods.Method)
"""Every optimizer, in :class:`~fimbench.methods.Method`'s order."""
KRONECKER_METHODS: tuple[str, ...] = tuple(method.value for method in methods.KRONECKER_METHODS)
"""The methods that precondition with a Kronecker approximation."""
EXACT_METHODS: tuple[str, ...] = tuple(method.value for method in methods.EXACT_METHODS)
"""The exact natural-gradient references (whole network, per block)."""
BLOCK_METHODS: tuple[str, ...] = tuple(method.value for method in methods.BLOCK_METHODS)
"""The block-diagonal approximations (the Kronecker methods and EKFAC)."""
PRECONDITIONED_METHODS: tuple[str, ...] = tuple(method.value for method in methods.PRECONDITIONED_METHODS)
"""The methods of the natural-gradient preconditioner."""
PAPER_METHODS: tuple[str, ...] = tuple(method.value for method in methods.PAPER_METHODS)
"""The paper's seven: the Kronecker methods, SGD and Adam."""


def command_methods(command: methods.Command) -> tuple[str, ...]:
    """The names of the methods ``command`` accepts (their registry records' ``commands``), in
    :class:`~fimbench.methods.Method`'s order."""
    return tuple(method.value for method in methods.methods_of(command=command))


def variant_name(method: str, damping_form: str = "factored", coarse: str = "none") -> str:
    """The name a run is compared under: the method, ``+exact`` for exact damping of a Kronecker method,
    ``+<coarse space>`` for a two-level correction (``kfac+exact+nicolaides``); first-order methods have
    neither, and EKFAC and the exact references are always damped exactly."""
    if method not in PRECONDITIONED_METHODS:
        return method
    exact = damping_form == "exact" and method in KRONECKER_METHODS
    return method + ("+exact" if exact else "") + ("" if coarse == "none" else f"+{coarse}")


class StepRule(StrEnum):
    """How a preconditioned method's step is sized: the torch optimizer's lr and momentum, or the quadratic
    model (:mod:`fimbench.preconditioner.step_rule`)."""

    FIXED = "fixed"
    QMODEL = "qmodel"


STEP_RULES: tuple[str, ...] = tuple(rule.value for rule in StepRule)
"""``step_rule`` choices."""


class Search(StrEnum):
    """How ``sweep`` and ``reproduce figure2`` tune each method (``--search``; docs/design.md §22): the grid and its
    edge extension, or scrambled Sobol points over the grid's log box."""

    GRID = "grid"
    QUASI_RANDOM = "quasi-random"


SEARCHES: tuple[str, ...] = tuple(search.value for search in Search)
"""``--search`` choices."""
DEFAULT_EXTEND = 2
"""``--extend``: the most edge-extension steps per axis and direction."""
TUNING_LIMITS: dict[str, tuple[float, float]] = {"lr": (1e-8, 10.0), "damping": (1e-8, 1e4), "clip": (1e-6, 1.0)}
"""Hard limits per grid key, inclusive, in the axis' scale: an edge extension never steps outside them."""


def check_dataset(name: str, choices: Sequence[str] = DATASETS) -> str:
    """``name`` if it is one of ``choices`` (every dataset by default); else the one "unknown dataset" error."""
    if name not in choices:
        raise FimbenchError(f"unknown dataset '{name}'; choose from {', '.join(choices)}")
    return name
