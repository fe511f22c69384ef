"""Leading singular triplets of a :class:`RearrangedOperator`: power SVD (App. B.1) and restarted
Golub–Kahan–Lanczos bidiagonalisation (App. B.2), both with warm starts.

Stopping rule (scale-invariant): ``‖Z v_i − σ_i u_i‖ ≤ tol · σ_ref`` and ``‖Zᵀ u_i − σ_i v_i‖ ≤ tol · σ_ref``,
where ``σ_ref`` is the leading singular value: the current σ₁ estimate, or, for a deflated operator, the
σ₁ of the undeflated one passed as ``scale`` — so a second pair whose σ₂ ≈ 0 converges instead of
chasing relative accuracy in round-off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fimbench.curvature.options import DEFAULT_KRYLOV_DIM, DEFAULT_MAX_ITERATIONS, DEFAULT_TOL
from fimbench.curvature.rearranged import RearrangedOperator

if TYPE_CHECKING:
    from fimbench.curvature.shared_weights import SharedWeightOperator

BREAKDOWN = 1e-12  # relative size under which a Krylov direction is considered exhausted


@dataclass
class SingularTriplets:
    """``Z (Φ_G y_i) = σ_i (Φ_A x_i)`` for the columns of ``left`` (x) and ``right`` (y)."""

    values: Tensor  # (r,)
    left: Tensor  # (n, r)
    right: Tensor  # (n, r)
    iterations: int
    residual: float  # max_i ‖residual_i‖ / scale


def _normalised(vector: Tensor, norm: Tensor) -> Tensor:
    return vector / norm if float(norm) > 0 else torch.zeros_like(vector)


def power_svd(
    operator: RearrangedOperator | SharedWeightOperator,
    start: Tensor,
    scale: float | None = None,
    tol: float = DEFAULT_TOL,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> SingularTriplets:
    """Algorithm 1 (power SVD): ``u ← Zv/‖Zv‖, v ← Zᵀu/‖Zᵀu‖, σ = ‖Zᵀu‖`` until ``‖Zv − σu‖ ≤ tol·scale``.

    The check reuses the next iteration's ``Z v``, so an iteration costs one pair of products.
    """
    n = operator.size
    size = scale if scale is not None else operator.frobenius_norm()
    vanished = SingularTriplets(
        torch.zeros(1, dtype=start.dtype, device=start.device),
        torch.zeros(n, 1, dtype=start.dtype, device=start.device),
        torch.zeros(n, 1, dtype=start.dtype, device=start.device),
        0,
        0.0,
    )
    if size <= 0.0:
        return vanished
    y = _normalised(start, operator.norm_right(start))
    w = operator.matvec(y)
    sigma = torch.zeros((), dtype=start.dtype, device=start.device)
    x = torch.zeros_like(w)
    residual = float("inf")
    iterations = 0
    while iterations < max_iterations:
        # In exact arithmetic ‖Z v‖ ≥ σ > 0 after the first step; in floating point a (deflated) operator
        # whose singular values lie below the round-off of its norms can return a zero or NaN norm.
        # Either way Z vanishes on this iterate to working precision: its leading pair is zero.
        length = operator.norm_left(w)
        if _vanishes(length, size):
            return dataclasses.replace(vanished, iterations=iterations + 1)
        iterations += 1
        x = w / length
        z = operator.rmatvec(x)
        sigma = operator.norm_right(z)
        if _vanishes(sigma, size):
            return dataclasses.replace(vanished, iterations=iterations)
        y = z / sigma
        w = operator.matvec(y)
        residual = float(operator.norm_left(w - sigma * x) / (scale if scale is not None else sigma))
        if residual <= tol:
            break
    return SingularTriplets(sigma.reshape(1), x.reshape(n, 1), y.reshape(n, 1), iterations, residual)


def _vanishes(norm: Tensor, size: float) -> bool:
    """Whether a norm is negligible against ``size`` (σ_ref or ‖Z‖_F): ≤ :data:`BREAKDOWN` · size, or NaN."""
    return not float(norm) > BREAKDOWN * size


def _orthogonalise(vector: Tensor, basis: list[Tensor], gram: Tensor) -> Tensor:
    """Classical Gram–Schmidt, twice, in the inner product ``⟨x, x'⟩ = xᵀ M x'``."""
    if not basis:
        return vector
    stacked = torch.stack(basis, dim=1)  # (n, k)
    for _ in range(2):
        vector = vector - stacked @ (stacked.transpose(0, 1) @ (gram @ vector))
    return vector


def _bidiagonal(alphas: list[Tensor], betas: list[Tensor], columns: int) -> Tensor:
    """``B[i, i] = α_i, B[i, i+1] = β_i`` of shape (k, columns): k×k, or k×(k+1) after an exact stop."""
    k = len(alphas)
    B = torch.zeros(k, columns, dtype=alphas[0].dtype, device=alphas[0].device)
    index = torch.arange(k, device=B.device)
    B[index, index] = torch.stack(alphas)
    if betas:
        index = torch.arange(len(betas), device=B.device)
        B[index, index + 1] = torch.stack(betas)
    return B


def _padded(rank: int, sigmas: Tensor, left: Tensor, right: Tensor, iterations: int, residual: float) -> SingularTriplets:
    """The triplets found (``σ_i``, ``u_i``, ``v_i`` as columns), zero-padded to ``rank``."""
    found = sigmas.shape[0]
    values = torch.zeros(rank, dtype=sigmas.dtype, device=sigmas.device)
    values[:found] = sigmas
    x = torch.zeros(left.shape[0], rank, dtype=left.dtype, device=left.device)
    y = torch.zeros_like(x)
    x[:, :found], y[:, :found] = left, right
    return SingularTriplets(values, x, y, iterations, residual)


def lanczos_svd(
    operator: RearrangedOperator,
    start: Tensor,
    rank: int,
    scale: float | None = None,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    tol: float = DEFAULT_TOL,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> SingularTriplets:
    """Restarted Golub–Kahan bidiagonalisation (Algorithm 2) for the top ``rank`` singular triplets.

    Each cycle builds ``Z Q_k = P_k B_k`` (B upper bidiagonal, full re-orthogonalisation); the SVD
    ``B = X Σ Yᵀ`` gives the Ritz vectors ``u_i = P x_i, v_i = Q y_i`` whose residual is exactly
    ``β_k |x_i[k]|``. When the factorisation breaks down (``Zᵀ P ⊂ span Q``) with fewer than ``rank``
    vectors, it goes on from a fresh direction orthogonal to ``Q`` with a zero coupling β, so a start that
    is itself a singular vector still yields the next pairs. The check runs after every step (B is at most K×K), so a warm start stops as soon
    as the top ``rank`` residuals are below ``tol·σ_ref``; otherwise the next cycle restarts from
    ``Σ_i v_i`` (§3.2.2). K is raised to at least 2r + 2, below which that restart stalls. ``iterations`` counts the products with ``Z`` and ``Zᵀ`` in pairs.
    """
    n = operator.size
    dtype, device = start.dtype, start.device
    rank = max(1, rank)
    krylov_dim = min(max(krylov_dim, 2 * rank + 2), n)  # below 2r + 2 the simple restart stalls
    size = scale if scale is not None else operator.frobenius_norm()
    zeros = torch.zeros(n, rank, dtype=dtype, device=device)
    if size <= 0.0:
        return SingularTriplets(torch.zeros(rank, dtype=dtype, device=device), zeros, zeros.clone(), 0, 0.0)

    def worst_residual(X: Tensor, sigmas: Tensor, beta: Tensor, found: int) -> float:
        return float(beta * X[-1, :found].abs().max() / (scale if scale is not None else sigmas[0]))

    q = _normalised(start, operator.norm_right(start))
    iterations = 0
    while True:
        P: list[Tensor] = []
        Q: list[Tensor] = [q]
        alphas: list[Tensor] = []
        betas: list[Tensor] = []
        beta_last = torch.zeros((), dtype=dtype, device=device)
        w = operator.matvec(q)
        iterations += 1
        while True:
            w = _orthogonalise(w, P, operator.gram_a)
            alpha = operator.norm_left(w)
            if float(alpha) <= BREAKDOWN * size:  # Z q_k ∈ span(P): the factorisation is exact
                break
            P.append(w / alpha)
            alphas.append(alpha)
            z = _orthogonalise(operator.rmatvec(P[-1]) - alpha * Q[-1], Q, operator.gram_g)
            beta = operator.norm_right(z)
            exhausted = float(beta) <= BREAKDOWN * size  # span(Q) is invariant: no new direction from Zᵀ
            if exhausted and len(P) < min(rank, krylov_dim) and iterations < max_iterations:
                fresh = operator.fresh_direction(Q)  # fewer pairs than asked: go on in span(Q)^⊥
                if fresh is not None:
                    z, beta, exhausted = fresh, torch.zeros((), dtype=dtype, device=device), False
            stop = len(P) == krylov_dim or exhausted or iterations >= max_iterations
            if not stop and len(P) >= rank:
                X, sigmas, _ = torch.linalg.svd(_bidiagonal(alphas, betas, len(Q)), full_matrices=False)
                stop = worst_residual(X, sigmas, beta, rank) <= tol
            if stop:
                beta_last = beta
                break
            betas.append(beta)
            Q.append(z / beta if float(beta) > 0 else z)
            w = operator.matvec(Q[-1]) - beta * P[-1]
            iterations += 1
        k = len(P)
        if k == 0:
            return SingularTriplets(torch.zeros(rank, dtype=dtype, device=device), zeros, zeros.clone(), iterations, 0.0)
        X, sigmas, Yt = torch.linalg.svd(_bidiagonal(alphas, betas, len(Q)), full_matrices=False)
        left = torch.stack(P, dim=1) @ X
        right = torch.stack(Q, dim=1) @ Yt.transpose(0, 1)
        found = min(rank, k)
        worst = worst_residual(X, sigmas, beta_last, found)
        if worst <= tol or iterations >= max_iterations or k < krylov_dim:
            break
        q = right[:, :found].sum(dim=1)
        q = _normalised(q, operator.norm_right(q))
    return _padded(rank, sigmas[:found], left[:, :found], right[:, :found], iterations, worst)
