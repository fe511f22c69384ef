"""Mixed precision and GradScaler around the preconditioner (fimbench/preconditioner/amp.py): a scaled run
matches the unscaled one, a step with infinite gradients or statistics is skipped under a scaler and
refused without one, ``unscale_`` before ``step`` is refused, a bfloat16 model trains with float32
factors, and a step inside autocast equals the step outside."""

from __future__ import annotations

import pytest
import torch
from user_models import LIKELIHOOD, SETTINGS, data, flat, network, relative, train

from fimbench.errors import FimbenchError
from fimbench.optim import KroneckerPreconditioner


def test_grad_scaler_run_matches_the_unscaled_run():
    plain, scaled = network(), network()
    train(plain, KroneckerPreconditioner(plain, LIKELIHOOD, "kfac", **SETTINGS), steps=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train(scaled, KroneckerPreconditioner(scaled, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS), steps=5, scaler=scaler)
    assert relative(flat(scaled), flat(plain)) <= 1e-4
    assert relative(flat(scaled), flat(network())) > 1e-2


def test_grad_scaler_skips_a_step_with_infinite_gradients():
    model = network()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data()
    scaler.scale(LIKELIHOOD.nll(model(x), y).mean()).backward()
    model[2].bias.grad[0] = float("inf")
    before, grads = flat(model), [p.grad.clone() for p in model.parameters()]
    preconditioner.step(x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))  # left for the scaler
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(flat(model), before) and scaler.get_scale() == 512.0


def test_bfloat16_model_trains_with_float32_factors():
    model = network(torch.bfloat16)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "deflation", **SETTINGS)
    x, y = data(torch.bfloat16)
    with torch.no_grad():
        start = float(LIKELIHOOD.nll(model(x).float(), y.float()).mean())
    train(model, preconditioner, steps=5)
    assert preconditioner.approximations[0].terms[0][0].dtype == torch.float32
    assert model[0].weight.dtype == model[0].weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert float(LIKELIHOOD.nll(model(x).float(), y.float()).mean()) < start
    assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", factor_dtype=torch.float64).factor_dtype == torch.float64


def test_step_inside_autocast_matches_the_step_outside():
    outside, inside = network(), network()
    x, y = data()
    for model, autocast in ((outside, False), (inside, True)):
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
        LIKELIHOOD.nll(model(x), y).mean().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            preconditioner.step(x, y)
        assert preconditioner.approximations[0].terms[0][0].dtype == torch.float32
    for a, b in zip(outside.parameters(), inside.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def test_grad_scaler_unscale_before_step_is_refused_and_after_step_with_clipping_works():
    """``scaler.unscale_`` before ``step`` would divide by the scale twice: refused. The documented order
    (``step``, then ``unscale_``, clipping, ``scaler.step``) equals the unscaled run with the same clipping."""
    model = network()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data()
    scaler.scale(LIKELIHOOD.nll(model(x), y).mean()).backward()
    scaler.unscale_(optimizer)
    with pytest.raises(FimbenchError, match=r"scaler.unscale_\(optimizer\) ran before preconditioner.step\(\)"):
        preconditioner.step(x, y)

    runs = []
    for scaled in (False, True):
        model = network()
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", grad_scaler=scaler, **SETTINGS)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(4):
            optimizer.zero_grad()
            scaler.scale(LIKELIHOOD.nll(model(x), y).mean()).backward()
            preconditioner.step(x, y)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(optimizer)
            scaler.update()
        runs.append(flat(model))
    assert relative(runs[1], runs[0]) <= 1e-5
    assert relative(runs[0], flat(network())) > 1e-2


def test_non_finite_statistics_batch_is_refused_or_skipped_with_a_grad_scaler():
    """Without a scaler: one error, and the EMA keeps its value. With one: the batch is skipped (EMA and
    parameters unchanged, the scaler lowers its scale) and the next step captures statistics again,
    although it is not a T1 step; training then goes on with finite blocks."""
    x, y = data()
    bad = x.clone()
    bad[0, 0] = float("inf")
    settings = {**SETTINGS, "stats_every": 10}
    for scaled in (False, True):
        model = network()
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", grad_scaler=scaler, **settings)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train(model, preconditioner, steps=1, scaler=scaler)
        preconditioner.schedule.steps = 10  # the next step is a T1 step, on the bad batch
        before = [A.clone() for A, _ in preconditioner.approximations[0].terms]
        optimizer.zero_grad()
        loss = LIKELIHOOD.nll(model(bad), y).mean()
        if not scaled:
            loss.backward()
            with pytest.raises(FimbenchError, match="the Fisher statistics of this batch are not finite"):
                preconditioner.step(bad, y)
            assert torch.equal(preconditioner.approximations[0].terms[0][0], before[0])
            continue
        scaler.scale(loss).backward()
        parameters = flat(model)
        preconditioner.step(bad, y)
        scaler.step(optimizer)
        scaler.update()
        assert torch.equal(flat(model), parameters) and scaler.get_scale() == 512.0
        assert torch.equal(preconditioner.approximations[0].terms[0][0], before[0])
        assert preconditioner.schedule.statistics_due and preconditioner.updates == 1
        train(model, preconditioner, steps=2, scaler=scaler)
        assert preconditioner.updates == 2 and not preconditioner.schedule.statistics_due
        assert torch.isfinite(flat(model)).all()
