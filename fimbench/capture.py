"""Per-layer Fisher statistics ``(ā, g)`` of ``nn.Linear`` and ``nn.Conv2d`` layers from one extra
forward/backward pass.

Forward hooks record each layer's input ``a`` and output ``s``; the targets of the extra pass are sampled
from the model's predictive distribution (true Fisher, §2.1) or taken from the data (empirical Fisher);
``g_t = ∂ℓ_t/∂s_t`` is then the gradient of ``Σ_t ℓ_t`` with respect to ``s`` — per-example derivatives,
with no 1/m factor (models.py states the scale convention). No parameter gradient is touched.

Shared weights give 3-D statistics, T positions per example (curvature/shared_weights.py):

* ``nn.Conv2d`` (groups = 1, zero padding): the positions are the L = H_out·W_out output pixels;
  ``A_n`` (L × (C·k_h·k_w + 1)) holds the im2col patches (``unfold``, channel-major like
  ``weight.reshape(out, -1)``) plus the bias column, ``G_n`` (L × out) the derivatives at each pixel;
* ``nn.Linear`` on inputs (m, …, features): the positions are the T middle entries (tokens).

A ``nn.Linear`` on (m, features) inputs keeps the 2-D statistics ``(m, p)``, ``(m, q)``. The bias column
is there only when the layer has a bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from fimbench.errors import FimbenchError
from fimbench.models import Likelihood

KroneckerLayer = nn.Linear | nn.Conv2d


@dataclass
class LayerStatistics:
    """``a``: (m, p) augmented activations ``ā_t = (a_t, 1)`` (bias last); ``g``: (m, q) derivatives —
    or (m, T, p) and (m, T, q) for a layer applied at T positions (module docstring)."""

    a: Tensor
    g: Tensor


def augment(activations: Tensor) -> Tensor:
    """``ā = (a, 1)``: append the bias column LAST (nn.Linear's weight layout plus a bias column)."""
    ones = torch.ones(*activations.shape[:-1], 1, dtype=activations.dtype, device=activations.device)
    return torch.cat([activations, ones], dim=-1)


def kronecker_layers(model: nn.Module) -> list[KroneckerLayer]:
    """The model's trainable ``nn.Linear`` and ``nn.Conv2d`` layers in module order — the blocks fimbench
    preconditions. Frozen layers (``weight.requires_grad`` false) are left out.

    Raises for a layer whose Fisher block the capture cannot form (grouped or non-zero-padded convolutions,
    a bias frozen while its weight trains).
    """
    layers = [
        module for module in model.modules() if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad
    ]
    for layer in layers:
        if layer.bias is not None and not layer.bias.requires_grad:
            raise FimbenchError(f"{layer} trains its weight but not its bias; freeze or train both")
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise FimbenchError(f"Conv2d with groups={layer.groups} is not supported (only groups=1)")
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str) and layer.padding != "valid":
                raise FimbenchError(
                    f"Conv2d with padding={layer.padding!r}, padding_mode={layer.padding_mode!r} is not supported; "
                    "use integer zero padding"
                )
    return layers


def layer_shape(layer: KroneckerLayer) -> tuple[int, int]:
    """``(p, q)``: the sizes of the block's factors — inputs per position (bias included) and outputs."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        inputs = layer.in_channels * kh * kw
        outputs = layer.out_channels
    else:
        inputs, outputs = layer.in_features, layer.out_features
    return inputs + (1 if layer.bias is not None else 0), outputs


def layer_statistics(layer: KroneckerLayer, inputs: Tensor, derivatives: Tensor) -> LayerStatistics:
    """``(ā, g)`` of one layer from its input and ``∂(Σ_n ℓ_n)/∂s`` at its output (module docstring)."""
    if isinstance(layer, nn.Conv2d):
        padding = 0 if layer.padding == "valid" else layer.padding
        patches = functional.unfold(
            inputs, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride  # type: ignore[arg-type]
        ).transpose(1, 2)  # (m, L, C·kh·kw)
        g = derivatives.flatten(2).transpose(1, 2)  # (m, L, out)
    elif inputs.ndim > 2:
        patches = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])  # (m, T, features)
        g = derivatives.reshape(derivatives.shape[0], -1, derivatives.shape[-1])
    else:
        patches, g = inputs, derivatives
    a = augment(patches) if layer.bias is not None else patches
    return LayerStatistics(a, g)


def capture_statistics(
    model: nn.Module,
    inputs: Tensor,
    likelihood: Likelihood,
    layers: list[KroneckerLayer],
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[LayerStatistics]:
    """``(ā, g)`` for every layer in ``layers`` (nn.Linear or nn.Conv2d) on ``inputs``.

    ``targets=None`` samples ``y ~ P(y | x, θ)`` (true Fisher); pass the data targets for the empirical
    Fisher. Works unchanged on CPU and CUDA (``generator`` must live on the inputs' device).
    """
    recorded: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if module in recorded:  # its Fisher block would need the statistics of every call together
            raise FimbenchError(f"{module} is called more than once in one forward pass; weight sharing across calls is not supported")
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
    return [layer_statistics(layer, recorded[layer][0], g.detach()) for layer, g in zip(layers, derivatives)]


def _as_matrix(layer: KroneckerLayer, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W | b]`` as one (q, p) matrix, bias column last; a convolution's weight as (out, C·k_h·k_w)."""
    weight = weight.reshape(layer.weight.shape[0], -1)
    return weight if bias is None else torch.cat([weight, bias.unsqueeze(1)], dim=1)


def weight_of(layer: KroneckerLayer) -> Tensor:
    """The layer's parameters as one (q, p) matrix (:func:`_as_matrix`)."""
    return _as_matrix(layer, layer.weight, layer.bias)


def weight_gradient(layer: KroneckerLayer) -> Tensor:
    """The layer's gradient as one (q, p) matrix ``[∇W | ∇b]`` (:func:`_as_matrix`)."""
    return _as_matrix(layer, layer.weight.grad, layer.bias.grad if layer.bias is not None else None)  # type: ignore[arg-type, union-attr]


def set_weight_gradient(layer: KroneckerLayer, matrix: Tensor, scale: Tensor | float = 1.0) -> None:
    """Write ``scale ·`` a (q, p) matrix into ``layer.weight.grad`` and ``layer.bias.grad``."""
    weight = layer.weight.grad.view(layer.weight.shape[0], -1)  # type: ignore[union-attr]
    torch.mul(matrix[:, : weight.shape[1]], scale, out=weight)
    if layer.bias is not None:
        torch.mul(matrix[:, -1], scale, out=layer.bias.grad)  # type: ignore[arg-type]


def add_to_weight(layer: KroneckerLayer, matrix: Tensor) -> None:
    """``[W | b] += matrix`` in place, for a (q, p) matrix in :func:`_as_matrix`'s layout."""
    with torch.no_grad():
        weight = layer.weight.view(layer.weight.shape[0], -1)
        weight.add_(matrix[:, : weight.shape[1]].to(weight.dtype))
        if layer.bias is not None:
            layer.bias.add_(matrix[:, -1].to(layer.bias.dtype))


def clear_weight_gradient(layer: KroneckerLayer) -> None:
    """``layer.weight.grad = layer.bias.grad = None``."""
    layer.weight.grad = None
    if layer.bias is not None:
        layer.bias.grad = None
