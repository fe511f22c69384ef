"""Float64 reference implementations of Shampoo, SOAP and Muon, written from the papers and the authors' code.

Plain functions, one tensor and one step at a time: ``new_param = <method>_step(param, grad, state, **hyper)``.
``state`` is a dict the caller keeps between steps (start with ``{}``); the functions mutate it and return the
updated parameter as a new tensor (``param`` itself is not modified). Everything is computed in the dtype of the
inputs, which the tests pass as float64; nothing is cast to float32 or bfloat16 (the published codes do, see each
docstring). The comparisons against the maintained packages are in ``test_references_vs_packages.py``.

Sources read (exact commits, so a later change upstream can be traced):

* Shampoo: Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018
  (arXiv:1802.09568), as implemented by Distributed Shampoo, Shi et al. 2023 (arXiv:2309.06497),
  github.com/facebookresearch/optimizers @ f606606 (2026-08-05), ``distributed_shampoo/distributed_shampoo.py``
  (``_compute_search_directions``), ``preconditioner/shampoo_preconditioner_list.py``,
  ``preconditioner/adagrad_preconditioner_list.py``, ``preconditioner/matrix_functions.py``.
* SOAP: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", 2024 (arXiv:2409.11321),
  github.com/nikhilvyas/SOAP @ a1e5535 (2024-12-02, "momentum change"), ``soap.py``.
* Muon: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024
  (kellerjordan.github.io/posts/muon), github.com/KellerJordan/Muon ``muon.py`` (``muon_update``,
  ``zeropower_via_newtonschulz5``, ``adam_update``); the learning-rate adjustments of ``torch.optim.Muon``
  (torch 2.14.1, ``torch/optim/_muon.py``).
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import torch
from torch import Tensor

State = dict[str, Any]

__all__ = ["adam_step", "muon_step", "newton_schulz5", "shampoo_step", "soap_step"]


# ------------------------------------------------------------------------------------------------ helpers
def _outer(grad: Tensor, k: int) -> Tensor:
    """The mode-``k`` Gram matrix of ``grad``: contract every dimension but ``k`` (``G Gᵀ`` for k=0, ``Gᵀ G`` for k=1)."""
    others = [*chain(range(k), range(k + 1, grad.dim()))]
    return torch.tensordot(grad, grad, dims=[others, others])


def _rotate(x: Tensor, mats: list[Tensor | None], back: bool = False) -> Tensor:
    """Multiply every dimension ``k`` of ``x`` by ``mats[k]`` (``Mᵀ`` side: contract ``x``'s dim with ``M``'s rows;
    with ``back``, with its columns), skipping ``None``. For a matrix and ``mats = [A, B]``: ``Aᵀ X B``
    (``A X Bᵀ`` with ``back``). Written as the authors' cyclic tensordot so the order of operations is theirs."""
    for m in mats:
        if m is None:
            x = x.permute(*range(1, x.dim()), 0)
        else:
            x = torch.tensordot(x, m, dims=[[0], [1 if back else 0]])
    return x


# ------------------------------------------------------------------------------------------------ Shampoo
def shampoo_step(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 1.0),
    epsilon: float = 1e-12,
    weight_decay: float = 0.0,
    precondition_frequency: int = 1,
    start_preconditioning_step: int = -1,
    use_bias_correction: bool = True,
    grafting: str | None = "adam",
    grafting_beta2: float = 0.999,
    grafting_epsilon: float = 1e-10,
    inverse_exponent_override: dict[int, float] | None = None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
) -> Tensor:
    r"""One step of Shampoo (Gupta, Koren, Singer 2018) in the form of Distributed Shampoo (Shi et al. 2023).

    For a tensor of order o (a weight W (q×p): o=2, a bias: o=1) with gradient G, step t = 1, 2, …:

    1. Kronecker factors, one per dimension k, ``F_k ← β₂ F_k + w · G_(k) G_(k)ᵀ`` with ``w = 1`` if β₂ = 1
       (the original paper's sums, Distributed Shampoo's default ``betas=(0.9, 1.0)``) else ``w = 1 − β₂``
       (an EMA, then divided by ``1 − β₂ᵗ`` when ``use_bias_correction``). For W: ``L = F_0`` (q×q, G Gᵀ),
       ``R = F_1`` (p×p, Gᵀ G). A bias gets ONE full n×n factor ``g gᵀ`` (full-matrix AdaGrad on the bias).
    2. Every ``precondition_frequency`` steps after ``start_preconditioning_step`` (and at that step; −1 means
       "= precondition_frequency"), the inverse roots ``F_k^{-e_k}`` are recomputed by eigendecomposition:
       ``λ, Q = eigh(F_k/bc₂ + εI)``; if ``min λ < ε`` the eigenvalues are shifted by ``−min λ + ε``;
       ``F_k^{-e_k} = Q diag(λ^{-e_k}) Qᵀ``. ``e_k = 1/(2·o)`` (so ``L^{-1/4}``, ``R^{-1/4}`` for a matrix,
       ``F^{-1/2}`` for a bias) unless ``inverse_exponent_override[o]`` gives another (0 switches that dim off).
       Between recomputations the stored roots are reused; before the first one they are identities.
    3. Adam grafting statistics ``V ← β₂ᵍ V + (1 − β₂ᵍ) G²`` (raw gradient), bias-corrected by ``1 − β₂ᵍᵗ``.
    4. First moment (filtered gradient) ``M ← β₁ M + (1 − β₁) G``, ``Ḡ = M / (1 − β₁ᵗ)`` (β₁ = 0: ``Ḡ = G``).
       Note the order: Distributed Shampoo preconditions the *EMA of the gradients*; momentum is not applied
       after preconditioning unless ``momentum > 0`` (its optional ``ClassicMomentumConfig``, step 7).
    5. Direction: ``P = L^{-1/4} Ḡ R^{-1/4}`` (all dims: ``Ḡ ×_k F_k^{-e_k}``). With Adam grafting:
       ``A = Ḡ / (sqrt(V/bc₂ᵍ) + ε_g)`` and ``P ← P · ‖A‖_F / (‖P‖_F + 1e-16)``, per tensor. Before
       ``start_preconditioning_step`` the grafted direction ``A`` itself is used.
    6. Decoupled weight decay folded into the direction: ``P ← P + λ W``.
    7. Optional classic momentum: ``B ← μ B + (1 − d) P``; ``P = (1 − d) P + μ B`` (Nesterov) or ``P = B``.
    8. ``W ← W − lr · P``.

    Not modelled: Distributed Shampoo's blocking (``max_preconditioner_dim``) and dimension merging. Its default
    ``distributed_config`` (``target_parameter_dimensionality=1``) merges a q×p weight with q·p ≤ 1024 into one vector
    with a single (qp)×(qp) factor (full-matrix AdaGrad); this reference is what it computes with
    ``SingleDeviceDistributedConfig(target_parameter_dimensionality=2)``.

    Returns:
        The updated parameter (a new tensor).
    """
    order = param.dim()
    override = (inverse_exponent_override or {}).get(order, 1.0 / (2 * max(order, 1)))
    exponents = [override] * order
    start = precondition_frequency if start_preconditioning_step == -1 else start_preconditioning_step
    if start < precondition_frequency:
        raise ValueError("start_preconditioning_step must be >= precondition_frequency (Distributed Shampoo's rule)")
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["factors"] = [torch.zeros(n, n, dtype=param.dtype) if e != 0 else None for n, e in zip(param.shape, exponents)]
        state["roots"] = [torch.eye(n, dtype=param.dtype) if e != 0 else None for n, e in zip(param.shape, exponents)]
        state["filtered_grad"] = torch.zeros_like(param)
        state["graft_v"] = torch.zeros_like(param)
        state["momentum_buffer"] = torch.zeros_like(param)
    state["step"] += 1
    t = state["step"]

    weighting = 1.0 if beta2 == 1.0 else 1.0 - beta2
    for k, factor in enumerate(state["factors"]):
        if factor is not None:
            factor.mul_(beta2).add_(_outer(grad, k), alpha=weighting)
    bc2 = 1.0 - beta2**t if use_bias_correction and beta2 < 1.0 else 1.0
    if (t % precondition_frequency == 0 and t > start) or t == start:
        for k, factor in enumerate(state["factors"]):
            if factor is not None:
                eye = torch.eye(factor.shape[0], dtype=factor.dtype)
                lam, q = torch.linalg.eigh(factor / bc2 + epsilon * eye)
                if lam.min() < epsilon:
                    lam = lam - lam.min() + epsilon
                state["roots"][k] = (q * lam.pow(-exponents[k])) @ q.T

    if grafting == "adam":
        state["graft_v"].mul_(grafting_beta2).addcmul_(grad, grad, value=1.0 - grafting_beta2)
    elif grafting is not None:
        raise ValueError("the reference implements Adam grafting only (or None)")

    if beta1 != 0.0:
        state["filtered_grad"].lerp_(grad, 1.0 - beta1)
        filtered = state["filtered_grad"] / (1.0 - beta1**t) if use_bias_correction else state["filtered_grad"].clone()
    else:
        filtered = grad.clone()

    def grafted() -> Tensor:
        return filtered / ((state["graft_v"] / (1.0 - grafting_beta2**t)).sqrt() + grafting_epsilon)

    if t < start and grafting is not None:
        direction = grafted()
    else:
        direction = _rotate(filtered, state["roots"])  # F_k symmetric: contracting rows = contracting columns
        if grafting is not None:
            direction = direction * (torch.linalg.norm(grafted()) / (torch.linalg.norm(direction) + 1e-16))

    if weight_decay != 0.0:
        direction = direction + weight_decay * param
    if momentum != 0.0:
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(direction, alpha=1.0 - dampening)
        direction = (1.0 - dampening) * direction + momentum * buf if nesterov else buf.clone()
    return param - lr * direction


# ------------------------------------------------------------------------------------------------ SOAP
def soap_step(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.95, 0.95),
    shampoo_beta: float = -1.0,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
) -> Tensor:
    r"""One step of SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's factors, as the authors' soap.py.

    Defaults are the authors' (``betas=(0.95, 0.95)``, ``shampoo_beta=-1`` meaning β₂, ``precondition_frequency=10``,
    ``weight_decay=0.01``). For W (q×p) with gradient G:

    * Factors ``L ← s L + (1 − s) G Gᵀ``, ``R ← s R + (1 − s) Gᵀ G`` (``s`` = shampoo_beta, no bias correction: the
      eigenvectors do not depend on the scale). A dimension larger than ``max_precond_dim`` gets no factor
      (identity basis); a 1-D tensor gets one (full n×n) factor only with ``precondition_1d`` — by default a bias
      is plain Adam.
    * Call 1 only updates L, R and sets ``Q_L, Q_R = eigh`` (eigenvectors in descending eigenvalue order); the
      parameter is NOT changed ("first step is skipped so that we never use the current gradients in the
      projection"). The step counter t counts the later calls (t = 1 at call 2).
    * Call t+1: ``G' = Q_Lᵀ G Q_R``; ``m ← β₁ m + (1 − β₁) G'`` (m is kept in the current eigenbasis);
      ``v ← β₂ v + (1 − β₂) G'²``; ``N = Q_L (m / (sqrt(v) + ε)) Q_Rᵀ``; with ``correct_bias`` the step size is
      ``lr · sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ)`` (ε therefore sits outside the bias correction, as in the original Adam
      paper's "efficient version", not as in torch.optim.Adam); with ``normalize_grads``
      ``N ← N / (1e-30 + rms(N))``; ``W ← W − step_size · N``; then decoupled weight decay on the updated weight,
      ``W ← W − lr · λ · W``.
    * After the update the preconditioner takes the current G: m is rotated back (``Q_L m Q_Rᵀ``), L and R are
      updated, and if ``t % precondition_frequency == 0`` each Q is refreshed by one power iteration + QR:
      ``est = diag(Qᵀ F Q)``, columns sorted by ``est`` descending (v's entries along that dim are permuted the
      same way), ``Q ← qr(F Q_sorted).Q``; finally m is rotated into the (new) basis.

    The authors' code computes the eigh and the QR in float32 (``.float()``) whatever the parameter dtype and
    allocates L, R in the default dtype; this reference keeps everything in the input dtype. Not modelled:
    ``merge_dims`` and ``data_format`` (convolution kernels); tensors are 1-D or 2-D.

    Returns:
        The updated parameter (a new tensor).
    """
    beta1, beta2 = betas
    s = beta2 if shampoo_beta < 0 else shampoo_beta
    if not state:
        if grad.dim() == 1:
            dims = [n if precondition_1d and n <= max_precond_dim else None for n in grad.shape]
        else:
            dims = [n if n <= max_precond_dim else None for n in grad.shape]
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
        state["GG"] = [torch.zeros(n, n, dtype=grad.dtype) if n is not None else None for n in dims]
        state["Q"] = None
        _soap_update_preconditioner(grad, state, s, precondition_frequency)
        return param.clone()

    projected = _rotate(grad, state["Q"])
    state["step"] += 1
    t = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(projected, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).add_(projected.square(), alpha=1.0 - beta2)
    denom = exp_avg_sq.sqrt() + eps
    step_size = lr
    if correct_bias:
        step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    norm_grad = _rotate(exp_avg / denom, state["Q"], back=True)
    if normalize_grads:
        norm_grad = norm_grad / (1e-30 + norm_grad.square().mean().sqrt())
    new = param - step_size * norm_grad
    if weight_decay > 0.0:
        new = new - lr * weight_decay * new
    _soap_update_preconditioner(grad, state, s, precondition_frequency)
    return new


def _soap_update_preconditioner(grad: Tensor, state: State, shampoo_beta: float, precondition_frequency: int) -> None:
    """soap.py's ``update_preconditioner``: rotate m back, update L/R, eigh on the first call, QR refresh, rotate m in."""
    if state["Q"] is not None:
        state["exp_avg"] = _rotate(state["exp_avg"], state["Q"], back=True)
    for k, gg in enumerate(state["GG"]):
        if gg is not None:
            gg.lerp_(_outer(grad, k), 1.0 - shampoo_beta)
    if state["Q"] is None:
        state["Q"] = [
            None if gg is None else torch.flip(torch.linalg.eigh(gg + 1e-30 * torch.eye(gg.shape[0], dtype=gg.dtype))[1], [1])
            for gg in state["GG"]
        ]
    if state["step"] > 0 and state["step"] % precondition_frequency == 0:
        new_q: list[Tensor | None] = []
        for k, (gg, q) in enumerate(zip(state["GG"], state["Q"])):
            if gg is None:
                new_q.append(None)
                continue
            est = torch.diag(q.T @ gg @ q)
            order = torch.argsort(est, descending=True)
            state["exp_avg_sq"] = state["exp_avg_sq"].index_select(k, order)
            new_q.append(torch.linalg.qr(gg @ q[:, order])[0])
        state["Q"] = new_q
    if state["step"] > 0:
        state["exp_avg"] = _rotate(state["exp_avg"], state["Q"])


# ------------------------------------------------------------------------------------------------ Muon
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = MUON_COEFFICIENTS, eps: float = 1e-7) -> Tensor:
    r"""Keller Jordan's quintic Newton–Schulz "zeroth power" of a matrix, in the input dtype (his code: bfloat16).

    ``X = G`` (transposed if it has more rows than columns, so ``X Xᵀ`` is the small Gram matrix),
    ``X ← X / (‖X‖_F + eps)`` (spectral norm ≤ 1), then ``steps`` times ``A = X Xᵀ``, ``B = b A + c A²``,
    ``X ← a X + B X`` with ``(a, b, c) = (3.4445, −4.7750, 2.0315)``; transposed back. The result is roughly
    ``U S' Vᵀ`` with ``S'`` in about [0.7, 1.2], not exactly the polar factor ``U Vᵀ``.

    Returns:
        The orthogonalised matrix, same shape and dtype as ``g``.
    """
    a, b, c = coefficients
    x = g.mT if g.size(-2) > g.size(-1) else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if g.size(-2) > g.size(-1) else x


def muon_step(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    adjust_lr_fn: str = "original",
) -> Tensor:
    r"""One step of Muon (Keller Jordan 2024) for a 2-D weight W (q×p, fan-out × fan-in), as his ``muon_update``.

    ``B ← μ B + (1 − μ) G`` (an EMA; the 2024 modded-nanogpt code used ``B ← μ B + G``, which only rescales the
    input of the normalised Newton–Schulz and gives the same update up to ``eps``);
    ``U = (1 − μ) G + μ B`` (Nesterov, default) or ``U = B``; ``O = NS5(U)`` (:func:`newton_schulz5`);
    ``W ← (1 − lr·λ) W − lr · s · O`` with the shape factor ``s``:

    * ``"original"`` (Keller Jordan, torch's default): ``s = sqrt(max(1, q/p))``;
    * ``"match_rms_adamw"`` (Moonlight, Liu et al. 2025): ``s = 0.2 · sqrt(max(q, p))``;
    * ``"spectral_unclamped"`` (Bernstein): ``s = sqrt(q/p)``.

    Muon is meant for hidden 2-D weights only; biases, gains, the embedding and the output layer go to AdamW
    (:func:`adam_step`, Keller Jordan's ``MuonWithAuxAdam``).

    Returns:
        The updated parameter (a new tensor).
    """
    if param.dim() != 2:
        raise ValueError("Muon updates 2-D weights only; use adam_step for the others")
    if not state:
        state["momentum_buffer"] = torch.zeros_like(param)
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1.0 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf.clone()
    ortho = newton_schulz5(update, ns_steps, ns_coefficients, eps)
    rows, cols = param.shape
    scale = {
        "original": math.sqrt(max(1.0, rows / cols)),
        "match_rms_adamw": 0.2 * math.sqrt(max(rows, cols)),
        "spectral_unclamped": math.sqrt(rows / cols),
    }[adjust_lr_fn]
    return param * (1.0 - lr * weight_decay) - lr * scale * ortho


def adam_step(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float = 3e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-10,
    weight_decay: float = 0.0,
) -> Tensor:
    r"""AdamW as Keller Jordan's ``adam_update`` (the auxiliary optimizer of ``MuonWithAuxAdam`` for non-Muon tensors).

    ``m ← β₁ m + (1 − β₁) G``, ``v ← β₂ v + (1 − β₂) G²``,
    ``W ← (1 − lr·λ) W − lr · (m/(1 − β₁ᵗ)) / (sqrt(v/(1 − β₂ᵗ)) + ε)``.

    Returns:
        The updated parameter (a new tensor).
    """
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    t = state["step"]
    state["exp_avg"].lerp_(grad, 1.0 - beta1)
    state["exp_avg_sq"].lerp_(grad.square(), 1.0 - beta2)
    update = (state["exp_avg"] / (1.0 - beta1**t)) / ((state["exp_avg_sq"] / (1.0 - beta2**t)).sqrt() + eps)
    return param * (1.0 - lr * weight_decay) - lr * update
