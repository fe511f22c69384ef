"""What a Figure 1 run is asked (:class:`FisherErrorSettings`) and what it gives: one :class:`ErrorRow` per
layer, method and measured iteration, the methods as :class:`Entry` items, and the run's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fimbench.engines.plots import METHOD_LABELS
from fimbench.fisher.damped_measures import DampedMeasures
from fimbench.fisher.subspace import DEFAULT_TOP_K
from fimbench.methods import BLOCK_METHODS, KRONECKER_METHODS, Method
from fimbench.names import variant_name
from fimbench.preconditioner.two_level import CoarseSpace

DEFAULT_METHODS: tuple[Method, ...] = KRONECKER_METHODS
MEASURES = DampedMeasures._fields
"""The columns beyond Error 1 and 2: kl_forward, kl_reverse, direction_error, direction_cosine, subspace_alignment."""
CSV_COLUMNS = ("iteration", "layer", "method", "rank", "error1", "error2", *MEASURES, "iterations", "seconds", "path")


@dataclass(frozen=True)
class ErrorRow:
    """One approximation of one layer's block at one iteration (a row of ``errors.csv``); ``layer`` is
    ``"network"`` for the cross-layer error over all chosen layers (Error 2 NaN, iterations and seconds
    summed over the layers).

    ``kl_forward`` … ``subspace_alignment``: the damped measures (:mod:`fimbench.fisher.damped_measures`) at
    the run's λ; NaN where they cannot be computed (a Kronecker rank above 2; a two-level entry).

    ``rank``: Kronecker rank (0: the exact references); ``iterations``: power-SVD / Lanczos iterations used;
    ``seconds``: time to build the approximation (device-synchronised; 0 for the exact references, which
    build nothing); ``path``: how Error 1 / Error 2 were computed.
    """

    iteration: int
    layer: int | str
    method: str
    rank: int
    error1: float
    error2: float
    kl_forward: float
    kl_reverse: float
    direction_error: float
    direction_cosine: float
    subspace_alignment: float
    iterations: int
    seconds: float
    path: str


@dataclass(frozen=True)
class Entry:
    """One curve of Figure 1: a method at a Kronecker rank (Lanczos may appear at several ranks), or with
    ``coarse`` its two-level version, which has a network row only (its blocks are the method's)."""

    method: Method
    rank: int
    coarse: str = CoarseSpace.NONE.value

    @property
    def name(self) -> str:
        """The ``method`` of its rows: ``kfac``, or ``kfac+nicolaides`` for a two-level entry."""
        return variant_name(self.method.value, coarse=self.coarse)

    @property
    def label(self) -> str:
        return entry_label(self.name, self.rank)


def entry_label(method: str, rank: int) -> str:
    """``KFAC``, ``Deflation`` …; Lanczos at a rank other than the paper's 2 as ``Lanczos r=3``; a two-level
    entry as ``KFAC + nicolaides``."""
    base, _, coarse = method.partition("+")
    name = METHOD_LABELS.get(base, base)
    name = f"{name} r={rank}" if base in METHOD_LABELS and rank != Method(base).rank else name
    return f"{name} + {coarse}" if coarse else name


@dataclass(frozen=True)
class FisherErrorSettings:
    """What to measure: 1-based layer numbers (Linear / Conv2d in module order; ``None``: all), methods,
    schedule, Lanczos ranks, and k of ``subspace_alignment``."""

    layers: tuple[int, ...] | None = (5,)
    methods: tuple[Method, ...] = DEFAULT_METHODS
    iterations: int = 1000
    every: int = 20
    lanczos_rank: int | None = None  # also measure Lanczos at ranks 1..R
    empirical: bool = False
    coarse: tuple[str, ...] = ()  # two-level network rows: nicolaides and / or spectral
    top_k: int = DEFAULT_TOP_K  # the eigenspaces' dimension k of subspace_alignment

    def entries(self) -> list[Entry]:
        """Methods in the order given; Lanczos at rank 2, or at ranks 1..R with ``lanczos_rank``; then each
        block method's two-level entry per coarse space."""
        entries: list[Entry] = []
        ranked = [method for method in Method if method.record.adjustable_rank] if self.lanczos_rank is not None else []
        for method in self.methods:
            if method not in ranked:
                entries.append(Entry(method, method.rank))
        entries += [Entry(method, rank) for method in ranked for rank in range(1, self.lanczos_rank + 1)]  # type: ignore[operator]
        two_level = [Entry(e.method, e.rank, coarse) for coarse in self.coarse for e in entries if e.method in BLOCK_METHODS]
        return entries + two_level


@dataclass
class FisherErrorResult:
    """Everything measured in one run (``status``: completed | interrupted)."""

    dataset: str
    layers: list[int]
    layer_shapes: dict[int, tuple[int, int]]  # layer -> (p, q) of its block's factors
    entries: list[Entry]
    rows: list[ErrorRow] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, training loss)
    info: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"


class FisherErrorProgress(Protocol):
    def start(self, result: FisherErrorResult, measurements: int) -> None: ...
    def step(self, iteration: int, loss: float) -> None: ...
    def measured(self, iteration: int, rows: list[ErrorRow]) -> None: ...
