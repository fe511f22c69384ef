"""The cost model: Table 1's predicted orders and fimbench's own multiply-add count, from each method's
registry record (:mod:`fimbench.cost_orders`, docs/design.md §4), and the exponents fitted to a
(widths × Fisher batches) sweep."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fimbench.cost_orders import PHASES, CostOrders
from fimbench.engines.cost.results import FIT_STATISTIC, AxisFit, CostPoint, ExponentFit, LayerCost
from fimbench.errors import FimbenchError
from fimbench.methods import Method

STEADY_PHASES: tuple[str, ...] = ("build_warm", "inverse", "apply")  # what training repeats every T1 / T2 / step
EXPONENT_TOLERANCE = 0.5  # |fitted − predicted| accepted for the dominant phase


def _orders(method: Method) -> CostOrders:
    """The method's cost orders (its registry record's); one error for a method that has none."""
    orders = method.record.orders
    if orders is None:
        raise FimbenchError(f"method {method.value} has no curvature to profile")
    return orders


def paper_order(method: Method, phase: str) -> tuple[str, float, float]:
    """Table 1's order for one layer: ``(formula, exponent of d, exponent of m)`` (:mod:`fimbench.cost_orders`)."""
    return _orders(method).paper(phase, method.rank)


def model_order(method: Method, phase: str) -> str:
    """The multiply-add count of :func:`modelled_cost` as a formula."""
    return _orders(method).model(phase, method.rank)


def modelled_cost(method: Method, phase: str, p: int, q: int, m: int, rank: int, iterations: int) -> float:
    """Leading multiply-adds of fimbench's implementation of one phase for a (q × p) layer
    (:meth:`fimbench.cost_orders.CostOrders.count`); ``rank``: Kronecker rank of the result (the warm prior
    has the same); ``iterations``: k of the run."""
    return _orders(method).count(phase, p, q, m, rank, iterations)


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
