"""Dense brute-force references for fimbench's fast code, written from the paper's definitions only.

Nothing here imports fimbench's Kronecker algebra or curvature code (only the ``Metric`` result type): per-example gradients come from
``torch.func`` (functional_call + vmap(grad)) on the real model, the Fisher block is the average of
outer products of those gradients, ``Z(F)`` is assembled block by block from the paper's definition
(§3.1), and the best Kronecker rank-r approximation is read off a dense SVD of ``Z(F)``
(Theorem 3.1 / Eckart–Young). Everything is float64 and small.

Conventions (docs/design.md §1): ``vec`` stacks columns; a layer's weight matrix is ``[W | b]`` (q × p) with the
bias column LAST; ``F`` has p × p blocks of size q × q (p: activation side, q: derivative side).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fimbench.fisher.block_errors import Metric

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------- vec / MAT
def vec_ref(matrix: Tensor) -> Tensor:
    """Stack the columns of ``matrix`` (column-major vectorisation), written as a loop over columns."""
    return torch.cat([matrix[:, j] for j in range(matrix.shape[1])])


def mat_ref(vector: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`vec_ref`: column ``j`` is ``vector[j·rows : (j+1)·rows]``."""
    return torch.stack([vector[j * rows : (j + 1) * rows] for j in range(cols)], dim=1)


# --------------------------------------------------------------------------------- Z(F) from the paper
def block(F: Tensor, mu: int, nu: int, q: int) -> Tensor:
    """The (μ, ν) block ``F_{μν}`` (q × q) of a uniform block matrix with q × q blocks."""
    return F[mu * q : (mu + 1) * q, nu * q : (nu + 1) * q]


def rearrange_ref(F: Tensor, p: int, q: int) -> Tensor:
    """Van Loan's zigzag rearrangement (paper §3.1): rows ``vec(F_{11})ᵀ … vec(F_{p1})ᵀ, vec(F_{12})ᵀ …``.

    The blocks are visited in column-major block order — μ (block row) runs fastest — and each block
    is flattened column by column.
    """
    rows = []
    for nu in range(p):
        for mu in range(p):
            rows.append(vec_ref(block(F, mu, nu, q)))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------- Fisher blocks
def fisher_from_gradients(per_example: Tensor) -> Tensor:
    """``(1/m) Σ_t vec(DW_t) vec(DW_t)ᵀ`` from per-example weight gradients ``DW_t`` (m, q, p)."""
    vectors = torch.stack([vec_ref(DW) for DW in per_example])
    return vectors.T @ vectors / per_example.shape[0]


def fisher_from_statistics(a: Tensor, g: Tensor) -> Tensor:
    """``(1/m) Σ_t kron(ā_t ā_tᵀ, g_t g_tᵀ)`` as a literal sum of Kronecker products."""
    return sum(torch.kron(torch.outer(a_t, a_t), torch.outer(g_t, g_t)) for a_t, g_t in zip(a, g)) / a.shape[0]


def kron_sum(terms: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Dense ``Σ_k A_k ⊗ G_k``."""
    return sum(torch.kron(A, G) for A, G in terms)  # type: ignore[return-value]


def relative_error(F: Tensor, F_hat: Tensor) -> float:
    """``‖F − F̂‖_F / ‖F‖_F`` (the paper's Error 1)."""
    return float(torch.linalg.norm(F - F_hat) / torch.linalg.norm(F))


# ------------------------------------------------------------------- best Kronecker rank-r approximation
def kronecker_svd(F: Tensor, p: int, q: int) -> tuple[Tensor, Tensor, Tensor]:
    """Dense SVD ``Z(F) = U diag(σ) Vᵀ`` of the rearranged matrix: (U, σ, V)."""
    U, sigma, Vh = torch.linalg.svd(rearrange_ref(F, p, q), full_matrices=False)
    return U, sigma, Vh.T


def best_kronecker(F: Tensor, p: int, q: int, rank: int) -> tuple[list[tuple[Tensor, Tensor]], float]:
    """``argmin ‖F − Σ_{k≤r} R_k ⊗ S_k‖_F`` from the SVD of ``Z(F)``, and the minimal error.

    ``R_k = √σ_k MAT(u_k)``, ``S_k = √σ_k MAT(v_k)`` (paper §3.1, §3.2.2); by Eckart–Young the error is
    ``sqrt(Σ_{k>r} σ_k²)``.
    """
    U, sigma, V = kronecker_svd(F, p, q)
    terms = [
        (math.sqrt(float(sigma[k])) * mat_ref(U[:, k], p, p), math.sqrt(float(sigma[k])) * mat_ref(V[:, k], q, q))
        for k in range(min(rank, sigma.shape[0]))
    ]
    return terms, float(torch.sqrt((sigma[rank:] ** 2).sum()))


def best_rank1_of_matrix(Z: Tensor) -> tuple[float, Tensor, Tensor]:
    """Leading singular triplet ``(σ₁, u₁, v₁)`` of an explicit matrix."""
    U, sigma, Vh = torch.linalg.svd(Z, full_matrices=False)
    return float(sigma[0]), U[:, 0], Vh[0]


# ------------------------------------------------------------------------- per-example gradients (torch.func)
def nll_ref(output: Tensor, target: Tensor, likelihood: str) -> Tensor:
    """Per-example negative log-likelihood summed over outputs, from its textbook formula.

    Bernoulli with logits z: ``Σ_j softplus(z_j) − y_j z_j``; Gaussian N(z, I): ``½ Σ_j (y_j − z_j)²``
    (constants dropped); categorical with class index y: ``logsumexp(z) − z_y``.
    """
    if likelihood == "bernoulli":
        return (nn.functional.softplus(output) - target * output).sum(dim=-1)
    if likelihood == "categorical":  # −log softmax(z)_y = logsumexp(z) − z_y
        return torch.logsumexp(output, dim=-1) - output.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return 0.5 * ((target - output) ** 2).sum(dim=-1)


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's ``nn.Linear`` modules, in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def per_example_weight_gradients(model: nn.Module, x: Tensor, y: Tensor, likelihood: str) -> list[Tensor]:
    """``DW_t = ∂ℓ(y_t, f(x_t))/∂[W | b]`` for every linear layer: a list of (m, q, p) tensors.

    Uses ``torch.func.vmap(grad(...))`` over examples with ``functional_call`` — no hooks, no autograd
    bookkeeping shared with the code under test.
    """
    params = {name: value.detach() for name, value in model.named_parameters()}

    def loss_one(parameters: dict[str, Tensor], x_t: Tensor, y_t: Tensor) -> Tensor:
        output = functional_call(model, parameters, (x_t.unsqueeze(0),))
        return nll_ref(output, y_t.unsqueeze(0), likelihood).sum()

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return [
        torch.cat([grads[f"{name}.weight"], grads[f"{name}.bias"].unsqueeze(-1)], dim=-1) for name in linear_names(model)
    ]


def output_derivative(output: Tensor, target: Tensor, likelihood: str) -> Tensor:
    """``∂ℓ/∂z`` of the per-example loss at the network output: ``σ(z) − y`` or ``z − y``."""
    if likelihood == "bernoulli":
        return torch.sigmoid(output) - target
    return output - target


def targets_from_output_derivative(output: Tensor, derivative: Tensor, likelihood: str) -> Tensor:
    """Invert :func:`output_derivative`: the targets ``y`` that produced ``∂ℓ/∂z`` at the output layer."""
    if likelihood == "bernoulli":
        return torch.sigmoid(output) - derivative
    return output - derivative


# ----------------------------------------------------------------------------------------- random data
def random_statistics(m: int, p: int, q: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Augmented activations ``ā_t = (a_t, 1)`` (m, p) and derivatives ``g_t`` (m, q), float64."""
    a = torch.randn(m, p - 1, generator=generator, dtype=DTYPE)
    a = torch.cat([a, torch.ones(m, 1, dtype=DTYPE)], dim=1)
    g = torch.randn(m, q, generator=generator, dtype=DTYPE)
    return a, g


def random_spd(d: int, generator: torch.Generator, floor: float = 0.1) -> Tensor:
    """A random symmetric positive definite d × d matrix with smallest eigenvalue ≥ ``floor``."""
    X = torch.randn(d, d, generator=generator, dtype=DTYPE)
    return X @ X.T / d + floor * torch.eye(d, dtype=DTYPE)


def random_symmetric(d: int, generator: torch.Generator) -> Tensor:
    """A random symmetric (generally indefinite) d × d matrix."""
    X = torch.randn(d, d, generator=generator, dtype=DTYPE)
    return 0.5 * (X + X.T)


# ------------------------------------------------------------------------------------- dense errors and Z products
def rearrange(F: Tensor, p: int, q: int) -> Tensor:
    """Van Loan's zigzag rearrangement ``Z(F)`` by one reshape: ``Z[μ + ν p, i + j q] = F[μ q + i, ν q + j]``
    (row ``(μ, ν)`` is ``vec(F_{μν})ᵀ``, paper §3.1), checked against :func:`rearrange_ref`."""
    return F.reshape(p, q, p, q).permute(2, 0, 3, 1).reshape(p * p, q * q)


def z_matvec(a: Tensor, g: Tensor, V: Tensor) -> Tensor:
    """``Z(F) vec(V) = E[(gᵀ V g) vec(ā āᵀ)]`` (Prop. 3.1) as the p×p matrix ``aᵀ diag(w) a / m``, ``w_t = g_tᵀ V g_t``."""
    weights = ((g @ V) * g).sum(dim=1)
    return (a.T * weights) @ a / a.shape[0]


def z_rmatvec(a: Tensor, g: Tensor, U: Tensor) -> Tensor:
    """``Z(F)ᵀ vec(U) = E[(āᵀ U ā) vec(g gᵀ)]`` (Prop. 3.1) as the q×q matrix ``gᵀ diag(w) g / m``, ``w_t = ā_tᵀ U ā_t``."""
    weights = ((a @ U) * a).sum(dim=1)
    return (g.T * weights) @ g / g.shape[0]


def _dense_pair(a: Tensor, g: Tensor, terms: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The dense F of the statistics (2-D, or 3-D with T positions) and F̂ = Σ_k A_k ⊗ G_k, in float64."""
    a, g = a.to(DTYPE), g.to(DTYPE)
    if a.ndim == 3:  # F = (1/m) Σ_n vec(Σ_t g_t ā_tᵀ) vec(·)ᵀ
        per_example = torch.einsum("ntq,ntp->nqp", g, a)
        F = fisher_from_gradients(per_example)
    else:
        F = fisher_from_statistics(a, g)
    return F, kron_sum([(A.to(DTYPE), G.to(DTYPE)) for A, G in terms])


def frobenius_error_dense(a: Tensor, g: Tensor, terms: list[tuple[Tensor, Tensor]]) -> Metric:
    """Reference Error 1 ``‖F − F̂‖_F / ‖F‖_F`` from the dense F and F̂ (path ``dense``; small layers only)."""
    F, F_hat = _dense_pair(a, g, terms)
    return Metric(float(torch.linalg.norm(F - F_hat) / torch.linalg.norm(F)), "dense")


def spectral_error_dense(a: Tensor, g: Tensor, terms: list[tuple[Tensor, Tensor]]) -> Metric:
    """Reference Error 2 ``‖spec F − spec F̂‖₂ / ‖spec F‖₂`` from ``eigvalsh`` of the dense F and F̂, both
    sorted decreasing (path ``dense``)."""
    F, F_hat = _dense_pair(a, g, terms)
    spec_F = torch.linalg.eigvalsh(F).flip(0)
    spec_F_hat = torch.linalg.eigvalsh(F_hat).flip(0)
    return Metric(float(torch.linalg.norm(spec_F - spec_F_hat) / torch.linalg.norm(spec_F)), "dense")
