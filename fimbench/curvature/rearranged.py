"""The rearranged Fisher ``Z`` in Gram coordinates: every product of Prop. 3.1 at O(n²) cost (docs/design.md §4).

The operators whose leading singular pairs the methods need are all of the form

    Z = Σ_t c_t vec(ā_t ā_tᵀ) vec(g_t g_tᵀ)ᵀ + Σ_k c_k vec(R_k) vec(S_k)ᵀ,

with ``c_t = w / m`` for the m examples of a batch (``w = 1`` for ``Z(F)``, ``1 − ρ`` when an EMA prior
contributes) and extra Kronecker terms ``(R_k, S_k)``: the EMA prior ``ρ F̂_old`` (``c_k = ρ``), the
deflated pair of Deflation or KFAC's pair in KFAC-corrected (``c_k = −1``, §3.2.1 / §3.3), or a
warm-start direction that only seeds the iteration (``c_k = 0``).

Its left singular vectors lie in ``span{vec(ā_t ā_tᵀ), vec(R_k)}`` and its right ones in
``span{vec(g_t g_tᵀ), vec(S_k)}``. Writing ``u = Φ_A x`` and ``v = Φ_G y`` for these bases, Prop. 3.1's
products become ``Z v = Φ_A (c ⊙ M_G y)`` and ``Zᵀ u = Φ_G (c ⊙ M_A x)``, with the Gram matrices

    M_A[t, s] = (ā_tᵀ ā_s)²,   M_A[t, k] = ā_tᵀ R_k ā_t,   M_A[j, k] = ⟨R_j, R_k⟩_F   (same for G).

Building them costs O(m² p + m p² r); each power or Lanczos iteration then costs O(n²) with
n = m + r instead of O(m (p² + q²)) — the same iterates as the paper's algorithms, computed exactly,
without ever forming F or Z(F). Iterations run in float64 (the n×n matrices are tiny), so the
scale-invariant tolerance is meaningful even for float32 statistics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.kronecker import quadratic_forms, weighted_gram

ITERATION_DTYPE = torch.float64
FRESH_FLOOR = 1e-24  # squared relative distance below which a basis element lies in a span

WeightedTerms = list[tuple[float, Tensor, Tensor]]
"""Kronecker terms ``[(c_k, R_k, S_k)]`` added to ``Z`` as ``Σ_k c_k vec(R_k) vec(S_k)ᵀ``."""


@dataclass
class FactorBasis:
    """One side (activation or derivative) of the basis: example rows and extra matrices."""

    rows: Tensor  # (m, d): ā_t or g_t
    matrices: list[Tensor]  # R_k (d×d) or S_k

    def gram(self) -> Tensor:
        """``M`` with ``M[i, j] = ⟨vec(basis_i), vec(basis_j)⟩`` (n × n), computed in float64.

        The solvers' norms are ``sqrt(xᵀ M x)``, whose absolute error is about ``sqrt(ε ‖M‖)``: from float32
        entries (ε ≈ 6e-8) that is 2.4e-4 σ₁, above the second singular value of a layer whose g has one
        live coordinate, where power SVD then chases round-off into a zero norm and 0/0. In float64 the
        floor is 1.5e-8 σ₁.
        """
        rows = self.rows.to(ITERATION_DTYPE)
        blocks = [(rows @ rows.transpose(0, 1)).square()]
        if self.matrices:
            matrices = [R.to(ITERATION_DTYPE) for R in self.matrices]
            cross = torch.stack([quadratic_forms(rows, R) for R in matrices], dim=1)  # (m, r)
            stacked = torch.stack(matrices)  # (r, d, d)
            inner = torch.einsum("iab,jab->ij", stacked, stacked)
            top = torch.cat([blocks[0], cross], dim=1)
            bottom = torch.cat([cross.transpose(0, 1), inner], dim=1)
            return torch.cat([top, bottom], dim=0)
        return blocks[0]

    def materialise(self, coefficients: Tensor) -> Tensor:
        """``MAT(Φ x) = Σ_t x_t ā_t ā_tᵀ + Σ_k x_k R_k`` (symmetric d×d, O(m d²)), summed in float64 and
        returned in the statistics' dtype: a deflated pair's coefficients cancel, as its norms do."""
        m = self.rows.shape[0]
        coefficients = coefficients.to(ITERATION_DTYPE)
        result = weighted_gram(self.rows.to(ITERATION_DTYPE), coefficients[:m])
        for weight, matrix in zip(coefficients[m:], self.matrices):
            result = result + weight * matrix.to(ITERATION_DTYPE)
        return (0.5 * (result + result.transpose(0, 1))).to(self.rows.dtype)


class RearrangedOperator:
    """``Z = Φ_A C Φ_Gᵀ`` acting on coefficient vectors (module docstring).

    ``C`` (n×n) starts diagonal; deflating a pair that lies in the span, ``Z − c (Φ_A x)(Φ_G y)ᵀ``,
    only changes ``C`` to ``C − c x yᵀ`` — no new basis element, no new Gram entries.
    """

    def __init__(self, activations: FactorBasis, derivatives: FactorBasis, core: Tensor) -> None:
        self.activations = activations
        self.derivatives = derivatives
        self.core = core.to(ITERATION_DTYPE)
        self.gram_a = activations.gram()
        self.gram_g = derivatives.gram()

    @classmethod
    def build(cls, a: Tensor, g: Tensor, batch_weight: float = 1.0, terms: WeightedTerms | None = None) -> RearrangedOperator:
        """``Z = (batch_weight / m) Σ_t vec(ā_t ā_tᵀ) vec(g_t g_tᵀ)ᵀ + Σ_k c_k vec(R_k) vec(S_k)ᵀ``."""
        terms = terms or []
        m = a.shape[0]
        weights = torch.full((m + len(terms),), batch_weight / m, dtype=ITERATION_DTYPE, device=a.device)
        for index, (coefficient, _, _) in enumerate(terms):
            weights[m + index] = coefficient
        return cls(
            FactorBasis(a, [R for _, R, _ in terms]),
            FactorBasis(g, [S for _, _, S in terms]),
            torch.diag(weights),
        )

    def deflated(self, coefficient: float, x: Tensor, y: Tensor) -> RearrangedOperator:
        """``Z − coefficient · (Φ_A x)(Φ_G y)ᵀ`` (§3.2.1, §3.3), sharing this operator's Gram matrices."""
        other = RearrangedOperator.__new__(RearrangedOperator)
        other.activations, other.derivatives = self.activations, self.derivatives
        other.gram_a, other.gram_g = self.gram_a, self.gram_g
        other.core = self.core - coefficient * torch.outer(x, y)
        return other

    @property
    def size(self) -> int:
        return self.core.shape[0]

    @property
    def batch_size(self) -> int:
        return self.activations.rows.shape[0]

    @functools.cached_property
    def _forward(self) -> Tensor:
        return self.core @ self.gram_g

    @functools.cached_property
    def _backward(self) -> Tensor:
        return self.core.transpose(0, 1) @ self.gram_a

    def matvec(self, y: Tensor) -> Tensor:
        """Coefficients of ``Z v`` for ``v = Φ_G y``: ``C M_G y``."""
        return self._forward @ y

    def rmatvec(self, x: Tensor) -> Tensor:
        """Coefficients of ``Zᵀ u`` for ``u = Φ_A x``: ``Cᵀ M_A x``."""
        return self._backward @ x

    def norm_left(self, x: Tensor) -> Tensor:
        """``‖Φ_A x‖₂ = sqrt(xᵀ M_A x)``."""
        return torch.sqrt(torch.clamp(x @ (self.gram_a @ x), min=0.0))

    def norm_right(self, y: Tensor) -> Tensor:
        """``‖Φ_G y‖₂ = sqrt(yᵀ M_G y)``."""
        return torch.sqrt(torch.clamp(y @ (self.gram_g @ y), min=0.0))

    def frobenius_norm(self) -> float:
        """``‖Z‖_F = sqrt(tr(C M_G Cᵀ M_A))`` — O(n²) while ``C`` is diagonal, O(n³) after a deflation."""
        diagonal = torch.diagonal(self.core)
        if torch.count_nonzero(self.core - torch.diag(diagonal)) == 0:
            value = (diagonal.unsqueeze(1) * self.gram_g * diagonal.unsqueeze(0) * self.gram_a).sum()
        else:
            value = ((self.core @ self.gram_g @ self.core.transpose(0, 1)) * self.gram_a).sum()
        return float(torch.sqrt(torch.clamp(value, min=0.0)))

    def fresh_direction(self, basis: list[Tensor]) -> Tensor | None:
        """A unit right vector (``‖Φ_G y‖ = 1``) orthogonal to ``Φ_G b`` for every ``b`` in ``basis``: the basis
        element ``Φ_G e_t`` farthest from their span, orthogonalised (twice); None when none is left outside."""
        stacked = torch.stack(basis, dim=1)  # (n, k), orthonormal in ⟨y, y'⟩ = yᵀ M_G y'
        overlaps = self.gram_g @ stacked  # row t: ⟨Φ_G e_t, Φ_G b_k⟩
        distances = torch.diagonal(self.gram_g) - overlaps.square().sum(dim=1)
        index = int(torch.argmax(distances))
        if float(distances[index]) <= FRESH_FLOOR * float(torch.diagonal(self.gram_g).max()):
            return None
        vector = self.unit(index)
        for _ in range(2):
            vector = vector - stacked @ (stacked.transpose(0, 1) @ (self.gram_g @ vector))
        length = self.norm_right(vector)  # the distance above cancels: a basis of parallel elements (repeated
        if not float(length) ** 2 > FRESH_FLOOR * float(torch.diagonal(self.gram_g).max()):  # examples) leaves ~0 here
            return None
        return vector / length

    def unit(self, index: int) -> Tensor:
        """Coefficients of the basis element ``index`` (a warm-start direction)."""
        e = torch.zeros(self.size, dtype=ITERATION_DTYPE, device=self.core.device)
        e[index] = 1.0
        return e

    def batch_mean(self) -> Tensor:
        """Coefficients of ``E[x xᵀ]`` over the batch (K-FAC's factor): the deterministic cold start."""
        y = torch.zeros(self.size, dtype=ITERATION_DTYPE, device=self.core.device)
        y[: self.batch_size] = 1.0 / self.batch_size
        return y
