"""MuonWithAdamW against the float64 references of Muon and AdamW (``muon_step``, ``adam_step`` in references.py).

The problem: a float64 tanh network 5 → 6 → 7 → 6 → 5 (two hidden weights, 7×6 and 6×7, so the shape factors
and Newton–Schulz's transpose are both exercised), a different 16-row minibatch of fixed data each step, 40 steps;
after every step each parameter is compared with the reference, ``max|θ − θ_ref| / max|θ_ref|``.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))  # tests/optimizers/ has no __init__.py
from problem import DTYPE, STEPS, Trajectory, loss_of, train, train_reference, worst
from problem import make_model as make_network
from references import adam_step, muon_step, newton_schulz5

from fimbench.errors import FimbenchError
from fimbench.optimizers.muon import ADJUST_LR_FNS, MuonWithAdamW, muon_parameters

FLOAT64_TOLERANCE = 1e-12
"""torch's Muon with its Newton–Schulz patched to run in float64, and AdamW, against the float64 references: only
the order of float64 operations differs (measured ≤ 1.8e-15 over 40 steps; one Newton–Schulz ≤ 3.2e-15). With
torch's eps = 1e-7 left in, its clamp ``max(‖U‖, eps)`` against Keller Jordan's ``‖U‖ + eps`` adds 3e-7 … 2e-6."""

BFLOAT16_TOLERANCE = 4e-2
"""torch's Muon as shipped: its Newton–Schulz runs in bfloat16 (8-bit mantissa, unit round-off u = 2⁻⁸ ≈ 3.9e-3)
at every step, so each Muon update is off by a few u and the errors feed back through the trajectory. Measured
over 40 steps: 1.2e-3 … 2.8e-3 with lr 0.02, 1.1e-2 with lr 0.05 (the colleague's 5 → 6 → 5 study: 3e-3 … 7e-3);
the bound is 10 u."""

NS_BFLOAT16_TOLERANCE = 8e-2
"""One bfloat16 Newton–Schulz against the float64 one, ``max|O − O_ref| / max|O_ref|``: measured 1.3e-2 … 2.9e-2
(the rounding of each of the five iterations is amplified by the next); the bound is 20 u."""

ADAM_LR, ADAM_BETAS, ADAM_EPS, WEIGHT_DECAY = 3e-3, (0.9, 0.95), 1e-10, 0.01
CASES: dict[str, dict] = {
    **{fn: dict(lr=0.02, momentum=0.95, nesterov=True, adjust_lr_fn=fn) for fn in ADJUST_LR_FNS},
    "plain-momentum": dict(lr=0.05, momentum=0.9, nesterov=False, adjust_lr_fn=None),
}


# ------------------------------------------------------------------------------------------------ the problem
def make_model(seed: int = 0, widths: tuple[int, ...] = (5, 6, 7, 6, 5)) -> nn.Module:
    """By default the 5→6→7→6→5 network: two hidden weights (7×6 and 6×7) for Muon."""
    return make_network(seed, widths)




def run_reference(muon: dict, steps: int = STEPS, eps: float = 1e-7) -> Trajectory:
    model = make_model()
    hidden = {"2.weight", "4.weight"}  # the hidden layers' weights (test_routing_of_an_autoencoder checks the routing)
    adjust = muon["adjust_lr_fn"] or "original"
    muon_kw = dict(
        lr=muon["lr"], momentum=muon["momentum"], nesterov=muon["nesterov"], weight_decay=WEIGHT_DECAY, eps=eps, adjust_lr_fn=adjust
    )
    adam_kw = dict(lr=ADAM_LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    def update(name: str, p: torch.Tensor, g: torch.Tensor, state: dict) -> torch.Tensor:
        return muon_step(p, g, state, **muon_kw) if name in hidden else adam_step(p, g, state, **adam_kw)

    return train_reference(model, update, steps)


def make_optimizer(muon: dict, eps: float | None = None) -> Callable[[nn.Module], MuonWithAdamW]:
    def make(model: nn.Module) -> MuonWithAdamW:
        optimizer = MuonWithAdamW(model, adam_lr=ADAM_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS, adam_eps=ADAM_EPS, **muon)
        if eps is not None:
            optimizer.param_groups[0]["eps"] = eps  # the documented way to change a Muon hyper-parameter
        return optimizer

    return make


def run_package(make: Callable[[nn.Module], torch.optim.Optimizer], steps: int = STEPS, resume_at: int | None = None) -> Trajectory:
    return train(make_model, make, steps, resume_at)


# ------------------------------------------------------------------------------------------------ float64 Newton–Schulz
def newton_schulz_in_input_dtype(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float) -> Tensor:
    """torch's ``_zeropower_via_newtonschulz`` (torch/optim/_muon.py), operation for operation, without its bfloat16 cast."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.T.clone() if tall else grad.clone()
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@pytest.fixture
def float64_newton_schulz(monkeypatch: pytest.MonkeyPatch) -> None:
    muon_module = torch.optim._muon
    shipped = muon_module._zeropower_via_newtonschulz  # fails here if torch renames it: update this test
    assert ".bfloat16()" in inspect.getsource(shipped), "torch's Newton–Schulz no longer casts to bfloat16: revisit the tolerances"
    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz", newton_schulz_in_input_dtype)


# ------------------------------------------------------------------------------------------------ against the references
@pytest.mark.parametrize("case", CASES)
def test_matches_the_published_algorithm_in_float64(case: str, float64_newton_schulz: None) -> None:
    # torch clamps ‖U‖_F at eps, Keller Jordan adds eps: identical at eps = 0
    assert worst(run_package(make_optimizer(CASES[case], eps=0.0)), run_reference(CASES[case], eps=0.0)) < FLOAT64_TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_as_shipped_within_bfloat16_rounding(case: str) -> None:
    assert worst(run_package(make_optimizer(CASES[case])), run_reference(CASES[case])) < BFLOAT16_TOLERANCE


@pytest.mark.parametrize("shape", [(7, 6), (6, 7), (5, 5)])
def test_torch_newton_schulz_is_the_published_one(shape: tuple[int, int]) -> None:
    g = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    coefficients, expected = (3.4445, -4.7750, 2.0315), newton_schulz5(g, eps=0.0)
    shipped = torch.optim._muon._zeropower_via_newtonschulz(g, coefficients, 5, 1e-7).to(DTYPE)
    assert ((shipped - expected).abs().max() / expected.abs().max()).item() < NS_BFLOAT16_TOLERANCE
    patched = newton_schulz_in_input_dtype(g, coefficients, 5, 0.0)
    assert ((patched - expected).abs().max() / expected.abs().max()).item() < FLOAT64_TOLERANCE


# ------------------------------------------------------------------------------------------------ routing
def names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    return {name for name, p in model.named_parameters() if any(p is q for q in params)}


def test_routing_of_an_autoencoder() -> None:
    model = make_model(widths=(8, 6, 3, 6, 8))
    muon, adamw = muon_parameters(model)
    assert names(model, muon) == {"2.weight", "4.weight"}  # the hidden layers' weights
    assert names(model, adamw) == {"0.weight", "0.bias", "2.bias", "4.bias", "6.weight", "6.bias"}  # input/output layers, biases


def test_routing_of_convolutions_gains_and_frozen_layers() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),  # 6×6 input -> 4×2×2
        nn.Linear(16, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3),
    )  # fmt: skip
    model[6].requires_grad_(False)
    muon, adamw = muon_parameters(model)
    assert names(model, muon) == {"4.weight"}
    # the hidden convolution's 4-D weight goes to AdamW (torch.optim.Muon takes 2-D only); the frozen layer to neither
    assert names(model, adamw) == {"0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight", "7.bias"}


def test_a_weight_tied_to_the_input_layer_goes_to_adamw() -> None:
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5))
    model[1].weight = model[0].weight
    muon, adamw = muon_parameters(model)
    assert names(model, muon) == {"2.weight"} and len(muon) + len(adamw) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------------ one optimizer
def test_param_groups_are_the_inner_optimizers_groups() -> None:
    model = make_model()
    optimizer = MuonWithAdamW(model, weight_decay=0.0)
    assert [g["optimizer"] for g in optimizer.param_groups] == ["muon", "adamw"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 3e-4]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.param_groups[0]["lr"] = 0.0  # Muon's group: the hidden weights must not move

    def closure() -> float:
        loss = loss_of(model, dict(model.named_parameters()), 0)
        loss.backward()
        return loss.item()

    assert optimizer.step(closure) == loss_of(model, before, 0).item()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {name for name in before if name not in {"2.weight", "4.weight"}}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step + 1))
    assert [g["lr"] for g in optimizer._muon.param_groups + optimizer._adamw.param_groups] == [0.0, 1.5e-4]
    del scheduler
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_resumes_bit_exactly() -> None:
    make = make_optimizer(CASES["original"])
    assert worst(run_package(make, 30, resume_at=15), run_package(make, 30)) == 0.0
    model = make_model()
    optimizer = make(model)
    loss_of(model, dict(model.named_parameters()), 0).backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert [sorted(state["state"][i]) for i in sorted(state["state"])] == [
        ["exp_avg", "exp_avg_sq", "step"] if i >= 2 else ["momentum_buffer"] for i in sorted(state["state"])
    ]  # indices 0, 1: the Muon group's two weights; then AdamW's six tensors


def test_deepcopy_keeps_one_working_optimizer() -> None:
    model = make_model()
    optimizer = MuonWithAdamW(model, weight_decay=0.01)
    twin = copy.deepcopy({"model": model, "optimizer": optimizer})
    for m, o in ((model, optimizer), (twin["model"], twin["optimizer"])):
        for t in range(3):
            o.zero_grad()
            loss_of(m, dict(m.named_parameters()), t).backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin["model"].parameters()))


# ------------------------------------------------------------------------------------------------ errors
def test_a_model_without_hidden_weights_is_refused() -> None:
    with pytest.raises(FimbenchError, match="use adam"):
        MuonWithAdamW(make_model(widths=(5, 6, 5)))


@pytest.mark.parametrize(
    "bad",
    [
        dict(lr=0.0), dict(lr=float("nan")), dict(adam_lr=-1e-3), dict(momentum=1.0), dict(weight_decay=-0.1),
        dict(adam_betas=(0.9, 1.0)), dict(adam_betas=(0.9,)), dict(adam_eps=-1.0), dict(adjust_lr_fn="spectral"),
    ],
)  # fmt: skip
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(FimbenchError, match=next(iter(bad))):
        MuonWithAdamW(make_model(), **bad)


def test_a_foreign_state_dict_and_new_groups_are_refused() -> None:
    model = make_model()
    optimizer = MuonWithAdamW(model)
    with pytest.raises(FimbenchError, match="not a MuonWithAdamW state"):
        optimizer.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())
    with pytest.raises(FimbenchError, match="exactly two parameter groups"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2))]})


def test_torch_without_muon_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(FimbenchError, match="torch >= 2.9"):
        MuonWithAdamW(make_model())
