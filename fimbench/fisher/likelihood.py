"""The network's predictive distribution ``P(y | x, θ)`` and its per-example loss (paper §2.1).

Scale convention (used everywhere in fimbench, docs/design.md §3): the per-example loss is the negative
log-likelihood summed over pixels,

    Bernoulli (CURVES, MNIST):  ℓ(y, z) = Σ_j BCE(sigmoid(z_j), y_j)   (computed from the logits z),
    Gaussian N(z, I) (FACES):   ℓ(y, z) = ½ Σ_j (y_j − z_j)²,

the training objective is ``h = mean_t ℓ_t`` and ``g = ∂ℓ_t/∂s`` is the pre-activation derivative of ONE
example's loss, so ``F = E[vec(DW) vec(DW)ᵀ]`` is the Fisher of the per-example log-likelihood. The
paper's reported "loss per pixel" (the authors' BCELoss / MSELoss with mean reduction) is also logged.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from fimbench.errors import FimbenchError


class Likelihood(str, Enum):
    """The network's predictive distribution ``P(y | x, θ)`` (paper §2.1).

    ``categorical`` is for classifiers in the user's own loop (library use; the benchmarks' autoencoders
    are Bernoulli or Gaussian): ``P(y = c | x) = softmax(z)_c`` over the last dimension, targets are class
    indices, ``ℓ = −log softmax(z)_y``, and ``g = ∂ℓ/∂z = softmax(z) − e_y``, so the true Fisher's output
    factor is ``E_y[g gᵀ] = diag(p) − p pᵀ``.

    Attributes:
        BERNOULLI: ``y ~ Bernoulli(sigmoid(z))`` (CURVES, MNIST).
        GAUSSIAN: ``y ~ N(z, I)`` (FACES).
        CATEGORICAL: ``y ~ Categorical(softmax(z))`` over the last dimension (classifiers).
    """

    BERNOULLI = "bernoulli"
    GAUSSIAN = "gaussian"
    CATEGORICAL = "categorical"

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example negative log-likelihood ``ℓ_t``, summed over pixels (outputs): shape (m,).

        Categorical: the classes are the last dimension, as in :meth:`sample`; outputs (m, …, C) with
        targets (m, …) give ``ℓ_t = Σ_positions −log softmax(z)_y``, one class per position (tokens).

        Args:
            output: The network's outputs z (Bernoulli, categorical: logits), (m, …); categorical (m, …, C).
            target: The targets, shaped like ``output``; categorical: class indices, (m, …).

        Returns:
            ``ℓ_t`` of each example, (m,).

        Raises:
            FimbenchError: If categorical targets are not of shape ``output.shape[:-1]``.
        """
        if self is Likelihood.BERNOULLI:
            return functional.binary_cross_entropy_with_logits(output, target, reduction="none").flatten(1).sum(dim=1)
        if self is Likelihood.CATEGORICAL:
            _check_class_indices(output, target)
            tokens = functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")
            return tokens.reshape(output.shape[0], math.prod(output.shape[1:-1])).sum(dim=1)
        return 0.5 * (output - target).square().flatten(1).sum(dim=1)

    def mean(self, output: Tensor) -> Tensor:
        """The prediction ``E[y | x]``: sigmoid of the logits, the Gaussian mean, or the class probabilities.

        Args:
            output: The network's outputs z (Bernoulli, categorical: logits), (m, …); categorical (m, …, C).

        Returns:
            ``E[y | x]``, shaped like ``output``.
        """
        if self is Likelihood.CATEGORICAL:
            return torch.softmax(output, dim=-1)
        return torch.sigmoid(output) if self is Likelihood.BERNOULLI else output

    def sample(self, output: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from the model — the true Fisher's targets.

        ``y ~ Bernoulli(sigmoid(z))``, ``y ~ N(z, I)`` or ``y ~ Categorical(softmax(z))`` (class indices).

        Args:
            output: The network's outputs z (Bernoulli, categorical: logits), (m, …); categorical (m, …, C).
            generator: The random stream to draw from, on ``output``'s device; ``None``: torch's global one.

        Returns:
            Targets shaped like ``output`` (Bernoulli: 0/1 in its dtype); categorical: int64 class indices, (m, …).
        """
        if self is Likelihood.BERNOULLI:
            uniform = torch.rand(output.shape, generator=generator, device=output.device, dtype=output.dtype)
            return (uniform < torch.sigmoid(output)).to(output.dtype)
        if self is Likelihood.CATEGORICAL:
            probabilities = torch.softmax(output, dim=-1).reshape(-1, output.shape[-1])
            return torch.multinomial(probabilities, 1, generator=generator).reshape(output.shape[:-1])
        noise = torch.randn(output.shape, generator=generator, device=output.device, dtype=output.dtype)
        return output + noise

    def loss_per_pixel(self, output: Tensor, target: Tensor) -> Tensor:
        """The paper's metric (mean over pixels and examples): BCE, or the squared error ``(y − z)²``.

        For a classifier: the mean cross-entropy over examples and positions (classes last).

        Args:
            output: The network's outputs z (Bernoulli, categorical: logits), (m, …); categorical (m, …, C).
            target: The targets, shaped like ``output``; categorical: class indices, (m, …).

        Returns:
            The mean loss, a scalar (0-dim) tensor.

        Raises:
            FimbenchError: For categorical targets that are not one class index per position.
        """
        if self is Likelihood.BERNOULLI:
            return functional.binary_cross_entropy_with_logits(output, target)
        if self is Likelihood.CATEGORICAL:
            _check_class_indices(output, target)
            return functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
        return functional.mse_loss(output, target)


def _check_class_indices(output: Tensor, target: Tensor) -> None:
    """One error unless ``target`` holds one class index per position of ``output`` (m, …, C): shape (m, …)."""
    if target.shape != output.shape[:-1]:
        raise FimbenchError(
            f"categorical targets are class indices of shape {tuple(output.shape[:-1])} for outputs "
            f"{tuple(output.shape)} (classes last), got {tuple(target.shape)}"
        )


def parse_likelihood(likelihood: object) -> Likelihood:
    """A :class:`Likelihood` or its name; anything else (say, a torch loss module) is a one-line error."""
    try:
        return Likelihood(likelihood)
    except ValueError:
        names = ", ".join(item.value for item in Likelihood)
        shown = type(likelihood).__name__ if isinstance(likelihood, nn.Module) else repr(likelihood)
        raise FimbenchError(f"the likelihood must be one of {names} (the model's predictive distribution), got {shown}") from None
