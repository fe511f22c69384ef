"""The cross-layer error ‖F − F̂‖_F / ‖F‖_F of the multi-layer Fisher (fimbench.fisher.network_error) against
dense float64 computations: random 2-D and shared-weight statistics with Kronecker blocks, the exact-NG
references, and the ``network`` rows of the Figure 1 meter against torch.func per-example gradients."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, kron_sum, per_example_weight_gradients

from fimbench.curvature import approximate
from fimbench.engines.config import RunConfig
from fimbench.engines.fisher_error import Entry, FisherErrorMeter
from fimbench.fisher.block_errors import ExactFisher
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.fisher.network_error import (
    NETWORK,
    NetworkTerms,
    exact_block_terms,
    kronecker_block_terms,
    network_error,
    network_squared_norm,
)
from fimbench.methods import Method

EXACT = 1e-10  # Gram identities, exact in real arithmetic: float64 round-off (and the error²'s cancellation)


def jacobian_rows(stats: LayerStatistics) -> torch.Tensor:
    """Per-example gradients ``vec(DW_n)`` in the column-major order of ``kron(A, G)`` (fimbench.fisher.block_errors.exact_block)."""
    a, g = stats.a, stats.g
    if a.ndim == 2:
        return (a.unsqueeze(2) * g.unsqueeze(1)).reshape(a.shape[0], -1)
    return torch.einsum("ntq,ntp->npq", g, a).reshape(a.shape[0], -1)


def random_layers(shared: bool, generator: torch.Generator) -> list[LayerStatistics]:
    m, T = 9, 3
    shapes = [(4, 3), (5, 2), (3, 4)]  # (p, q)
    if shared:
        return [LayerStatistics(torch.randn(m, T, p, generator=generator, dtype=DTYPE), torch.randn(m, T, q, generator=generator, dtype=DTYPE))
                for p, q in shapes]
    return [LayerStatistics(torch.randn(m, p, generator=generator, dtype=DTYPE), torch.randn(m, q, generator=generator, dtype=DTYPE))
            for p, q in shapes]


def dense_relative(F: torch.Tensor, F_hat: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(F - F_hat) / torch.linalg.matrix_norm(F))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "kfac-corrected"])
def test_block_diagonal_network_error_equals_dense(shared, method, generator):
    statistics = random_layers(shared, generator)
    J = torch.cat([jacobian_rows(stats) for stats in statistics], dim=1)
    F = J.T @ J / J.shape[0]
    assert network_squared_norm(statistics) == pytest.approx(float(F.square().sum()), rel=EXACT)
    approximations = [approximate(method, stats.a, stats.g, tol=1e-12) for stats in statistics]
    terms = [kronecker_block_terms(ExactFisher(stats.a, stats.g), ks.terms) for stats, ks in zip(statistics, approximations)]
    total = sum(terms[1:], terms[0])
    F_hat = torch.block_diag(*[kron_sum(ks.terms) for ks in approximations])
    assert network_error(network_squared_norm(statistics), total).value == pytest.approx(dense_relative(F, F_hat), rel=1e-8)


@pytest.mark.parametrize("shared", [False, True])
def test_exact_references_network_error(shared, generator):
    """exact-ng-block: ‖F − blockdiag(F_ll)‖ / ‖F‖ > 0; exact-ng: F̂ = F gives exactly 0."""
    statistics = random_layers(shared, generator)
    rows = [jacobian_rows(stats) for stats in statistics]
    J = torch.cat(rows, dim=1)
    F = J.T @ J / J.shape[0]
    blocks = torch.block_diag(*[r.T @ r / r.shape[0] for r in rows])
    squared = network_squared_norm(statistics)
    terms = [exact_block_terms(ExactFisher(stats.a, stats.g)) for stats in statistics]
    block_error = network_error(squared, sum(terms[1:], terms[0])).value
    assert block_error == pytest.approx(dense_relative(F, blocks), rel=1e-8) and block_error > 0.1
    assert network_error(squared, NetworkTerms(squared, squared)).value == 0.0
    assert network_squared_norm(statistics[:1]) == pytest.approx(terms[0].squared_norm, rel=EXACT)  # one layer: its block


def test_zero_fisher_is_nan():
    assert network_error(0.0, NetworkTerms(0.0, 0.0)).value != network_error(0.0, NetworkTerms(0.0, 0.0)).value


def test_meter_network_rows_match_torch_func(make_mlp):
    """The meter's rows on a float64 MLP with data targets: per block, exact references are 0; the network
    rows equal the dense ‖F − F̂‖/‖F‖ with F from torch.func per-example gradients of the chosen layers."""
    model = make_mlp((6, 5, 4, 6), Likelihood.BERNOULLI, seed=2)
    x = (torch.rand(10, 6, generator=torch.Generator().manual_seed(3), dtype=DTYPE) > 0.5).to(DTYPE)
    entries = [Entry(Method.KFAC, 1), Entry(Method.EXACT_NG, 0), Entry(Method.EXACT_NG_BLOCK, 0)]
    meter = FisherErrorMeter(model, [1, 3], entries, RunConfig(), torch.device("cpu"), empirical=True)
    rows = meter.measure(0, x, damping=0.1)
    gradients = per_example_weight_gradients(model, x, x, "bernoulli")
    chosen = [gradients[0].reshape(10, -1), gradients[2].reshape(10, -1)]  # layers 1 and 3, row-major [W | b]
    J = torch.cat(chosen, dim=1)
    F = J.T @ J / 10
    blocks = torch.block_diag(*[r.T @ r / 10 for r in chosen])
    network = {row.method: row for row in rows if row.layer == NETWORK}
    per_block = [row for row in rows if row.layer != NETWORK]
    assert len(per_block) == 2 * 3 and set(network) == {"kfac", "exact-ng", "exact-ng-block"}
    assert all(row.error1 == row.error2 == 0.0 and row.path == "exact" for row in per_block if row.method.startswith("exact"))
    assert network["exact-ng"].error1 == 0.0
    assert network["exact-ng-block"].error1 == pytest.approx(dense_relative(F, blocks), rel=1e-8)
    assert network["exact-ng-block"].error1 > 0.01
    kfac = [row for row in per_block if row.method == "kfac"]
    # Pythagoras: ‖F − blockdiag(F̂_l)‖² = ‖F − blockdiag(F_ll)‖² + Σ_l ‖F_ll − F̂_l‖² (Error 1 of each block × ‖F_ll‖)
    squared = float(F.square().sum())
    off_diagonal = network["exact-ng-block"].error1 ** 2 * squared
    within = sum(row.error1**2 * float((r.T @ r / 10).square().sum()) for row, r in zip(kfac, chosen))
    assert network["kfac"].error1 ** 2 * squared == pytest.approx(off_diagonal + within, rel=1e-8)
    assert network["kfac"].seconds == pytest.approx(sum(row.seconds for row in kfac))
