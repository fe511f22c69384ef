"""Two-level preconditioning (Tselepidis et al., 2020): a coarse cross-layer correction on top of any
block-diagonal curvature ``F̃ = blockdiag(F̃_1, …, F̃_L)`` (every Kronecker method and EKFAC).

With one coarse vector ``r_l`` (a (q_l, p_l) matrix) per layer, ``R₀`` the P × L matrix whose column l is
``r_l`` in layer l's rows and zero elsewhere, and ``F`` the exact Fisher of the Fisher sub-batch over all
preconditioned layers (:class:`~fimbench.fisher.sub_batch.SubBatchFisher`), the step direction is

    d = P ∇,   P = F̃⁻¹ + R₀ (R₀ᵀ (F + λI) R₀)⁻¹ R₀ᵀ.

The coarse matrix ``R₀ᵀ F R₀`` (L × L) couples the layers; with ``Y[:, l] = J_l r_l`` (m × L, one Jacobian
product per layer) it is ``Yᵀ Y / m`` — no P × P matrix, no layer's full block. Each ``r_l`` is scaled to
unit Frobenius norm, so ``R₀ᵀ R₀ = I`` and the coarse damping is ``λ I`` with the blocks' λ (the correction
does not depend on the scale of the ``r_l``). The coarse vectors (``coarse=``):

* ``nicolaides``: ``r_l = 1 1ᵀ`` (every weight and bias of the layer moves together);
* ``spectral``: ``r_l = u_G u_Aᵀ``, the eigenvector of the smallest eigenvalue of the block's first term
  ``A₁ ⊗ G₁`` (``u_A``, ``u_G``: eigenvectors of the smallest eigenvalues of ``A₁`` and ``G₁``; K-FAC's
  factors for EKFAC) — the direction the block inverse amplifies most;
* ``residual``: ``r_l = F̃_l⁻¹ (∇ − (F + λI) F̃⁻¹ ∇)_l``, the block preconditioner applied to the residual of
  the one-level direction in the damped exact-Fisher system.

Schedule: at the first step after each statistics update (T1) the coarse vectors are rebuilt (from that
step's gradient for ``residual``, from the current blocks for ``spectral``) and ``R₀ᵀ F R₀`` of that
sub-batch enters the EMA ``C ← ρ C + (1 − ρ) R₀ᵀ F R₀`` with the blocks' ρ (the EMA mixes coarse matrices
of successive coarse vectors, as the authors' code does); ``C + λI`` is factorised then and whenever λ
moves. The correction acts on the concatenated block-preconditioned gradient, before KL clipping: the
clipping factor is computed from ``d`` itself.

Adaptive damping's ``M(δ)`` uses the operator actually inverted, ``P⁻¹``, by Woodbury:
``δᵀ P⁻¹ δ = δᵀ F̃ δ − uᵀ (C + λI + W)⁻¹ u`` with ``u_l = r_lᵀ F̃_l δ_l`` and ``W = diag(r_lᵀ F̃_l r_l)``.

Departures from the authors' ``TwolevelKFAC``: their coarse damping is ``λ · p_l q_l`` on the diagonal after
∞-norm scaling of ``r_l`` (for Nicolaides ``= λ ‖r_l‖²``, as here; for the other spaces it depends on the
scaling); their residual coarse space is rebuilt every step while ``C`` is rebuilt every T1 steps, so the
two disagree between updates — here both change together; their spectral vector is
``torch.kron(Q_x[:, 0], Q_g[:, 0]).view(q, p)``, which for p = q is the transpose ``u_A u_Gᵀ`` of the
intended ``u_G u_Aᵀ`` and for p ≠ q is not a rank-1 matrix at all (``kron(x, g)`` has index
``i_x q + i_g`` while ``.view(q, p)`` reads index ``i_g p + i_x``); here it is ``u_G u_Aᵀ``. Their inverse
in the residual space damps K-FAC's eigenvalues twice (``(L_g + λ)(L_x + λ)`` of already damped factors);
here it is the block's own damped inverse. Their Krylov-enriched and "tpselepedis" spaces are not built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.network_error import NetworkTerms
from fimbench.fisher.sub_batch import GRAM_DTYPE, SubBatchFisher
from fimbench.preconditioner.blocks import BlockDiagonal, SolverReport
from fimbench.preconditioner.guard import COARSE, REFRESH, Failure, guarded


class CoarseSpace(StrEnum):
    """``coarse=`` choices: ``none`` (one level) or the coarse space of the two-level correction."""

    NONE = "none"
    NICOLAIDES = "nicolaides"
    SPECTRAL = "spectral"
    RESIDUAL = "residual"


def check_coarse(name: object) -> CoarseSpace:
    """One of :class:`CoarseSpace`; a one-line error for anything else."""
    if name not in tuple(CoarseSpace):
        raise FimbenchError(f"unknown coarse space {name!r}; choose from {', '.join(CoarseSpace)}")
    return CoarseSpace(str(name))


class FirstTermBlock(Protocol):
    """A block with a first Kronecker term ``A₁ ⊗ G₁`` (the spectral coarse space reads it)."""

    @property
    def first_term(self) -> tuple[Tensor, Tensor]: ...

    def quadratic(self, delta: Tensor) -> Tensor: ...


def _unit(matrix: Tensor) -> Tensor:
    """``matrix / ‖matrix‖_F``; a zero matrix stays zero (its layer then gets no coarse correction)."""
    norm = torch.linalg.matrix_norm(matrix)
    return matrix / norm if float(norm) > 0 else matrix


def smallest_eigenvector(matrix: Tensor) -> Tensor:
    """The unit eigenvector of the smallest eigenvalue of a symmetric matrix."""
    from fimbench.curvature.kronecker_sum import robust_eigh

    return robust_eigh(0.5 * (matrix + matrix.transpose(0, 1)))[1][:, 0]


def coarse_vector(coarse: str, first_term: tuple[Tensor, Tensor], like: Tensor) -> Tensor:
    """The unit ``r_l`` of a gradient-free coarse space: ``nicolaides`` (``1 1ᵀ``) or ``spectral``
    (``u_G u_Aᵀ`` of the first term ``A₁ ⊗ G₁``), shaped and typed like ``like`` (q, p)."""
    if coarse == CoarseSpace.NICOLAIDES:
        return _unit(torch.ones_like(like))
    if coarse == CoarseSpace.SPECTRAL:
        A, G = first_term
        return torch.outer(smallest_eigenvector(G), smallest_eigenvector(A)).to(like.dtype)
    raise FimbenchError(f"the coarse space {coarse} depends on a gradient; only nicolaides and spectral are fixed by the blocks")


def two_level_terms(
    fisher: SubBatchFisher, matvecs: Sequence[Callable[[Tensor], Tensor]], vectors: Sequence[Tensor], blocks: NetworkTerms
) -> NetworkTerms:
    """``⟨F, F̂₂⟩`` and ``‖F̂₂‖²`` of the two-level approximation of F over the layers of ``fisher``,
    ``F̂₂ = P⁻¹ = F̂ − U B Uᵀ`` (Woodbury; undamped, λ = 0), from the undamped blocks ``F̂_l`` (``matvecs``:
    ``V ↦ F̂_l V``; ``blocks``: ``⟨F, F̂⟩`` and ``‖F̂‖²`` of ``blockdiag(F̂_l)``) and unit coarse vectors r_l:

        U = F̂ R₀ (column l: u_l = F̂_l r_l),   B = (R₀ᵀ F R₀ + diag(r_lᵀ u_l))⁻¹,
        ⟨F, F̂₂⟩ = ⟨F, F̂⟩ − tr(B (JU)ᵀ(JU) / m),
        ‖F̂₂‖² = ‖F̂‖² − 2 tr(B diag(u_lᵀ F̂_l u_l)) + tr(B diag(‖u_l‖²) B diag(‖u_l‖²)),

    with ``(JU)[:, l] = J_l u_l`` — m × L and L × L quantities only. B is a pseudo-inverse: a coarse vector
    in the null space of both F̂_l and F (the spectral one when a factor is singular, m < p) has
    ``u_l = 0`` and a zero row, and drops out, as it does from F̂₂ in the limit λ → 0."""
    r = [vector.to(GRAM_DTYPE) for vector in vectors]
    u = [matvec(vector).to(GRAM_DTYPE) for matvec, vector in zip(matvecs, r)]
    JR = torch.stack([fisher.layer_jacobian_product(index, vector) for index, vector in enumerate(r)], dim=1)
    JU = torch.stack([fisher.layer_jacobian_product(index, vector) for index, vector in enumerate(u)], dim=1)
    coupling = torch.stack([(a * b).sum() for a, b in zip(r, u)])
    B = torch.linalg.pinv(JR.transpose(0, 1) @ JR / fisher.m + torch.diag(coupling), hermitian=True)
    curvature = torch.stack([(vector * matvec(vector).to(GRAM_DTYPE)).sum() for matvec, vector in zip(matvecs, u)])
    norms = torch.diag(torch.stack([vector.square().sum() for vector in u]))
    inner = blocks.inner - float(torch.trace(B @ (JU.transpose(0, 1) @ JU)) / fisher.m)
    squared_norm = blocks.squared_norm - 2.0 * float((torch.diagonal(B) * curvature).sum()) + float(torch.trace(B @ norms @ B @ norms))
    return NetworkTerms(inner, squared_norm)


class TwoLevel:
    """:class:`~fimbench.preconditioner.damped_fisher.DampedFisher` ``P⁻¹`` with ``P = F̃⁻¹ + R₀ (R₀ᵀ (F + λI) R₀)⁻¹ R₀ᵀ``
    over the block-diagonal ``inner`` (module docstring), ``coarse`` one of nicolaides, spectral, residual."""

    def __init__(self, inner: BlockDiagonal, coarse: str) -> None:
        if check_coarse(coarse) == CoarseSpace.NONE:
            raise FimbenchError("a two-level curvature needs a coarse space (nicolaides, spectral or residual)")
        self.inner, self.coarse = inner, coarse
        self.fisher: SubBatchFisher | None = None  # the sub-batch whose R₀ᵀ F R₀ is still to enter C
        self.decay = 0.0
        self.vectors: list[Tensor] | None = None  # r_l, unit norm
        self.coarse_matrix: Tensor | None = None  # C, the EMA of R₀ᵀ F R₀ (L × L, float64)
        self.damping: float | None = None
        self.factor: Tensor | None = None  # Cholesky factor of C + λI
        self.failures: list[Failure] = []

    def update(self, statistics: Sequence[LayerStatistics], decay: float) -> list[SolverReport]:
        """The blocks' update; the sub-batch and ρ are kept for the coarse rebuild of the next :meth:`apply`."""
        reports = self.inner.update(statistics, decay)
        self.fisher, self.decay = SubBatchFisher(statistics), decay
        return reports

    def refresh(self, damping: float) -> None:
        """The blocks' factorisation, and ``C + λI``'s when λ moved."""
        self.inner.refresh(damping)
        if damping != self.damping:
            self._guarded_coarse(lambda: self._factorise(damping))

    def _guarded_coarse(self, operation: Callable[[], None]) -> None:
        """Run a change of the coarse level through the guard: on failure the previous coarse vectors, C and
        factor stay, and the pending sub-batch is dropped."""
        had_factor = self.factor is not None
        reason = guarded(self, operation)
        if reason is not None:
            self.fisher = None
            self.failures.append(Failure(COARSE, REFRESH, reason, fatal=not had_factor))

    def pop_failures(self) -> list[Failure]:
        """The guard's failures since the last call, the blocks' included."""
        failures, self.failures = self.inner.pop_failures() + self.failures, []
        return failures

    def _factorise(self, damping: float | None) -> None:
        """``C + λI``'s Cholesky factor, for λ = ``damping`` (none before C or λ is known)."""
        self.damping = damping
        if self.coarse_matrix is None or self.damping is None:
            return
        eye = torch.eye(self.coarse_matrix.shape[0], dtype=GRAM_DTYPE, device=self.coarse_matrix.device)
        self.factor = torch.linalg.cholesky(self.coarse_matrix + self.damping * eye)

    def coarse_vectors(self, gradients: Sequence[Tensor], directions: Sequence[Tensor]) -> list[Tensor]:
        """The unit coarse vectors ``r_l`` of the coarse space (module docstring)."""
        if self.coarse in (CoarseSpace.NICOLAIDES, CoarseSpace.SPECTRAL):
            first_terms = [cast(FirstTermBlock, block).first_term for block in self.inner.blocks] if self.coarse == CoarseSpace.SPECTRAL else [None] * len(gradients)
            return [coarse_vector(self.coarse, first, gradient) for first, gradient in zip(first_terms, gradients)]  # type: ignore[arg-type]
        assert self.fisher is not None and self.damping is not None
        damped = [Fd + self.damping * d for Fd, d in zip(self.fisher.matvec(directions), directions)]
        residuals = [gradient - product for gradient, product in zip(gradients, damped)]
        return [_unit(vector) for vector in self.inner.apply(residuals)]

    def _rebuild(self, gradients: Sequence[Tensor], directions: Sequence[Tensor]) -> None:
        """New coarse vectors and ``C ← ρ C + (1 − ρ) Yᵀ Y / m`` with ``Y[:, l] = J_l r_l``, factorised."""
        fisher = self.fisher
        assert fisher is not None
        self.vectors = self.coarse_vectors(gradients, directions)
        Y = torch.stack(
            [fisher.layer_jacobian_product(index, vector.to(GRAM_DTYPE)) for index, vector in enumerate(self.vectors)], dim=1
        )
        batch = Y.transpose(0, 1) @ Y / fisher.m
        if self.coarse_matrix is None:
            self.coarse_matrix = batch
        else:
            self.coarse_matrix = self.decay * self.coarse_matrix + (1.0 - self.decay) * batch
        self.fisher = None
        self._factorise(self.damping)

    def apply(self, gradients: Sequence[Tensor]) -> list[Tensor]:
        """``P ∇ = F̃⁻¹ ∇ + R₀ (C + λI)⁻¹ R₀ᵀ ∇``; rebuilds the coarse space first after a statistics update."""
        directions = self.inner.apply(gradients)
        if self.fisher is not None:
            self._guarded_coarse(lambda: self._rebuild(gradients, directions))
            if self.factor is None and self.failures:  # the first coarse level failed: the preconditioner stops
                return directions
        if self.factor is None or self.vectors is None:
            raise FimbenchError("the two-level curvature is applied before its first statistics update and refresh")
        projections = torch.stack([(r.to(GRAM_DTYPE) * g.to(GRAM_DTYPE)).sum() for r, g in zip(self.vectors, gradients)])
        coefficients = torch.cholesky_solve(projections[:, None], self.factor)[:, 0]
        return [d + coefficients[index].to(d.dtype) * r for index, (d, r) in enumerate(zip(directions, self.vectors))]

    def quadratic(self, deltas: Sequence[Tensor]) -> Tensor:
        """``δᵀ P⁻¹ δ = δᵀ F̃ δ − uᵀ (C + λI + W)⁻¹ u`` (module docstring; the block bilinear forms by polarisation)."""
        if self.factor is None or self.vectors is None or self.coarse_matrix is None:
            raise FimbenchError("the two-level curvature has no factorisation yet")
        blocks = self.inner.blocks
        u, w = [], []
        for block, r, delta in zip(blocks, self.vectors, deltas):  # type: FirstTermBlock, Tensor, Tensor
            w.append(block.quadratic(r).to(GRAM_DTYPE))
            size = torch.linalg.matrix_norm(delta)
            if float(size) == 0.0:
                u.append(torch.zeros((), dtype=GRAM_DTYPE, device=delta.device))
                continue
            scaled = r * size  # ‖r‖ = 1: polarise at δ's scale
            u.append(((block.quadratic(scaled + delta) - block.quadratic(scaled - delta)) / (4.0 * size)).to(GRAM_DTYPE))
        eye = torch.eye(len(blocks), dtype=GRAM_DTYPE, device=self.coarse_matrix.device)
        system = self.coarse_matrix + self.damping * eye + torch.diag(torch.stack(w))  # type: ignore[operator]
        u_vector = torch.stack(u)
        correction = u_vector @ torch.linalg.solve(system, u_vector)
        return self.inner.quadratic(deltas) - correction.to(deltas[0].dtype)

    @property
    def correction_scale(self) -> float | None:
        return self.inner.correction_scale

    def state_dict(self) -> dict[str, Any]:
        """The blocks' state and, under ``two_level``, the coarse vectors, C, the λ of its factor, ρ and
        the pending sub-batch if any."""
        pending = None if self.fisher is None else [[s.a, s.g] for s in self.fisher.statistics]
        two_level = {
            "coarse": self.coarse,
            "vectors": self.vectors,
            "coarse_matrix": self.coarse_matrix,
            "damping": self.damping,
            "decay": self.decay,
            "pending": pending,
        }
        return {**self.inner.state_dict(), "two_level": two_level}

    def load_state_dict(self, full_state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        state = full_state.get("two_level")
        if state is None or state["coarse"] != self.coarse:
            found = "none" if state is None else state["coarse"]
            raise FimbenchError(f"the state's coarse space is {found}, this preconditioner's {self.coarse}")
        self.inner.load_state_dict(full_state, device, dtype)
        self.vectors = None if state["vectors"] is None else [vector.to(device, dtype) for vector in state["vectors"]]
        self.coarse_matrix = None if state["coarse_matrix"] is None else state["coarse_matrix"].to(device, GRAM_DTYPE)
        self.damping, self.decay = state["damping"], state["decay"]

        pending = state["pending"]
        self.fisher = None if pending is None else SubBatchFisher([LayerStatistics(a.to(device, dtype), g.to(device, dtype)) for a, g in pending])
        self.factor = None
        self._factorise(self.damping)
