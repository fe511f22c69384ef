"""A damped block as a diagonal in a Kronecker basis: what its determinant, traces and Gaussian divergences need.

Every damped block fimbench inverts is congruent to a diagonal through a Kronecker product of two small matrices:

    F̂_λ = (B_A ⊗ B_G) diag(vec D) (B_A ⊗ B_G)ᵀ,   F̂_λ⁻¹ = (C_A ⊗ C_G) diag(vec D)⁻¹ (C_A ⊗ C_G)ᵀ,   C = B⁻ᵀ,

with ``D`` (q × p) positive, in the layout of the weight (``vec`` column-major, docs/design.md §1):

* one Kronecker term, factored damping: ``(A + π√λ I) ⊗ (G + √λ/π I)`` with ``B = C = Q`` the factors' eigenvectors
  and ``D = γ αᵀ`` their eigenvalues' products;
* two terms, factored damping (§3.4): ``C_A = K₁``, ``C_G = K₂`` of the generalised eigen-decompositions
  ``K₁ᵀ A K₁ = I`` (so ``B_A = A K₁``), and ``D = 1 1ᵀ + τ s₂ s₁ᵀ``;
* exact damping, EKFAC and SOAP: the orthonormal eigenbasis ``Q`` and ``D = γ αᵀ + λ (+ τ d cᵀ)`` or ``S + λ``.

Then, with ``b_ij = B_A[:, j] ⊗ B_G[:, i]`` and ``c_ij`` likewise,

    log det F̂_λ = Σ_ij log D_ij + 2 q log|det B_A| + 2 p log|det B_G|,
    tr F̂_λ = Σ_ij D_ij ‖B_G[:, i]‖² ‖B_A[:, j]‖²,   tr F̂_λ⁻¹ = Σ_ij ‖C_G[:, i]‖² ‖C_A[:, j]‖² / D_ij,

each O(p³ + q³ + pq); nothing pq × pq is formed. ``terms`` is F̂_λ as a Kronecker sum when it is one (the
Kronecker methods' damped operator), which makes its products with the batch's gradients Gram products
(:mod:`fimbench.fisher.gaussian_divergence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.kronecker_sum import DampingForm, KroneckerInverse

DIAGONALISATION_DTYPE = torch.float64
"""Determinants over p·q eigenvalues and traces of inverses are summed in float64."""


@dataclass(frozen=True)
class KroneckerDiagonalisation:
    """``F̂_λ = (B_A ⊗ B_G) diag(vec D) (B_A ⊗ B_G)ᵀ`` (module docstring), in float64.

    Attributes:
        basis: ``(B_A, B_G)``, (p, p) and (q, q), invertible.
        inverse_basis: ``(C_A, C_G) = (B_A⁻ᵀ, B_G⁻ᵀ)``.
        diagonal: ``D``, (q, p), positive.
        terms: F̂_λ as ``Σ_k A_k ⊗ G_k`` when it is a short Kronecker sum, else ``None``.
    """

    basis: tuple[Tensor, Tensor]
    inverse_basis: tuple[Tensor, Tensor]
    diagonal: Tensor
    terms: list[tuple[Tensor, Tensor]] | None = None

    def __post_init__(self) -> None:
        """Widen every tensor to float64."""
        for name in ("basis", "inverse_basis"):
            object.__setattr__(self, name, tuple(M.to(DIAGONALISATION_DTYPE) for M in getattr(self, name)))
        object.__setattr__(self, "diagonal", self.diagonal.to(DIAGONALISATION_DTYPE))
        if self.terms is not None:
            object.__setattr__(self, "terms", [(A.to(DIAGONALISATION_DTYPE), G.to(DIAGONALISATION_DTYPE)) for A, G in self.terms])

    @classmethod
    def orthonormal(cls, bases: tuple[Tensor, Tensor], diagonal: Tensor, terms: list[tuple[Tensor, Tensor]] | None = None) -> KroneckerDiagonalisation:
        """The case ``B = C = Q`` with orthonormal ``Q`` (an eigenbasis)."""
        return cls(bases, bases, diagonal, terms)

    @classmethod
    def of_factors(cls, A: Tensor, G: Tensor) -> KroneckerDiagonalisation:
        """``A ⊗ G`` with ``A``, ``G`` symmetric positive definite: ``Q`` their eigenvectors, ``D = γ αᵀ``."""
        alpha, Q_A = torch.linalg.eigh(A.to(DIAGONALISATION_DTYPE))
        gamma, Q_G = torch.linalg.eigh(G.to(DIAGONALISATION_DTYPE))
        return cls.orthonormal((Q_A, Q_G), torch.outer(gamma, alpha), [(A, G)])

    @classmethod
    def of_inverse(cls, inverse: KroneckerInverse) -> KroneckerDiagonalisation:
        """The operator ``inverse`` inverts (its ``operator``, the damped Kronecker sum): the first term's eigenbasis
        for one term or exact damping, else ``C = (K₁, K₂)`` and ``B = (A K₁, B K₂)`` of §3.4's congruence."""
        terms = inverse.operator.terms
        if inverse.form == DampingForm.EXACT:
            return cls.orthonormal((inverse.Q_A, inverse.Q_G), inverse.denominator, terms)
        if inverse.operator.rank == 1:
            return cls.of_factors(*terms[0])
        A, B = terms[0]
        return cls((A @ inverse.K1, B @ inverse.K2), (inverse.K1, inverse.K2), inverse.denominator, terms)

    @property
    def p(self) -> int:
        return self.basis[0].shape[0]

    @property
    def q(self) -> int:
        return self.basis[1].shape[0]

    def log_determinant(self) -> float:
        """``log det F̂_λ = Σ log D + 2 q log|det B_A| + 2 p log|det B_G|``."""
        B_A, B_G = self.basis
        return float(
            self.diagonal.log().sum()
            + 2 * self.q * torch.linalg.slogdet(B_A).logabsdet
            + 2 * self.p * torch.linalg.slogdet(B_G).logabsdet
        )

    def trace(self) -> float:
        """``tr F̂_λ = Σ_ij D_ij ‖B_G[:, i]‖² ‖B_A[:, j]‖²``."""
        B_A, B_G = self.basis
        return float(B_G.square().sum(0) @ self.diagonal @ B_A.square().sum(0))

    def inverse_trace(self) -> float:
        """``tr F̂_λ⁻¹ = Σ_ij ‖C_G[:, i]‖² ‖C_A[:, j]‖² / D_ij``."""
        C_A, C_G = self.inverse_basis
        return float(C_G.square().sum(0) @ self.diagonal.reciprocal() @ C_A.square().sum(0))

