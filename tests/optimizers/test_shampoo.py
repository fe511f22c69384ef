"""fimbench.optimizers.shampoo.Shampoo against the float64 reference ``shampoo_step`` (tests/optimizers/references.py).

The problem is the colleague's toy of the reference study: a float64 5 → 6 → 5 tanh network (W1 6×5, b1 6, W2 5×6,
b2 5), a different 16-row mini-batch of 32 fixed rows each step. Deviation: ``max|θ − θ_ref| / max|θ_ref|``, worst
over steps and tensors. ``references`` is importable because pytest puts this folder (no ``__init__.py``) on sys.path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from references import shampoo_step

from fimbench.errors import FimbenchError
from fimbench.optimizers.shampoo import Shampoo

DTYPE = torch.float64
STEPS = 40
EXACT = 1e-12  # relative: float64, the same operations up to summation order
FLOAT32 = 1e-4  # relative: a float32 run against the float64 reference (measured ≤ 2e-6)

BASE: dict[str, Any] = dict(
    lr=1e-2,
    betas=(0.9, 1.0),
    epsilon=1e-12,
    weight_decay=0.0,
    precondition_frequency=1,
    start_preconditioning_step=-1,
    grafting="adam",
    grafting_beta2=0.999,
    grafting_epsilon=1e-10,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    use_bias_correction=True,
)  # every hyper-parameter, so that neither side's defaults matter
CASES: dict[str, dict[str, Any]] = {
    "sums-no-grafting": dict(betas=(0.9, 1.0), epsilon=1e-6, grafting=None),
    "ema-adam-grafting-start10-wd": dict(
        betas=(0.9, 0.999), epsilon=1e-8, precondition_frequency=5, start_preconditioning_step=10, weight_decay=1e-2
    ),
    "nesterov": dict(betas=(0.0, 0.99), epsilon=1e-8, precondition_frequency=3, momentum=0.9, nesterov=True),
    "distributed-shampoo-defaults": dict(),
    "dampened-momentum-no-bias-correction": dict(
        betas=(0.5, 0.95), epsilon=1e-8, precondition_frequency=2, momentum=0.5, dampening=0.1, use_bias_correction=False
    ),
}


def problem(dtype: torch.dtype = DTYPE) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g, dtype=DTYPE)
    y = torch.randn(32, 5, generator=g, dtype=DTYPE)
    params = [
        torch.randn(6, 5, generator=g, dtype=DTYPE) * 0.5,
        torch.randn(6, generator=g, dtype=DTYPE) * 0.1,
        torch.randn(5, 6, generator=g, dtype=DTYPE) * 0.5,
        torch.randn(5, generator=g, dtype=DTYPE) * 0.1,
    ]
    return x.to(dtype), y.to(dtype), [p.to(dtype) for p in params]


def loss_fn(params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
    w1, b1, w2, b2 = params
    rows = (torch.arange(16) + 3 * t) % x.shape[0]
    hidden = torch.tanh(x[rows] @ w1.T + b1)
    return 1.5 * ((hidden @ w2.T + b2 - y[rows]) ** 2).mean()


def reference_run(hypers: list[dict[str, Any]], steps: int = STEPS) -> list[list[torch.Tensor]]:
    """The reference's trajectory, ``hypers[i]`` for tensor i."""
    x, y, params = problem()
    states: list[dict[str, Any]] = [{} for _ in params]
    trajectory = []
    for t in range(steps):
        leaves = [p.clone().requires_grad_(True) for p in params]
        grads = torch.autograd.grad(loss_fn(leaves, x, y, t), leaves)
        params = [shampoo_step(p, g, s, **h) for p, g, s, h in zip(params, grads, states, hypers)]
        trajectory.append(params)
    return trajectory


def optimizer_run(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], steps: int = STEPS, dtype: torch.dtype = DTYPE, device: str = "cpu"
) -> list[list[torch.Tensor]]:
    """The optimizer's trajectory (on CPU, float64); ``make(params)`` builds it."""
    x, y, tensors = problem(dtype)
    x, y = x.to(device), y.to(device)
    params = [torch.nn.Parameter(p.to(device)) for p in tensors]
    optimizer = make(params)
    trajectory = []
    for t in range(steps):
        optimizer.zero_grad()
        loss_fn(params, x, y, t).backward()
        optimizer.step()
        trajectory.append([p.detach().to("cpu", DTYPE, copy=True) for p in params])
    return trajectory


def deviation(actual: list[list[torch.Tensor]], expected: list[list[torch.Tensor]]) -> float:
    return max(((a - e).abs().max() / e.abs().max()).item() for pa, pe in zip(actual, expected) for a, e in zip(pa, pe))


@pytest.mark.parametrize("case", CASES)
def test_network_matches_the_reference_after_every_step(case: str) -> None:
    hyper = {**BASE, **CASES[case]}
    expected = reference_run([hyper] * 4)
    assert deviation(optimizer_run(lambda ps: Shampoo(ps, **hyper)), expected) < EXACT
    moved = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(expected[-1], problem()[2]))
    assert moved > 0.05  # the run goes somewhere: the comparison is not of nearly unchanged parameters


def test_float32_follows_the_reference_and_keeps_its_dtype() -> None:
    hyper = {**BASE, **CASES["ema-adam-grafting-start10-wd"]}
    optimizers: list[Shampoo] = []

    def make(params: list[torch.nn.Parameter]) -> Shampoo:
        optimizers.append(Shampoo(params, **hyper))
        return optimizers[-1]

    assert deviation(optimizer_run(make, dtype=torch.float32), reference_run([hyper] * 4)) < FLOAT32
    tensors = [v for state in optimizers[0].state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(v.dtype == torch.float32 for v in tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_the_reference() -> None:
    hyper = {**BASE, **CASES["nesterov"]}
    assert deviation(optimizer_run(lambda ps: Shampoo(ps, **hyper), device="cuda"), reference_run([hyper] * 4)) < 1e-10


def gradient_sequence(shape: tuple[int, ...], steps: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=DTYPE) * (1 + 0.1 * t) for t in range(steps)]


def single_tensor_deviation(initial: torch.Tensor, view: tuple[int, ...], hyper: dict[str, Any], steps: int = 30) -> float:
    """Shampoo on ``initial`` against the reference on ``initial.reshape(view)``, the same gradients (reshaped)."""
    param = torch.nn.Parameter(initial.clone())
    optimizer = Shampoo([param], **hyper)
    expected, state = initial.reshape(view), dict[str, Any]()
    worst = 0.0
    for grad in gradient_sequence(tuple(initial.shape), steps):
        param.grad = grad.clone()
        optimizer.step()
        expected = shampoo_step(expected, grad.reshape(view), state, **hyper)
        worst = max(worst, ((param.detach().reshape(view) - expected).abs().max() / expected.abs().max()).item())
    return worst


def test_conv_weight_is_the_reference_on_its_matrix_form() -> None:
    hyper = {**BASE, **CASES["ema-adam-grafting-start10-wd"], "momentum": 0.5}
    weight = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    assert single_tensor_deviation(weight, (3, 8), hyper) < EXACT
    optimizer = Shampoo([torch.nn.Parameter(weight.clone())], **hyper)
    optimizer.param_groups[0]["params"][0].grad = torch.ones_like(weight)
    optimizer.step()
    state = next(iter(optimizer.state.values()))
    assert state["factor_0"].shape == (3, 3) and state["factor_1"].shape == (8, 8) and "factor_2" not in state


@pytest.mark.parametrize("grafting", ["adam", None])
def test_scalar_gets_no_factor_and_matches_the_reference(grafting: str | None) -> None:
    hyper = {**BASE, **CASES["ema-adam-grafting-start10-wd"], "grafting": grafting}
    scalar = torch.tensor(0.7, dtype=DTYPE)
    assert single_tensor_deviation(scalar, (), hyper) < EXACT


def test_scalar_with_adam_grafting_is_adam() -> None:
    """Before and after the start step, a scalar's grafted direction is Adam's (to the 1e-16 norm guard)."""
    param, twin = torch.nn.Parameter(torch.tensor(0.7, dtype=DTYPE)), torch.nn.Parameter(torch.tensor(0.7, dtype=DTYPE))
    shampoo = Shampoo([param], lr=1e-2, betas=(0.9, 0.999), precondition_frequency=3, grafting_beta2=0.99, grafting_epsilon=1e-8)
    adam = torch.optim.Adam([twin], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for grad in gradient_sequence((), 20):
        param.grad, twin.grad = grad.clone(), grad.clone()
        shampoo.step()
        adam.step()
        assert abs(param.item() - twin.item()) < 1e-12 * abs(twin.item())
    assert sorted(shampoo.state[param]) == ["filtered_grad", "graft_v", "step"]


def test_param_groups_use_their_own_hyper_parameters() -> None:
    matrices = {**BASE, **CASES["ema-adam-grafting-start10-wd"], "lr": 2e-2}
    biases = {**matrices, "lr": 3e-3, "betas": (0.8, 1.0), "weight_decay": 0.0, "momentum": 0.9}
    expected = reference_run([matrices, biases, matrices, biases])
    differs = {k: v for k, v in biases.items() if v != matrices[k]}

    def make(params: list[torch.nn.Parameter]) -> Shampoo:
        return Shampoo([{"params": [params[0], params[2]]}, {"params": [params[1], params[3]], **differs}], **matrices)

    assert deviation(optimizer_run(make), expected) < EXACT


def test_closure_is_evaluated_with_gradients_and_its_loss_returned() -> None:
    hyper = {**BASE, **CASES["nesterov"]}
    x, y, tensors = problem()
    params = [torch.nn.Parameter(p.clone()) for p in tensors]
    optimizer = Shampoo(params, **hyper)
    losses = []
    for t in range(STEPS):

        def closure(t: int = t) -> float:
            optimizer.zero_grad()
            loss = loss_fn(params, x, y, t)
            loss.backward()
            return loss.item()

        losses.append(optimizer.step(closure))
    assert all(isinstance(loss, float) for loss in losses)
    assert deviation([[p.detach() for p in params]], reference_run([hyper] * 4)[-1:]) < EXACT


def test_state_dict_round_trip_continues_bit_exactly() -> None:
    hyper = {**BASE, **CASES["ema-adam-grafting-start10-wd"], "momentum": 0.9, "nesterov": True, "precondition_frequency": 3}
    x, y, tensors = problem()
    straight = [torch.nn.Parameter(p.clone()) for p in tensors]
    resumed = [torch.nn.Parameter(p.clone()) for p in tensors]
    first, second = Shampoo(straight, **hyper), Shampoo(resumed, **hyper)
    for t in range(25):
        for params, optimizer in ((straight, first), (resumed, second)):
            optimizer.zero_grad()
            loss_fn(params, x, y, t).backward()
            optimizer.step()
        if t == 11:  # between two root recomputations (12 is one): the stored roots must be the ones used
            buffer = io.BytesIO()
            torch.save(second.state_dict(), buffer)
            buffer.seek(0)
            resumed = [torch.nn.Parameter(p.detach().clone()) for p in resumed]
            second = Shampoo(resumed, lr=1.0)  # the loaded param_groups bring the hyper-parameters back
            second.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert second.param_groups[0]["lr"] == hyper["lr"]


@pytest.mark.parametrize(
    "bad",
    [
        dict(lr=-1.0),
        dict(lr=math.nan),
        dict(betas=(1.0, 0.999)),
        dict(betas=(0.9, 1.5)),
        dict(betas=(0.9,)),
        dict(epsilon=0.0),
        dict(weight_decay=-1e-3),
        dict(precondition_frequency=0),
        dict(precondition_frequency=2.5),
        dict(precondition_frequency=10, start_preconditioning_step=3),
        dict(grafting="adagrad"),
        dict(grafting_beta2=1.0),
        dict(grafting_epsilon=0.0),
        dict(momentum=1.0),
        dict(momentum=0.0, nesterov=True),
        dict(dampening=1.0),
        dict(use_bias_correction=1),
    ],
    ids=repr,
)
def test_bad_arguments_are_refused(bad: dict[str, Any]) -> None:
    param = torch.nn.Parameter(torch.zeros(2, 2, dtype=DTYPE))
    with pytest.raises(FimbenchError, match="Shampoo: "):
        Shampoo([param], **bad)
    with pytest.raises(FimbenchError, match="Shampoo: "):  # a later group is checked too
        Shampoo([param]).add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, dtype=DTYPE))], **bad})


def test_complex_parameters_are_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex128))
    param.grad = torch.ones_like(param)
    with pytest.raises(FimbenchError, match="real parameters"):
        Shampoo([param]).step()
