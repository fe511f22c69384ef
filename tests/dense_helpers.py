"""Dense and rearranged reference helpers that only the tests use: Van Loan's ``Z(F)``, Prop. 3.1's
products as p × p / q × q matrices, and Error 1 / Error 2 from the dense F and F̂."""

from __future__ import annotations

import torch
from torch import Tensor

from fimbench.curvature.kronecker import quadratic_forms, weighted_gram
from fimbench.fisher.block import METRIC_DTYPE, Metric, Terms, exact_block


def rearrange(F: Tensor, p: int, q: int) -> Tensor:
    """Van Loan's zigzag rearrangement ``Z(F)`` of a (pq × pq) matrix made of p×p blocks of size q×q.

    ``Z[μ + ν p, i + j q] = F[μ q + i, ν q + j]`` — row ``(μ, ν)`` is ``vec(F_{μν})ᵀ`` (paper §3.1).
    """
    blocks = F.reshape(p, q, p, q)  # [μ, i, ν, j]
    return blocks.permute(2, 0, 3, 1).reshape(p * p, q * q)


def z_matvec(a: Tensor, g: Tensor, V: Tensor) -> Tensor:
    """``Z(F) vec(V) = E[(gᵀ V g) vec(ā āᵀ)]`` (Prop. 3.1) as the p×p matrix ``aᵀ diag(w) a / m``."""
    return weighted_gram(a, quadratic_forms(g, V)) / a.shape[0]


def z_rmatvec(a: Tensor, g: Tensor, U: Tensor) -> Tensor:
    """``Z(F)ᵀ vec(U) = E[(āᵀ U ā) vec(g gᵀ)]`` (Prop. 3.1) as the q×q matrix ``gᵀ diag(w) g / m``."""
    return weighted_gram(g, quadratic_forms(a, U)) / g.shape[0]


def _dense_pair(a: Tensor, g: Tensor, terms: Terms) -> tuple[Tensor, Tensor]:
    """The dense F of the statistics and F̂ = Σ_k A_k ⊗ G_k, in the metrics' dtype."""
    F = exact_block(a.to(METRIC_DTYPE), g.to(METRIC_DTYPE))
    F_hat = sum(torch.kron(A.to(METRIC_DTYPE), G.to(METRIC_DTYPE)) for A, G in terms)
    return F, F_hat  # type: ignore[return-value]


def frobenius_error_dense(a: Tensor, g: Tensor, terms: Terms) -> Metric:
    """Reference Error 1 ``‖F − F̂‖_F / ‖F‖_F`` from the dense F and F̂ (path ``dense``; small layers only)."""
    F, F_hat = _dense_pair(a, g, terms)
    return Metric(float(torch.linalg.norm(F - F_hat) / torch.linalg.norm(F)), "dense")


def spectral_error_dense(a: Tensor, g: Tensor, terms: Terms) -> Metric:
    """Reference Error 2 ``‖spec F − spec F̂‖₂ / ‖spec F‖₂`` from ``eigvalsh`` of the dense F and F̂, both
    sorted decreasing (path ``dense``)."""
    F, F_hat = _dense_pair(a, g, terms)
    spec_F = torch.linalg.eigvalsh(F).flip(0)
    spec_F_hat = torch.linalg.eigvalsh(F_hat).flip(0)
    return Metric(float(torch.linalg.norm(spec_F - spec_F_hat) / torch.linalg.norm(spec_F)), "dense")
