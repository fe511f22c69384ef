"""Per-layer Fisher statistics ``(ā, g)`` of ``nn.Linear`` and ``nn.Conv2d`` layers from one extra
forward/backward pass.

Forward hooks record each layer's input ``a`` and output ``s``; the targets of the extra pass are sampled
from the model's predictive distribution (true Fisher, §2.1) or taken from the data (empirical Fisher);
``g_t = ∂ℓ_t/∂s_t`` is then the gradient of ``Σ_t ℓ_t`` with respect to ``s`` — per-example derivatives,
with no 1/m factor (models.py states the scale convention). No parameter gradient is touched, no
buffer keeps a change (BatchNorm's running statistics are restored), dropout is off for the pass and the
global random streams are forked around it (:func:`statistics_pass`, :func:`forked_rng`).

Shared weights give 3-D statistics, T positions per example (curvature/shared_weights.py):

* ``nn.Conv2d`` (groups = 1, zero padding): the positions are the L = H_out·W_out output pixels;
  ``A_n`` (L × (C·k_h·k_w + 1)) holds the im2col patches (``unfold``, channel-major like
  ``weight.reshape(out, -1)``) plus the bias column, ``G_n`` (L × out) the derivatives at each pixel;
* ``nn.Linear`` on inputs (m, …, features): the positions are the T middle entries (tokens).

A ``nn.Linear`` on (m, features) inputs keeps the 2-D statistics ``(m, p)``, ``(m, q)``. The bias column
is there only when the layer has a bias.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood

KroneckerLayer = nn.Linear | nn.Conv2d


@dataclass
class LayerStatistics:
    """The Fisher statistics ``(ā, g)`` of one layer on one mini-batch (module docstring).

    Attributes:
        a: Augmented activations ``ā_t = (a_t, 1)`` (bias last), (m, p); or (m, T, p) for a layer applied at
            T positions.
        g: Pre-activation derivatives ``g_t = ∂ℓ_t/∂s_t``, (m, q); or (m, T, q).
    """

    a: Tensor
    g: Tensor


def augment(activations: Tensor) -> Tensor:
    """``ā = (a, 1)``: append the bias column LAST (nn.Linear's weight layout plus a bias column)."""
    ones = torch.ones(*activations.shape[:-1], 1, dtype=activations.dtype, device=activations.device)
    return torch.cat([activations, ones], dim=-1)


def candidate_layers(model: nn.Module) -> list[KroneckerLayer]:
    """The model's trainable ``nn.Linear`` and ``nn.Conv2d`` layers in module order, supported or not.
    Frozen layers (``weight.requires_grad`` false) are left out."""
    return [module for module in model.modules() if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad]


def check_supported(layer: KroneckerLayer, name: str = "") -> KroneckerLayer:
    """``layer`` itself, or one error for a layer whose Fisher block the capture cannot form (a grouped or
    non-zero-padded convolution, a bias frozen while its weight trains); ``name`` is its qualified name."""
    label = f"layer {name!r} ({type(layer).__name__})" if name else str(layer)
    if layer.bias is not None and not layer.bias.requires_grad:
        raise FimbenchError(f"{label} trains its weight but not its bias; freeze or train both")
    return check_capturable(layer, name)


def check_capturable(layer: nn.Module, name: str = "") -> KroneckerLayer:
    """``layer`` itself, or one error for a module whose statistics ``(ā, g)`` the capture cannot form: not an
    ``nn.Linear`` or ``nn.Conv2d``, or a grouped or non-zero-padded convolution; ``name`` is its qualified name."""
    label = f"layer {name!r} ({type(layer).__name__})" if name else str(layer)
    leave_out = "; leave it out with skip_layers= (or layers=)" if name else ""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise FimbenchError(f"{label} is neither nn.Linear nor nn.Conv2d; its Fisher statistics cannot be captured")
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise FimbenchError(f"{label}: Conv2d with groups={layer.groups} is not supported (only groups=1){leave_out}")
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str) and layer.padding != "valid":
            raise FimbenchError(
                f"{label}: Conv2d with padding={layer.padding!r}, padding_mode={layer.padding_mode!r} is not supported; "
                f"use integer zero padding{leave_out}"
            )
    return layer


def kronecker_layers(model: nn.Module) -> list[KroneckerLayer]:
    """The blocks fimbench preconditions in a model of its own: every :func:`candidate_layers` layer,
    each checked by :func:`check_supported`."""
    return [check_supported(layer) for layer in candidate_layers(model)]


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

    One extra forward/backward pass that leaves the model, its parameter gradients and the user's random
    streams as they were (:func:`statistics_pass`, :func:`forked_rng`). Works unchanged on CPU and CUDA.

    Args:
        model: The network; its forward must call each of ``layers`` exactly once.
        inputs: One mini-batch of inputs, (m, …).
        likelihood: The model's predictive distribution ``P(y | x, θ)``; its ``nll`` is the per-example loss.
        layers: The layers to capture, nn.Linear or nn.Conv2d (e.g. :func:`kronecker_layers`).
        targets: ``None`` (default) samples ``y ~ P(y | x, θ)`` (true Fisher); pass the data targets for the
            empirical Fisher.
        generator: The generator the targets are sampled from; it must live on the inputs' device.

    Returns:
        One :class:`LayerStatistics` per layer, in the order of ``layers``: ``a`` (m, p), ``g`` (m, q), or
        (m, T, p) and (m, T, q) for a layer applied at T positions (module docstring).

    Raises:
        FimbenchError: If one of ``layers`` is no layer the capture supports (:func:`check_capturable`), or the
            forward calls one of them more than once, or does not call one of them.
    """
    for layer in layers:
        check_capturable(layer)
    recorded: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if module in recorded:  # its Fisher block would need the statistics of every call together
            raise FimbenchError(f"{module} is called more than once in one forward pass; weight sharing across calls is not supported")
        recorded[module] = (args[0].detach(), output)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad(), statistics_pass(model):
            with forked_rng(inputs.device):
                output = model(inputs)
            _check_reached(model, layers, recorded)
            if targets is None:
                targets = likelihood.sample(output.detach(), generator)
            loss = likelihood.nll(output, targets).sum()
            pre_activations = [recorded[layer][1] for layer in layers]
            derivatives = torch.autograd.grad(loss, pre_activations)
    finally:
        for handle in handles:
            handle.remove()
    return [layer_statistics(layer, recorded[layer][0], g.detach()) for layer, g in zip(layers, derivatives)]


@contextmanager
def statistics_pass(model: nn.Module) -> Iterator[None]:
    """The statistics pass leaves the model as it was (and, with :func:`forked_rng` around its forward,
    the user's random streams).

    * Every buffer is restored afterwards: BatchNorm keeps normalising with the batch's statistics, as in
      the training forward whose Fisher this is, but its running statistics and ``num_batches_tracked``
      are not updated by the extra pass.
    * Dropout modules are switched to eval for the pass: the Fisher is that of the model's predictive
      distribution ``P(y | x, θ)``, the deterministic network dropout approximates at test time; a fresh
      mask would add the mask's own noise to the statistics (and draw from the user's generator).
    """
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    dropouts = [module for module in model.modules() if isinstance(module, nn.modules.dropout._DropoutNd) and module.training]
    for module in dropouts:
        module.eval()
    try:
        yield
    finally:
        for module in dropouts:
            module.train()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """The global CPU generator (and ``device``'s CUDA one) as they were on entry once the block ends, so
    anything random left in the statistics forward does not advance the user's streams. The targets are
    sampled outside it, from the sampling generator."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield


def _check_reached(model: nn.Module, layers: list[KroneckerLayer], recorded: dict[nn.Module, tuple[Tensor, Tensor]]) -> None:
    """One error naming the layers the forward did not call (their blocks have no statistics)."""
    names = {id(module): name for name, module in model.named_modules()}
    missing = [f"{names.get(id(layer), layer)!r} ({type(layer).__name__})" for layer in layers if layer not in recorded]
    if missing:
        raise FimbenchError(
            f"the model's forward does not reach layer(s) {', '.join(missing)}; leave them out with skip_layers= (or layers=)"
        )


def _as_matrix(layer: KroneckerLayer, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W | b]`` as one (q, p) matrix, bias column last; a convolution's weight as (out, C·k_h·k_w)."""
    weight = weight.reshape(layer.weight.shape[0], -1)
    return weight if bias is None else torch.cat([weight, bias.unsqueeze(1)], dim=1)


def weight_of(layer: KroneckerLayer) -> Tensor:
    """The layer's parameters as one (q, p) matrix (:func:`_as_matrix`)."""
    return _as_matrix(layer, layer.weight, layer.bias)


def weight_gradient(layer: KroneckerLayer) -> Tensor:
    """The layer's gradient as one (q, p) matrix ``[∇W | ∇b]`` (:func:`_as_matrix`)."""
    return _as_matrix(layer, layer.weight.grad, layer.bias.grad if layer.bias is not None else None)  # type: ignore[arg-type]


def set_weight_gradient(layer: KroneckerLayer, matrix: Tensor, scale: Tensor | float = 1.0) -> None:
    """Write ``scale ·`` a (q, p) matrix into ``layer.weight.grad`` and ``layer.bias.grad``."""
    weight = layer.weight.grad.view(layer.weight.shape[0], -1)  # type: ignore[union-attr]
    torch.mul(matrix[:, : weight.shape[1]], scale, out=weight)
    if layer.bias is not None:
        torch.mul(matrix[:, -1], scale, out=layer.bias.grad)


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
