"""Converting hyperparameters tuned under the authors' loss scale into fimbench's.

The authors' code minimises ``h_a = κ h`` with ``κ = 1/P`` (BCELoss, mean over P pixels) or ``κ = 2/P``
(MSELoss: mean of ``(y − z)²`` = ``2 ℓ / P`` for fimbench's Gaussian ``ℓ = ½ Σ (y − z)²``). Their
per-example derivatives are ``g_a = κ g``, so their Fisher is ``F_a = κ² F``. Matching updates
step for step gives, for the Kronecker methods (``P_a = (F_a + λ_a)⁻¹ ∇h_a = κ⁻¹ (F + λ)⁻¹ ∇h``),

    lr = lr_a / κ,   λ = λ_a / κ²,   c = c_a  (⟨P_a, ∇h_a⟩ = ⟨P, ∇h⟩),   weight_decay = κ · wd_a,

for SGD ``lr = κ · lr_a``, ``weight_decay = wd_a / κ``, and for Adam (invariant to the gradient's scale)
``lr = lr_a``, ``weight_decay = wd_a / κ``. The authors' rank-2 code damps both factors by λ_a instead of
π√λ_a and √λ_a/π; the conversion above is exact for the paper's factored damping only.
"""

from __future__ import annotations

from fimbench.curvature import Method
from fimbench.models import Likelihood


def loss_scale(likelihood: Likelihood, pixels: int) -> float:
    """``κ`` such that the authors' objective is ``κ`` times fimbench's."""
    return (1.0 if likelihood is Likelihood.BERNOULLI else 2.0) / pixels


def from_authors_scale(
    method: Method, likelihood: Likelihood, pixels: int, lr: float, damping: float | None = None, weight_decay: float = 0.0
) -> dict[str, float]:
    """fimbench's ``lr``, ``damping`` and ``weight_decay`` equivalent to the authors' (module docstring)."""
    kappa = loss_scale(likelihood, pixels)
    if method.is_kronecker:
        converted = {"lr": lr / kappa, "weight_decay": weight_decay * kappa}
        if damping is not None:
            converted["damping"] = damping / kappa**2
        return converted
    if method is Method.SGD:
        return {"lr": lr * kappa, "weight_decay": weight_decay / kappa}
    return {"lr": lr, "weight_decay": weight_decay / kappa}
