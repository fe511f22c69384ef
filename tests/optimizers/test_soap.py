"""fimbench.optimizers.soap (pytorch_optimizer.SOAP) against the float64 reference ``soap_step`` (references.py).

The problem (the colleague's study, /tmp/optstudy/test_draft.py): a float64 tanh network 5 → 6 → 5 (W1 6×5, b1,
W2 5×6, b2), a different 16-row minibatch of fixed data each step, 40 steps; after every step each parameter is
compared with the reference, ``max|θ − θ_ref| / max|θ_ref|``. The shapes keep |q − p| ≤ 1 so SOAP's first
eigenbasis is unique up to signs (with a larger null space of G Gᵀ the basis, and so the trajectory, would depend
on rounding and no tolerance would mean anything).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # tests/optimizers/ has no __init__.py
from problem import DTYPE, STEPS, Trajectory, make_model, train, train_reference, worst
from references import soap_step

from fimbench.errors import FimbenchError
from fimbench.optimizers.soap import soap

FLOAT32_QR_TOLERANCE = 1e-6
"""pytorch_optimizer.SOAP as shipped: its QR power iteration casts to float32 (``power_iter.to(torch.float32)``)
whatever the dtype, so each refreshed basis is orthogonal to ~1e-7 only (measured 3.6e-8 … 1.1e-7 over 40 steps)."""

FLOAT64_TOLERANCE = 1e-12
"""The same with that cast made a float64 one: only the order of float64 operations differs (measured ≤ 1.6e-15)."""

CASES: dict[str, dict[str, Any]] = {
    "authors-defaults": {},  # lr 3e-3, betas (0.95, 0.95), weight decay 0.01, refresh every 10 steps, eps 1e-8
    "freq3-betas-no-decay": dict(betas=(0.9, 0.99), weight_decay=0.0, precondition_frequency=3),
    "freq1-lr1e-2-eps1e-6": dict(lr=1e-2, precondition_frequency=1, eps=1e-6),
}


# ------------------------------------------------------------------------------------------------ the problem


def run_reference(case: dict[str, Any], steps: int = STEPS) -> Trajectory:
    hyper = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01, precondition_frequency=10, eps=1e-8) | case
    return train_reference(make_model(), lambda name, p, g, state: soap_step(p, g, state, **hyper), steps)


def run_package(case: dict[str, Any], steps: int = STEPS, resume_at: int | None = None) -> Trajectory:
    return train(make_model, lambda model: soap(model.parameters(), **case), steps, resume_at)


class _Float32IsFloat64:
    """Stands for the ``torch`` module inside pytorch_optimizer's soap.py, with ``torch.float32`` meaning float64."""

    def __getattr__(self, name: str) -> Any:
        return torch.float64 if name == "float32" else getattr(torch, name)


@pytest.fixture
def float64_qr(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytorch_optimizer")
    import pytorch_optimizer.optimizer.soap as module

    source = inspect.getsource(module)
    assert source.count("torch.float32") == 1 and "power_iter.to(torch.float32)" in source, "SOAP's casts changed: revisit"
    monkeypatch.setattr(module, "torch", _Float32IsFloat64())


# ------------------------------------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("case", CASES)
def test_as_shipped_within_float32_qr_rounding(case: str) -> None:
    pytest.importorskip("pytorch_optimizer")
    assert worst(run_package(CASES[case]), run_reference(CASES[case])) < FLOAT32_QR_TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_matches_the_published_algorithm_with_a_float64_qr(case: str, float64_qr: None) -> None:
    assert worst(run_package(CASES[case]), run_reference(CASES[case])) < FLOAT64_TOLERANCE


def test_state_dict_round_trip_resumes_bit_exactly() -> None:
    pytest.importorskip("pytorch_optimizer")
    case = CASES["freq3-betas-no-decay"]  # QR refreshes before and after the checkpoint
    assert worst(run_package(case, 30, resume_at=16), run_package(case, 30)) == 0.0


def test_factors_per_dimension_and_adam_for_biases() -> None:
    pytest.importorskip("pytorch_optimizer")
    conv = nn.Conv2d(2, 4, 3, dtype=DTYPE)
    optimizer = soap(conv.parameters())
    conv(torch.randn(3, 2, 5, 5, dtype=DTYPE)).square().sum().backward()
    optimizer.step()
    factors = optimizer.state[conv.weight]["GG"]  # the 4-D kernel (4, 2, 3, 3): one factor per dimension
    assert [tuple(f.shape) for f in factors] == [(4, 4), (2, 2), (3, 3), (3, 3)] and all(f.dtype == DTYPE for f in factors)
    assert optimizer.state[conv.bias]["GG"] == [[]] and optimizer.state[conv.bias]["Q"] == [[]]  # no factor: Adam


# ------------------------------------------------------------------------------------------------ errors
def test_without_pytorch_optimizer_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # makes `import pytorch_optimizer` fail
    with pytest.raises(FimbenchError, match=r'pip install "pytorch-optimizer>=4\.1,<5"'):
        soap(make_model().parameters())


def test_an_old_pytorch_optimizer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytorch_optimizer")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.6.1")
    with pytest.raises(FimbenchError, match=r"pytorch-optimizer >= 4\.1 \(found 3\.6\.1\)"):
        soap(make_model().parameters())


@pytest.mark.parametrize(
    "bad",
    [
        dict(lr=0.0), dict(lr=float("inf")), dict(betas=(0.9, 1.0)), dict(betas=(0.9,)), dict(weight_decay=-0.01),
        dict(precondition_frequency=0), dict(precondition_frequency=2.5), dict(eps=0.0),
    ],
)  # fmt: skip
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(FimbenchError, match=next(iter(bad))):
        soap(make_model().parameters(), **bad)
