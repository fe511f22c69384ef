"""A method's cost orders per layer and phase, torch-free: what its registry record says about Table 1.

Phases: ``build_cold`` and ``build_warm`` (``F̂`` from the statistics, without and with the EMA prior),
``inverse`` (the damped factorisation of a refresh) and ``apply`` (``F̃⁻¹ ∇`` of one layer). For each, a
:class:`CostOrders` gives

* :meth:`~CostOrders.paper`: Table 1's order (ℓ = 1) as ``(formula, exponent of d, exponent of m)``, or
  fimbench's derivation for a method Table 1 has no row for;
* :meth:`~CostOrders.model`: fimbench's own multiply-add count as a formula, and :meth:`~CostOrders.count`
  its value for a (q × p) layer with Fisher batch m (docs/design.md §4), which the cost sweep fits
  exponents against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

PHASES: tuple[str, ...] = ("build_cold", "build_warm", "inverse", "apply")
BUILD_PHASES: tuple[str, ...] = ("build_cold", "build_warm")


class CostOrders(Protocol):
    """A method's orders per phase (module docstring)."""

    def paper(self, phase: str, rank: int) -> tuple[str, float, float]:
        """Table 1's ``(formula, exponent of d, exponent of m)`` of one phase, ``rank`` the method's."""
        ...

    def model(self, phase: str, rank: int) -> str:
        """fimbench's multiply-add count of one phase as a formula."""
        ...

    def count(self, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
        """fimbench's leading multiply-adds of one phase for a (q × p) layer with Fisher batch m, Kronecker rank
        ``rank`` of the result (the warm prior has the same) and ``iterations`` k of its solver."""
        ...


@dataclass(frozen=True)
class KroneckerOrders:
    """A Kronecker method's orders: Table 1's build ``paper_build`` (inverse and apply ``d³``: ``2d³`` at rank 1,
    ``c₁d³`` / ``c₂d³`` at rank 2), fimbench's build ``model_build``.

    fimbench's build in Gram coordinates (curvature/rearranged.py) costs the Gram matrices ``m²(p + q)``, one
    weighted Gram ``m(p² + q²)`` per materialised pair (``pairs``; None: the result's rank), per prior term
    and per K-FAC factor pair (``kfac_factors``), ``2n³`` for ‖Z‖_F and ``per_iteration · n²`` per
    iteration, ``n = m + r₀`` (r₀ the prior's rank); without ``gram_coordinates`` (K-FAC) it is one weighted
    Gram (``weighted_grams`` of them: Shampoo's two, ``E[(gᵀg) ā āᵀ]`` and ``E[(āᵀā) g gᵀ]``, beside the
    scale's). Inverse: Cholesky / eigh of both factors ``p³ + q³``; apply: ``rank`` products ``G V A``.
    """

    paper_build: str
    model_build: str
    pairs: int | None
    kfac_factors: int = 0
    per_iteration: int = 8
    gram_coordinates: bool = True
    weighted_grams: int = 1

    def paper(self, phase: str, rank: int) -> tuple[str, float, float]:
        if phase in BUILD_PHASES:
            return self.paper_build, 2.0, 1.0
        constant = "2" if rank == 1 else ("c₁" if phase == "inverse" else "c₂")
        return f"{constant}d³", 3.0, 0.0

    def model(self, phase: str, rank: int) -> str:
        if phase == "inverse":
            return "p³ + q³"
        if phase == "apply":
            return "pq(p+q)" if rank == 1 else "r·pq(p+q)"
        return self.model_build

    def count(self, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
        if phase == "inverse":
            return float(p**3 + q**3)
        if phase == "apply":
            return float(rank * p * q * (p + q))
        weighted_gram = m * (p * p + q * q)
        if not self.gram_coordinates:
            return float(self.weighted_grams * weighted_gram)
        prior = rank if phase == "build_warm" else 0
        n = m + prior
        pairs = rank if self.pairs is None else self.pairs
        grams = (pairs + prior + self.kfac_factors) * weighted_gram
        return float(m * m * (p + q) + grams + 2 * n**3 + self.per_iteration * iterations * n * n)


@dataclass(frozen=True)
class EigenbasisOrders:
    """EKFAC's orders (no Table 1 entry): K-FAC's factors and the projected second moments
    ``(g Q_G)²ᵀ (ā Q_A)²`` (m(p² + q²) each, plus mpq), the eigenbases of a new basis (p³ + q³; the cost
    profile's warm build takes one), ``S + λ`` at a refresh, and four products with the eigenbases per apply."""

    def paper(self, phase: str, rank: int) -> tuple[str, float, float]:
        return {"inverse": ("pq", 2.0, 0.0), "apply": ("2pq(p+q)", 3.0, 0.0)}.get(phase, ("2m(p²+q²) + mpq + p³+q³", 3.0, 0.0))

    def model(self, phase: str, rank: int) -> str:
        return self.paper(phase, rank)[0]

    def count(self, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
        build = 2 * m * (p * p + q * q) + m * p * q + p**3 + q**3
        return float({"inverse": p * q, "apply": 2 * p * q * (p + q)}.get(phase, build))


@dataclass(frozen=True)
class OrthogonalisationOrders:
    """Muon's orders (no Table 1 entry): no statistics and no factorisation (a constant, nothing to fit), and
    per apply five Newton–Schulz iterations ``5 (2 r² s + r³)`` with ``r = min(p, q)``, ``s = max(p, q)``."""

    def paper(self, phase: str, rank: int) -> tuple[str, float, float]:
        return ("5(2d³ + d³)", 3.0, 0.0) if phase == "apply" else ("none", 0.0, 0.0)

    def model(self, phase: str, rank: int) -> str:
        return "5(2r²s + r³)" if phase == "apply" else "none"

    def count(self, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
        r, s = min(p, q), max(p, q)
        return float(5 * (2 * r * r * s + r**3)) if phase == "apply" else 1.0


@dataclass(frozen=True)
class ExactOrders:
    """The exact references' orders per layer (no Table 1 entry): the Gram term ``K_l``, the Cholesky factor
    of ``mλI + K`` and the Woodbury apply ``J_l v`` + ``J_lᵀ u``."""

    def paper(self, phase: str, rank: int) -> tuple[str, float, float]:
        return {"inverse": ("m³/3", 0.0, 3.0), "apply": ("2mpq", 2.0, 1.0)}.get(phase, ("m²(p+q)", 1.0, 2.0))

    def model(self, phase: str, rank: int) -> str:
        return self.paper(phase, rank)[0]

    def count(self, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
        return float({"inverse": m**3 / 3, "apply": 2 * m * p * q}.get(phase, m * m * (p + q)))
