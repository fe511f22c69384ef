"""EKFAC (George et al., 2018): K-FAC's eigenbasis with re-fitted eigenvalues.

K-FAC's factors ``A = E[ā āᵀ] = Q_A diag(α) Q_Aᵀ`` and ``G = E[g gᵀ] = Q_G diag(γ) Q_Gᵀ`` (EMA-averaged
exactly as K-FAC's, K-FAC-expand's for a layer applied at T positions) give the eigenbasis
``Q = Q_A ⊗ Q_G`` of ``A ⊗ G``. EKFAC keeps that basis and replaces K-FAC's eigenvalues ``γ_i α_j`` by the
diagonal that is closest to ``F`` in the Frobenius norm among all operators diagonal in ``Q``:

    F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ,   S_ij = (Qᵀ F Q)_{(j,i),(j,i)} = E_n[(Q_Gᵀ DW_n Q_A)_ij²],

with ``DW_n = Σ_t g_nt ā_ntᵀ`` (q × p) the per-example gradient; for T = 1 this is
``S_ij = E[(q_Gᵢᵀ g)² (q_Aⱼᵀ ā)²]``. ``S`` is (q × p), the layout of the weight gradient, so that the
spectrum of F̂ is exactly ``{S_ij}``.

Schedule (the eigenvalues more often than the eigenbasis, as George et al.): every statistics update (T1)
moves the factors by K-FAC's EMA and the eigenvalues towards the EMA target ``ρ F̂_old + (1 − ρ) F_batch``.
The basis is recomputed from the new factors at the first update after each refresh (T2; the preconditioner
asks with ``new_basis``), and kept otherwise. In a kept basis the target's optimal diagonal is
``S = ρ S_old + (1 − ρ) S_batch``. The Frobenius-optimal diagonal is linear in the operator, so in a new
basis the old F̂ is carried over exactly: ``S = ρ (P_G ∘ P_G) S_old (P_A ∘ P_A)ᵀ + (1 − ρ) S_batch``
with ``P_A = Q_Aᵀ Q_A,old``, ``P_G = Q_Gᵀ Q_G,old`` (the diagonal of the old F̂ seen in the new basis).
Without a prior (the first update, ``fisher-error``), F̂ is the batch's own EKFAC.

Damping is exact in the eigenbasis at no extra cost: ``(F̂ + λI)⁻¹ vec V = vec(Q_G ((Q_Gᵀ V Q_A) ⊘ (S + λ)) Q_Aᵀ)``.

Departures: curvlinops' ``EKFACLinearOperator`` computes the basis and the eigenvalues once on a data set
(no EMA); George et al.'s algorithm and ASDL restart the running average of S with a new basis. Here the
old eigenvalues are carried into the new basis by the exact re-basing above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fimbench.curvature.kfac import kfac_factors
from fimbench.curvature.kronecker import kron_dense
from fimbench.curvature.kronecker_sum import KroneckerSum, robust_eigh
from fimbench.curvature.targets import checked_statistics
from fimbench.errors import FimbenchError


@dataclass
class EigenbasisDiagonal:
    """``F̂ = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ`` (module docstring) and the K-FAC factors ``A``, ``G``
    its basis is computed from (at the latest new-basis update; they have moved by EMA since).

    Attributes:
        factors: K-FAC's EMA factors ``(A, G)``, (p, p) and (q, q).
        bases: Their orthonormal eigenvectors ``(Q_A, Q_G)``, (p, p) and (q, q); the properties ``p``, ``q``.
        scales: The re-fitted eigenvalues ``S``, (q, p) like the weight gradient: spec(F̂) = {S_ij}.
        method: ``"ekfac"``.
    """

    factors: tuple[Tensor, Tensor]
    bases: tuple[Tensor, Tensor]
    scales: Tensor
    method: str = "ekfac"

    @property
    def p(self) -> int:
        return self.bases[0].shape[0]

    @property
    def q(self) -> int:
        return self.bases[1].shape[0]

    def to_dense(self) -> Tensor:
        """Dense F̂ — reference code and small layers only.

        Returns:
            The (pq, pq) matrix.
        """
        Q = kron_dense(*self.bases)
        return Q @ torch.diag(self.scales.transpose(0, 1).reshape(-1)) @ Q.transpose(0, 1)

    def matvec(self, V: Tensor) -> Tensor:
        """``F̂ vec V = vec(Q_G ((Q_Gᵀ V Q_A) ∘ S) Q_Aᵀ)`` for a (q, p) ``V``.

        Args:
            V: The (q, p) matrix.

        Returns:
            The (q, p) product.
        """
        Q_A, Q_G = self.bases
        return Q_G @ ((Q_G.transpose(0, 1) @ V @ Q_A) * self.scales) @ Q_A.transpose(0, 1)

    def solve(self, V: Tensor, damping: float) -> Tensor:
        """``(F̂ + λI)⁻¹ vec V = vec(Q_G ((Q_Gᵀ V Q_A) ⊘ (S + λ)) Q_Aᵀ)``.

        Args:
            V: The (q, p) matrix, e.g. a gradient ``[∇W | ∇b]``.
            damping: λ > 0.

        Returns:
            The (q, p) solution.

        Raises:
            FimbenchError: If ``damping`` is not positive.
        """
        if not damping > 0:
            raise FimbenchError(f"EKFAC's damped solve needs damping > 0, got {damping}")
        Q_A, Q_G = self.bases
        return Q_G @ ((Q_G.transpose(0, 1) @ V @ Q_A) / (self.scales + damping)) @ Q_A.transpose(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain data (``torch.load(weights_only=True)``).

        Returns:
            ``{"factors", "bases", "scales"}``, read by :meth:`from_state_dict`.
        """
        return {"factors": list(self.factors), "bases": list(self.bases), "scales": self.scales}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> EigenbasisDiagonal:
        """An approximation rebuilt from :meth:`state_dict`'s output.

        Args:
            state: the ``factors``, ``bases`` and ``scales`` saved.
            device: the device of the rebuilt tensors (default: as saved).
            dtype: their dtype (default: as saved).

        Returns:
            The EKFAC approximation.
        """
        factors = tuple(t.to(device, dtype) for t in state["factors"])
        bases = tuple(t.to(device, dtype) for t in state["bases"])
        return cls(factors, bases, state["scales"].to(device, dtype))


def eigenbases(A: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal eigenvectors ``Q_A`` of ``A`` and ``Q_G`` of ``G``."""
    return robust_eigh(0.5 * (A + A.transpose(0, 1)))[1], robust_eigh(0.5 * (G + G.transpose(0, 1)))[1]


def projected_moments(a: Tensor, g: Tensor, bases: tuple[Tensor, Tensor]) -> Tensor:
    """``S_batch = (1/m) Σ_n (Q_Gᵀ DW_n Q_A)²`` (q × p) — T = 1: ``(g Q_G)²ᵀ (ā Q_A)² / m``, O(m(p² + q² + pq));
    T positions: ``Q_Gᵀ DW_n Q_A = (g_n Q_G)ᵀ (ā_n Q_A)``, O(m T pq + m(p² + q²) T)."""
    Q_A, Q_G = bases
    a_rotated, g_rotated = a @ Q_A, g @ Q_G
    if a.ndim == 2:
        return g_rotated.square().transpose(0, 1) @ a_rotated.square() / a.shape[0]
    return torch.einsum("ntq,ntp->nqp", g_rotated, a_rotated).square().mean(dim=0)


def rebase(scales: Tensor, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
    """The diagonal in the basis ``new`` of ``(Q_A' ⊗ Q_G') diag(vec S) (Q_A' ⊗ Q_G')ᵀ`` (basis ``old``):
    ``(P_G ∘ P_G) S (P_A ∘ P_A)ᵀ``, ``P = Q_newᵀ Q_old``."""
    P_A = new[0].transpose(0, 1) @ old[0]
    P_G = new[1].transpose(0, 1) @ old[1]
    return P_G.square() @ scales @ P_A.square().transpose(0, 1)


def approximate_ekfac(
    a: Tensor, g: Tensor, prior: EigenbasisDiagonal | None = None, decay: float = 0.0, new_basis: bool = True
) -> EigenbasisDiagonal:
    """EKFAC of the statistics ``a`` (m, p) / (m, T, p) and ``g`` (m, q) / (m, T, q) (module docstring).

    Without a prior: the batch's factors, their eigenbasis and ``S_batch`` in it. With a prior and
    ``decay = ρ``: K-FAC's EMA of the factors and ``S = ρ S_old + (1 − ρ) S_batch`` — in the eigenbasis of the
    new factors with ``new_basis`` (``S_old`` re-based exactly), else in the prior's basis.

    Args:
        a: Augmented activations (bias column last), (m, p); or (m, T, p) for a layer applied at T positions.
        g: Pre-activation derivatives, (m, q); or (m, T, q).
        prior: The previous EKFAC approximation; ``None`` (default): the batch's own EKFAC.
        decay: The EMA rate ρ ∈ [0, 1) of the factors and of ``S``, used only with a prior (default 0: the batch's).
        new_basis: Whether to recompute the eigenbasis from the new factors (default), else keep the prior's.

    Returns:
        The approximation: factors (p, p) and (q, q), their eigenbases, ``S`` (q, p).

    Raises:
        FimbenchError: for statistics of mismatched shapes, or ``decay`` outside [0, 1).
    """
    a, g = checked_statistics(a, g)
    if not 0.0 <= decay < 1.0:
        raise FimbenchError(f"the EMA decay must be in [0, 1), got {decay}")
    factors = kfac_factors(a, g, None if prior is None else KroneckerSum([prior.factors]), decay)
    return fit_in_eigenbasis(a, g, factors, prior, decay, new_basis)


def fit_in_eigenbasis(
    a: Tensor, g: Tensor, factors: tuple[Tensor, Tensor], prior: EigenbasisDiagonal | None, decay: float, new_basis: bool, method: str = "ekfac"
) -> EigenbasisDiagonal:
    """The Frobenius-optimal diagonal in the eigenbasis of ``factors`` (module docstring): ``S_batch`` without a
    prior, else ``ρ S_old + (1 − ρ) S_batch`` in a new basis (``S_old`` re-based) or in the prior's.

    Args:
        a: checked activations, (m, p) or (m, T, p).
        g: checked derivatives, (m, q) or (m, T, q).
        factors: the (EMA) factors whose eigenbasis is taken, (p, p) and (q, q).
        prior: the previous approximation, or None.
        decay: ρ, used only with a prior.
        new_basis: whether to take the eigenbasis of ``factors`` (else keep the prior's).
        method: the approximation's name.

    Returns:
        The approximation.
    """
    if prior is None:
        bases = eigenbases(*factors)
        return EigenbasisDiagonal(factors, bases, projected_moments(a, g, bases), method)
    bases = eigenbases(*factors) if new_basis else prior.bases
    carried = rebase(prior.scales, prior.bases, bases) if new_basis else prior.scales
    return EigenbasisDiagonal(factors, bases, decay * carried + (1.0 - decay) * projected_moments(a, g, bases), method)
