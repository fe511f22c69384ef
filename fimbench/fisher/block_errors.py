"""The exact Fisher block and the paper's two error metrics (§4.1), never building a p·q-sized matrix.

``F = (1/m) Σ_t ā_t ā_tᵀ ⊗ g_t g_tᵀ`` is the block of one layer on a mini-batch of m examples and
``F̂ = Σ_k A_k ⊗ G_k`` an approximation of it. The metrics of Figure 1 are

    Error 1 = ‖F − F̂‖_F / ‖F‖_F,
    Error 2 = ‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂   (eigenvalues in decreasing order, zero-padded to pq).

Fast paths (every number says which one produced it):

* ``gram`` — Error 1 from m×m Gram matrices: ``‖F‖²_F = (1/m²) Σ_ts (ā_tᵀā_s)² (g_tᵀg_s)²``,
  ``⟨F, A ⊗ G⟩ = (1/m) Σ_t (ā_tᵀ A ā_t)(g_tᵀ G g_t)``, ``‖Σ_k A_k ⊗ G_k‖²_F = Σ_jk ⟨A_j, A_k⟩⟨G_j, G_k⟩``.
  The nonzero spectrum of ``F = JᵀJ / m`` (rows ``J_t = ā_t ⊗ g_t``) is that of the m×m matrix
  ``K = J Jᵀ / m = (1/m)(ā āᵀ) ∘ (g gᵀ)``: F has at most c = min(m, pq) nonzero eigenvalues, all ≥ 0.
* Error 2 then only needs the c algebraically largest eigenvalues of F̂: with ``λ_i(F) = 0`` for i > c,

      ‖spec(F) − spec(F̂)‖² = Σ_{i≤c} (λ_i(F) − λ_i(F̂))² + (‖F̂‖²_F − Σ_{i≤c} λ_i(F̂)²),

  exact whatever the signs of F̂'s eigenvalues (an indefinite F̂'s negative eigenvalues sort last and
  pair with F's zeros, or with F's smallest eigenvalues when F̂ has fewer than c non-negative ones).
* ``kron`` — one Kronecker product: ``spec(A ⊗ G) = {α_i γ_j}``, the outer product of the factors' spectra.
* Two or more terms are a genuine eigenproblem. Its size is first reduced exactly: when every ``A_k``
  lies in a subspace with orthonormal basis ``U_A`` (likewise ``U_G``), ``F̂ = (U_A ⊗ U_G) F̃ (U_A ⊗ U_G)ᵀ``
  with ``F̃ = Σ_k (U_Aᵀ A_k U_A) ⊗ (U_Gᵀ G_k U_G)``, so spec(F̂) = spec(F̃) plus zeros. Every method's
  factors are combinations of ``ā_t ā_tᵀ`` (resp. ``g_t g_tᵀ``), so ``range(āᵀ)`` and ``range(gᵀ)`` do;
  they shrink the problem whenever m < p or q or units are dead, and remove the structural zero
  eigenvalues — the only large multiplicities (:func:`reduce_terms`). Then
  ``dense``: ``eigvalsh`` of F̃ when its size n ≤ max(DENSE_SPECTRUM_LIMIT, 4c); above that a dense
  eigensolver costs O(n³) (n = 7750 for MNIST layer 5 takes about a minute on 2 cores), so
  ``lanczos``: block Lanczos with full re-orthogonalisation on matrix-free products
  ``V ↦ Σ_k G̃_k V Ã_k`` for the top c eigenvalues, stopped when Error 2 is certified (:func:`fimbench.fisher.spectrum.lanczos_top`).

* ``diag`` — EKFAC, ``F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ`` (curvature/ekfac.py): its spectrum is
  exactly ``{S_ij}``, ``‖F̂‖²_F = Σ_ij S_ij²`` and ``⟨F, F̂⟩ = (1/m) Σ_n Σ_ij S_ij (Q_Gᵀ DW_n Q_A)_ij²
  = Σ_ij S_ij S^batch_ij`` (:func:`eigenbasis_errors`).

Shared weights (a Conv2d, or a Linear over a sequence): statistics ``a`` (m, T, p) and ``g`` (m, T, q)
give the block ``F = (1/m) Σ_n vec(DW_n) vec(DW_n)ᵀ`` with ``DW_n = G_nᵀ A_n``; the same identities hold
with the rows ``J_n = vec(DW_n)`` (:class:`ExactFisher`).

Both metrics are NaN when F = 0 (every derivative of the layer vanished on the batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fimbench.curvature.ekfac import EigenbasisDiagonal, projected_moments
from fimbench.errors import FimbenchError
from fimbench.fisher.spectrum import Spectrum, lanczos_top, spectral_distance

METRIC_DTYPE = torch.float64
DENSE_SPECTRUM_LIMIT = 2048
"""Reduced sizes n up to which F̃'s spectrum comes from a dense ``eigvalsh`` (about a second on 2 cores).
Above ``max(DENSE_SPECTRUM_LIMIT, 4c)`` block Lanczos needs a Krylov space of about 2–3 c ≪ n vectors."""
PROJECTION_RTOL = 1e-5
"""Largest relative part of a factor that the projection onto the statistics' ranges may drop (float32
round-off of factors that lie in those ranges exactly: a few ε₃₂ ≈ 1.2e-7)."""
Terms = Sequence[tuple[Tensor, Tensor]]


def exact_block(a: Tensor, g: Tensor) -> Tensor:
    """``F = (1/m) Σ_t kron(ā_t ā_tᵀ, g_t g_tᵀ)`` — dense (pq × pq); reference code and small layers only.

    Built as ``Jᵀ J / m`` with rows ``J_t = vec(g_t ā_tᵀ) = ā_t ⊗ g_t`` (the per-example weight gradient).
    Shared weights (``a`` (m, T, p), ``g`` (m, T, q)): ``J_n = vec(G_nᵀ A_n) = Σ_t a_nt ⊗ g_nt``.

    Args:
        a: Augmented activations ``ā_t`` (bias column last), (m, p); or (m, T, p) for shared weights.
        g: Pre-activation derivatives ``g_t``, (m, q); or (m, T, q).

    Returns:
        The dense block F, (pq, pq), in the layout of ``vec`` of a (q, p) weight (``ā_t ⊗ g_t``).
    """
    if a.ndim == 3:
        per_example = _per_example_gradients(a, g).transpose(1, 2).reshape(a.shape[0], -1)  # vec(G_nᵀ A_n)
        return per_example.transpose(0, 1) @ per_example / a.shape[0]
    m = a.shape[0]
    per_example = (a.unsqueeze(2) * g.unsqueeze(1)).reshape(m, -1)  # ā_t ⊗ g_t
    return per_example.transpose(0, 1) @ per_example / m


def _per_example_gradients(a: Tensor, g: Tensor) -> Tensor:
    """``DW_n = G_nᵀ A_n`` (m, q, p) from ``a`` (m, T, p) and ``g`` (m, T, q)."""
    return torch.einsum("ntq,ntp->nqp", g, a)


@dataclass(frozen=True)
class Metric:
    """One error value and the path that computed it (module docstring).

    Attributes:
        value: The relative error (NaN when F = 0).
        path: ``gram`` (Error 1); ``kron``, ``dense``, ``lanczos``, ``lanczos-bound`` (an upper bound) or ``diag`` (Error 2).
    """

    value: float
    path: str


@dataclass(frozen=True)
class ApproximationErrors:
    """Error 1 and Error 2 of one approximation; ``path`` is ``"<error 1 path>/<error 2 path>"``.

    Attributes:
        error1: ``‖F − F̂‖_F / ‖F‖_F`` and its path.
        error2: ``‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂`` and its path.
    """

    error1: Metric
    error2: Metric

    @property
    def path(self) -> str:
        """``"<error 1 path>/<error 2 path>"``, e.g. ``"gram/kron"``; one word when both are the same (``"exact"``)."""
        return self.error1.path if self.error1.path == self.error2.path else f"{self.error1.path}/{self.error2.path}"


class ExactFisher:
    """The exact block ``F`` of statistics ``(ā, g)`` seen through m×m Gram matrices (float64).

    Cost O(m²(p + q) + m³ + m p min(m, p) + m q min(m, q)); nothing p·q-sized.

    Shared weights (``a`` (m, T, p), ``g`` (m, T, q); T positions per example, ``DW_n = G_nᵀ A_n``): the
    rows ``J_n = vec(DW_n)`` give ``K[n, n'] = ⟨DW_n, DW_n'⟩_F / m``, ``⟨F, A ⊗ G⟩ = (1/m) Σ_n ⟨DW_n, G DW_n Aᵀ⟩_F``,
    and the bases span the m T rows ``a_nt`` and ``g_nt`` — every method's factors are
    combinations of ``a_nt a_nt'ᵀ`` (resp. ``g_nt g_nt'ᵀ``). The per-example gradients cost m T p q (m p q stored).

    Args:
        a: Augmented activations ``ā_t`` (bias column last), (m, p); or (m, T, p) for shared weights; m ≥ 1.
        g: Pre-activation derivatives ``g_t``, (m, q); or (m, T, q), with the same m (and T).

    Attributes:
        a: ``a`` in float64.
        g: ``g`` in float64.
        gradients: The per-example gradients ``DW_n``, (m, q, p), for shared weights; else ``None``.
        gram: ``K = J Jᵀ / m = (1/m)(ā āᵀ) ∘ (g gᵀ)``, (m, m) — shared weights: ``⟨DW_n, DW_n'⟩ / m``.
        squared_norm: ``‖F‖²_F = (1/m²) Σ_ts (ā_tᵀ ā_s)² (g_tᵀ g_s)² = ‖K‖²_F``.
        spectrum: F's c = min(m, pq) largest eigenvalues, (c,) decreasing, those of ``K = (1/m)(ā āᵀ) ∘ (g gᵀ)``
            (F is PSD: round-off below 0 is clamped).
        bases: Orthonormal bases of ``range(āᵀ)`` (p × rank ā) and ``range(gᵀ)`` (:func:`reduce_terms`).

    Raises:
        FimbenchError: If ``a`` and ``g`` are neither (m, p) and (m, q) nor (m, T, p) and (m, T, q) with the
            same m ≥ 1 (and T).
    """

    def __init__(self, a: Tensor, g: Tensor) -> None:
        shared = a.ndim == 3 and g.ndim == 3 and a.shape[:2] == g.shape[:2]
        if not shared and (a.ndim != 2 or g.ndim != 2 or a.shape[0] != g.shape[0]) or a.shape[0] == 0:
            raise FimbenchError(
                "a and g must be (m, p) and (m, q), or (m, T, p) and (m, T, q), with the same m ≥ 1 (and T), "
                f"got {tuple(a.shape)} and {tuple(g.shape)}"
            )
        self.a = a.to(METRIC_DTYPE)
        self.g = g.to(METRIC_DTYPE)
        m = a.shape[0]
        self.gradients: Tensor | None = None
        if shared:
            self.gradients = _per_example_gradients(self.a, self.g)  # (m, q, p)
            flat = self.gradients.reshape(m, -1)
            K = flat @ flat.transpose(0, 1) / m
            rows_a, rows_g = self.a.reshape(-1, self.p), self.g.reshape(-1, self.q)
        else:
            K = (self.a @ self.a.transpose(0, 1)) * (self.g @ self.g.transpose(0, 1)) / m
            rows_a, rows_g = self.a, self.g
        self.gram = K
        self.squared_norm = float(K.square().sum())
        self.spectrum = torch.linalg.eigvalsh(K).flip(0)[: self.count].clamp_min(0.0)
        self.bases = (range_basis([rows_a.transpose(0, 1)]), range_basis([rows_g.transpose(0, 1)]))

    @property
    def m(self) -> int:
        """Examples in the batch."""
        return self.a.shape[0]

    @property
    def p(self) -> int:
        """Size of the activation side (bias included)."""
        return self.a.shape[-1]

    @property
    def q(self) -> int:
        """Size of the derivative side."""
        return self.g.shape[-1]

    @property
    def count(self) -> int:
        """c = min(m, pq): how many eigenvalues of F can be nonzero."""
        return min(self.m, self.p * self.q)

    def inner(self, A: Tensor, G: Tensor) -> float:
        """The Frobenius inner product ``⟨F, A ⊗ G⟩_F``, with no p·q-sized matrix.

        ``⟨F, A ⊗ G⟩_F = (1/m) Σ_t (ā_tᵀ A ā_t)(g_tᵀ G g_t)`` — O(m(p² + q²)); shared weights:
        ``(1/m) Σ_n ⟨DW_n, G DW_n Aᵀ⟩_F`` — O(m p q (p + q)).

        Args:
            A: The activation-side factor, (p, p).
            G: The derivative-side factor, (q, q).

        Returns:
            ``⟨F, A ⊗ G⟩_F``, computed in float64.
        """
        A, G = A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)
        if self.gradients is not None:
            return float(((G @ self.gradients @ A.transpose(0, 1)) * self.gradients).sum() / self.m)
        return float((((self.a @ A) * self.a).sum(1) * ((self.g @ G) * self.g).sum(1)).mean())


def _as_metric_terms(terms: Terms) -> list[tuple[Tensor, Tensor]]:
    return [(A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)) for A, G in terms]


def kronecker_squared_norm(terms: Terms) -> float:
    """``‖Σ_k A_k ⊗ G_k‖²_F = Σ_jk ⟨A_j, A_k⟩_F ⟨G_j, G_k⟩_F`` — O(R² (p² + q²))."""
    if not terms:
        return 0.0
    A = torch.stack([A for A, _ in _as_metric_terms(terms)]).flatten(1)
    G = torch.stack([G for _, G in _as_metric_terms(terms)]).flatten(1)
    return float(((A @ A.transpose(0, 1)) * (G @ G.transpose(0, 1))).sum())


def frobenius_error(fisher: ExactFisher, terms: Terms) -> Metric:
    """Error 1 by the Gram identities: ``‖F − F̂‖² = ‖F‖² − 2 Σ_k ⟨F, A_k ⊗ G_k⟩ + ‖F̂‖²`` (path ``gram``)."""
    squared = fisher.squared_norm - 2.0 * sum(fisher.inner(A, G) for A, G in terms) + kronecker_squared_norm(terms)
    return Metric(math.sqrt(max(squared, 0.0) / fisher.squared_norm) if fisher.squared_norm > 0 else math.nan, "gram")


def range_basis(matrices: list[Tensor]) -> Tensor:
    """Orthonormal basis of ``range([M_1 … M_R])``, singular values below ``σ₁ · d · ε`` dropped."""
    stacked = torch.cat(matrices, dim=1)
    U, sigma, _ = torch.linalg.svd(stacked, full_matrices=False)
    if float(sigma[0]) == 0.0:
        return U[:, :0]
    keep = sigma > sigma[0] * max(stacked.shape) * torch.finfo(stacked.dtype).eps
    return U[:, keep]


def _kron_top(terms: list[tuple[Tensor, Tensor]], count: int) -> Tensor:
    """Top ``count`` of ``spec(A ⊗ G) = {α_i γ_j}`` (path ``kron``)."""
    A, G = terms[0]
    products = torch.outer(torch.linalg.eigvalsh(A), torch.linalg.eigvalsh(G)).flatten()
    return torch.topk(products, min(count, products.shape[0])).values


def _dense_top(terms: list[tuple[Tensor, Tensor]], count: int) -> Tensor:
    """Top ``count`` eigenvalues of the dense ``Σ_k A_k ⊗ G_k`` (path ``dense``)."""
    dense = sum(torch.kron(A, G) for A, G in terms)
    return torch.linalg.eigvalsh(dense).flip(0)[:count]


def project_terms(terms: list[tuple[Tensor, Tensor]], U_A: Tensor, U_G: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``[(U_Aᵀ A_k U_A, U_Gᵀ G_k U_G)]``: the terms seen in the orthonormal bases ``U_A``, ``U_G``."""
    return [(U_A.transpose(0, 1) @ A @ U_A, U_G.transpose(0, 1) @ G @ U_G) for A, G in terms]


def captures_terms(terms: list[tuple[Tensor, Tensor]], reduced: list[tuple[Tensor, Tensor]]) -> bool:
    """Whether the projection kept every factor up to ``PROJECTION_RTOL`` (relative Frobenius norm)."""
    for (A, G), (A_r, G_r) in zip(terms, reduced):
        for full, kept in ((A, A_r), (G, G_r)):
            total = float(full.square().sum())
            if total - float(kept.square().sum()) > PROJECTION_RTOL**2 * total:
                return False
    return True


def reduce_terms(
    terms: list[tuple[Tensor, Tensor]], bases: tuple[Tensor, Tensor] | None = None
) -> list[tuple[Tensor, Tensor]]:
    """``F̃ = Σ_k (U_Aᵀ A_k U_A) ⊗ (U_Gᵀ G_k U_G)``: spec(F̂) = spec(F̃) ∪ {0, …} (module docstring).

    ``bases`` (orthonormal columns) are tried first — :class:`ExactFisher` offers ``range(āᵀ)`` and
    ``range(gᵀ)``, which hold every method's factors (all are combinations of ``ā_t ā_tᵀ`` and
    ``g_t g_tᵀ``) up to the round-off of factors computed in float32. They are accepted when they keep
    each factor to ``PROJECTION_RTOL``; otherwise the ranges of ``[A_1 … A_R]`` and ``[G_1 … G_R]``
    (dense SVD, singular values below ``σ₁ · d · ε`` dropped) are used.
    """
    if bases is not None:
        reduced = project_terms(terms, *bases)
        if captures_terms(terms, reduced):
            return reduced
    return project_terms(terms, range_basis([A for A, _ in terms]), range_basis([G for _, G in terms]))


def kronecker_spectrum(
    terms: Terms,
    count: int,
    weights: Tensor,
    reference_squared_norm: float,
    dense_limit: int = DENSE_SPECTRUM_LIMIT,
    bases: tuple[Tensor, Tensor] | None = None,
) -> Spectrum:
    """The ``count`` largest eigenvalues of ``F̂ = Σ_k A_k ⊗ G_k`` by the cheapest exact path (module docstring).

    ``weights`` (F's eigenvalues, decreasing) and ``reference_squared_norm`` (‖F‖²) only steer the
    Lanczos stopping rule, which certifies Error 2 rather than every eigenvalue; ``bases``: see
    :func:`reduce_terms`.
    """
    terms = [(A, G) for A, G in _as_metric_terms(terms) if bool(A.any()) and bool(G.any())]
    if not terms:
        return Spectrum(torch.zeros(0, dtype=METRIC_DTYPE), 0.0, "kron")
    if len(terms) == 1:
        return Spectrum(_kron_top(terms, count), kronecker_squared_norm(terms), "kron")
    reduced = reduce_terms(terms, bases)
    squared_norm = kronecker_squared_norm(reduced)
    n = reduced[0][0].shape[0] * reduced[0][1].shape[0]
    zeros = terms[0][0].shape[0] * terms[0][1].shape[0] - n  # spec(F̂) = spec(F̃) ∪ {0}^zeros
    wanted = min(count, n)
    if n > max(dense_limit, 4 * wanted):
        top, krylov_dim, certified = lanczos_top(reduced, wanted, weights, reference_squared_norm, squared_norm)
        path = "lanczos" if certified else "lanczos-bound"
    else:
        top, krylov_dim, path = _dense_top(reduced, wanted), 0, "dense"
    merged = torch.cat([top, torch.zeros(min(zeros, count), dtype=METRIC_DTYPE, device=top.device)])
    return Spectrum(torch.sort(merged, descending=True).values[:count], squared_norm, path, krylov_dim)


def spectral_error(fisher: ExactFisher, terms: Terms, dense_limit: int = DENSE_SPECTRUM_LIMIT) -> Metric:
    """Error 2 from F's Gram spectrum and F̂'s top c eigenvalues (path ``kron``, ``dense`` or ``lanczos``)."""
    spectrum = kronecker_spectrum(terms, fisher.count, fisher.spectrum, fisher.squared_norm, dense_limit, fisher.bases)
    return Metric(spectral_distance(fisher.spectrum, fisher.squared_norm, spectrum), spectrum.path)


def approximation_errors(fisher: ExactFisher, terms: Terms, dense_limit: int = DENSE_SPECTRUM_LIMIT) -> ApproximationErrors:
    """Error 1 and Error 2 of ``F̂ = Σ_k A_k ⊗ G_k`` against ``fisher`` by the fast paths.

    Args:
        fisher: The exact block F of the batch's statistics.
        terms: The pairs ``(A_k, G_k)`` of F̂, ``A_k`` (p, p) and ``G_k`` (q, q), e.g. a ``KroneckerSum``'s ``terms``.
        dense_limit: Reduced sizes n up to which F̂'s spectrum comes from a dense ``eigvalsh``; above
            ``max(dense_limit, 4c)``, block Lanczos (default :data:`DENSE_SPECTRUM_LIMIT`).

    Returns:
        ``‖F − F̂‖_F / ‖F‖_F`` and ``‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂``, each with its path; NaN when F = 0.
    """
    return ApproximationErrors(frobenius_error(fisher, terms), spectral_error(fisher, terms, dense_limit))


def eigenbasis_terms(fisher: ExactFisher, approximation: EigenbasisDiagonal) -> tuple[float, float]:
    """``⟨F, F̂⟩ = Σ S ∘ S^batch`` and ``‖F̂‖² = Σ S²`` of EKFAC's ``F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ``,
    with ``S^batch = (1/m) Σ_n (Q_Gᵀ DW_n Q_A)²`` of ``fisher``'s statistics (module docstring)."""
    bases = tuple(Q.to(METRIC_DTYPE) for Q in approximation.bases)
    scales = approximation.scales.to(METRIC_DTYPE)
    batch = projected_moments(fisher.a, fisher.g, bases)  # type: ignore[arg-type]
    return float((scales * batch).sum()), float(scales.square().sum())


def eigenbasis_errors(fisher: ExactFisher, approximation: EigenbasisDiagonal) -> ApproximationErrors:
    """Error 1 and Error 2 of EKFAC's F̂ (path ``gram/diag``): ``‖F − F̂‖² = ‖F‖² − 2 ⟨F, F̂⟩ + ‖F̂‖²``
    (:func:`eigenbasis_terms`), and spec(F̂) = {S_ij} (all ≥ 0)."""
    inner, squared_norm = eigenbasis_terms(fisher, approximation)
    scales = approximation.scales.to(METRIC_DTYPE)
    squared = fisher.squared_norm - 2.0 * inner + squared_norm
    error1 = math.sqrt(max(squared, 0.0) / fisher.squared_norm) if fisher.squared_norm > 0 else math.nan
    top = torch.topk(scales.reshape(-1), min(fisher.count, scales.numel())).values
    error2 = spectral_distance(fisher.spectrum, fisher.squared_norm, Spectrum(top, squared_norm, "diag"))
    return ApproximationErrors(Metric(error1, "gram"), Metric(error2, "diag"))
