"""KL-clipping (App. E) and the alignment diagnostic of a preconditioned step.

With ``P_i = F̃_i⁻¹ ∇_i`` per layer, the step is scaled by ``ν = min(1, sqrt(c / Σ_i |⟨P_i, ∇_i⟩|))``, so
that the step's predicted change of the KL divergence, ``ν² Σ_i ⟨P_i, ∇_i⟩``, stays at most ``c``. The
alignment ``mean_i cos(P_i, ∇_i)`` near 1 says that the damping swamps the curvature (the step is SGD's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TINY = 1e-30  # keeps the ratios finite for a zero gradient


def kl_clip_factor(directions: Sequence[Tensor], gradients: Sequence[Tensor], clip: float | None) -> Tensor:
    """``ν = min(1, sqrt(c / Σ_i |⟨P_i, ∇_i⟩|))`` (module docstring); 1 without a clip.

    Args:
        directions: ``P_i = F̃_i⁻¹ ∇_i``, one (q_i, p_i) matrix per layer.
        gradients: ``∇_i``, the same shapes.
        clip: ``c``, or None for no clipping.

    Returns:
        ν, a 0-d tensor on the gradients' device (no host sync).
    """
    if clip is None:
        return torch.ones((), device=gradients[0].device)
    inner = torch.stack([torch.vdot(d.reshape(-1), grad.reshape(-1)).abs() for d, grad in zip(directions, gradients)]).sum()
    return torch.clamp(torch.sqrt(clip / (inner + TINY)), max=1.0)


def mean_alignment(directions: Sequence[Tensor], gradients: Sequence[Tensor]) -> Tensor:
    """``mean_i cos(P_i, ∇_i)`` over the layers (module docstring).

    Args:
        directions: ``P_i``, one matrix per layer.
        gradients: ``∇_i``, the same shapes.

    Returns:
        The mean cosine, a 0-d tensor on the device.
    """
    cosines = [
        torch.vdot(d.reshape(-1), grad.reshape(-1)) / (torch.linalg.vector_norm(d) * torch.linalg.vector_norm(grad) + TINY)
        for d, grad in zip(directions, gradients)
    ]
    return torch.stack(cosines).mean()
