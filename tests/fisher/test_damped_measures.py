"""The five damped measures of the Figure 1 meter (fimbench.fisher.damped_measures) against dense float64 brute
force on a float64 MLP: F and ∇ from torch.func per-example gradients (data targets, empirical Fisher), the damped
K-FAC block built by hand from its factors, dense solves, dense KL, dense eigenvectors; per layer and network."""

from __future__ import annotations

import math

import pytest
import torch
from reference import DTYPE, per_example_weight_gradients

from fimbench.engines.config import RunConfig
from fimbench.engines.fisher_error import Entry, FisherErrorMeter
from fimbench.fisher.damped_measures import EXACT_MEASURES, direction_errors
from fimbench.fisher.likelihood import Likelihood
from fimbench.fisher.network_error import NETWORK
from fimbench.methods import Method

EXACT = 1e-8  # relative: exact identities in float64 (KL sums d log λ terms that cancel)
DAMPING = 0.1
TOP_K = 3
LAYERS = [1, 3]


def dense_kl(first: torch.Tensor, second: torch.Tensor) -> float:
    """``KL(N(0, first) ‖ N(0, second))``."""
    d = first.shape[0]
    trace = torch.trace(torch.linalg.solve(second, first))
    return 0.5 * float(trace - d + torch.linalg.slogdet(second).logabsdet - torch.linalg.slogdet(first).logabsdet)


def dense_alignment(F: torch.Tensor, F_hat: torch.Tensor, k: int) -> float:
    """``‖U_kᵀ Û_k‖²_F / k`` from dense eigenvectors."""
    U = torch.linalg.eigh(F).eigenvectors[:, -k:]
    U_hat = torch.linalg.eigh(F_hat).eigenvectors[:, -k:]
    return float((U.T @ U_hat).square().sum()) / k


def factored_kfac(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(A + π√λ I) ⊗ (G + √λ/π I)`` with K-FAC's ``A = āᵀā/m``, ``G = gᵀg/m`` and π by the trace rule (§2.2)."""
    m, p, q = a.shape[0], a.shape[1], g.shape[1]
    A, G = a.T @ a / m, g.T @ g / m
    pi = math.sqrt((float(torch.trace(A)) / p) / (float(torch.trace(G)) / q))
    root = math.sqrt(DAMPING)
    return torch.kron(A + pi * root * torch.eye(p, dtype=DTYPE), G + root / pi * torch.eye(q, dtype=DTYPE))


def test_meter_measures_match_dense_brute_force(make_mlp):
    model = make_mlp((6, 5, 4, 6), Likelihood.BERNOULLI, seed=2)
    m = 12
    x = (torch.rand(m, 6, generator=torch.Generator().manual_seed(3), dtype=DTYPE) > 0.5).to(DTYPE)
    entries = [Entry(Method.KFAC, 1), Entry(Method.EXACT_NG, 0), Entry(Method.EXACT_NG_BLOCK, 0)]
    meter = FisherErrorMeter(model, LAYERS, entries, RunConfig(), torch.device("cpu"), empirical=True, top_k=TOP_K)
    rows = {(row.layer, row.method): row for row in meter.measure(0, x, DAMPING)}

    gradients = per_example_weight_gradients(model, x, x, "bernoulli")
    per_layer = [gradients[layer - 1].transpose(1, 2).reshape(m, -1) for layer in LAYERS]  # vec: column-major
    mean_gradient = [rows_l.mean(0) for rows_l in per_layer]  # ∇ of the batch's mean loss
    J = torch.cat(per_layer, dim=1)
    F = J.T @ J / m
    eye = torch.eye(F.shape[0], dtype=DTYPE)
    gradient = torch.cat(mean_gradient)
    exact_direction = torch.linalg.solve(F + DAMPING * eye, gradient)

    blocks, directions = [], []
    for index, rows_l in enumerate(per_layer):
        layer = LAYERS[index]
        F_ll = rows_l.T @ rows_l / m
        # the activations and derivatives of the layer, read off the rank-one per-example gradients DW = g āᵀ
        DW = gradients[layer - 1]
        a = DW[:, 0, :] / DW[:, 0, -1:]  # ā (bias entry 1): row 0 of DW is g_0 ā
        g = DW[:, :, -1]  # the bias column of DW is g
        K_hat = factored_kfac(a, g)
        local = F_ll + DAMPING * torch.eye(F_ll.shape[0], dtype=DTYPE)
        row = rows[(layer, "kfac")]
        assert row.kl_forward == pytest.approx(dense_kl(K_hat, local), rel=EXACT)
        assert row.kl_reverse == pytest.approx(dense_kl(local, K_hat), rel=EXACT)
        d_hat, d = torch.linalg.solve(K_hat, mean_gradient[index]), torch.linalg.solve(local, mean_gradient[index])
        assert row.direction_error == pytest.approx(float((d_hat - d).norm() / d.norm()), rel=EXACT)
        assert row.direction_cosine == pytest.approx(float(d_hat @ d / (d_hat.norm() * d.norm())), rel=EXACT)
        undamped = torch.kron(a.T @ a / m, g.T @ g / m)
        assert row.subspace_alignment == pytest.approx(dense_alignment(F_ll, undamped, TOP_K), rel=EXACT)
        assert 0.0 < row.kl_reverse and row.direction_error > 1e-3 and 0.0 < row.subspace_alignment < 1.0
        for method in ("exact-ng", "exact-ng-block"):
            assert tuple(getattr(rows[(layer, method)], name) for name in EXACT_MEASURES._fields) == EXACT_MEASURES
        blocks.append((K_hat, local, undamped, F_ll))
        directions.append(d_hat)

    approximate = torch.block_diag(*[b[0] for b in blocks])
    network = rows[(NETWORK, "kfac")]
    assert network.kl_forward == pytest.approx(dense_kl(approximate, F + DAMPING * eye), rel=EXACT)
    assert network.kl_reverse == pytest.approx(dense_kl(F + DAMPING * eye, approximate), rel=EXACT)
    d_hat = torch.cat(directions)
    assert network.direction_error == pytest.approx(float((d_hat - exact_direction).norm() / exact_direction.norm()), rel=EXACT)
    assert network.subspace_alignment == pytest.approx(
        dense_alignment(F, torch.block_diag(*[b[2] for b in blocks]), TOP_K), rel=EXACT
    )
    block_diagonal = torch.block_diag(*[b[1] for b in blocks])
    exact_block_row = rows[(NETWORK, "exact-ng-block")]
    assert exact_block_row.kl_reverse == pytest.approx(dense_kl(F + DAMPING * eye, block_diagonal), rel=EXACT)
    d_block = torch.linalg.solve(block_diagonal, gradient)
    assert exact_block_row.direction_cosine == pytest.approx(
        float(d_block @ exact_direction / (d_block.norm() * exact_direction.norm())), rel=EXACT
    )
    assert exact_block_row.subspace_alignment == pytest.approx(dense_alignment(F, torch.block_diag(*[b[3] for b in blocks]), TOP_K), rel=EXACT)
    assert tuple(getattr(rows[(NETWORK, "exact-ng")], name) for name in EXACT_MEASURES._fields) == EXACT_MEASURES


def test_direction_errors_of_equal_and_opposite_directions():
    d = [torch.tensor([[1.0, 2.0]], dtype=DTYPE), torch.tensor([[3.0]], dtype=DTYPE)]
    assert direction_errors(d, d) == (0.0, pytest.approx(1.0))
    error, cosine = direction_errors([-piece for piece in d], d)
    assert error == pytest.approx(2.0) and cosine == pytest.approx(-1.0)
    assert all(math.isnan(value) for value in direction_errors(d, [torch.zeros_like(piece) for piece in d]))
