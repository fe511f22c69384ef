"""Shared weights: Fisher blocks of layers applied at T positions per example (convolutions, sequences;
docs/design.md §7).

A layer applied at T positions of example n (the patches of a convolution, the tokens of a sequence)
sees the augmented activations ``a_nt`` — rows of ``A_n`` (T × p), bias column last — and produces the
pre-activation derivatives ``g_nt`` — rows of ``G_n`` (T × q). The example's weight gradient sums over
positions and the exact Fisher block averages over examples:

    DW_n = Σ_t g_nt a_ntᵀ = G_nᵀ A_n   (q × p),        F = (1/m) Σ_n vec(DW_n) vec(DW_n)ᵀ.

As ``vec(DW_n) = Σ_t a_nt ⊗ g_nt`` (column-major vec), ``F = (1/m) Σ_n Σ_{t,t'} (a_nt a_nt'ᵀ) ⊗ (g_nt g_nt'ᵀ)``
and its rearrangement is ``Z(F) = (1/m) Σ_n Σ_{t,t'} vec(a_nt a_nt'ᵀ) vec(g_nt g_nt'ᵀ)ᵀ``. Prop. 3.1's
products become, for V (q × q) and U (p × p),

    Z(F) vec(V)  = (1/m) Σ_n vec(A_nᵀ (G_n V G_nᵀ) A_n) = (1/m) Σ_n vec(DW_nᵀ V DW_n),
    Z(F)ᵀ vec(U) = (1/m) Σ_n vec(G_nᵀ (A_n U A_nᵀ) G_n) = (1/m) Σ_n vec(DW_n U DW_nᵀ).

T = 1 is the ordinary case (``DW_n = g_n a_nᵀ``); :func:`fimbench.curvature.approximate` sends it to the
Gram-coordinate operator of rearranged.py. For T > 1 the left singular vectors of ``Z(F)`` lie in
``span{A_nᵀ M A_n}`` over T × T matrices M, of dimension up to m·T(T+1)/2, which for convolutions far
exceeds p² — Gram coordinates would iterate on larger systems than the factors themselves. Here the
power SVD and Lanczos iterate on the p × p and q × q matrices (:class:`SharedWeightOperator`), with the
cheaper of two exact forms of the batch products (multiply-adds per product; :func:`product_form`):

* ``gradients`` — ``DW_n`` formed once (m T p q), then ``Σ_n DW_nᵀ V DW_n``: ``m p q (p + q)``;
* ``positions`` — straight from ``A_n``, ``G_n``: ``m T (p² + q²) + m T² (p + q)``.

Symmetric factors. For T = 1 the range of ``Z(F)`` holds only symmetric matrices (``vec(a aᵀ)``); for
T > 1 it does not: ``Z(F)`` maps symmetric V to symmetric and antisymmetric V to antisymmetric matrices
(``(A_nᵀ H A_n)ᵀ = A_nᵀ Hᵀ A_n``), so it splits exactly into a symmetric block ``P Z(F) P`` (P: the
projection ``X ↦ ½ (X + Xᵀ)`` on both sides) and an antisymmetric block. Every consumer of a Kronecker
sum (the §3.4 solve, the damping, Error 2's eigensolvers) needs symmetric factors, so fimbench iterates on
the symmetric block: KPSVD, Deflation and Lanczos give the best Kronecker rank-r approximation of F with
symmetric factors. Its leading pair is the unconstrained optimum (Prop. 3.2: the best R ⊗ S of a PSD F has
symmetric PSD factors); from the second pair on, an antisymmetric pair ``R ⊗ S`` (``Rᵀ = −R``, ``Sᵀ = −S``:
a symmetric but indefinite product) can have a larger singular value, and the unconstrained optimum is
then out of reach of a symmetric-factor preconditioner.

K-FAC uses the K-FAC-expand factors (Eschenhagen et al., NeurIPS 2023). Dropping the cross terms t ≠ t'
leaves ``(1/m) Σ_{n,t} a_nt a_ntᵀ ⊗ g_nt g_ntᵀ = T · E_{n,t}[a aᵀ ⊗ g gᵀ]`` (expectation over the m T
positions); factorising the expectation gives ``T · E[a aᵀ] ⊗ E[g gᵀ] = A ⊗ G`` with

    A = (1/(m T)) Σ_{n,t} a_nt a_ntᵀ,        G = (1/m) Σ_{n,t} g_nt g_ntᵀ,

which for T = 1 are K-FAC's ``E[ā āᵀ]``, ``E[g gᵀ]``, and ``A ⊗ G`` is then exactly F's K-FAC factorisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.kronecker import unvec, vec
from fimbench.curvature.rearranged import FRESH_FLOOR, ITERATION_DTYPE, WeightedTerms
from fimbench.errors import FimbenchError


def per_example_gradients(a: Tensor, g: Tensor) -> Tensor:
    """``DW_n = G_nᵀ A_n`` for every example: (m, q, p) from ``a`` (m, T, p) and ``g`` (m, T, q)."""
    return torch.einsum("ntq,ntp->nqp", g, a)


def product_form(T: int, p: int, q: int) -> str:
    """``gradients`` when ``p q (p + q) ≤ T (p² + q²) + T² (p + q)`` (module docstring; both counts carry the
    factor m), else ``positions``."""
    return "gradients" if p * q * (p + q) <= T * (p * p + q * q) + T * T * (p + q) else "positions"


class BatchProducts:
    """``V ↦ Z(F) vec(V)`` and ``U ↦ Z(F)ᵀ vec(U)`` of the exact block of one batch, as p × p / q × q matrices.

    ``form`` is ``gradients`` or ``positions`` (module docstring; default :func:`product_form`). Works in
    float64 (:data:`ITERATION_DTYPE`) whatever the statistics' precision.
    """

    def __init__(self, a: Tensor, g: Tensor, form: str | None = None) -> None:
        self.m, self.T, self.p = a.shape
        self.q = g.shape[2]
        self.form = form or product_form(self.T, self.p, self.q)
        if self.form not in ("gradients", "positions"):
            raise FimbenchError(f"unknown product form '{self.form}'; choose gradients or positions")
        self.a = a.to(ITERATION_DTYPE)
        self.g = g.to(ITERATION_DTYPE)
        if self.form == "gradients":
            self.D = per_example_gradients(self.a, self.g)  # (m, q, p)

    def z(self, V: Tensor) -> Tensor:
        """``MAT(Z(F) vec(V)) = (1/m) Σ_n A_nᵀ (G_n V G_nᵀ) A_n = (1/m) Σ_n DW_nᵀ V DW_n`` (p × p)."""
        m, p = self.m, self.p
        if self.form == "gradients":
            return self.D.reshape(-1, p).transpose(0, 1) @ (V @ self.D).reshape(-1, p) / m
        H = self.g @ V @ self.g.transpose(1, 2)  # (m, T, T): G_n V G_nᵀ
        return self.a.reshape(-1, p).transpose(0, 1) @ (H @ self.a).reshape(-1, p) / m

    def zt(self, U: Tensor) -> Tensor:
        """``MAT(Z(F)ᵀ vec(U)) = (1/m) Σ_n G_nᵀ (A_n U A_nᵀ) G_n = (1/m) Σ_n DW_n U DW_nᵀ`` (q × q)."""
        m, q = self.m, self.q
        if self.form == "gradients":
            X = (self.D @ U).transpose(0, 1).reshape(q, -1)  # columns: DW_n U, example after example
            return X @ self.D.transpose(0, 1).reshape(q, -1).transpose(0, 1) / m
        H = self.a @ U @ self.a.transpose(1, 2)  # (m, T, T): A_n U A_nᵀ
        return self.g.reshape(-1, q).transpose(0, 1) @ (H @ self.g).reshape(-1, q) / m

    @functools.cached_property
    def squared_norm(self) -> float:
        """``‖Z(F)‖²_F = ‖F‖²_F = (1/m²) Σ_{n,n'} ⟨DW_n, DW_n'⟩²`` with
        ``⟨DW_n, DW_n'⟩ = Σ_{t,t'} (a_ntᵀ a_n't')(g_ntᵀ g_n't')``: from the ``DW_n`` (m p q numbers, formed
        here if the products do not keep them) or from the positions (m² T² numbers), whichever is smaller."""
        if self.form == "gradients" or self.p * self.q <= self.m * self.T * self.T:
            D = self.D if self.form == "gradients" else per_example_gradients(self.a, self.g)
            flat = D.reshape(self.m, -1)
            inner = flat @ flat.transpose(0, 1)
        else:
            inner = torch.einsum(
                "nsut,nsut->nu",
                torch.einsum("nsp,utp->nsut", self.a, self.a),
                torch.einsum("nsq,utq->nsut", self.g, self.g),
            )
        return float(inner.square().sum()) / self.m**2


class EuclideanInnerProduct:
    """The identity as the solvers' Gram matrix: ``gram @ x = x`` (coordinates are the vectors themselves)."""

    def __matmul__(self, vector: Tensor) -> Tensor:
        return vector


@dataclass(frozen=True)
class PaddedSide:
    """One side of the coordinates: ``vec(X)`` of a d × d matrix, zero-padded to the operator's length n."""

    d: int
    n: int
    dtype: torch.dtype

    def coordinates(self, matrix: Tensor) -> Tensor:
        """``(vec(X), 0, …, 0)`` of length n (float64)."""
        flat = vec(matrix.to(ITERATION_DTYPE))
        return torch.cat([flat, flat.new_zeros(self.n - flat.shape[0])])

    def matrix(self, coordinates: Tensor) -> Tensor:
        """``MAT(x)`` from the first d² coordinates (float64)."""
        return unvec(coordinates[: self.d * self.d], self.d, self.d)

    def materialise(self, coordinates: Tensor) -> Tensor:
        """The symmetric d × d matrix ``½ (X + Xᵀ)``, ``X = MAT(x)``, in the statistics' dtype."""
        X = self.matrix(coordinates)
        return (0.5 * (X + X.transpose(0, 1))).to(self.dtype)


def symmetric(X: Tensor) -> Tensor:
    """``P X = ½ (X + Xᵀ)``, the orthogonal projection onto symmetric matrices."""
    return 0.5 * (X + X.transpose(0, 1))


class SharedWeightOperator:
    """``Z = P (w · Z(F_batch) + Σ_k c_k vec(R_k) vec(S_k)ᵀ) P`` on zero-padded vecs of p × p / q × q matrices.

    ``P`` symmetrises (module docstring: the symmetric block, exact because ``Z(F)`` commutes with the
    transpose); the low-rank terms — the EMA prior (``c_k = ρ``), deflated pairs and K-FAC's pair in
    KFAC-corrected (``c_k = −1``, §3.2.1 / §3.3) — have symmetric ``R_k``, ``S_k``, which P leaves as they
    are. The solvers (power SVD, Lanczos) take left and right coordinate vectors of one length, so both are
    ``vec`` zero-padded to ``n = max(p², q²)``; the padding stays zero through every product, and the
    inner product is the Euclidean one (``gram_a = gram_g = identity``).
    """

    def __init__(
        self, batch: BatchProducts, batch_weight: float, left: Tensor, right: Tensor, coefficients: Tensor, dtype: torch.dtype
    ) -> None:
        self.batch = batch
        self.batch_weight = batch_weight
        self.left = left  # (n, r)
        self.right = right  # (n, r)
        self.coefficients = coefficients  # (r,)
        n = max(batch.p, batch.q) ** 2
        self.activations = PaddedSide(batch.p, n, dtype)
        self.derivatives = PaddedSide(batch.q, n, dtype)
        self.gram_a = self.gram_g = EuclideanInnerProduct()

    @classmethod
    def build(
        cls, a: Tensor, g: Tensor, batch_weight: float = 1.0, terms: WeightedTerms | None = None, form: str | None = None
    ) -> SharedWeightOperator:
        """``Z = batch_weight · Z(F) + Σ_k c_k vec(R_k) vec(S_k)ᵀ`` for ``terms = [(c_k, R_k, S_k)]``."""
        batch = BatchProducts(a, g, form)
        n = max(batch.p, batch.q) ** 2
        operator = cls(
            batch,
            batch_weight,
            torch.zeros(n, 0, dtype=ITERATION_DTYPE, device=a.device),
            torch.zeros(n, 0, dtype=ITERATION_DTYPE, device=a.device),
            torch.zeros(0, dtype=ITERATION_DTYPE, device=a.device),
            a.dtype,
        )
        for coefficient, R, S in terms or []:
            operator = operator.with_term(coefficient, operator.activations.coordinates(R), operator.derivatives.coordinates(S))
        return operator

    def with_term(self, coefficient: float, x: Tensor, y: Tensor) -> SharedWeightOperator:
        """``Z + coefficient · x yᵀ`` (coordinates ``x``, ``y``), sharing the batch products."""
        scalar = torch.tensor([coefficient], dtype=ITERATION_DTYPE, device=x.device)
        return SharedWeightOperator(
            self.batch,
            self.batch_weight,
            torch.cat([self.left, x.unsqueeze(1)], dim=1),
            torch.cat([self.right, y.unsqueeze(1)], dim=1),
            torch.cat([self.coefficients, scalar]),
            self.activations.dtype,
        )

    def deflated(self, coefficient: float, x: Tensor, y: Tensor) -> SharedWeightOperator:
        """``Z − coefficient · x yᵀ`` (§3.2.1, §3.3)."""
        return self.with_term(-coefficient, x, y)

    @property
    def size(self) -> int:
        return self.left.shape[0]

    @property
    def batch_size(self) -> int:
        return self.batch.m

    def matvec(self, y: Tensor) -> Tensor:
        """``Z y``: ``w · vec(P Z(F) P V) + Σ_k c_k vec(R_k) ⟨vec(S_k), P V⟩`` with ``V = MAT(y)``."""
        V = symmetric(self.derivatives.matrix(y))
        batch = self.activations.coordinates(symmetric(self.batch.z(V)))
        low_rank = self.left @ (self.coefficients * (self.right.transpose(0, 1) @ self.derivatives.coordinates(V)))
        return self.batch_weight * batch + low_rank

    def rmatvec(self, x: Tensor) -> Tensor:
        """``Zᵀ x``: ``w · vec(P Z(F)ᵀ P U) + Σ_k c_k vec(S_k) ⟨vec(R_k), P U⟩`` with ``U = MAT(x)``."""
        U = symmetric(self.activations.matrix(x))
        batch = self.derivatives.coordinates(symmetric(self.batch.zt(U)))
        low_rank = self.right @ (self.coefficients * (self.left.transpose(0, 1) @ self.activations.coordinates(U)))
        return self.batch_weight * batch + low_rank

    def norm_left(self, x: Tensor) -> Tensor:
        """``‖x‖₂``: the coordinates are the matrix's zero-padded vec (class docstring)."""
        return torch.linalg.vector_norm(x)

    def norm_right(self, y: Tensor) -> Tensor:
        """``‖y‖₂``, as :meth:`norm_left`."""
        return torch.linalg.vector_norm(y)

    def frobenius_norm(self) -> float:
        """``‖w Z(F) + X diag(c) Yᵀ‖_F`` from ``w² ‖F‖² + 2 w Σ_k c_k ⟨x_k, Z(F) y_k⟩ + Σ_jk c_j c_k (x_jᵀx_k)(y_jᵀy_k)``.

        This is the norm before the projection P, an upper bound of the projected operator's
        (``‖P X P‖_F ≤ ‖X‖_F``): the solvers use it only as the scale of their breakdown tests, and the
        exact ``‖P Z(F) P‖_F`` would cost O(m² T³).
        """
        w, c = self.batch_weight, self.coefficients
        value = w * w * self.batch.squared_norm
        for k in range(c.shape[0]):  # one product per low-rank term (r ≤ 4)
            image = self.activations.coordinates(self.batch.z(self.derivatives.matrix(self.right[:, k])))
            value += 2.0 * w * float(c[k] * (self.left[:, k] @ image))
        cross = (self.left.transpose(0, 1) @ self.left) * (self.right.transpose(0, 1) @ self.right)
        value += float(c @ cross @ c)
        return math.sqrt(max(value, 0.0))

    def fresh_direction(self, basis: list[Tensor]) -> Tensor | None:
        """A unit right vector orthogonal to ``basis``: of the diagonal units ``vec(E_jj)`` (symmetric, inside
        the unpadded coordinates) the one farthest from their span, orthogonalised (twice); None when every
        one lies in it."""
        stacked = torch.stack(basis, dim=1)  # (n, k), orthonormal
        q = self.batch.q
        diagonal = torch.arange(q, device=stacked.device) * (q + 1)  # vec index of E_jj
        distances = 1.0 - stacked[diagonal].square().sum(dim=1)
        j = int(torch.argmax(distances))
        if float(distances[j]) <= FRESH_FLOOR:
            return None
        vector = torch.zeros_like(stacked[:, 0])
        vector[int(diagonal[j])] = 1.0
        for _ in range(2):
            vector = vector - stacked @ (stacked.transpose(0, 1) @ vector)
        return vector / torch.linalg.vector_norm(vector)

    def batch_mean(self) -> Tensor:
        """``vec(Σ_{n,t} g_nt g_ntᵀ / m)``, K-FAC-expand's G: the deterministic cold start."""
        g = self.batch.g.reshape(-1, self.batch.q)
        return self.derivatives.coordinates(g.transpose(0, 1) @ g / self.batch.m)


def kfac_expand_factors(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """K-FAC-expand's batch factors: ``A = (1/(mT)) Σ_{n,t} a_nt a_ntᵀ``, ``G = (1/m) Σ_{n,t} g_nt g_ntᵀ``
    (module docstring); :func:`fimbench.curvature.kfac.kfac_factors` averages them with the prior."""
    m, T, p = a.shape
    flat_a, flat_g = a.reshape(-1, p), g.reshape(-1, g.shape[2])
    return flat_a.transpose(0, 1) @ flat_a / (m * T), flat_g.transpose(0, 1) @ flat_g / m
