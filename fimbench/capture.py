"""Per-layer Fisher statistics ``(ā, g)`` of ``nn.Linear`` layers from one extra forward/backward pass.

Forward hooks record each layer's input ``a`` and output ``s``; the targets of the extra pass are sampled
from the model's predictive distribution (true Fisher, §2.1) or taken from the data (empirical Fisher);
``g_t = ∂ℓ_t/∂s_t`` is then the gradient of ``Σ_t ℓ_t`` with respect to ``s`` — per-example derivatives,
with no 1/m factor (models.py states the scale convention). No parameter gradient is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fimbench.models import Likelihood


@dataclass
class LayerStatistics:
    """``a``: (m, p) augmented activations ``ā_t = (a_t, 1)`` (bias last); ``g``: (m, q) derivatives."""

    a: Tensor
    g: Tensor


def augment(activations: Tensor) -> Tensor:
    """``ā = (a, 1)``: append the bias column LAST (nn.Linear's weight layout plus a bias column)."""
    ones = torch.ones(activations.shape[0], 1, dtype=activations.dtype, device=activations.device)
    return torch.cat([activations, ones], dim=1)


def capture_statistics(
    model: nn.Module,
    inputs: Tensor,
    likelihood: Likelihood,
    layers: list[nn.Linear],
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[LayerStatistics]:
    """``(ā, g)`` for every layer in ``layers`` on ``inputs``.

    ``targets=None`` samples ``y ~ P(y | x, θ)`` (true Fisher); pass the data targets for the empirical
    Fisher. Works unchanged on CPU and CUDA (``generator`` must live on the inputs' device).
    """
    recorded: dict[nn.Linear, tuple[Tensor, Tensor]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        recorded[module] = (args[0].detach(), output)  # type: ignore[index]

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():
            output = model(inputs)
            if targets is None:
                targets = likelihood.sample(output.detach(), generator)
            loss = likelihood.nll(output, targets).sum()
            pre_activations = [recorded[layer][1] for layer in layers]
            derivatives = torch.autograd.grad(loss, pre_activations)
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerStatistics(augment(recorded[layer][0]), g.detach())
        for layer, g in zip(layers, derivatives)
    ]


def weight_of(layer: nn.Linear) -> Tensor:
    """The layer's parameters as one (q, p) matrix ``[W | b]`` — bias column last."""
    return torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1)  # type: ignore[list-item, union-attr]


def weight_gradient(layer: nn.Linear) -> Tensor:
    """The layer's gradient as one (q, p) matrix ``[∇W | ∇b]`` — bias column last."""
    return torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)  # type: ignore[list-item, union-attr]


def set_weight_gradient(layer: nn.Linear, matrix: Tensor, scale: Tensor | float = 1.0) -> None:
    """Write ``scale ·`` a (q, p) matrix into ``layer.weight.grad`` and ``layer.bias.grad``."""
    torch.mul(matrix[:, :-1], scale, out=layer.weight.grad)  # type: ignore[arg-type]
    torch.mul(matrix[:, -1], scale, out=layer.bias.grad)  # type: ignore[arg-type]
