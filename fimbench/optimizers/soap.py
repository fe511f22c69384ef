r"""SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's factors, as ``pytorch_optimizer.SOAP``.

Source: Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson, Kakade, "SOAP: Improving and Stabilizing Shampoo
using Adam", 2024 (arXiv:2409.11321), the authors' code github.com/nikhilvyas/SOAP @ a1e5535, ``soap.py``. The
float64 reference this module is tested against is ``soap_step`` in ``tests/optimizers/references.py``.

Algorithm, for a weight ``W`` (q×p) with gradient ``G``:

* Factors ``L ← s L + (1 − s) G Gᵀ``, ``R ← s R + (1 − s) Gᵀ G`` (``s`` = β₂, the authors' ``shampoo_beta=-1``).
* The first step only builds ``L``, ``R`` and the eigenbases ``Q_L, Q_R = eigh`` (descending eigenvalues); the
  parameter is not changed ("so that we never use the current gradients in the projection").
* Each later step t = 1, 2, …: ``G' = Q_Lᵀ G Q_R``, Adam moments ``m ← β₁ m + (1 − β₁) G'``,
  ``v ← β₂ v + (1 − β₂) G'²``, ``W ← W − lr·sqrt(1 − β₂ᵗ)/(1 − β₁ᵗ) · Q_L (m / (sqrt(v) + ε)) Q_Rᵀ`` (ε outside
  the bias correction, as the authors), then decoupled weight decay ``W ← W − lr·λ·W``; then ``L``, ``R`` take
  ``G`` and every ``precondition_frequency`` steps each basis is refreshed by one power iteration and a QR
  (``Q ← qr(F Q_sorted)``, the columns sorted by ``diag(Qᵀ F Q)`` and ``v`` permuted with them).

Shapes, as the authors' defaults (``merge_dims=False``, ``precondition_1d=False``, ``max_precond_dim=10000``):
a 1-D parameter (bias, gain) gets no factor, so it takes plain Adam with SOAP's ε placement, skipped first step
and weight decay (λ applies to every parameter, biases included, as the authors'); a k-D parameter gets one factor
per dimension, so a convolution weight (out, in, kh, kw) gets four: out×out, in×in, kh×kh and kw×kw (not the
``(out, in·kh·kw)`` matrix view of K-FAC); a dimension over 10000 gets none (identity basis along it).

Delegated to ``pytorch_optimizer.SOAP`` (``pip install "pytorch-optimizer>=4.1,<5"``; optional: imported when
:func:`soap` is called): maintained, and with the settings of :func:`soap` it matches the authors' algorithm in
float64 to about 1e-7 relative over 40 steps (tests/optimizers/test_soap.py). The difference is its QR power
iteration, which always runs in float32 (the authors' too: they also compute the first eigh in float32 and keep
the factors in torch's default dtype; pytorch_optimizer keeps the factors and the eigh in the parameter's dtype).
With that one cast removed the match is ≤ 1e-14. It keeps Adam's first moment in the parameter's own basis
(the authors keep it in the rotated one and rotate it at each refresh): the same update up to rounding.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from collections.abc import Callable

import torch
from torch.optim.optimizer import ParamsT

from fimbench.errors import FimbenchError

__all__ = ["INSTALL_HINT", "soap"]

INSTALL_HINT = 'pip install "pytorch-optimizer>=4.1,<5"'
"""How to install the package that :func:`soap` delegates to (pytorch-optimizer 4.1 is the version tested)."""

MINIMUM_VERSION = (4, 1)


def _pytorch_optimizer_soap() -> Callable[..., torch.optim.Optimizer]:
    """``pytorch_optimizer.SOAP``, or a FimbenchError saying how to install it."""
    try:
        module = importlib.import_module("pytorch_optimizer")
    except ImportError as error:
        raise FimbenchError(f"SOAP needs the pytorch-optimizer package: {INSTALL_HINT}") from error
    try:
        version = importlib.metadata.version("pytorch-optimizer")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree: trust it
        version = ""
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if len(numbers) == 2 and numbers < MINIMUM_VERSION:
        raise FimbenchError(f"SOAP needs pytorch-optimizer >= 4.1 (found {version}): {INSTALL_HINT}")
    return module.SOAP


def _check(lr: float, betas: tuple[float, float], weight_decay: float, precondition_frequency: int, eps: float) -> None:
    """Raise one FimbenchError naming every value out of its range."""

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    problems = []
    if not (number(lr) and lr > 0):
        problems.append(f"lr must be a positive number, not {lr!r}")
    if not (isinstance(betas, tuple | list) and len(betas) == 2 and all(number(b) and 0.0 <= b < 1.0 for b in betas)):
        problems.append(f"betas must be two numbers in [0, 1), not {betas!r}")
    if not (number(weight_decay) and weight_decay >= 0):
        problems.append(f"weight_decay must be >= 0, not {weight_decay!r}")
    if not (isinstance(precondition_frequency, int) and not isinstance(precondition_frequency, bool) and precondition_frequency >= 1):
        problems.append(f"precondition_frequency must be a whole number >= 1, not {precondition_frequency!r}")
    if not (number(eps) and eps > 0):
        problems.append(f"eps must be a positive number, not {eps!r}")
    if problems:
        raise FimbenchError("SOAP: " + "; ".join(problems))


def soap(
    params: ParamsT,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.95, 0.95),
    weight_decay: float = 0.01,
    precondition_frequency: int = 10,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``pytorch_optimizer.SOAP`` set up as the authors' SOAP (nikhilvyas/SOAP ``soap.py``).

    The defaults are the authors' (lr 3e-3, betas (0.95, 0.95), weight decay 0.01, precondition frequency 10,
    eps 1e-8); the settings fixed here are theirs too: ``shampoo_beta=None`` (= β₂, their −1),
    ``max_precondition_dim=10000``, ``merge_dims=False``, ``precondition_1d=False``, ``correct_bias=True``,
    ``normalize_gradient=False`` (theirs divides by ``rms + 1e-30``, pytorch_optimizer's by ``rms + eps``),
    ``data_format="channels_first"``. Its ``state_dict`` (tensors, lists of tensors, numbers, the group's step
    count) loads with ``torch.load(weights_only=True)`` and resumes bit for bit.

    Args:
        params: The parameters, or parameter groups (dicts), as for any torch optimizer.
        lr: Learning rate.
        betas: Adam's (β₁, β₂); β₂ is also the EMA decay of Shampoo's factors.
        weight_decay: Decoupled weight decay λ (``W ← W − lr·λ·W`` after the step), on every parameter.
        precondition_frequency: Steps between the QR refreshes of the eigenbases.
        eps: Added to ``sqrt(v)`` in the rotated Adam step.

    Returns:
        The optimizer (a ``pytorch_optimizer.SOAP``).

    Raises:
        FimbenchError: pytorch-optimizer (>= 4.1) is not installed, or a value is out of its range.
    """
    _check(lr, betas, weight_decay, precondition_frequency, eps)
    soap_class = _pytorch_optimizer_soap()
    return soap_class(
        params,
        lr=lr,
        betas=(betas[0], betas[1]),
        shampoo_beta=None,
        weight_decay=weight_decay,
        precondition_frequency=precondition_frequency,
        max_precondition_dim=10000,
        merge_dims=False,
        precondition_1d=False,
        correct_bias=True,
        normalize_gradient=False,
        data_format="channels_first",
        eps=eps,
    )
