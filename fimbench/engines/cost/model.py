"""The cost model: Table 1's predicted orders, fimbench's own multiply-add count for its Gram-coordinate
builds (docs/design.md §4), and the exponents fitted to a (widths × Fisher batches) sweep."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fimbench.engines.cost.results import FIT_STATISTIC, AxisFit, CostPoint, ExponentFit, LayerCost
from fimbench.errors import FimbenchError
from fimbench.methods import EXACT_METHODS, Method

PHASES: tuple[str, ...] = ("build_cold", "build_warm", "inverse", "apply")
STEADY_PHASES: tuple[str, ...] = ("build_warm", "inverse", "apply")  # what training repeats every T1 / T2 / step
EXPONENT_TOLERANCE = 0.5  # |fitted − predicted| accepted for the dominant phase

# Table 1's build column per layer (ℓ = 1); inverse and apply are d³ for every method (paper_order).
# MODEL_BUILD: the formula :func:`modelled_cost` evaluates for fimbench's Gram-coordinate builds.
PAPER_BUILD: dict[Method, str] = {
    Method.KFAC: "2md²",
    Method.KPSVD: "4k₁md²",
    Method.DEFLATION: "2md² + 4k₁md²",
    Method.LANCZOS: "4k₂md² + K³ + 2Kd²",
    Method.KFAC_CORRECTED: "2md² + 4k₁md²",
}
MODEL_BUILD: dict[Method, str] = {
    Method.KFAC: "m(p²+q²)",
    Method.KPSVD: "m²(p+q) + (1+r₀)m(p²+q²) + 2n³ + 8kn²",
    Method.DEFLATION: "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²",
    Method.LANCZOS: "m²(p+q) + (r+r₀)m(p²+q²) + 2n³ + 10kn²",
    Method.KFAC_CORRECTED: "m²(p+q) + (2+r₀)m(p²+q²) + 2n³ + 8kn²",
}


EXACT_ORDERS: dict[str, tuple[str, float, float]] = {
    "build_cold": ("m²(p+q)", 1.0, 2.0),
    "build_warm": ("m²(p+q)", 1.0, 2.0),
    "inverse": ("m³/3", 0.0, 3.0),
    "apply": ("2mpq", 2.0, 1.0),
}
"""The exact references' orders per layer (no Table 1 entry): the Gram term ``K_l``, the Cholesky factor
of ``mλI + K``, and the Woodbury apply ``J_l v`` + ``J_lᵀ u``."""


EKFAC_ORDERS: dict[str, tuple[str, float, float]] = {
    "build_cold": ("2m(p²+q²) + mpq + p³+q³", 3.0, 0.0),
    "build_warm": ("2m(p²+q²) + mpq + p³+q³", 3.0, 0.0),
    "inverse": ("pq", 2.0, 0.0),
    "apply": ("2pq(p+q)", 3.0, 0.0),
}
"""EKFAC's orders per layer (no Table 1 entry): K-FAC's factors and the projected second moments
``(g Q_G)²ᵀ (ā Q_A)²`` (m(p² + q²) each, plus mpq), the eigenbases of a new basis (p³ + q³; the cost
profile's warm build takes one), ``S + λ`` at a refresh, and four products with the eigenbases per apply."""


def paper_order(method: Method, phase: str) -> tuple[str, float, float]:
    """Table 1's order for one layer: ``(formula, exponent of d, exponent of m)``; the exact references':
    :data:`EXACT_ORDERS`; EKFAC's: :data:`EKFAC_ORDERS`."""
    if method in EXACT_METHODS:
        return EXACT_ORDERS[phase]
    if method is Method.EKFAC:
        return EKFAC_ORDERS[phase]
    if phase in ("build_cold", "build_warm"):
        return PAPER_BUILD[method], 2.0, 1.0
    constant = "2" if method.rank == 1 else ("c₁" if phase == "inverse" else "c₂")
    return f"{constant}d³", 3.0, 0.0


def model_order(method: Method, phase: str) -> str:
    """The multiply-add count of :func:`modelled_cost` as a formula."""
    if method in EXACT_METHODS:
        return EXACT_ORDERS[phase][0]
    if method is Method.EKFAC:
        return EKFAC_ORDERS[phase][0]
    if phase == "inverse":
        return "p³ + q³"
    if phase == "apply":
        return "pq(p+q)" if method.rank == 1 else "r·pq(p+q)"
    return MODEL_BUILD[method]


def modelled_cost(method: Method, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
    """Leading multiply-adds of fimbench's implementation of one phase for a (q × p) layer.

    ``rank``: Kronecker rank of the result (the warm prior has the same); ``iterations``: k of the run.
    Build: KFAC ``m(p² + q²)``; otherwise the Gram matrices ``m²(p + q)``, one weighted Gram
    ``m(p² + q²)`` per materialised pair, per prior term (its quadratic forms) and for KFAC-corrected's
    K-FAC factors, ``2n³`` for ‖Z‖_F and ``8n²`` (power SVD) or ``10n²`` (Lanczos, re-orthogonalised)
    per iteration, ``n = m + r₀``. Inverse: Cholesky / eigh of both factors ``p³ + q³``; apply:
    ``rank`` pairs of products ``G V A`` = ``pq(p + q)``. The exact references: :data:`EXACT_ORDERS`.
    """
    if method in EXACT_METHODS:
        return float({"inverse": m**3 / 3, "apply": 2 * m * p * q}.get(phase, m * m * (p + q)))
    if method is Method.EKFAC:
        build = 2 * m * (p * p + q * q) + m * p * q + p**3 + q**3
        return float({"inverse": p * q, "apply": 2 * p * q * (p + q)}.get(phase, build))
    if phase == "inverse":
        return float(p**3 + q**3)
    if phase == "apply":
        return float(rank * p * q * (p + q))
    weighted_gram = m * (p * p + q * q)
    if method is Method.KFAC:
        return float(weighted_gram)
    prior = rank if phase == "build_warm" else 0
    n = m + prior
    pairs = 1 if method in (Method.KPSVD, Method.KFAC_CORRECTED) else rank
    kfac_factors = 1 if method is Method.KFAC_CORRECTED else 0
    per_iteration = 10 if method is Method.LANCZOS else 8
    return float(
        m * m * (p + q) + (pairs + prior + kfac_factors) * weighted_gram + 2 * n**3 + per_iteration * iterations * n * n
    )


def _slopes(x: Tensor, y: Tensor) -> Tensor:
    """Least-squares slopes of the columns of ``y`` against ``x`` (both already logarithms)."""
    centred = x - x.mean()
    return (centred.unsqueeze(1) * (y - y.mean(dim=0))).sum(dim=0) / centred.square().sum()


def fit_exponents(
    widths: Sequence[int], batches: Sequence[int], seconds: Tensor
) -> tuple[dict[int, float] | None, dict[int, float] | None]:
    """Slopes of ``log t`` vs ``log d`` for each m and vs ``log m`` for each d; ``seconds`` is (widths, batches).

    A variable with a single value has no slope (``None``).
    """
    log_t = torch.log(seconds.to(torch.float64))
    log_d = torch.log(torch.tensor(list(widths), dtype=torch.float64))
    log_m = torch.log(torch.tensor(list(batches), dtype=torch.float64))
    per_m = dict(zip(batches, _slopes(log_d, log_t).tolist())) if len(widths) > 1 else None
    per_d = dict(zip(widths, _slopes(log_m, log_t.transpose(0, 1)).tolist())) if len(batches) > 1 else None
    return per_m, per_d


def _axis_fit(per: dict[int, float] | None, paper: float, model: dict[int, float] | None) -> AxisFit | None:
    if per is None or model is None:
        return None
    return AxisFit(sum(per.values()) / len(per), per, paper, sum(model.values()) / len(model))


def sweep_exponents(widths: Sequence[int], batches: Sequence[int], points: list[CostPoint]) -> list[ExponentFit]:
    """Fitted (to :data:`FIT_STATISTIC`), paper and modelled exponents for every method and phase of a
    (widths × batches) sweep; the dominant phase is the slowest steady one at the largest (d, m)."""
    grid = {(point.width, point.fisher_batch): point for point in points}
    largest = grid[(max(widths), max(batches))].profile
    fits: list[ExponentFit] = []
    for cost in largest.methods:
        method = Method(cost.method)
        dominant = max(STEADY_PHASES, key=lambda phase: cost.total(phase, FIT_STATISTIC))
        for phase in PHASES:
            measured = torch.zeros(len(widths), len(batches), dtype=torch.float64)
            modelled = torch.zeros_like(measured)
            for i, d in enumerate(widths):
                for j, m in enumerate(batches):
                    layer = point_layer(grid[(d, m)], cost.method)
                    iterations = layer.iterations_cold if phase == "build_cold" else layer.iterations_warm
                    measured[i, j] = getattr(layer.times[phase], FIT_STATISTIC)
                    modelled[i, j] = modelled_cost(method, phase, layer.p, layer.q, m, layer.rank, iterations or 0)
            fitted_d, fitted_m = fit_exponents(widths, batches, measured)
            model_d, model_m = fit_exponents(widths, batches, modelled)
            formula, paper_d, paper_m = paper_order(method, phase)
            axis_d, axis_m = _axis_fit(fitted_d, paper_d, model_d), _axis_fit(fitted_m, paper_m, model_m)
            axes = [axis for axis in (axis_d, axis_m) if axis is not None]
            within = all(abs(axis.fitted - axis.model) <= EXPONENT_TOLERANCE for axis in axes) if axes else None
            fits.append(ExponentFit(
                cost.method, phase, formula, model_order(method, phase), axis_d, axis_m, phase == dominant, within
            ))
    return fits


def point_layer(point: CostPoint, method: str) -> LayerCost:
    """The single layer of a sweep point's profile for ``method``."""
    cost = point.profile.method(method)
    if cost is None:
        raise FimbenchError(f"method '{method}' was not profiled at d={point.width}, m={point.fisher_batch}")
    return cost.layers[0]
