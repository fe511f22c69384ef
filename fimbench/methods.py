"""The method registry: one torch-free :class:`MethodRecord` per method, the one place that says what a method is.

A record holds the method's name and label, its family and Kronecker rank, its colour and marker in every
figure, its cost orders (Table 1, :mod:`fimbench.cost_orders`), how the authors damp it
(:mod:`fimbench.engines.authors_scale`), the commands that accept it, and the code that implements it: the
per-layer block (:mod:`fimbench.preconditioner.blocks`) and, for a Kronecker method, the approximation
(:mod:`fimbench.curvature`), both as ``"module:attribute"`` so that this module imports no torch
(``fimbench --help`` stays fast). The command line's choices, the plots, the cost model, ``fisher-error``,
the presets and the preconditioner read the records; docs/adding-a-method.md walks through adding one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fimbench.cost_orders import CostOrders, EigenbasisOrders, ExactOrders, KroneckerOrders, OrthogonalisationOrders
from fimbench.errors import FimbenchError


class Method(str, Enum):
    """Every optimizer fimbench trains with (its :class:`MethodRecord` is :data:`RECORDS`' entry)."""

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
    SHAMPOO = "shampoo"
    SOAP = "soap"
    MUON = "muon"

    @property
    def record(self) -> MethodRecord:
        """The method's :class:`MethodRecord`."""
        return RECORDS[self]

    @property
    def is_kronecker(self) -> bool:
        """Whether the method preconditions with a Kronecker approximation ``Σ_k A_k ⊗ G_k`` per layer."""
        return self.record.family is Family.KRONECKER

    @property
    def is_block_diagonal(self) -> bool:
        """Whether the method approximates the Fisher block by block (a two-level correction applies to it)."""
        return self.record.family in (Family.KRONECKER, Family.EIGENBASIS)

    @property
    def is_preconditioned(self) -> bool:
        """Whether the method trains through the natural-gradient preconditioner (Kronecker or exact)."""
        return self.record.family in (Family.KRONECKER, Family.EIGENBASIS, Family.EXACT)

    @property
    def rank(self) -> int:
        """Kronecker rank of the approximation (Lanczos: its default); 0 where it is no Kronecker sum."""
        return self.record.rank


class Family(str, Enum):
    """How a method preconditions."""

    FIRST_ORDER = "first-order"  # along the gradient itself (the torch optimizer)
    KRONECKER = "kronecker"  # block-diagonal, F̂_l = Σ_k A_k ⊗ G_k
    EIGENBASIS = "eigenbasis"  # block-diagonal, a Kronecker eigenbasis with a fitted diagonal (EKFAC)
    EXACT = "exact"  # the exact Fisher of the Fisher sub-batch
    OPTIMIZER = "optimizer"  # a torch optimizer that preconditions by itself (Shampoo, SOAP, Muon)


class Command(str, Enum):
    """The commands (and the library) that take a method."""

    TRAIN = "train"
    SWEEP = "sweep"
    REPRODUCE = "reproduce figure2"
    REPORT = "report"
    FISHER_ERROR = "fisher-error"
    COST_PROFILE = "cost-profile"
    LIBRARY = "library"  # fimbench.optim.KroneckerPreconditioner (or the torch optimizer)


TRAINING_COMMANDS = frozenset({Command.TRAIN, Command.SWEEP, Command.REPRODUCE, Command.REPORT, Command.LIBRARY})
CURVATURE_COMMANDS = TRAINING_COMMANDS | {Command.FISHER_ERROR, Command.COST_PROFILE}


@dataclass(frozen=True)
class AuthorsDamping:
    """How the paper's code damps a Kronecker method (their λ_a, on their loss κ times fimbench's):

    * ``square_root``: their rank-1 solve adds ``√λ_a`` to both factors; else (rank 2) ``λ_a`` to both
      factors of the first term;
    * ``kfac_factors``: their factors are K-FAC's ``A`` and ``κ² G``; else the rescaled SVD factors ``κ R``,
      ``κ S``.

    :data:`SCALAR_DAMPING` (``F̂ + λ_a I``, EKFAC and the exact references) and :data:`NO_DAMPING`
    (first-order methods) are the other two answers.
    """

    square_root: bool
    kfac_factors: bool


SCALAR_DAMPING = "scalar"
"""The damped operator is ``F̂ + λ I``: the authors' ``λ_a`` is fimbench's ``λ_a / κ²``."""
NO_DAMPING = "none"
"""A first-order method: nothing is damped."""


@dataclass(frozen=True)
class MethodRecord:
    """Everything fimbench knows about one method (module docstring).

    Attributes:
        method: its :class:`Method`.
        label: its name in tables and legends.
        family: how it preconditions (:class:`Family`).
        rank: Kronecker rank of its approximation (Lanczos: its default); 0 where it is no Kronecker sum.
        colour: its colour in every figure.
        marker: its marker in Figure 1.
        commands: the commands that accept it.
        authors_damping: how the authors damp it (:class:`AuthorsDamping`, :data:`SCALAR_DAMPING` or
            :data:`NO_DAMPING`).
        orders: its cost orders per phase (Table 1 and fimbench's count); None for a first-order method.
        block: ``"module:Class"`` of its per-layer block (:class:`~fimbench.preconditioner.blocks.CurvatureBlock`),
            which ``fisher-error`` and ``cost-profile`` measure; None for a method without one (SGD, Adam).
        approximation: ``"module:function"`` of the approximation its block fits (a Kronecker sum's
            :class:`~fimbench.curvature.Approximator`, or an eigenbasis approximation's), else None.
        optimizer: ``"module:function"`` building its torch optimizer, ``(model, settings) -> Optimizer``
            (:mod:`fimbench.engines.optimizers`); for a preconditioned method the one that steps along
            ``F̃⁻¹ ∇``.
        iterative: whether its build runs an iterative solver (power SVD, Lanczos) that reports iterations.
        adjustable_rank: whether its rank is a setting (Lanczos' ``lanczos_rank``).
        couples_layers: whether its curvature couples the layers (``exact-ng``: no per-layer block of its own;
            its block stands for the layer's exact diagonal block).
        paper: whether it is one of the paper's seven (§4.2), with the authors' settings in configs/paper/.
        authors_lr_exponent: e in ``lr = lr_a κ^e``, the authors' learning rate on fimbench's loss (κ times
            smaller): 1 for SGD, 0 for the scale-invariant Adam, −1 for a step ``F̃⁻¹ ∇``.
    """

    method: Method
    label: str
    family: Family
    rank: int
    colour: str
    marker: str
    commands: frozenset[Command]
    authors_damping: AuthorsDamping | str
    orders: CostOrders | None = None
    block: str | None = None
    approximation: str | None = None
    optimizer: str = "fimbench.engines.optimizers:sgd"
    iterative: bool = False
    adjustable_rank: bool = False
    couples_layers: bool = False
    paper: bool = False
    authors_lr_exponent: int = -1


KRONECKER_BLOCK = "fimbench.preconditioner.kronecker_block:KroneckerBlock"
"""The block of every method whose approximation is a Kronecker sum."""
EIGENBASIS_BLOCK = "fimbench.preconditioner.eigenbasis_block:EigenbasisBlock"
"""The block of every method whose approximation is a Kronecker eigenbasis with a fitted diagonal."""
_OPTIMIZERS = "fimbench.engines.optimizers"

RECORDS: dict[Method, MethodRecord] = {
    record.method: record
    for record in (
        MethodRecord(
            Method.KFAC, "KFAC", Family.KRONECKER, 1, "#1f77b4", "o", CURVATURE_COMMANDS,
            AuthorsDamping(square_root=True, kfac_factors=True),
            KroneckerOrders("2md²", "m(p²+q²)", pairs=1, gram_coordinates=False),
            KRONECKER_BLOCK, "fimbench.curvature.kfac:approximate_kfac", paper=True,
        ),
        MethodRecord(
            Method.KPSVD, "KPSVD", Family.KRONECKER, 1, "#ff7f0e", "s", CURVATURE_COMMANDS,
            AuthorsDamping(square_root=True, kfac_factors=False),
            KroneckerOrders("4k₁md²", "m²(p+q) + (1+r₀)m(p²+q²) + 2n³ + 8kn²", pairs=1),
            KRONECKER_BLOCK, "fimbench.curvature.kpsvd:approximate_kpsvd", iterative=True, paper=True,
        ),
        MethodRecord(
            Method.DEFLATION, "Deflation", Family.KRONECKER, 2, "#2ca02c", "^", CURVATURE_COMMANDS,
            AuthorsDamping(square_root=False, kfac_factors=False),
            KroneckerOrders("2md² + 4k₁md²", "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²", pairs=None),
            KRONECKER_BLOCK, "fimbench.curvature.deflation:approximate_deflation", iterative=True, paper=True,
        ),
        MethodRecord(
            Method.LANCZOS, "Lanczos", Family.KRONECKER, 2, "#d62728", "v", CURVATURE_COMMANDS,
            AuthorsDamping(square_root=False, kfac_factors=False),
            KroneckerOrders("4k₂md² + K³ + 2Kd²", "m²(p+q) + (r+r₀)m(p²+q²) + 2n³ + 10kn²", pairs=None, per_iteration=10),
            KRONECKER_BLOCK, "fimbench.curvature.lanczos:approximate_lanczos", iterative=True, adjustable_rank=True, paper=True,
        ),
        MethodRecord(
            Method.KFAC_CORRECTED, "KFAC-corrected", Family.KRONECKER, 2, "#9467bd", "D", CURVATURE_COMMANDS,
            AuthorsDamping(square_root=False, kfac_factors=True),
            KroneckerOrders("2md² + 4k₁md²", "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²", pairs=1, kfac_factors=1),
            KRONECKER_BLOCK, "fimbench.curvature.kfac_corrected:approximate_kfac_corrected", iterative=True, paper=True,
        ),
        MethodRecord(
            Method.SGD, "SGD", Family.FIRST_ORDER, 0, "#7f7f7f", ".", TRAINING_COMMANDS, NO_DAMPING,
            optimizer=f"{_OPTIMIZERS}:sgd", paper=True, authors_lr_exponent=1,
        ),
        MethodRecord(
            Method.ADAM, "Adam", Family.FIRST_ORDER, 0, "#8c564b", ".", TRAINING_COMMANDS, NO_DAMPING,
            optimizer=f"{_OPTIMIZERS}:adam", paper=True, authors_lr_exponent=0,
        ),
        MethodRecord(
            Method.EXACT_NG, "exact NG", Family.EXACT, 0, "#000000", "*", CURVATURE_COMMANDS, SCALAR_DAMPING,
            ExactOrders(), "fimbench.preconditioner.exact_block:ExactBlock", couples_layers=True,
        ),
        MethodRecord(
            Method.EXACT_NG_BLOCK, "exact NG (blocks)", Family.EXACT, 0, "#e377c2", "P", CURVATURE_COMMANDS, SCALAR_DAMPING,
            ExactOrders(), "fimbench.preconditioner.exact_block:ExactBlock",
        ),
        MethodRecord(
            Method.EKFAC, "EKFAC", Family.EIGENBASIS, 0, "#bcbd22", "X", CURVATURE_COMMANDS, SCALAR_DAMPING,
            EigenbasisOrders(), EIGENBASIS_BLOCK, "fimbench.curvature.ekfac:approximate_ekfac",
        ),
        MethodRecord(
            Method.SHAMPOO, "Shampoo", Family.OPTIMIZER, 1, "#17becf", "h", CURVATURE_COMMANDS, NO_DAMPING,
            KroneckerOrders("2md²", "2m(p²+q²)", pairs=1, gram_coordinates=False, weighted_grams=2),
            KRONECKER_BLOCK, "fimbench.curvature.shampoo:approximate_shampoo", f"{_OPTIMIZERS}:shampoo",
            authors_lr_exponent=0,
        ),
        MethodRecord(
            Method.SOAP, "SOAP", Family.OPTIMIZER, 0, "#aec7e8", "d", CURVATURE_COMMANDS, NO_DAMPING,
            EigenbasisOrders(), EIGENBASIS_BLOCK, "fimbench.curvature.soap:approximate_soap", f"{_OPTIMIZERS}:soap",
            authors_lr_exponent=0,
        ),
        MethodRecord(
            Method.MUON, "Muon", Family.OPTIMIZER, 0, "#ff9896", "<", TRAINING_COMMANDS | {Command.COST_PROFILE}, NO_DAMPING,
            OrthogonalisationOrders(), "fimbench.preconditioner.orthogonal_block:OrthogonalBlock",
            optimizer=f"{_OPTIMIZERS}:muon", authors_lr_exponent=0,
        ),
    )
}
"""Every method's record, in :class:`Method`'s order."""

REFERENCE_METHOD = Method.KFAC
"""The method the others are compared with (speed-ups, error ratios): K-FAC, the paper's baseline."""


def methods_of(*families: Family, command: Command | None = None) -> tuple[Method, ...]:
    """The registered methods of some families that a command accepts.

    Args:
        *families: the families, in the order wanted (default: every method, in :class:`Method`'s order).
        command: the command that must accept them (default: any).

    Returns:
        The methods, family by family in the order given, each family in :class:`Method`'s order.
    """
    chosen = families or (None,)
    return tuple(
        method
        for family in chosen
        for method, record in RECORDS.items()
        if (family is None or record.family is family) and (command is None or command in record.commands)
    )


KRONECKER_METHODS: tuple[Method, ...] = methods_of(Family.KRONECKER)
"""The methods that precondition with a Kronecker approximation ``F̂ = Σ_k A_k ⊗ G_k``."""
EXACT_METHODS: tuple[Method, ...] = methods_of(Family.EXACT)
"""The references that solve with the exact Fisher of the Fisher sub-batch: whole network, per block."""
BLOCK_METHODS: tuple[Method, ...] = methods_of(Family.KRONECKER, Family.EIGENBASIS)
"""The block-diagonal approximations (one curvature block per layer); a two-level correction applies to each."""
PRECONDITIONED_METHODS: tuple[Method, ...] = BLOCK_METHODS + EXACT_METHODS
"""The methods of :class:`fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`."""
FIRST_ORDER_METHODS: tuple[Method, ...] = methods_of(Family.FIRST_ORDER)
"""The methods that step along the gradient itself."""
PAPER_METHODS: tuple[Method, ...] = tuple(method for method in KRONECKER_METHODS + FIRST_ORDER_METHODS if method.record.paper)
"""The paper's methods (§4.2), each with the authors' tuned settings in configs/paper/."""


def implementation(path: str) -> Any:
    """The object a record names (its block class or approximation function), imported on first use.

    Args:
        path: ``"module:attribute"``, e.g. ``"fimbench.curvature.kpsvd:approximate_kpsvd"``.

    Returns:
        The attribute of the imported module.
    """
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def parse_method(name: str | Method, kronecker_only: bool = False, choices: Sequence[Method] | None = None) -> Method:
    """``"deflation"`` -> ``Method.DEFLATION``, or one clear error.

    Args:
        name: a method's name (or a :class:`Method`).
        kronecker_only: offer only the Kronecker methods (when ``choices`` is not given).
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
    "EIGENBASIS_BLOCK",
    "KRONECKER_BLOCK",
    "EXACT_METHODS",
    "FIRST_ORDER_METHODS",
    "KRONECKER_METHODS",
    "NO_DAMPING",
    "PAPER_METHODS",
    "PRECONDITIONED_METHODS",
    "RECORDS",
    "REFERENCE_METHOD",
    "SCALAR_DAMPING",
    "AuthorsDamping",
    "Command",
    "Family",
    "Method",
    "MethodRecord",
    "implementation",
    "methods_of",
    "parse_method",
]
