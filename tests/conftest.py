"""Shared fixtures: seeded generators, random Fisher statistics and tiny float64 MLPs.

Every tensor is created with an explicit ``dtype``; nothing changes torch's global default dtype (the
autouse guard below fails any test that leaks one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import reference` from any test module

from reference import DTYPE, random_statistics

from fimbench.engines.models import Architecture, Autoencoder
from fimbench.fisher.likelihood import Likelihood


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The suite's matrices are tiny: one intra-op thread is as fast, and on a shared, busy CPU extra
    threads only spin against the other work (no test asserts a time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_global_dtype_leak():
    before = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == before, "a test changed torch's global default dtype"


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def make_statistics() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``make_statistics(m, p, q, seed=0)`` -> float64 ``(ā, g)`` with the bias column last."""

    def make(m: int, p: int, q: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return random_statistics(m, p, q, torch.Generator().manual_seed(seed))

    return make


@pytest.fixture
def make_mlp() -> Callable[..., Autoencoder]:
    """``make_mlp(widths, likelihood, seed=0, activation="tanh")`` -> a float64 MLP (fimbench's Autoencoder).

    Smooth activations by default so that no derivative is exactly zero by accident; biases are random
    (not the constant 0.01 init) so that the bias column is exercised.
    """

    def make(
        widths: tuple[int, ...], likelihood: Likelihood, seed: int = 0, activation: str = "tanh"
    ) -> Autoencoder:
        model = Autoencoder(Architecture(tuple(widths), likelihood, activation)).to(DTYPE)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=gen, dtype=DTYPE) * 0.7)
        return model

    return make
