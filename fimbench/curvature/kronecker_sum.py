"""A Kronecker-factored Fisher block ``F̂ = Σ_k A_k ⊗ G_k``, its damping and its inverse.

Damping convention (one convention for every method; paper §2.2, Martens & Grosse 2015; docs/design.md §5–6):
the first term gets factored Tikhonov damping and the others are kept as they are,

    damped(λ, π) = (A₁ + π √λ I) ⊗ (G₁ + √λ / π I) + τ Σ_{k≥2} A_k ⊗ G_k.

The split π decides which factor carries the damping. ``pi="trace"`` is the paper's §2.2 rule
``π = sqrt((tr A₁ / p) / (tr G₁ / q))``; a positive number fixes π, which is how the authors' code
damps (their ``pi=False``; :mod:`fimbench.engines.authors_scale` gives the π that reproduces each method).

Exact damping (``form="exact"``), in the eigenbasis of the first term ``A₁ = Q_A diag(α) Q_Aᵀ``,
``G₁ = Q_G diag(γ) Q_Gᵀ``. One term: ``A₁ ⊗ G₁ + λI``, inverted as
``vec(Q_G ((Q_Gᵀ V Q_A) ⊘ (γ αᵀ + λ)) Q_Aᵀ)``. Two terms: ``A₁ ⊗ G₁ + λI + τ C ⊗ D`` has no closed-form
inverse (three Kronecker terms are not simultaneously diagonalisable), so the correction is replaced by its
part that commutes with the first term, ``C̄ = Q_A diag(c) Q_Aᵀ`` with ``c = diag(Q_Aᵀ C Q_A)`` (likewise
``D̄``, ``d``) — the Frobenius-closest operator diagonal in the first term's eigenbasis:

    damped_exact(λ) = A₁ ⊗ G₁ + λ I + τ C̄ ⊗ D̄,   inverse ``vec(Q_G ((Q_Gᵀ V Q_A) ⊘ (γ αᵀ + λ + τ d cᵀ)) Q_Aᵀ)``,

with ``τ = min(1, (1 − δ) / max_ij(−d_i c_j / (γ_i α_j + λ)))`` so that every eigenvalue is at least δ
times the damped first term's. The split π plays no part in exact damping.

Safeguard for indefinite corrections (§3.4). With ``A = A₁ + π√λ I``, ``B = G₁ + √λ/π I`` and the
generalised eigen-decompositions ``K₁ᵀ A K₁ = I, K₁ᵀ C K₁ = diag(s₁)`` and ``K₂ᵀ B K₂ = I,
K₂ᵀ D K₂ = diag(s₂)``, the damped two-term operator is congruent to ``diag(1 + τ s₂ s₁ᵀ)``: it is positive
definite iff every ``1 + τ s₂ⱼ s₁ᵢ > 0``. The second term of a rank-2 approximation may be indefinite, so
fimbench shrinks it just enough that every such eigenvalue ratio is at least ``min_curvature_ratio`` (δ):

    τ = min(1, (1 − δ) / max_ij(−s₂ⱼ s₁ᵢ)).

Unlike taking ``abs()`` of s₁, s₂ (the authors' code), this keeps the correction's sign where it is safe,
leaves the operator untouched (τ = 1) whenever it is already safely positive definite, and the result
is still a Kronecker sum — :meth:`KroneckerSum.damped` returns exactly the operator that is inverted,
so ``solve`` always equals a dense solve of ``damped(λ).to_dense()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import torch
from torch import Tensor

from fimbench.curvature.kronecker import kron_dense
from fimbench.errors import FactorisationError, FimbenchError

DEFAULT_MIN_CURVATURE_RATIO = 0.1
TRACE_SPLIT: Literal["trace"] = "trace"


class DampingForm(StrEnum):
    """How λ enters the first term: ``factored`` ``(A₁ + π√λ I) ⊗ (G₁ + √λ/π I)``, or ``exact`` ``A₁ ⊗ G₁ + λI``."""

    FACTORED = "factored"
    EXACT = "exact"


DampingSplit = float | Literal["trace"]
"""π of the factored damping: ``"trace"`` (the paper's rule) or a fixed positive number."""


def check_damping_form(form: object) -> DampingForm:
    """``"factored"`` or ``"exact"`` as a :class:`DampingForm`; a one-line error for anything else."""
    if form not in tuple(DampingForm):
        raise FimbenchError(f"the damping form must be one of {', '.join(DampingForm)}, got {form!r}")
    return DampingForm(str(form))


def check_damping_split(pi: object) -> DampingSplit:
    """``"trace"`` or a positive finite number; a one-line error for anything else.

    Args:
        pi: The split π of the factored damping, as given (an option, a config value).

    Returns:
        ``"trace"`` (the paper's §2.2 rule), or ``pi`` as a float.

    Raises:
        FimbenchError: If ``pi`` is neither ``"trace"`` nor a positive finite number (a bool is no number).
    """
    if pi == TRACE_SPLIT:
        return TRACE_SPLIT
    if isinstance(pi, (int, float)) and not isinstance(pi, bool) and math.isfinite(pi) and pi > 0:
        return float(pi)
    raise FimbenchError(f"the damping split pi must be 'trace' or a positive number, got {pi!r}")


@dataclass
class KroneckerSum:
    """``F̂ = Σ_k kron(A_k, G_k)`` with ``A_k`` (p×p, activation side) and ``G_k`` (q×q).

    Attributes:
        terms: The pairs ``(A_k, G_k)``, ``A_k`` (p, p) and ``G_k`` (q, q); the properties ``p``, ``q``, ``rank`` (their number).
        method: The name of the method that produced them (``""`` if none was given).
        iterations: The iterative solver's matrix-vector pairs (power SVD / Lanczos; 0 for K-FAC).
        residual: Its final residual ``‖Z v − σ u‖ / σ₁``.
        singular_values: The singular values of the rearranged target its terms were read off (if any).
    """

    terms: list[tuple[Tensor, Tensor]]
    method: str = ""
    iterations: int = 0
    residual: float = 0.0
    singular_values: list[float] = field(default_factory=list)

    @property
    def p(self) -> int:
        return self.terms[0][0].shape[0]

    @property
    def q(self) -> int:
        return self.terms[0][1].shape[0]

    @property
    def rank(self) -> int:
        return len(self.terms)

    def to_dense(self) -> Tensor:
        """Dense ``Σ_k A_k ⊗ G_k`` — reference code and small layers only.

        Returns:
            The (pq, pq) matrix.
        """
        return sum(kron_dense(A, G) for A, G in self.terms)  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        """The terms and the solver's report as tensors and plain data (``torch.load(weights_only=True)``).

        Returns:
            ``{"terms", "method", "iterations", "residual", "singular_values"}``, read by :meth:`from_state_dict`.
        """
        return {
            "terms": [[A, G] for A, G in self.terms],
            "method": self.method,
            "iterations": self.iterations,
            "residual": self.residual,
            "singular_values": list(self.singular_values),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KroneckerSum:
        """The inverse of :meth:`state_dict`, with the terms moved to ``device`` and cast to ``dtype`` if given.

        Args:
            state: What :meth:`state_dict` returned.
            device: Where to move the terms; ``None`` (default) leaves them where they are.
            dtype: The dtype to cast the terms to; ``None`` (default) keeps theirs.

        Returns:
            The Kronecker sum, its solver report included.
        """
        terms = [(A.to(device, dtype), G.to(device, dtype)) for A, G in state["terms"]]
        return cls(terms, state["method"], state["iterations"], state["residual"], list(state["singular_values"]))

    def damping_split(self, pi: DampingSplit = TRACE_SPLIT) -> float:
        """The π of the damped first term: ``pi`` itself when it is a number, else the trace rule (§2.2).

        Args:
            pi: A fixed positive π, or ``"trace"`` (default) for ``π = sqrt((tr A₁ / p) / (tr G₁ / q))``.

        Returns:
            π; the trace rule falls back to 1 when a trace is not positive.

        Raises:
            FimbenchError: If ``pi`` is neither ``"trace"`` nor a positive number (:func:`check_damping_split`).
        """
        if check_damping_split(pi) != TRACE_SPLIT:
            return float(pi)
        A, G = self.terms[0]
        mean_a = float(torch.trace(A)) / self.p
        mean_g = float(torch.trace(G)) / self.q
        if mean_a <= 0.0 or mean_g <= 0.0:
            return 1.0
        return math.sqrt(mean_a / mean_g)

    def inverse(
        self,
        damping: float,
        min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO,
        pi: DampingSplit = TRACE_SPLIT,
        form: str = DampingForm.FACTORED,
    ) -> KroneckerInverse:
        """Factorise ``damped(damping, pi)`` (``form="exact"``: the exactly damped operator) once.

        Args:
            damping: λ ≥ 0.
            min_curvature_ratio: δ ∈ (0, 1]; the safeguard shrinks the correction until every eigenvalue ratio is ≥ δ (§3.4).
            pi: The split π of the factored damping: ``"trace"`` (default, §2.2) or a positive number.
            form: ``"factored"`` (default) ``(A₁ + π√λ I) ⊗ (G₁ + √λ/π I)`` or ``"exact"`` ``A₁ ⊗ G₁ + λI``.

        Returns:
            The inverse; apply it to many gradients with ``.apply``.

        Raises:
            FimbenchError: For a bad argument, a rank above 2 or a damped first term not positive definite.
        """
        return KroneckerInverse(self, damping, min_curvature_ratio, pi, form)

    def damped(
        self, damping: float, min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO, pi: DampingSplit = TRACE_SPLIT, form: str = DampingForm.FACTORED
    ) -> KroneckerSum:
        """The operator that :meth:`solve` inverts (module docstring): ``inverse(...).operator``.

        Args:
            damping: λ, as for :meth:`inverse`.
            min_curvature_ratio: δ of the rank-2 safeguard, as for :meth:`inverse`.
            pi: the damping split, as for :meth:`inverse`.
            form: factored or exact damping, as for :meth:`inverse`.

        Returns:
            ``damped(λ, π)`` (or ``damped_exact(λ)``), a Kronecker sum of the same rank (exact: one more term).

        Raises:
            FimbenchError: where :meth:`inverse` raises it.
        """
        return self.inverse(damping, min_curvature_ratio, pi, form).operator

    def solve(
        self, V: Tensor, damping: float, min_curvature_ratio: float = DEFAULT_MIN_CURVATURE_RATIO, pi: DampingSplit = TRACE_SPLIT, form: str = DampingForm.FACTORED
    ) -> Tensor:
        """``damped(λ, π)⁻¹ vec(V)`` (or the exactly damped operator's) as a (q, p) matrix.

        Args:
            V: The weight-shaped (q, p) matrix, e.g. a gradient ``[∇W | ∇b]``.
            damping: λ ≥ 0, as for :meth:`inverse`.
            min_curvature_ratio: δ of the rank-2 safeguard, as for :meth:`inverse`.
            pi: the damping split, as for :meth:`inverse`.
            form: factored or exact damping, as for :meth:`inverse`.

        Returns:
            The (q, p) solution.

        Raises:
            FimbenchError: For a bad argument, a rank above 2 or a damped first term not positive definite.
        """
        return self.inverse(damping, min_curvature_ratio, pi, form).apply(V)


def _cholesky(matrix: Tensor, side: str) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise FactorisationError(
            f"the damped {side} factor is not positive definite (size {matrix.shape[0]}); increase the damping"
        )
    return factor


def robust_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``eigh`` in the matrix's precision, redone in float64 if that fails.

    float32 LAPACK (syevd) can fail on the many repeated zero eigenvalues of a low-rank correction: it
    raises "failed to converge" or, single-threaded, silently returns NaN. float64 is robust but about
    twice as slow, so it is the fallback, not the rule.
    """
    if matrix.dtype != torch.float64:
        try:
            s, E = torch.linalg.eigh(matrix)
            if bool(torch.isfinite(s).all()) and bool(torch.isfinite(E).all()):
                return s, E
        except torch.linalg.LinAlgError:
            pass
    s, E = torch.linalg.eigh(matrix.to(torch.float64))
    return s.to(matrix.dtype), E.to(matrix.dtype)


def _generalised_eigh(L: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """With ``A = L Lᵀ``: ``K, s`` such that ``Kᵀ A K = I`` and ``Kᵀ C K = diag(s)`` (§3.4, step 1)."""
    L_inv_C = torch.linalg.solve_triangular(L, C, upper=False)
    whitened = torch.linalg.solve_triangular(L, L_inv_C.transpose(0, 1), upper=False)
    whitened = 0.5 * (whitened + whitened.transpose(0, 1))
    s, E = robust_eigh(whitened)
    K = torch.linalg.solve_triangular(L.transpose(0, 1), E, upper=True)
    return K, s


class KroneckerInverse:
    """Precomputed inverse of ``damped(λ)`` for a Kronecker sum of one or two terms (§2.2, §3.4).

    One term: ``apply(V) = G_inv @ V @ A_inv``.
    Two terms: ``apply(V) = K₂ [(K₂ᵀ V K₁) ⊘ (1 1ᵀ + τ s₂ s₁ᵀ)] K₁ᵀ``.
    Exact damping (either rank): ``apply(V) = Q_G [(Q_Gᵀ V Q_A) ⊘ denominator] Q_Aᵀ`` (module docstring).
    ``correction_scale`` is the τ of the safeguard (1 for one term, or when no shrinking was needed).
    ``source``, ``damping`` and ``form`` are what it was built from, so that it can be rebuilt exactly;
    ``operator`` is the operator it inverts (with exact damping its terms include ``I ⊗ λI``).

    Args:
        approximation: The Kronecker sum of rank 1 or 2 to damp and invert.
        damping: λ ≥ 0.
        min_curvature_ratio: δ ∈ (0, 1] of the safeguard (module docstring, §3.4).
        pi: The split π of the factored damping: ``"trace"`` (default, §2.2) or a positive number.
        form: ``"factored"`` (default) or ``"exact"`` (module docstring).

    Raises:
        FimbenchError: If ``damping`` is negative, ``min_curvature_ratio`` is not in (0, 1], the rank is above 2,
            ``pi`` or ``form`` is not valid, or a damped first-term factor is not positive definite.
    """

    def __init__(
        self,
        approximation: KroneckerSum,
        damping: float,
        min_curvature_ratio: float,
        pi: DampingSplit = TRACE_SPLIT,
        form: str = DampingForm.FACTORED,
    ) -> None:
        if damping < 0:
            raise FimbenchError(f"damping must be non-negative, got {damping}")
        if not 0.0 < min_curvature_ratio <= 1.0:
            raise FimbenchError(f"min_curvature_ratio must be in (0, 1], got {min_curvature_ratio}")
        if approximation.rank > 2:
            raise FimbenchError(
                f"the closed-form solve of §3.4 handles Kronecker rank 1 or 2, not {approximation.rank}; "
                "use --lanczos-rank 2 or less for training"
            )
        self.source, self.damping, self.form = approximation, damping, check_damping_form(form)
        self.correction_scale = 1.0
        if self.form == DampingForm.EXACT:
            self._exact(approximation, damping, min_curvature_ratio)
            return
        A1, G1 = approximation.terms[0]
        split = approximation.damping_split(pi)
        root = math.sqrt(damping)
        A = A1 + (split * root) * torch.eye(A1.shape[0], dtype=A1.dtype, device=A1.device)
        B = G1 + (root / split) * torch.eye(G1.shape[0], dtype=G1.dtype, device=G1.device)
        L_A, L_B = _cholesky(A, "activation"), _cholesky(B, "derivative")
        if approximation.rank == 1:
            # cholesky_solve(I, L) rather than cholesky_inverse(L): LAPACK's potri stalls for seconds when
            # the CPU is oversubscribed (measured: 2.2 s vs 34 ms for 785×785 on 2 busy cores).
            self.A_inv = torch.cholesky_solve(torch.eye(A.shape[0], dtype=A.dtype, device=A.device), L_A)
            self.G_inv = torch.cholesky_solve(torch.eye(B.shape[0], dtype=B.dtype, device=B.device), L_B)
            self.operator = KroneckerSum([(A, B)], method=approximation.method)
            return
        C, D = approximation.terms[1]
        self.K1, s1 = _generalised_eigh(L_A, C)
        self.K2, s2 = _generalised_eigh(L_B, D)
        coupling = torch.outer(s2, s1)  # (q, p): s₂ⱼ s₁ᵢ
        most_negative = float(-coupling.min())
        if most_negative > 1.0 - min_curvature_ratio:
            self.correction_scale = (1.0 - min_curvature_ratio) / most_negative
        self.denominator = 1.0 + self.correction_scale * coupling
        self.operator = KroneckerSum([(A, B), (self.correction_scale * C, D)], method=approximation.method)

    def _exact(self, approximation: KroneckerSum, damping: float, min_curvature_ratio: float) -> None:
        """Exact damping in the first term's eigenbasis (module docstring)."""
        A1, G1 = approximation.terms[0]
        alpha, self.Q_A = robust_eigh(0.5 * (A1 + A1.transpose(0, 1)))
        gamma, self.Q_G = robust_eigh(0.5 * (G1 + G1.transpose(0, 1)))
        eye_p = torch.eye(A1.shape[0], dtype=A1.dtype, device=A1.device)
        eye_q = torch.eye(G1.shape[0], dtype=G1.dtype, device=G1.device)
        first = torch.outer(gamma, alpha) + damping  # (q, p): γ_i α_j + λ
        if float(first.min()) <= 0.0:
            raise FactorisationError("the exactly damped first term is not positive definite; increase the damping")
        terms = [(A1, G1), (eye_p, damping * eye_q)]
        self.denominator = first
        if approximation.rank == 2:
            C, D = approximation.terms[1]
            c = ((self.Q_A.transpose(0, 1) @ C) * self.Q_A.transpose(0, 1)).sum(dim=1)  # diag(Q_Aᵀ C Q_A)
            d = ((self.Q_G.transpose(0, 1) @ D) * self.Q_G.transpose(0, 1)).sum(dim=1)
            coupling = torch.outer(d, c)
            most_negative = float(-(coupling / first).min())
            if most_negative > 1.0 - min_curvature_ratio:
                self.correction_scale = (1.0 - min_curvature_ratio) / most_negative
            self.denominator = first + self.correction_scale * coupling
            C_bar = (self.Q_A * c) @ self.Q_A.transpose(0, 1)
            D_bar = (self.Q_G * d) @ self.Q_G.transpose(0, 1)
            terms.append((self.correction_scale * C_bar, D_bar))
        self.operator = KroneckerSum(terms, method=approximation.method)

    def apply(self, V: Tensor) -> Tensor:
        """``damped(λ)⁻¹ vec(V)`` for a weight-shaped (q, p) ``V``.

        Args:
            V: The (q, p) matrix, e.g. a gradient ``[∇W | ∇b]``.

        Returns:
            The (q, p) solution.
        """
        if self.form == DampingForm.EXACT:
            return self.Q_G @ ((self.Q_G.transpose(0, 1) @ V @ self.Q_A) / self.denominator) @ self.Q_A.transpose(0, 1)
        if self.operator.rank == 1:
            return self.G_inv @ V @ self.A_inv
        return self.K2 @ ((self.K2.transpose(0, 1) @ V @ self.K1) / self.denominator) @ self.K1.transpose(0, 1)
