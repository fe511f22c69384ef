"""The methods fimbench trains with, told apart: first-order (SGD, Adam), Kronecker-factored (the five
approximations of the Fisher block), EKFAC, and the exact natural-gradient references (whole network, per
block). Importable without torch; :mod:`fimbench.names` derives the command line's choices from it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from fimbench.errors import FimbenchError


class Method(str, Enum):
    """Every optimizer fimbench trains with; the first five precondition with a Kronecker approximation,
    the exact ones with the exact Fisher of the Fisher sub-batch."""

    KFAC = "kfac"
    KPSVD = "kpsvd"
    DEFLATION = "deflation"
    LANCZOS = "lanczos"
    KFAC_CORRECTED = "kfac-corrected"
    SGD = "sgd"
    ADAM = "adam"
    EXACT_NG = "exact-ng"
    EXACT_NG_BLOCK = "exact-ng-block"
    EKFAC = "ekfac"

    @property
    def is_kronecker(self) -> bool:
        """Whether the method preconditions with a Kronecker approximation (else it is first-order)."""
        return self in KRONECKER_METHODS

    @property
    def is_block_diagonal(self) -> bool:
        """Whether the method approximates the Fisher block by block (a two-level correction applies to it)."""
        return self in BLOCK_METHODS

    @property
    def is_preconditioned(self) -> bool:
        """Whether the method trains through the natural-gradient preconditioner (Kronecker or exact)."""
        return self in PRECONDITIONED_METHODS

    @property
    def rank(self) -> int:
        """Kronecker rank of the approximation (Lanczos: its default); 0 for the exact references and EKFAC,
        which are no Kronecker sum."""
        if self in EXACT_METHODS or self is Method.EKFAC:
            return 0
        return 1 if self in (Method.KFAC, Method.KPSVD) else 2


KRONECKER_METHODS: tuple[Method, ...] = (
    Method.KFAC,
    Method.KPSVD,
    Method.DEFLATION,
    Method.LANCZOS,
    Method.KFAC_CORRECTED,
)
"""The methods that precondition with a Kronecker approximation ``F̂ = Σ_k A_k ⊗ G_k``."""
EXACT_METHODS: tuple[Method, ...] = (Method.EXACT_NG, Method.EXACT_NG_BLOCK)
"""The references that solve with the exact Fisher of the Fisher sub-batch: whole network, per block."""
BLOCK_METHODS: tuple[Method, ...] = KRONECKER_METHODS + (Method.EKFAC,)
"""The block-diagonal approximations (one curvature block per layer): the Kronecker methods and EKFAC
(K-FAC's eigenbasis with re-fitted eigenvalues); a two-level correction applies to each of them."""
PRECONDITIONED_METHODS: tuple[Method, ...] = BLOCK_METHODS + EXACT_METHODS
"""The methods of :class:`fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`."""
FIRST_ORDER_METHODS: tuple[Method, ...] = (Method.SGD, Method.ADAM)
"""The methods that step along the gradient itself."""
PAPER_METHODS: tuple[Method, ...] = KRONECKER_METHODS + FIRST_ORDER_METHODS
"""The paper's methods (§4.2), each with the authors' tuned settings in configs/paper/."""


def parse_method(name: str | Method, kronecker_only: bool = False, choices: Sequence[Method] | None = None) -> Method:
    """``"deflation"`` -> ``Method.DEFLATION``, or one clear error.

    Args:
        name: a method's name (or a :class:`Method`).
        kronecker_only: offer only the five Kronecker methods (when ``choices`` is not given).
        choices: the methods accepted (default: every method, or the Kronecker ones with ``kronecker_only``).

    Returns:
        The :class:`Method`.

    Raises:
        FimbenchError: for a name that is no method, or not among the choices (the choices are listed).
    """
    choices = list(choices) if choices is not None else list(KRONECKER_METHODS) if kronecker_only else list(Method)
    try:
        method = Method(name)
    except ValueError:
        method = None
    if method is None or method not in choices:
        names = ", ".join(m.value for m in choices)
        raise FimbenchError(f"unknown method '{getattr(name, 'value', name)}'; choose from {names}")
    return method

__all__ = [
    "BLOCK_METHODS",
    "EXACT_METHODS",
    "FIRST_ORDER_METHODS",
    "KRONECKER_METHODS",
    "PAPER_METHODS",
    "PRECONDITIONED_METHODS",
    "Method",
    "parse_method",
]
