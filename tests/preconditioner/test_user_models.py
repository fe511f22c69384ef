"""The preconditioner on models users bring: layer selection, bias-free layers, other parameterised modules,
``torch.compile``, GradScaler, bfloat16 and autocast.

References: a bias-free layer's update is checked against the dense solve of its stored block; a compiled
model and a GradScaler run are checked against the plain float32 run of the same seeds.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import mat_ref, vec_ref
from torch import nn

from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

LIKELIHOOD = Likelihood.GAUSSIAN
SETTINGS = dict(damping=0.05, stats_every=1, inverse_every=1, fisher_fraction=1.0, empirical_fisher=True, kl_clip=1e-3)


def network(dtype: torch.dtype = torch.float32, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5, bias=bias), nn.Tanh(), nn.Linear(5, 4)).to(dtype)


def data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=generator).to(dtype), torch.randn(16, 4, generator=generator).to(dtype)


def train(model: nn.Module, preconditioner: KroneckerPreconditioner, steps: int = 4, scaler=None) -> None:
    x, y = data(next(model.parameters()).dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = LIKELIHOOD.nll(model(x), y).mean()
        (loss if scaler is None else scaler.scale(loss)).backward()
        preconditioner.step(x, y)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().reshape(-1).double() for parameter in model.parameters()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bias_free_linear_step_is_the_dense_natural_gradient():
    model = network(torch.float64, bias=False)
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "deflation", **{**SETTINGS, "kl_clip": None})
    x, y = data(torch.float64)
    LIKELIHOOD.nll(model(x), y).mean().backward()
    raw = model[0].weight.grad.clone()
    preconditioner.step(x, y)
    block = preconditioner.approximations[0]
    assert block.terms[0][0].shape == (6, 6)  # no bias column
    expected = mat_ref(torch.linalg.solve(block.damped(0.05).to_dense(), vec_ref(raw)), 5, 6)
    assert torch.allclose(model[0].weight.grad, expected, rtol=1e-9, atol=1e-12)


def test_layers_and_skip_layers_select_by_object_or_name():
    model = network()
    with pytest.warns(UserWarning, match=r"raw gradient of 1 module\(s\).*: 2 \(Linear\)$"):
        assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["0"]).layers == [model[0]]
    with pytest.warns(UserWarning, match=r": 0 \(Linear\)$"):
        assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=[model[0]]).layers == [model[2]]
    with pytest.raises(FimbenchError, match=r"no module named 'fc'.*its layers are '0', '2'"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["fc"])
    with pytest.raises(FimbenchError, match="not a trainable nn.Linear"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["1"])
    with pytest.raises(FimbenchError, match="not a module of the model"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=[nn.Linear(2, 2)])


def test_raw_gradient_warning_names_each_module_with_its_type():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    assert [str(w.message) for w in caught] == [
        "KroneckerPreconditioner leaves the raw gradient of 1 module(s) with trainable parameters: 1 (LayerNorm)"
    ]
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    norm_grad, linear_grad = model[1].weight.grad.clone(), model[0].weight.grad.clone()
    preconditioner.step(x, y)
    assert torch.equal(model[1].weight.grad, norm_grad)
    assert not torch.allclose(model[0].weight.grad, linear_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model of Linear layers only: no warning
        KroneckerPreconditioner(network(), LIKELIHOOD, "kfac")


def test_compiled_model_matches_the_eager_run():
    eager, compiled_source = network(), network()
    train(eager, KroneckerPreconditioner(eager, LIKELIHOOD, "deflation", **SETTINGS))
    compiled = torch.compile(compiled_source, backend="eager")
    preconditioner = KroneckerPreconditioner(compiled, LIKELIHOOD, "deflation", **SETTINGS)
    assert preconditioner.layers == [compiled_source[0], compiled_source[2]]
    train(compiled, preconditioner)
    assert relative(flat(compiled_source), flat(eager)) <= 1e-5
    assert relative(flat(compiled_source), flat(network())) > 1e-2  # it trained


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


# ------------------------------------------------------------------ what the preconditioner leaves alone


def test_statistics_pass_leaves_batchnorm_buffers_dropout_and_rng_streams_alone():
    """After backward, ``step`` (a statistics update) changes no buffer (BatchNorm's running statistics and
    ``num_batches_tracked``) and advances neither the global generator nor the user's; with dropout in the
    model, two statistics passes from the same sampling seed give the same blocks (no mask is drawn)."""
    blocks = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 4))
        with pytest.warns(UserWarning):  # BatchNorm keeps its raw gradient
            preconditioner = KroneckerPreconditioner(
                model, LIKELIHOOD, "kfac", **{**SETTINGS, "empirical_fisher": False}, generator=torch.Generator().manual_seed(3)
            )
        x, y = data()
        LIKELIHOOD.nll(model(x), y).mean().backward()
        buffers = [buffer.clone() for buffer in model.buffers()]
        assert int(model[1].num_batches_tracked) == 1
        rng = torch.get_rng_state()
        preconditioner.step(x)
        assert all(torch.equal(buffer, saved) for buffer, saved in zip(model.buffers(), buffers))
        assert torch.equal(torch.get_rng_state(), rng)
        assert model.training and model[3].training  # the modes are put back
        blocks.append(preconditioner.approximations[0].terms[0][0])
        torch.manual_seed(1)  # another global stream for the second run
    assert torch.equal(blocks[0], blocks[1])


def test_empirical_fisher_without_targets_is_refused():
    model = network()
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    with pytest.raises(FimbenchError, match=r"empirical_fisher=True takes the data targets: call step\(inputs, targets\)"):
        preconditioner.step(x)


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


# ---------------------------------------------------------------------------------- selection and reach


def conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),  # 0: supported
        nn.Conv2d(4, 4, 3, groups=4),  # 1: depthwise
        nn.Conv2d(4, 3, 3, padding="same"),  # 2
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),  # 4
    )


def test_unsupported_layers_left_out_are_not_refused():
    model = conv_model()
    x = torch.randn(8, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r": 1\b.*, 2\b"):
        skipped = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=["1", model[2]], **SETTINGS)
    with pytest.warns(UserWarning):
        listed = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["0", "4"], **SETTINGS)
    assert skipped.layers == listed.layers == [model[0], model[4]]
    LIKELIHOOD.nll(model(x), y).mean().backward()
    skipped.step(x, y)
    assert torch.isfinite(model[0].weight.grad).all()
    with pytest.raises(FimbenchError, match=r"layer '1' \(Conv2d\): Conv2d with groups=4 is not supported.*skip_layers="):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=["2"])
    with pytest.raises(FimbenchError, match=r"layer '2' \(Conv2d\): Conv2d with padding='same'"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["2"])


def test_skip_layers_and_layers_naming_a_container_mean_every_layer_inside():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)))
    model.add_module("decoder", nn.Sequential(nn.Linear(3, 4)))
    with pytest.warns(UserWarning, match=r"encoder.0 \(Linear\), encoder.2 \(Linear\)$"):
        assert KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=["encoder"]).layers == [model.decoder[0]]
    with pytest.warns(UserWarning, match=r"decoder.0 \(Linear\)$"):
        chosen = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=[model.encoder]).layers
    assert chosen == [model.encoder[0], model.encoder[2]]
    with pytest.raises(FimbenchError, match=r"layers: 'encoder.1' \(Tanh\) is not a trainable nn.Linear"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", layers=["encoder.1"])


class WithHead(nn.Module):
    """A body and an auxiliary head that the forward does not call."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_layer_not_reached_by_the_forward_is_one_error():
    torch.manual_seed(0)
    model = WithHead()
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    model.head.weight.grad = torch.zeros_like(model.head.weight)
    model.head.bias.grad = torch.zeros_like(model.head.bias)
    with pytest.raises(FimbenchError, match=r"does not reach layer\(s\) 'head' \(Linear\); leave them out with skip_layers="):
        preconditioner.step(x, y)
    model.zero_grad(set_to_none=True)
    LIKELIHOOD.nll(model(x), y).mean().backward()  # head.weight.grad stays None
    with pytest.raises(FimbenchError, match=r"layer 'head' \(Linear\) has no gradient"):
        preconditioner.step(x, y)
    with pytest.warns(UserWarning, match="head"):
        skipped = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", skip_layers=["head"], **SETTINGS)
    assert skipped.step(x, y) is not None


def test_layer_frozen_after_construction_is_one_error():
    model = network()
    preconditioner = KroneckerPreconditioner(model, LIKELIHOOD, "kfac", **SETTINGS)
    model[0].requires_grad_(False)
    x, y = data()
    LIKELIHOOD.nll(model(x), y).mean().backward()
    with pytest.raises(FimbenchError, match=r"layer '0' \(Linear\) was frozen after the preconditioner was built"):
        preconditioner.step(x, y)


# ------------------------------------------------------------------------------ non-finite statistics


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
        preconditioner.steps = 10  # the next step is a T1 step, on the bad batch
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
        assert preconditioner.statistics_due and preconditioner.updates == 1
        train(model, preconditioner, steps=2, scaler=scaler)
        assert preconditioner.updates == 2 and not preconditioner.statistics_due
        assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("method", ["deflation", "lanczos", "kfac-corrected"])
@pytest.mark.parametrize("seed", range(4))
def test_rank_two_methods_on_a_single_output_head_train_with_the_dense_update(method, seed):
    """A binary classifier's head has q = 1: ``Z(F)`` is rank 1 (Deflation's deflated operator is zero,
    Lanczos' Krylov space one vector). Four preconditioned steps stay finite, and the head's update is the
    dense solve of its damped block."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    y = (torch.rand(16, 1) < 0.5).double()
    likelihood = Likelihood.BERNOULLI
    preconditioner = KroneckerPreconditioner(
        model, likelihood, method, damping=1e-3, stats_every=1, inverse_every=1, fisher_fraction=1.0, kl_clip=None,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        optimizer.zero_grad()
        likelihood.nll(model(x), y).mean().backward()
        raw = torch.cat([model[2].weight.grad, model[2].bias.grad.unsqueeze(1)], dim=1).clone()
        preconditioner.step(x)
        optimizer.step()
        assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    block = preconditioner.approximations[1]
    expected = mat_ref(torch.linalg.solve(block.damped(1e-3).to_dense(), vec_ref(raw)), 1, 6)
    assert torch.allclose(model[2].weight.grad, expected[:, :5], rtol=1e-8, atol=1e-12)
