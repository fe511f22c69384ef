r"""Muon (Keller Jordan, 2024) for the hidden weights of a network and AdamW for the rest, as one torch optimizer.

Source: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024
(kellerjordan.github.io/posts/muon), github.com/KellerJordan/Muon ``muon.py`` (``muon_update``,
``zeropower_via_newtonschulz5``, ``adam_update``, ``MuonWithAuxAdam``) and its README ("Muon is an optimizer for the
hidden weights of a neural network. Other parameters, such as embeddings, classifier heads, and hidden gains/biases
should be optimized using standard AdamW"). The float64 references this module is tested against are ``muon_step``
and ``adam_step`` in ``tests/optimizers/references.py``.

Algorithm, for a hidden weight ``W`` (q×p, fan-out × fan-in) with gradient ``G``:

1. Momentum as an EMA, ``B ← μ B + (1 − μ) G``; the update ``U = (1 − μ) G + μ B`` (Nesterov) or ``U = B``.
2. ``O = NS5(U)``: ``X = U / ‖U‖_F`` (transposed when q > p), then five times ``A = X Xᵀ``,
   ``X ← a X + (b A + c A²) X`` with ``(a, b, c) = (3.4445, −4.7750, 2.0315)``: roughly the polar factor of ``U``.
3. ``W ← (1 − lr·λ) W − lr · s · O`` with the shape factor ``s`` of ``adjust_lr_fn``: ``sqrt(max(1, q/p))``
   (``"original"``, Keller Jordan's, the default), ``0.2·sqrt(max(q, p))`` (``"match_rms_adamw"``, Moonlight,
   Liu et al. 2025) or ``sqrt(q/p)`` (``"spectral_unclamped"``, Bernstein).

Every other trainable parameter takes decoupled-weight-decay Adam (AdamW): ``m ← β₁ m + (1 − β₁) G``,
``v ← β₂ v + (1 − β₂) G²``, ``W ← (1 − lr·λ) W − lr · (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + ε)``.

Delegated: step 1–3 to ``torch.optim.Muon`` (torch ≥ 2.9, ``torch/optim/_muon.py``), the rest to
``torch.optim.AdamW``; this module only routes the parameters (:func:`muon_parameters`) and steps both as one
:class:`MuonWithAdamW`. torch's implementation is maintained and matches the published algorithm in float64
(tests/optimizers/test_muon.py) except for two choices it shares with Keller Jordan's code or documents:

* its Newton–Schulz (``_zeropower_via_newtonschulz``) always runs in bfloat16, whatever the parameter dtype, so
  the update carries bfloat16 rounding (about 1e-2 relative): that is the published algorithm ("it can be stably
  run in bfloat16") and fimbench does not patch torch;
* it divides by ``max(‖U‖_F, eps)`` where Keller Jordan divides by ``‖U‖_F + eps`` (eps = 1e-7): equal at eps = 0,
  a relative difference of about ``eps/‖U‖_F`` otherwise.

Parameter routing (:func:`muon_parameters`, Keller Jordan's README and docstring: "The input embedding, final
output layer, and any internal gains or biases should be optimized using a standard method such as AdamW"):
Muon takes the 2-D weights of the ``nn.Linear`` layers that are neither the first nor the last layer (``nn.Linear``
or convolution) in module order; AdamW takes everything else. Convolution weights are 4-D (3-D, 5-D): Keller
Jordan flattens hidden convolution filters to ``(out, in·kh·kw)`` for Muon, but ``torch.optim.Muon`` accepts 2-D
parameters only, so here they go to AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, overload

import torch
from torch import nn

from fimbench.errors import FimbenchError, NothingToOptimizeError

__all__ = ["ADJUST_LR_FNS", "LAYER_TYPES", "MuonWithAdamW", "muon_parameters"]

ADJUST_LR_FNS = ("original", "match_rms_adamw", "spectral_unclamped")
"""The shape factors ``torch.optim.Muon`` knows (None means ``"original"``)."""

LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""The modules that count as layers when :func:`muon_parameters` finds the first (input) and last (output) one."""

MUON = "muon"
ADAMW = "adamw"


def muon_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the trainable parameters of ``model`` into Muon's and AdamW's, as Keller Jordan's practice.

    The layers are the modules of :data:`LAYER_TYPES` in ``model.modules()`` order (registration order, which is
    the forward order of an ``nn.Sequential``). Muon gets the weight of every ``nn.Linear`` layer but the first
    and the last (the input layer and the head, like embeddings and classifier heads); AdamW gets the rest: those
    two layers, every bias and gain, every parameter that is not 2-D (convolution weights: ``torch.optim.Muon``
    takes 2-D parameters only) and any 2-D parameter outside an ``nn.Linear`` (embeddings, raw matrices such as
    ``nn.MultiheadAttention.in_proj_weight``). A weight shared with the first or last layer goes to AdamW.
    Frozen parameters (``requires_grad`` False) are in neither list.

    Args:
        model: The network.

    Returns:
        ``(muon, adamw)``: the two lists, each in ``model.parameters()`` order, with no parameter in both.
    """
    layers = [module for module in model.modules() if isinstance(module, LAYER_TYPES)]
    ends = {id(p) for layer in layers[:1] + layers[-1:] for p in layer.parameters(recurse=False)}
    hidden = {
        id(layer.weight)
        for layer in layers[1:-1]
        if isinstance(layer, nn.Linear) and layer.weight.dim() == 2 and id(layer.weight) not in ends
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) in hidden], [p for p in trainable if id(p) not in hidden]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_hyperparameters(
    lr: float,
    adam_lr: float,
    momentum: float,
    weight_decay: float,
    adam_betas: tuple[float, float],
    adam_eps: float,
    adjust_lr_fn: str | None,
) -> None:
    """Raise one FimbenchError naming every constructor value out of its range."""
    problems = [
        f"{name} must be a positive number, not {value!r}"
        for name, value in (("lr", lr), ("adam_lr", adam_lr))
        if not (_is_number(value) and value > 0)
    ]
    if not (_is_number(momentum) and 0.0 <= momentum < 1.0):
        problems.append(f"momentum must be in [0, 1), not {momentum!r}")
    if not (_is_number(weight_decay) and weight_decay >= 0.0):
        problems.append(f"weight_decay must be >= 0, not {weight_decay!r}")
    betas_ok = isinstance(adam_betas, tuple | list) and len(adam_betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in adam_betas)
    if not betas_ok:
        problems.append(f"adam_betas must be two numbers in [0, 1), not {adam_betas!r}")
    if not (_is_number(adam_eps) and adam_eps >= 0.0):
        problems.append(f"adam_eps must be >= 0, not {adam_eps!r}")
    if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
        problems.append(f"adjust_lr_fn must be None or one of {', '.join(ADJUST_LR_FNS)}, not {adjust_lr_fn!r}")
    if problems:
        raise FimbenchError("MuonWithAdamW: " + "; ".join(problems))


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the hidden weights and ``torch.optim.AdamW`` on the rest, stepped as one optimizer.

    Defaults and their sources: ``lr=0.02``, ``momentum=0.95``, ``nesterov=True`` and ``weight_decay=0`` are the
    defaults of Keller Jordan's ``Muon`` / ``MuonWithAuxAdam`` (his README: "the default values of momentum (0.95),
    nesterov (True), and ns_steps (5) work well. Only the learning rate and weight decay must be tuned");
    ``adam_lr=3e-4``, ``adam_betas=(0.9, 0.95)``, ``adam_eps=1e-10`` are the defaults of his auxiliary Adam
    (``MuonWithAuxAdam``'s ``use_muon=False`` groups), not torch's AdamW defaults (1e-3, (0.9, 0.999), 1e-8);
    ``adjust_lr_fn=None`` is torch's default (``"original"``: Keller Jordan's ``sqrt(max(1, q/p))``). The
    Newton–Schulz settings (5 steps, coefficients (3.4445, −4.7750, 2.0315), eps 1e-7) are torch's, equal to
    Keller Jordan's. One ``weight_decay`` (decoupled, scaled by each group's lr) serves both groups, as in his
    README's example; set ``param_groups[i]["weight_decay"]`` to separate them.

    ``param_groups`` holds two groups, the very dicts the inner optimizers read: ``param_groups[0]`` is Muon's
    (``group["optimizer"] == "muon"``), ``param_groups[1]`` AdamW's (``"adamw"``; its params may be empty, e.g.
    when the first and last layers are frozen). Reading or setting ``lr`` (or any other hyper-parameter) there,
    as an LR scheduler does, changes what the next :meth:`step` uses. ``state`` is one dict shared with both inner
    optimizers, so :meth:`state_dict` / :meth:`load_state_dict` are torch's own (plain tensors, numbers, strings,
    tuples: ``torch.load(weights_only=True)`` reads them) and resume bit for bit. :meth:`zero_grad` is torch's.

    Args:
        model: The network; its parameters are split by :func:`muon_parameters`.
        lr: Muon's learning rate (in units of spectral norm per update, before the shape factor).
        adam_lr: AdamW's learning rate.
        momentum: Muon's momentum μ, in [0, 1).
        nesterov: Nesterov momentum for Muon.
        weight_decay: Decoupled weight decay λ of both groups (``W ← (1 − lr·λ) W``).
        adam_betas: AdamW's (β₁, β₂).
        adam_eps: AdamW's ε.
        adjust_lr_fn: Muon's shape factor: None (= ``"original"``) or one of :data:`ADJUST_LR_FNS`.

    Raises:
        FimbenchError: ``model`` has no hidden ``nn.Linear`` weight to train (Muon would have nothing to do: use
            Adam), a value is out of its range, or torch is older than 2.9 (no ``torch.optim.Muon``).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.02,
        adam_lr: float = 3e-4,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
        adjust_lr_fn: str | None = None,
    ) -> None:
        _check_hyperparameters(lr, adam_lr, momentum, weight_decay, adam_betas, adam_eps, adjust_lr_fn)
        muon_params, adamw_params = muon_parameters(model)
        if not muon_params:
            raise NothingToOptimizeError(
                "MuonWithAdamW: the model has no trainable hidden nn.Linear weight (Muon trains the 2-D weights of the "
                "nn.Linear layers between the first and the last layer); Muon would have nothing to do: use adam"
            )
        muon_class = getattr(torch.optim, "Muon", None)
        if muon_class is None:
            raise FimbenchError(f"MuonWithAdamW needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
        muon_group: dict[str, Any] = {"params": muon_params, "optimizer": MUON}
        adamw_group: dict[str, Any] = {"params": adamw_params, "optimizer": ADAMW}
        self._muon: torch.optim.Optimizer = muon_class(
            [muon_group], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn
        )
        self._adamw = torch.optim.AdamW(
            [adamw_group], lr=adam_lr, betas=(adam_betas[0], adam_betas[1]), eps=adam_eps, weight_decay=weight_decay
        )
        self._building = True
        super().__init__([muon_group, adamw_group], {})  # the same dicts: the inner optimizers filled their defaults
        self._building = False
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this optimizer's two groups and its one state dict."""
        muon_group, adamw_group = self.param_groups
        muon_group["optimizer"], adamw_group["optimizer"] = MUON, ADAMW
        self._muon.param_groups, self._adamw.param_groups = [muon_group], [adamw_group]
        self._muon.state = self._adamw.state = self.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only the constructor adds groups: the Muon/AdamW split is decided from the model once.

        Args:
            param_group: The group (accepted only while the constructor runs).

        Raises:
            FimbenchError: Called after construction; build a new optimizer for a changed model instead.
        """
        if not getattr(self, "_building", False):
            raise FimbenchError("MuonWithAdamW has exactly two parameter groups (muon, adamw); build a new one for a changed model")
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_muon": self._muon, "_adamw": self._adamw, "_building": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_muon" in self.__dict__:  # after load_state_dict (new groups and state) or unpickling
            self._link()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a ``MuonWithAdamW`` built on the same model (torch's format).

        Args:
            state_dict: What :meth:`state_dict` returned, possibly through ``torch.save`` / ``torch.load``.

        Raises:
            FimbenchError: It is not a ``MuonWithAdamW`` state (its groups are not ``muon``, ``adamw``).
        """
        kinds = [group.get("optimizer") for group in state_dict.get("param_groups", [])]
        if kinds != [MUON, ADAMW]:
            raise FimbenchError(f"not a MuonWithAdamW state: its parameter groups are {kinds}, not ['muon', 'adamw']")
        super().load_state_dict(state_dict)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Muon step on the hidden weights and one AdamW step on the rest (parameters without a gradient skip).

        Args:
            closure: Re-evaluates the model and returns the loss (run once, with gradients enabled), or None.

        Returns:
            The closure's loss, or None without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon.step()
        self._adamw.step()
        return loss
