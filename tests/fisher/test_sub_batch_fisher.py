"""SubBatchFisher against the dense network Fisher ``JᵀJ/m`` built from torch.func per-example gradients
(float64): Gram matrices, products, and the damped solve, whole network and per block, with 2-D and
shared-weight (T-position) statistics and a bias-free layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics, capture_statistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.fisher.sub_batch import SubBatchFisher

DTYPE = torch.float64
TOLERANCE = 1e-10
"""float64 round-off of m ≤ 16 examples and a few hundred parameters."""


class SequenceNet(nn.Module):
    """Linear (bias-free) over a sequence of T tokens, tanh, mean over tokens, Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Linear(3, 4, bias=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.tokens(x)).mean(dim=1))


def dense_jacobian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Rows ``j_n``: per-example gradients of ``ℓ_n`` for every layer as ``[W | b]`` (bias last), flattened
    row-major like the (q, p) matrices SubBatchFisher multiplies."""
    params = {name: value.detach() for name, value in model.named_parameters()}

    def loss_one(parameters: dict[str, torch.Tensor], x_n: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
        return Likelihood.GAUSSIAN.nll(functional_call(model, parameters, (x_n.unsqueeze(0),)), y_n.unsqueeze(0)).sum()

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            W = grads[f"{name}.weight"]
            if module.bias is not None:
                W = torch.cat([W, grads[f"{name}.bias"].unsqueeze(-1)], dim=-1)
            blocks.append(W.reshape(x.shape[0], -1))
    return torch.cat(blocks, dim=1)


@pytest.fixture
def problem() -> tuple[SubBatchFisher, torch.Tensor, list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(0)
    model = SequenceNet().to(DTYPE)
    x = torch.randn(7, 5, 3, generator=generator, dtype=DTYPE)
    y = torch.randn(7, 2, generator=generator, dtype=DTYPE)
    layers = [model.tokens, model.head]
    statistics = capture_statistics(model, x, Likelihood.GAUSSIAN, layers, targets=y)
    shapes = [(4, 3), (2, 5)]
    return SubBatchFisher(statistics), dense_jacobian(model, x, y), shapes


def split(vector: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    sizes = [q * p for q, p in shapes]
    return [part.reshape(shape) for part, shape in zip(vector.split(sizes), shapes)]


def flat(matrices: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([matrix.reshape(-1) for matrix in matrices])


def test_gram_is_jacobian_jacobian_transpose(problem):
    fisher, J, _ = problem
    assert torch.allclose(fisher.gram(), J @ J.T, atol=TOLERANCE)
    assert torch.allclose(fisher.layer_gram(0), J[:, :12] @ J[:, :12].T, atol=TOLERANCE)


def test_products_equal_the_dense_fisher(problem):
    fisher, J, shapes = problem
    F = J.T @ J / J.shape[0]
    generator = torch.Generator().manual_seed(1)
    v, w = torch.randn(2, J.shape[1], generator=generator, dtype=DTYPE)
    assert torch.allclose(flat(fisher.matvec(split(v, shapes))), F @ v, atol=TOLERANCE)
    assert torch.allclose(fisher.bilinear(split(v, shapes), split(w, shapes)), v @ F @ w, atol=TOLERANCE)


@pytest.mark.parametrize("damping", [1e-3, 1.0])
def test_damped_solve_equals_dense_solve(problem, damping):
    fisher, J, shapes = problem
    F = J.T @ J / J.shape[0]
    v = torch.randn(J.shape[1], generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    expected = torch.linalg.solve(F + damping * torch.eye(F.shape[0], dtype=DTYPE), v)
    assert torch.allclose(flat(fisher.solve(split(v, shapes), damping)), expected, atol=1e-8)
    blocks = [F[:12, :12], F[12:, 12:]]
    per_block = torch.cat(
        [torch.linalg.solve(B + damping * torch.eye(B.shape[0], dtype=DTYPE), part) for B, part in zip(blocks, v.split([12, 10]))]
    )
    assert torch.allclose(flat(fisher.solve(split(v, shapes), damping, per_layer=True)), per_block, atol=1e-8)


def test_shared_weight_gram_paths_agree():
    """The per-example-gradient path and the position-block path of a T-position layer's Gram."""
    generator = torch.Generator().manual_seed(3)
    a, g = torch.randn(4, 6, 2, generator=generator, dtype=DTYPE), torch.randn(4, 6, 3, generator=generator, dtype=DTYPE)
    wide = SubBatchFisher([LayerStatistics(a, g)]).layer_gram(0)  # m p q = 24 ≤ (m T)² = 576: gradients
    gradients = torch.einsum("ntq,ntp->nqp", g, a).reshape(4, -1)
    assert torch.allclose(wide, gradients @ gradients.T, atol=TOLERANCE)
    a, g = torch.randn(2, 2, 9, generator=generator, dtype=DTYPE), torch.randn(2, 2, 8, generator=generator, dtype=DTYPE)
    blocks = SubBatchFisher([LayerStatistics(a, g)]).layer_gram(0)  # m p q = 144 > (m T)² = 16: position blocks
    gradients = torch.einsum("ntq,ntp->nqp", g, a).reshape(2, -1)
    assert torch.allclose(blocks, gradients @ gradients.T, atol=TOLERANCE)


def test_mismatched_statistics_and_vectors_are_refused(problem):
    fisher, _, _ = problem
    with pytest.raises(FimbenchError, match="same number m"):
        SubBatchFisher([LayerStatistics(torch.ones(3, 2), torch.ones(3, 1)), LayerStatistics(torch.ones(2, 2), torch.ones(2, 1))])
    with pytest.raises(FimbenchError, match="one \\(q, p\\) matrix per layer"):
        fisher.matvec([torch.ones(4, 3)])
    with pytest.raises(FimbenchError, match="damping > 0"):
        fisher.solve([torch.ones(4, 3), torch.ones(2, 5)], 0.0)
