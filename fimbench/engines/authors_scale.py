"""Converting hyperparameters tuned under the authors' loss scale and damping into fimbench's (docs/design.md §3, §5).

Loss scale. The authors' code minimises ``h_a = κ h`` with ``κ = 1/P`` (BCELoss, mean over P pixels) or
``κ = 2/P`` (MSELoss: mean of ``(y − z)²`` = ``2 ℓ / P`` for fimbench's Gaussian ``ℓ = ½ Σ (y − z)²``).
Their per-example derivatives are ``g_a = κ g`` (they multiply ``grad_output`` by the batch size), so
each of their Fisher blocks is ``F_a = κ² F``.

Damping. Their preconditioners are all built with ``pi=False``: the damped first term adds a fixed
amount to each factor, and which factor carries the κ's depends on the method:

* K-FAC: ``A_a = A`` (scale-free), ``G_a = κ² G``; both damped by ``√λ_a``:
  ``(A + √λ_a I) ⊗ (κ² G + √λ_a I) = κ² (A + √λ_a I) ⊗ (G + √λ_a/κ² I)``.
* KPSVD: a power-SVD pair ``√σ_a MAT(u), √σ_a MAT(v)`` with ``σ_a = κ² σ`` carries κ on each side,
  ``R_a = κ R``, ``S_a = κ S``; damped by ``√λ_a``: ``κ² (R + √λ_a/κ I) ⊗ (S + √λ_a/κ I)``.
* Deflation, Lanczos: the same pairs, but their rank-2 solve damps both factors of the first term by
  ``λ_a`` itself (``fractional_power(X, λ_a) = (X + λ_a I)^{-1/2}``): ``κ² (R + λ_a/κ I) ⊗ (S + λ_a/κ I)``.
* KFAC-corrected: K-FAC's pair as first term, damped by ``λ_a``: ``κ² (A + λ_a I) ⊗ (G + λ_a/κ² I)``.

Matching ``(A₁ + α_A I) ⊗ (G₁ + α_G I)`` with fimbench's ``(A₁ + π√λ I) ⊗ (G₁ + √λ/π I)`` gives
``π = sqrt(α_A / α_G)`` and ``λ = α_A α_G``:

============== ================ ================ ============== =====
method         α_A              α_G              λ              π
============== ================ ================ ============== =====
K-FAC          √λ_a             √λ_a / κ²        λ_a / κ²       κ
KPSVD          √λ_a / κ         √λ_a / κ         λ_a / κ²       1
Deflation      λ_a / κ          λ_a / κ          λ_a² / κ²      1
Lanczos        λ_a / κ          λ_a / κ          λ_a² / κ²      1
KFAC-corrected λ_a              λ_a / κ²         λ_a² / κ²      κ
============== ================ ================ ============== =====

The exact natural gradient damps the whole Fisher: ``F_a + λ_a I = κ² (F + λ_a/κ² I)``, so ``λ = λ_a / κ²``.

Their damped operator is then exactly ``κ²`` times fimbench's (the second term ``κ² C ⊗ D`` included),
so ``P_a = (F̃_a)⁻¹ ∇h_a = κ⁻¹ F̃⁻¹ ∇h``, and matching updates step for step gives

    lr = lr_a / κ,   c = c_a  (⟨P_a, ∇h_a⟩ = ⟨P, ∇h⟩),   weight_decay = κ · wd_a,

for SGD ``lr = κ · lr_a``, ``weight_decay = wd_a / κ``, and for Adam (invariant to the gradient's scale)
``lr = lr_a``, ``weight_decay = wd_a / κ``. Two differences remain and are fimbench's choice: their
rank-2 solve takes ``abs()`` of the whitened eigenvalues where fimbench shrinks an unsafe correction
(:mod:`fimbench.curvature.kronecker_sum`), and their EMA averages each factor where fimbench's averages ``F̂``.
"""

from __future__ import annotations

from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import SCALAR_DAMPING, AuthorsDamping, Method

AUTHORS_WEIGHT_DECAY = 1e-3
"""Every optimizer of the authors' runs (SGD with Nesterov momentum, Adam, the Kronecker methods)."""


def loss_scale(likelihood: Likelihood, pixels: int) -> float:
    """``κ`` such that the authors' objective is ``κ`` times fimbench's."""
    return (1.0 if likelihood is Likelihood.BERNOULLI else 2.0) / pixels


def authors_damping(method: Method, damping: float, kappa: float) -> tuple[float, float]:
    """fimbench's ``(λ, π)`` whose damped operator is ``1/κ²`` times the authors' (module table), from the
    method's registry record (:class:`~fimbench.methods.AuthorsDamping`); ``F̂ + λ_a I`` (EKFAC, the exact
    methods): ``F̂_a + λ_a I = κ² (F̂ + λ_a/κ² I)``, π unused.

    Raises:
        FimbenchError: for a method that is not damped (first-order).
    """
    conversion = method.record.authors_damping
    if conversion == SCALAR_DAMPING:
        return damping / kappa**2, 1.0
    if not isinstance(conversion, AuthorsDamping):
        raise FimbenchError(f"method {method.value} is not damped: it has no damping to convert")
    added_a = added_g = damping**0.5 if conversion.square_root else damping
    if conversion.kfac_factors:
        alpha_a, alpha_g = added_a, added_g / kappa**2  # A_a = A, G_a = κ² G
    else:
        alpha_a, alpha_g = added_a / kappa, added_g / kappa  # R_a = κ R, S_a = κ S
    return alpha_a * alpha_g, (alpha_a / alpha_g) ** 0.5


def from_authors_scale(
    method: Method,
    likelihood: Likelihood,
    pixels: int,
    lr: float,
    damping: float | None = None,
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """fimbench's ``lr``, ``weight_decay`` and (Kronecker methods, given ``damping``) ``damping`` and ``pi``
    equivalent to the authors' settings (module docstring)."""
    kappa = loss_scale(likelihood, pixels)
    lr = lr * kappa**method.record.authors_lr_exponent
    if not method.is_preconditioned:
        return {"lr": lr, "weight_decay": weight_decay / kappa}
    converted = {"lr": lr, "weight_decay": weight_decay * kappa}
    if damping is not None:
        converted["damping"], converted["pi"] = authors_damping(method, damping, kappa)
    return converted
