"""Shampoo's implied Fisher approximation: ``F̂ = c · R ⊗ L`` with Shampoo's statistics as the factors.

Shampoo (Gupta, Koren & Singer, ICML 2018) keeps, for a layer whose per-example weight gradient is the
(q × p) ``DW_n`` (T = 1: ``DW = g āᵀ``; T positions: ``DW_n = G_nᵀ A_n``, docs/design.md §1, §7),

    R = E[DWᵀ DW]  (p × p, activation side),      L = E[DW DWᵀ]  (q × q, derivative side),

i.e. for T = 1 ``R = E[(gᵀg) ā āᵀ]`` and ``L = E[(āᵀā) g gᵀ]`` — the Fisher's statistics over per-example
gradients (Morwani et al.'s analysis), where Shampoo's optimizer accumulates mini-batch gradients. In fimbench's ``A ⊗ G`` order
(``(A ⊗ G) vec V = vec(G V Aᵀ)``) ``R`` takes the place of ``A`` and ``L`` of ``G``: Shampoo's step
``L^{-e} DW R^{-e}`` is ``(R ⊗ L)^{-e} vec DW``.

Power-iteration view (Morwani, Shapira, Vyas, Malach, Kakade & Janson, "A New Perspective on Shampoo's
Preconditioner", ICLR 2025). With fimbench's rearrangement ``Z(F)`` (p² × q², row ``(μ, ν)`` =
``vec(F_{μν})ᵀ``, docs/design.md §1) and Prop. 3.1's products,

    Z(F) vec(I_q)  = (1/m) Σ_n vec(DW_nᵀ DW_n) = vec(R),      Z(F)ᵀ vec(I_p) = (1/m) Σ_n vec(DW_n DW_nᵀ) = vec(L):

``R`` is the left (activation-side, KPSVD's ``R``) and ``L`` the right (derivative-side, KPSVD's ``S``)
iterate of one power-iteration step on ``Z(F)`` started from the identities on both sides, towards KPSVD's
Frobenius-optimal ``R₁ ⊗ S₁`` (the leading singular pair of ``Z(F)``, Theorem 3.1). It is one two-sided
step, not one step of KPSVD's alternating power SVD (which would follow ``vec R`` with ``Zᵀ vec R``).
Morwani et al. call the preconditioner built on ``R ⊗ L`` itself (exponent ``e = 1/2``) Shampoo²; Shampoo's
``e = 1/4`` corresponds to ``F ≈ (R ⊗ L)^{1/2}``. fimbench measures the Kronecker product ``R ⊗ L``.

Scale. ``R ⊗ L`` has the dimension of F², so F̂ carries the Frobenius-optimal scalar

    c = ⟨F, R ⊗ L⟩_F / ‖R ⊗ L‖²_F,      ‖R ⊗ L‖²_F = ‖R‖²_F ‖L‖²_F,
    ⟨F, R ⊗ L⟩_F = (1/m) Σ_t (ā_tᵀ R ā_t)(g_tᵀ L g_t)    (T = 1),      (1/m) Σ_n ⟨DW_n, L DW_n R⟩    (T > 1),

computed from the statistics without forming F (c ≥ 0: F, R and L are PSD). The scalar is split between
the factors so that their Frobenius norms are equal, ``A = √(c ‖L‖/‖R‖) R``, ``G = √(c ‖R‖/‖L‖) L``, both of
norm ``√‖F̂‖_F`` — KPSVD's split (``√σ₁`` times unit singular vectors), so that the two methods' factors are
alike in scale; only the product matters for F̂, and the trace-rule damping split is invariant to it.

EMA (``prior.estimate`` F̂_old, ``prior.decay`` ρ). The target is ``ρ F̂_old + (1 − ρ) F`` as for every
Kronecker method. Shampoo's statistics are linear in the operator — ``R(X) = MAT(Z(X) vec I_q)``,
``L(X) = MAT(Z(X)ᵀ vec I_p)`` — so the statistics of the target are the EMA of the statistics

    R ← ρ R(F̂_old) + (1 − ρ) R_batch,    L ← ρ L(F̂_old) + (1 − ρ) L_batch,
    R(Σ_k A_k ⊗ G_k) = Σ_k tr(G_k) A_k,     L(Σ_k A_k ⊗ G_k) = Σ_k tr(A_k) G_k,

and c is the optimal scalar against the target: ``⟨ρ F̂_old + (1 − ρ) F, R ⊗ L⟩ = ρ Σ_k ⟨A_k, R⟩⟨G_k, L⟩
+ (1 − ρ) ⟨F, R ⊗ L⟩``. This is K-FAC's :func:`~fimbench.curvature.kfac.factor_ema` (an EMA of the
factors' statistics, Shampoo's β₂ average) with the prior's statistics read off F̂_old: a prior that is a
Kronecker sum holds ``c_old R_old ⊗ L_old``, from which ``R_old`` alone (its scale relative to the batch's
``R``) cannot be recovered, whereas ``R(F̂_old) = c_old tr(L_old) R_old`` is split-invariant. It differs from
Shampoo's raw ``ρ R_old + (1 − ρ) R_batch`` by the factor ``c_old tr(L_old)`` on the old statistic (1 when
F_old is itself one Kronecker product), and keeps F̂ exactly one power-iteration step on the rearranged
EMA target that KPSVD approximates. ``prior.warm_start`` and the options play no part (no iteration).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fimbench.curvature.kronecker import quadratic_forms, weighted_gram
from fimbench.curvature.kronecker_sum import KroneckerSum
from fimbench.curvature.options import ApproximationOptions
from fimbench.curvature.shared_weights import per_example_gradients, product_form
from fimbench.curvature.targets import Prior, checked_statistics


def _gradients(a: Tensor, g: Tensor) -> Tensor | None:
    """The ``DW_n`` (m, q, p) of 3-D statistics when the per-example-gradient form is the cheaper one
    (:func:`~fimbench.curvature.shared_weights.product_form`), else None (2-D, or straight from the positions)."""
    if a.ndim == 3 and product_form(a.shape[1], a.shape[2], g.shape[2]) == "gradients":
        return per_example_gradients(a, g)
    return None


def _factors(a: Tensor, g: Tensor, gradients: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(R, L)`` of checked statistics (:func:`shampoo_factors`), from the ``DW_n`` when given."""
    m = a.shape[0]
    if a.ndim == 2:  # R = E[(gᵀg) ā āᵀ], L = E[(āᵀā) g gᵀ]
        return weighted_gram(a, g.square().sum(dim=1)) / m, weighted_gram(g, a.square().sum(dim=1)) / m
    p, q = a.shape[2], g.shape[2]
    if gradients is not None:  # Σ_n DW_nᵀ DW_n and Σ_n DW_n DW_nᵀ as one product each
        rows = gradients.reshape(-1, p)
        columns = gradients.transpose(1, 2).reshape(-1, q)
        return rows.transpose(0, 1) @ rows / m, columns.transpose(0, 1) @ columns / m
    # DW_nᵀ DW_n = A_nᵀ (G_n G_nᵀ) A_n and DW_n DW_nᵀ = G_nᵀ (A_n A_nᵀ) G_n
    gram_g = g @ g.transpose(1, 2)  # (m, T, T)
    gram_a = a @ a.transpose(1, 2)
    R = a.reshape(-1, p).transpose(0, 1) @ (gram_g @ a).reshape(-1, p) / m
    L = g.reshape(-1, q).transpose(0, 1) @ (gram_a @ g).reshape(-1, q) / m
    return R, L


def _batch_inner(a: Tensor, g: Tensor, gradients: Tensor | None, A: Tensor, G: Tensor) -> float:
    """``⟨F_batch, A ⊗ G⟩_F = (1/m) Σ_n vec(DW_n)ᵀ (A ⊗ G) vec(DW_n)`` without forming F (module docstring)."""
    m = a.shape[0]
    if a.ndim == 2:
        return float((quadratic_forms(a, A) * quadratic_forms(g, G)).sum()) / m
    if gradients is not None:  # ⟨DW_n, G DW_n Aᵀ⟩
        return float((gradients * (G @ gradients @ A.transpose(0, 1))).sum()) / m
    # Σ_{t,t'} (a_tᵀ A a_t')(g_tᵀ G g_t') = ⟨A_n A A_nᵀ, G_n G G_nᵀ⟩
    return float(((a @ A @ a.transpose(1, 2)) * (g @ G @ g.transpose(1, 2))).sum()) / m


def shampoo_factors(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Shampoo's statistics of the batch: ``R = (1/m) Σ_n DW_nᵀ DW_n`` and ``L = (1/m) Σ_n DW_n DW_nᵀ``.

    For 2-D statistics ``R = E[(gᵀg) ā āᵀ]``, ``L = E[(āᵀā) g gᵀ]``; for a layer applied at T positions
    ``DW_n = G_nᵀ A_n`` sums over the positions before the products, computed from the ``DW_n`` or from the
    positions (``A_nᵀ (G_n G_nᵀ) A_n``), whichever :func:`~fimbench.curvature.shared_weights.product_form`
    says is cheaper. ``Z(F) vec(I_q) = vec(R)`` and ``Z(F)ᵀ vec(I_p) = vec(L)`` (module docstring).

    Args:
        a: Augmented activations (bias column last), (m, p); or (m, T, p) for a layer applied at T positions.
        g: Pre-activation derivatives, (m, q); or (m, T, q).

    Returns:
        ``(R, L)``: (p, p) on the activation side (fimbench's ``A``) and (q, q) on the derivative side (``G``).

    Raises:
        FimbenchError: For statistics of mismatched shapes (:func:`~fimbench.curvature.targets.checked_statistics`).
    """
    a, g = checked_statistics(a, g)
    return _factors(a, g, _gradients(a, g))


def statistics_of(approximation: KroneckerSum) -> tuple[Tensor, Tensor]:
    """Shampoo's statistics of a Kronecker sum: ``R(Σ_k A_k ⊗ G_k) = Σ_k tr(G_k) A_k`` and
    ``L(Σ_k A_k ⊗ G_k) = Σ_k tr(A_k) G_k`` (``Z(X) vec I_q`` and ``Z(X)ᵀ vec I_p``, module docstring).

    Args:
        approximation: The Kronecker sum, e.g. the prior F̂_old.

    Returns:
        ``(R, L)``, (p, p) and (q, q).
    """
    A_0, G_0 = approximation.terms[0]
    R, L = torch.trace(G_0) * A_0, torch.trace(A_0) * G_0
    for A_k, G_k in approximation.terms[1:]:
        R, L = R + torch.trace(G_k) * A_k, L + torch.trace(A_k) * G_k
    return R, L


def balanced_product(scale: float, R: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
    """``(α R, β L)`` with ``α β = scale`` and equal Frobenius norms ``√(scale ‖R‖ ‖L‖)`` (module docstring);
    zero factors when the product vanishes.

    Args:
        scale: The scalar ``c ≥ 0`` of ``c · R ⊗ L``.
        R: The activation-side factor (p, p).
        L: The derivative-side factor (q, q).

    Returns:
        The two factors, whose Kronecker product is ``c · R ⊗ L``.
    """
    norm_r, norm_l = float(torch.linalg.matrix_norm(R)), float(torch.linalg.matrix_norm(L))
    if not (scale > 0.0 and norm_r > 0.0 and norm_l > 0.0):
        return torch.zeros_like(R), torch.zeros_like(L)
    return math.sqrt(scale * norm_l / norm_r) * R, math.sqrt(scale * norm_r / norm_l) * L


def approximate_shampoo(a: Tensor, g: Tensor, options: ApproximationOptions, prior: Prior) -> KroneckerSum:
    """Shampoo's implied approximation ``F̂ = c · R ⊗ L`` of ``ρ F̂_old + (1 − ρ) F`` (module docstring).

    Args:
        a: Augmented activations (bias column last), (m, p); or (m, T, p) for a layer applied at T positions.
        g: Pre-activation derivatives, (m, q); or (m, T, q).
        options: Unused (no iteration); part of the :class:`~fimbench.curvature.approximator.Approximator` signature.
        prior: The previous approximation ``prior.estimate`` and the EMA rate ``prior.decay`` ρ; its statistics
            ``R(F̂_old)``, ``L(F̂_old)`` are averaged into the batch's, and ``c`` is fitted to the EMA target.

    Returns:
        One term ``(A, G)`` with ``A ∝ R`` (p, p) and ``G ∝ L`` (q, q) of equal norms, ``A ⊗ G = c R ⊗ L``,
        ``method="shampoo"``.

    Raises:
        FimbenchError: For statistics of mismatched shapes.
    """
    a, g = checked_statistics(a, g)
    gradients = _gradients(a, g)
    R, L = _factors(a, g, gradients)
    previous = prior.active
    if previous is None:
        inner = _batch_inner(a, g, gradients, R, L)
    else:
        rho = prior.decay
        R_old, L_old = statistics_of(previous)
        R, L = rho * R_old + (1.0 - rho) * R, rho * L_old + (1.0 - rho) * L
        prior_inner = sum(float((A_k * R).sum()) * float((G_k * L).sum()) for A_k, G_k in previous.terms)
        inner = rho * prior_inner + (1.0 - rho) * _batch_inner(a, g, gradients, R, L)
    squared_norm = float(torch.linalg.matrix_norm(R)) ** 2 * float(torch.linalg.matrix_norm(L)) ** 2
    scale = max(inner, 0.0) / squared_norm if squared_norm > 0.0 else 0.0
    return KroneckerSum([balanced_product(scale, R, L)], method="shampoo")
