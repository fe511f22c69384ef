"""The exact Fisher block, dense (reference only), and the rearrangement used to test approximations."""

from __future__ import annotations

import torch
from torch import Tensor


def exact_block(a: Tensor, g: Tensor) -> Tensor:
    """``F = (1/m) Σ_t kron(ā_t ā_tᵀ, g_t g_tᵀ)`` — dense (pq × pq); reference code and small layers only.

    Built as ``Jᵀ J / m`` with rows ``J_t = vec(g_t ā_tᵀ) = ā_t ⊗ g_t`` (the per-example weight gradient).
    """
    m = a.shape[0]
    per_example = (a.unsqueeze(2) * g.unsqueeze(1)).reshape(m, -1)  # ā_t ⊗ g_t
    return per_example.transpose(0, 1) @ per_example / m
