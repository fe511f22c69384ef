r"""Shampoo (Gupta, Koren & Singer, ICML 2018) as a torch optimizer, in the form of Distributed Shampoo.

Source: Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization" (arXiv:1802.09568) as
implemented by Distributed Shampoo (Shi et al. 2023, arXiv:2309.06497; github.com/facebookresearch/optimizers
@ f606606, ``distributed_shampoo.py``, ``preconditioner/shampoo_preconditioner_list.py``,
``adagrad_preconditioner_list.py``, ``matrix_functions.py``). No maintained PyPI package implements it: Distributed
Shampoo is not on PyPI, and pytorch_optimizer's ``Shampoo`` has neither grafting nor Distributed Shampoo's moments.
The float64 reference this module is tested against is ``shampoo_step`` in ``tests/optimizers/references.py``.

Algorithm, per parameter tensor with gradient ``G`` at its step ``t = 1, 2, …`` (the parameter's own count):

1. Kronecker factors, one per dimension: for a weight ``W`` (q×p) ``L ← β₂ L + w G Gᵀ`` (q×q) and
   ``R ← β₂ R + w Gᵀ G`` (p×p); for a bias (n) one full factor ``F ← β₂ F + w g gᵀ`` (n×n, full-matrix AdaGrad
   on the bias, as Distributed Shampoo does); ``w = 1`` if ``β₂ = 1`` (the paper's sums) else ``1 − β₂`` (an
   EMA, bias-corrected by ``bc₂ = 1 − β₂ᵗ`` when ``use_bias_correction``).
2. Inverse roots, recomputed at ``t = s`` (``s = start_preconditioning_step``; −1 means ``precondition_frequency``)
   and at every later multiple of ``precondition_frequency`` (identities before, reused in between):
   ``λ, Q = eigh(F/bc₂ + εI)``; if ``min λ < ε``, ``λ ← λ − min λ + ε``; ``F^{-e} = Q diag(λ^{-e}) Qᵀ`` with
   ``e = 1/(2·order)``: ``L^{-1/4}``, ``R^{-1/4}`` for a matrix, ``F^{-1/2}`` for a bias.
3. First moment ``M ← β₁ M + (1 − β₁) G``, ``Ḡ = M / (1 − β₁ᵗ)`` (``Ḡ = M`` without bias correction, ``Ḡ = G``
   when ``β₁ = 0``): Distributed Shampoo preconditions the EMA of the gradients.
4. Direction ``P = L^{-1/4} Ḡ R^{-1/4}`` (a bias: ``F^{-1/2} ḡ``). Adam grafting: ``V ← β₂ᵍ V + (1 − β₂ᵍ) G²``,
   ``A = Ḡ / (sqrt(V / (1 − β₂ᵍᵗ)) + ε_g)`` and ``P ← P · ‖A‖_F / (‖P‖_F + 1e-16)`` per tensor; for
   ``t < s`` the direction is ``A`` itself.
5. Decoupled weight decay folded into the direction, ``P ← P + λ W``; optional classic momentum
   ``B ← μ B + (1 − d) P``, ``P ← (1 − d) P + μ B`` (Nesterov) or ``P ← B``; finally ``W ← W − lr · P``.

Shapes: a tensor of order > 2 (a convolution weight ``(out, in, kh, kw)``) is treated as the matrix
``(out, in·kh·kw)`` — fimbench's convention for a convolution's weight gradient — so it gets two factors
(out×out and in·kh·kw × in·kh·kw) with exponent −1/4, not Distributed Shampoo's one factor per dimension. A
scalar (0-D) parameter gets no factor: its direction is ``Ḡ`` rescaled to ``|A|``, i.e. the Adam direction
(up to the 1e-16 guard), or ``Ḡ`` without grafting — what the reference computes for a 0-D tensor.

Not modelled: Distributed Shampoo's blocking of large dimensions (``max_preconditioner_dim``), its merging of
small dimensions (by default a q×p weight with q·p ≤ 1024 becomes one vector with a full (qp)×(qp) factor; the
reference and this class are its ``target_parameter_dimensionality=2``), its float32 factor storage, the other
root methods (coupled Newton, QR), grafting other than Adam, ``beta3``, weight-decay types other than decoupled,
iterate averaging other than classic momentum, distributed training and the inverse-exponent override. The state
(factors, roots, moments) is kept in the matrix view of the parameter and in its dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from fimbench.errors import FimbenchError

__all__ = ["GRAFTING_NORM_GUARD", "Shampoo"]

GRAFTING_NORM_GUARD = 1e-16
"""Added to ``‖P‖_F`` in the grafting ratio ``‖A‖_F / (‖P‖_F + guard)`` (Distributed Shampoo's constant)."""


class Shampoo(torch.optim.Optimizer):
    r"""Shampoo with Adam grafting, decoupled weight decay and optional classic momentum (module docstring).

    Defaults and their source: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``epsilon=1e-12`` — Distributed Shampoo's
    README recipe for replacing Adam/AdamW (its code defaults are ``lr=1e-2``, ``betas=(0.9, 1.0)``, the
    paper's sums, which ``betas=(0.9, 1.0)`` selects here); ``weight_decay=0.0`` (its default, decoupled);
    ``precondition_frequency=10`` (its code default is 1, its README recipes 100: eigendecompositions every 10
    steps are cheap at the sizes fimbench trains); ``start_preconditioning_step=-1`` (its default: equal to
    ``precondition_frequency``); ``grafting_beta2=0.999``, ``grafting_epsilon=1e-10`` (its
    ``AdamPreconditionerConfig`` defaults); ``momentum=0.0``, ``nesterov=False``, ``dampening=0.0`` (no
    iterate averaging, its default); ``grafting="adam"`` (its README recipe; ``None`` switches grafting off, its
    code default); ``use_bias_correction=True`` (its default).

    Args:
        params: The parameters, or dicts defining parameter groups (each may override any hyper-parameter).
        lr: The learning rate, ≥ 0.
        betas: ``(β₁, β₂)``: the EMA factor of the gradient, in [0, 1), and of the Kronecker factors, in
            [0, 1] (1: sums, the paper's AdaGrad-like accumulation).
        epsilon: ``ε > 0``, added to each factor before its inverse root (and the eigenvalue floor).
        weight_decay: ``λ ≥ 0``, decoupled weight decay added to the direction.
        precondition_frequency: Recompute the inverse roots every this many steps (≥ 1).
        start_preconditioning_step: The first step with Shampoo's direction (the Adam direction before); −1
            means ``precondition_frequency``; otherwise it must be ≥ ``precondition_frequency``.
        grafting_beta2: β₂ of the Adam grafting, in (0, 1).
        grafting_epsilon: ε of the Adam grafting, > 0.
        momentum: ``μ`` of the classic momentum on the direction, in [0, 1) (0: none).
        nesterov: Nesterov's form of the momentum (needs ``momentum > 0``).
        grafting: ``"adam"`` or ``None`` (no grafting: Shampoo's direction with its own scale).
        dampening: ``d`` of the momentum, in [0, 1).
        use_bias_correction: Divide the EMAs (gradient and factors) by their bias corrections.

    Raises:
        FimbenchError: A hyper-parameter is out of its range; a parameter is complex, or its gradient sparse
            (at :meth:`step`).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        epsilon: float = 1e-12,
        weight_decay: float = 0.0,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = -1,
        grafting_beta2: float = 0.999,
        grafting_epsilon: float = 1e-10,
        momentum: float = 0.0,
        nesterov: bool = False,
        *,
        grafting: str | None = "adam",
        dampening: float = 0.0,
        use_bias_correction: bool = True,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "epsilon": epsilon,
            "weight_decay": weight_decay,
            "precondition_frequency": precondition_frequency,
            "start_preconditioning_step": start_preconditioning_step,
            "grafting_beta2": grafting_beta2,
            "grafting_epsilon": grafting_epsilon,
            "momentum": momentum,
            "nesterov": nesterov,
            "grafting": grafting,
            "dampening": dampening,
            "use_bias_correction": use_bias_correction,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (the defaults fill what it leaves out) and check its hyper-parameters.

        Args:
            param_group: ``{"params": ..., <hyper-parameter>: value, ...}``.

        Raises:
            FimbenchError: One of the group's hyper-parameters is out of its range.
        """
        super().add_param_group(param_group)
        _check_hyperparameters(self.param_groups[-1])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (run with gradients enabled), or None.

        Returns:
            The closure's loss, or None without a closure.

        Raises:
            FimbenchError: A parameter is complex or its gradient sparse.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse or param.is_complex():
                    raise FimbenchError("Shampoo supports real parameters with dense gradients only")
                _update(param, self.state[param], group)
        return loss


def _check_number(name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> None:
    """Raise FimbenchError unless ``value`` is a finite real number in the interval from ``low`` to ``high``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        assert isinstance(value, int | float)
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise FimbenchError(f"Shampoo: {name} must be a number in {interval}, got {value!r}")


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise FimbenchError naming the first hyper-parameter of ``group`` out of its range (``betas`` becomes a tuple)."""
    betas = group["betas"]
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise FimbenchError(f"Shampoo: betas must be a pair (beta1, beta2), got {betas!r}")
    group["betas"] = (betas[0], betas[1])
    _check_number("betas[0]", betas[0], 0.0, 1.0)
    _check_number("betas[1]", betas[1], 0.0, 1.0, high_open=False)
    _check_number("lr", group["lr"], 0.0, math.inf)
    _check_number("epsilon", group["epsilon"], 0.0, math.inf, low_open=True)
    _check_number("weight_decay", group["weight_decay"], 0.0, math.inf)
    _check_number("grafting_beta2", group["grafting_beta2"], 0.0, 1.0, low_open=True)
    _check_number("grafting_epsilon", group["grafting_epsilon"], 0.0, math.inf, low_open=True)
    _check_number("momentum", group["momentum"], 0.0, 1.0)
    _check_number("dampening", group["dampening"], 0.0, 1.0)
    frequency, start = group["precondition_frequency"], group["start_preconditioning_step"]
    if not (isinstance(frequency, int) and not isinstance(frequency, bool) and frequency >= 1):
        raise FimbenchError(f"Shampoo: precondition_frequency must be an integer >= 1, got {frequency!r}")
    if not (isinstance(start, int) and not isinstance(start, bool) and (start == -1 or start >= frequency)):
        raise FimbenchError(
            f"Shampoo: start_preconditioning_step must be -1 or an integer >= precondition_frequency ({frequency}), got {start!r}"
        )
    if group["grafting"] not in ("adam", None):
        raise FimbenchError(f"Shampoo: grafting must be 'adam' or None, got {group['grafting']!r}")
    for name in ("nesterov", "use_bias_correction"):
        if not isinstance(group[name], bool):
            raise FimbenchError(f"Shampoo: {name} must be True or False, got {group[name]!r}")
    if group["nesterov"] and group["momentum"] == 0.0:
        raise FimbenchError("Shampoo: nesterov=True needs momentum > 0")


def _matrix_view(tensor: Tensor) -> Tensor:
    """``tensor`` as Shampoo sees it: order ≤ 2 unchanged, higher orders as the matrix ``(size(0), rest)``."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 2 else tensor


def _gram(grad: Tensor, k: int) -> Tensor:
    """The mode-``k`` Gram matrix of ``grad`` (``G Gᵀ`` for k = 0, ``Gᵀ G`` for k = 1, ``g gᵀ`` for a vector)."""
    others = [d for d in range(grad.dim()) if d != k]
    return torch.tensordot(grad, grad, dims=[others, others])


def _precondition(x: Tensor, roots: list[Tensor]) -> Tensor:
    """``x ×_k roots[k]`` for every dimension k (``L^{-1/4} X R^{-1/4}`` for a matrix; the roots are symmetric)."""
    for root in roots:
        x = torch.tensordot(x, root, dims=[[0], [0]])
    return x


def _inverse_root(factor: Tensor, bias_correction: float, epsilon: float, exponent: float) -> Tensor:
    """``(F/bc₂ + εI)^{-e}`` by eigh, the eigenvalues shifted by ``ε − min λ`` when ``min λ < ε`` (no host sync)."""
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    lam, q = torch.linalg.eigh(factor / bias_correction + epsilon * eye)
    smallest = lam.min()
    lam = torch.where(smallest < epsilon, lam - smallest + epsilon, lam)
    return (q * lam.pow(-exponent)) @ q.T


def _init_state(view: Tensor, state: dict[str, Any]) -> None:
    """Step 0: zero factors and identity roots, one per dimension of the matrix view (none for a scalar)."""
    state["step"] = 0
    for k, n in enumerate(view.shape):
        state[f"factor_{k}"] = torch.zeros(n, n, dtype=view.dtype, device=view.device)
        state[f"root_{k}"] = torch.eye(n, dtype=view.dtype, device=view.device)


def _update(param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Shampoo step of ``param`` (module docstring, steps 1-5), in its matrix view, its dtype and device."""
    assert param.grad is not None
    grad, weight = _matrix_view(param.grad), _matrix_view(param)
    if not state:
        _init_state(weight, state)
    state["step"] += 1
    t, order = state["step"], grad.dim()
    beta1, beta2 = group["betas"]
    frequency, start = group["precondition_frequency"], group["start_preconditioning_step"]
    start = frequency if start == -1 else start

    weighting = 1.0 if beta2 == 1.0 else 1.0 - beta2
    for k in range(order):
        state[f"factor_{k}"].mul_(beta2).add_(_gram(grad, k), alpha=weighting)
    bc2 = 1.0 - beta2**t if group["use_bias_correction"] and beta2 < 1.0 else 1.0
    if (t % frequency == 0 and t > start) or t == start:
        for k in range(order):
            state[f"root_{k}"] = _inverse_root(state[f"factor_{k}"], bc2, group["epsilon"], 1.0 / (2 * order))

    grafting, graft_beta2 = group["grafting"], group["grafting_beta2"]
    if grafting == "adam":
        if "graft_v" not in state:
            state["graft_v"] = torch.zeros_like(grad)
        state["graft_v"].mul_(graft_beta2).addcmul_(grad, grad, value=1.0 - graft_beta2)
    if beta1 != 0.0:
        if "filtered_grad" not in state:
            state["filtered_grad"] = torch.zeros_like(grad)
        state["filtered_grad"].lerp_(grad, 1.0 - beta1)
        filtered = state["filtered_grad"] / (1.0 - beta1**t) if group["use_bias_correction"] else state["filtered_grad"]
    else:
        filtered = grad  # from here on, nothing is changed in place but the state's buffers

    def grafted() -> Tensor:
        return filtered / ((state["graft_v"] / (1.0 - graft_beta2**t)).sqrt() + group["grafting_epsilon"])

    if t < start and grafting is not None:
        direction = grafted()
    else:
        direction = _precondition(filtered, [state[f"root_{k}"] for k in range(order)])
        if grafting is not None:
            direction = direction * (torch.linalg.norm(grafted()) / (torch.linalg.norm(direction) + GRAFTING_NORM_GUARD))

    if group["weight_decay"] != 0.0:
        direction = direction + group["weight_decay"] * weight
    momentum, dampening = group["momentum"], group["dampening"]
    if momentum != 0.0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buffer = state["momentum_buffer"]
        buffer.mul_(momentum).add_(direction, alpha=1.0 - dampening)
        direction = (1.0 - dampening) * direction + momentum * buffer if group["nesterov"] else buffer
    param.sub_((group["lr"] * direction).reshape(param.shape))
