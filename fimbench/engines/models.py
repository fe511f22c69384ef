"""The deep autoencoders of the paper's App. D and a convolutional autoencoder for square images, each
with its likelihood (:class:`~fimbench.fisher.likelihood.Likelihood`), and the architecture a run configuration names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fimbench.engines.config import RunConfig
from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


@dataclass(frozen=True)
class Architecture:
    """Layer widths ``d_0 … d_ℓ``, the hidden activation, and the output likelihood (App. D).

    ``kind`` is ``mlp`` (:class:`Autoencoder`) or ``conv`` (:class:`ConvAutoencoder`, whose ``layers``
    are ``(pixels, c_1 … c_j, bottleneck, c'_j … c'_1, pixels)``).
    """

    layers: tuple[int, ...]
    likelihood: Likelihood
    activation: str = "relu"
    kind: str = "mlp"


# App. D: hidden layers are ReLU; the output is the logits of a sigmoid (BCE) or linear (MSE).
ARCHITECTURES: dict[str, Architecture] = {
    "curves": Architecture((784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784), Likelihood.BERNOULLI),
    "mnist": Architecture((784, 1000, 500, 250, 30, 250, 500, 1000, 784), Likelihood.BERNOULLI),
    "faces": Architecture((625, 2000, 1000, 500, 30, 500, 1000, 2000, 625), Likelihood.GAUSSIAN),
}
ARCHITECTURES["curves-synth"] = ARCHITECTURES["curves"]

ARCHITECTURE_KINDS = ("mlp", "conv")
CONV_CHANNELS = (8, 16)  # the default convolutional autoencoder: 2 strided convolutions down, 2 up
CONV_BOTTLENECK = 32


def default_architecture(dataset: str, kind: str = "mlp") -> Architecture:
    """The dataset's App. D autoencoder (``mlp``), or the default convolutional one with the dataset's
    likelihood: ``(pixels, 8, 16, 32, 16, 8, pixels)`` (``conv``)."""
    if kind not in ARCHITECTURE_KINDS:
        raise FimbenchError(f"unknown model.architecture '{kind}'; choose from {', '.join(ARCHITECTURE_KINDS)}")
    mlp = ARCHITECTURES[dataset]
    if kind == "mlp":
        return mlp
    pixels = mlp.layers[0]
    layers = (pixels, *CONV_CHANNELS, CONV_BOTTLENECK, *reversed(CONV_CHANNELS), pixels)
    return Architecture(layers, mlp.likelihood, mlp.activation, "conv")


def resolve_architecture(config: RunConfig, input_dim: int) -> Architecture:
    """The dataset's App. D autoencoder (or ``model.architecture``'s default), or the layers / likelihood the config names."""
    default = default_architecture(config.data.dataset, config.model.architecture)
    layers = tuple(config.model.layers) if config.model.layers else default.layers
    try:
        likelihood = Likelihood(config.model.likelihood) if config.model.likelihood else default.likelihood
    except ValueError:
        raise FimbenchError(f"unknown likelihood '{config.model.likelihood}'; choose bernoulli or gaussian") from None
    if layers[0] != input_dim or layers[-1] != input_dim:
        raise FimbenchError(
            f"model.layers must start and end with the data width {input_dim}, got {list(layers)}"
        )
    return Architecture(layers, likelihood, config.model.activation, default.kind)


class Autoencoder(nn.Module):
    """``s_i = W_i ā_{i−1}``, ``a_i = σ(s_i)`` with a linear output layer (logits or Gaussian mean)."""

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        if len(architecture.layers) < 2:
            raise FimbenchError("an autoencoder needs at least an input and an output width")
        if architecture.activation not in ACTIVATIONS:
            raise FimbenchError(
                f"unknown activation '{architecture.activation}'; choose from {', '.join(ACTIVATIONS)}"
            )
        self.architecture = architecture
        modules: list[nn.Module] = []
        widths = architecture.layers
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            modules.append(nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                modules.append(ACTIVATIONS[architecture.activation]())
        self.net = nn.Sequential(*modules)

    @property
    def likelihood(self) -> Likelihood:
        return self.architecture.likelihood

    def linear_layers(self) -> list[nn.Linear]:
        return [module for module in self.net if isinstance(module, nn.Linear)]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Xavier-uniform weights and biases 0.01, as in the authors' code; seeded."""
        for layer in self.linear_layers():
            bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
            with torch.no_grad():
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * (2 * bound) - bound)
                layer.bias.fill_(0.01)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder for square one-channel images; every parameterised layer is a Conv2d or a Linear.

    With ``layers = (d, c_1 … c_j, b, c'_j … c'_1, d)`` and side ``s = √d`` (divisible by 2^j):

    * down: j convolutions 3×3, stride 2, padding 1 (1 → c_1 → … → c_j channels, side s → s/2^j);
    * bottleneck: Linear ``c_j (s/2^j)² → b`` and Linear ``b → c'_j (s/2^j)²``;
    * up: j times nearest-neighbour upsampling ×2 then a convolution 3×3, padding 1 (c'_j → … → c'_1 → 1);

    the hidden activation after every layer but the last, whose output (flattened to d) is the logits or
    the Gaussian mean, as in :class:`Autoencoder`. 2j + 2 = ``len(layers) − 1`` parameterised layers.
    """

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        widths = architecture.layers
        if architecture.activation not in ACTIVATIONS:
            raise FimbenchError(
                f"unknown activation '{architecture.activation}'; choose from {', '.join(ACTIVATIONS)}"
            )
        if len(widths) < 5 or len(widths) % 2 == 0 or widths[0] != widths[-1]:
            raise FimbenchError(
                "a convolutional autoencoder needs model.layers (pixels, c_1 … c_j, bottleneck, c'_j … c'_1, pixels) "
                f"with j ≥ 1 convolutions each way, got {list(widths)}"
            )
        depth = (len(widths) - 3) // 2
        side = math.isqrt(widths[0])
        if side * side != widths[0] or side % 2**depth != 0:
            raise FimbenchError(
                f"the convolutional autoencoder needs square images whose side is divisible by {2**depth}; "
                f"got {widths[0]} pixels"
            )
        self.architecture = architecture
        encoder, bottleneck, decoder = widths[1 : 1 + depth], widths[1 + depth], widths[2 + depth : -1]
        inner = side // 2**depth
        activation = ACTIVATIONS[architecture.activation]
        modules: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
        channels = 1
        for width in encoder:
            modules += [nn.Conv2d(channels, width, 3, stride=2, padding=1), activation()]
            channels = width
        modules += [nn.Flatten(), nn.Linear(channels * inner * inner, bottleneck), activation()]
        modules += [nn.Linear(bottleneck, decoder[0] * inner * inner), activation(), nn.Unflatten(1, (decoder[0], inner, inner))]
        outputs = (*decoder[1:], 1)
        for index, (width_in, width_out) in enumerate(zip(decoder, outputs)):
            modules += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width_in, width_out, 3, padding=1)]
            if index < len(outputs) - 1:
                modules.append(activation())
        modules.append(nn.Flatten())
        self.net = nn.Sequential(*modules)

    @property
    def likelihood(self) -> Likelihood:
        return self.architecture.likelihood

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Xavier-uniform weights (fan = channels × kernel area for a convolution) and biases 0.01; seeded."""
        for layer in self.net:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                receptive = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
                fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                with torch.no_grad():
                    layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * (2 * bound) - bound)
                    if layer.bias is not None:
                        layer.bias.fill_(0.01)


def build_model(architecture: Architecture, seed: int) -> Autoencoder | ConvAutoencoder:
    """A freshly initialised autoencoder (on CPU, float32; move it with ``.to(device)``) of ``architecture.kind``."""
    model = ConvAutoencoder(architecture) if architecture.kind == "conv" else Autoencoder(architecture)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


@dataclass(frozen=True)
class Metrics:
    """Evaluation of a model on a data set (all averaged over examples)."""

    loss: float  # objective h: per-example NLL summed over pixels
    loss_per_pixel: float  # the paper's reported loss (mean BCE / MSE)
    reconstruction_error: float  # Σ_pixels (y − E[y|x])², Hinton & Salakhutdinov / Martens


@torch.no_grad()
def evaluate(model: Autoencoder | ConvAutoencoder, data: Tensor, batch_size: int = 4096) -> Metrics:
    """Metrics of ``model`` on ``data`` (the autoencoder's target is its input), in chunks."""
    totals = torch.zeros(3, dtype=torch.float64, device=data.device)
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        output = model(x)
        likelihood = model.likelihood
        totals[0] += likelihood.nll(output, x).sum()
        totals[1] += likelihood.loss_per_pixel(output, x) * x.shape[0]
        totals[2] += (likelihood.mean(output) - x).square().sum()
    n = data.shape[0]
    loss, per_pixel, reconstruction = (totals / n).tolist()
    return Metrics(loss, per_pixel, reconstruction)
