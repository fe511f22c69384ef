"""The spectrum of a Kronecker sum for Error 2: :class:`Spectrum`, the spectral distance, and the
certified block Lanczos that finds the top eigenvalues of a large ``F̃ = Σ_k Ã_k ⊗ G̃_k`` matrix-free."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LANCZOS_BLOCK = 64
"""Block size b of the block Lanczos: products and re-orthogonalisation run as matrix–matrix products."""
SPECTRUM_RTOL, SPECTRUM_ATOL = 1e-4, 1e-7
"""Lanczos stops once the certified change still possible in Error 2 is ≤ RTOL · Error 2 + ATOL."""
SPECTRUM_SEED = 0
"""Seed of the random starting block: the Lanczos path is deterministic."""
LANCZOS_BUDGET = 6
"""Largest Krylov space, in multiples of c (and at most n/2). Runs certify at 2–3 c on Fisher blocks; one
that exhausts the budget reports path ``lanczos-bound``: its Error 2 is then an upper bound (interlacing)."""
BREAKDOWN = 1e-12
"""A new Lanczos direction shorter than this (relative to ‖F̃‖_F) means an invariant subspace was found."""



@dataclass(frozen=True)
class Spectrum:
    """The ``count`` algebraically largest eigenvalues of F̂ (decreasing) and ``‖F̂‖²_F = Σ_all λ²``.

    ``krylov_dim`` is the size of the Krylov space the Lanczos path used (0 on other paths).
    """

    top: Tensor
    squared_norm: float
    path: str
    krylov_dim: int = 0




def spectral_distance(reference: Tensor, reference_squared_norm: float, spectrum: Spectrum) -> float:
    """``‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂`` from F's c largest eigenvalues (the rest are 0) and F̂'s
    c largest: ``Σ_{i≤c} (λ_i(F) − λ_i(F̂))² + ‖F̂‖² − Σ_{i≤c} λ_i(F̂)²`` (module docstring).
    NaN when F = 0 (a layer whose derivatives all vanish), like Error 1."""
    if reference_squared_norm <= 0:
        return math.nan
    c = reference.shape[0]
    top = spectrum.top[:c]
    head = float((reference[: top.shape[0]] - top).square().sum() + reference[top.shape[0] :].square().sum())
    tail = max(spectrum.squared_norm - float(top.square().sum()), 0.0)
    return math.sqrt((head + tail) / reference_squared_norm)




def lanczos_step(apply: Callable[[Tensor], Tensor], basis: Tensor, filled: int, b: int, coupling: list[Tensor]) -> tuple[Tensor, Tensor]:
    """One step of the block recurrence ``F̃ X_j = X_{j−1} B_{j−1}ᵀ + X_j A_j + X_{j+1} B_j`` (vectors as rows):
    ``A_j = X_j F̃ X_jᵀ`` and the rows ``W = F̃ X_j − A_j X_j − B_{j−1} X_{j−1}`` still to orthogonalise, for
    ``X_j`` the last b of the ``filled`` rows of ``basis``."""
    X = basis[filled - b : filled]
    W = apply(X)
    A_j = X @ W.transpose(0, 1)
    A_j = 0.5 * (A_j + A_j.transpose(0, 1))
    W = W - A_j @ X
    if coupling:
        W = W - coupling[-1] @ basis[filled - 2 * b : filled - b]
    return A_j, W


def block_tridiagonal(diagonal: list[Tensor], coupling: list[Tensor]) -> Tensor:
    """The block Lanczos matrix ``T = Qᵀ F̃ Q``: blocks ``A_j`` on the diagonal, ``B_j`` below and ``B_jᵀ`` above
    (the last coupling, which leads out of the Krylov space, is not part of T)."""
    b = diagonal[0].shape[0]
    T = torch.block_diag(*diagonal)
    for j, B in enumerate(coupling[:-1]):
        T[(j + 1) * b : (j + 2) * b, j * b : (j + 1) * b] = B
        T[j * b : (j + 1) * b, (j + 1) * b : (j + 2) * b] = B.transpose(0, 1)
    return T


def _ritz_values(
    diagonal: list[Tensor], coupling: list[Tensor], count: int, weights: Tensor, reference_squared_norm: float, squared_norm: float
) -> tuple[Tensor, bool]:
    """The ``count`` largest Ritz values θ of the block-tridiagonal ``T`` (blocks ``diagonal`` A_j, couplings
    B_j; the last coupling gives the residuals ``r_i = ‖B_J s_i[last block]‖``), and whether they certify
    Error 2: ``2 Σ_i λ_i(F) r_i / ‖F‖² ≤ max(2 e (SPECTRUM_RTOL e + SPECTRUM_ATOL), SPECTRUM_ATOL²)`` with
    e the Error 2 of θ (:func:`lanczos_top`)."""
    b = diagonal[0].shape[0]
    theta, S = torch.linalg.eigh(block_tridiagonal(diagonal, coupling))
    theta, S = theta.flip(0)[:count], S.flip(1)[:, :count]
    residual = (coupling[-1] @ S[-b:]).norm(dim=0)
    error = spectral_distance(weights, reference_squared_norm, Spectrum(theta, squared_norm, "lanczos"))
    movable = 2.0 * float((weights[: theta.shape[0]] * residual).sum()) / reference_squared_norm
    return theta, movable <= max(2.0 * error * (SPECTRUM_RTOL * error + SPECTRUM_ATOL), SPECTRUM_ATOL**2)


def lanczos_top(
    terms: list[tuple[Tensor, Tensor]],
    count: int,
    weights: Tensor,
    reference_squared_norm: float,
    squared_norm: float,
) -> tuple[Tensor, int, bool]:
    """Block Lanczos (block size b, full re-orthogonalisation twice) for the ``count`` largest eigenvalues.

    Vectors are q×p matrices V (row-major), the operator ``V ↦ Σ_k G_k V A_k`` — a permutation-similar
    copy of F̃. With the block recurrence ``F̃ Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j`` the Ritz
    values θ_i of the block-tridiagonal ``T = QᵀF̃Q`` rise monotonically towards λ_i (Cauchy interlacing:
    θ_i ≤ λ_i, so Error 2 computed from them is an upper bound) and Ritz pair i has the residual
    ``r_i = ‖B_J s_i[last block]‖``. As ``∂(Error 2)²/∂λ_i(F̂) = −2 λ_i(F) / ‖F‖²``, the squared error can
    still move by at most ``2 Σ_i λ_i(F) r_i / ‖F‖²``: the run stops when that certifies Error 2 to
    ``SPECTRUM_RTOL · Error 2 + SPECTRUM_ATOL``. Checks at Krylov sizes 1.5c, then ×1.25, up to
    ``min(n/2, LANCZOS_BUDGET · c)``; returns ``(θ, Krylov size, certified)``.
    """
    A0, G0 = terms[0]
    p, q = A0.shape[0], G0.shape[0]
    n = p * q
    dtype, device = A0.dtype, A0.device
    b = min(LANCZOS_BLOCK, count)
    capacity = max(min(n // 2, LANCZOS_BUDGET * count) // b, 2) * b
    basis = torch.empty(min(capacity, 2 * count) + b, n, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(SPECTRUM_SEED)

    def apply(X: Tensor) -> Tensor:
        V = X.reshape(-1, q, p)
        return sum(G @ V @ A for A, G in terms).reshape(-1, n)  # type: ignore[union-attr]

    def orthogonalise(W: Tensor, filled: int) -> Tensor:
        previous = basis[:filled]
        for _ in range(2):
            W = W - (W @ previous.transpose(0, 1)) @ previous
        return W

    def next_block(W: Tensor, filled: int) -> tuple[Tensor, Tensor]:
        """``W = Bᵀ X`` with orthonormal rows X ⟂ basis; exhausted directions are refilled at random
        (an invariant subspace was found: T gets a zero coupling there, as it should)."""
        Q, R = torch.linalg.qr(W.transpose(0, 1))
        good = torch.diagonal(R).abs() > BREAKDOWN * math.sqrt(squared_norm)
        if bool(good.all()):
            return Q.transpose(0, 1), R
        fresh = torch.randn(int((~good).sum()), n, generator=generator, dtype=dtype).to(device)
        candidates = orthogonalise(torch.cat([Q.transpose(0, 1)[good], fresh]), filled)
        X = torch.linalg.qr(candidates.transpose(0, 1))[0].transpose(0, 1)
        return X, X @ W.transpose(0, 1)

    start = torch.randn(b, n, generator=generator, dtype=dtype).to(device)
    basis[:b] = torch.linalg.qr(start.transpose(0, 1))[0].transpose(0, 1)
    diagonal: list[Tensor] = []
    coupling: list[Tensor] = []
    w = weights[:count].to(dtype=dtype, device=device)
    check_at = max(count + b, (3 * count) // 2)
    filled = b
    while True:
        A_j, W = lanczos_step(apply, basis, filled, b, coupling)
        X_next, B_j = next_block(orthogonalise(W, filled), filled)
        diagonal.append(A_j)
        coupling.append(B_j)
        last = filled + b > capacity
        if filled >= check_at or last:
            theta, certified = _ritz_values(diagonal, coupling, count, w, reference_squared_norm, squared_norm)
            if certified or last:
                return theta, filled, certified
            check_at = -(-int(1.25 * filled) // b) * b
        if filled + b > basis.shape[0]:
            grown = torch.empty(min(2 * basis.shape[0], capacity + b), n, dtype=dtype, device=device)
            grown[:filled] = basis[:filled]
            basis = grown
        basis[filled : filled + b] = X_next
        filled += b
