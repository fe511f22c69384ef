"""Which layers the preconditioner takes (fimbench/preconditioner/selection.py): by object or name, a
container meaning every layer inside, unsupported layers left out, other trainable modules named in one
warning, the compile wrapper looked through, and frozen or unreached layers refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from user_models import LIKELIHOOD, SETTINGS, data, flat, network, relative, train

from fimbench.errors import FimbenchError
from fimbench.optim import KroneckerPreconditioner


def conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),  # 0: supported
        nn.Conv2d(4, 4, 3, groups=4),  # 1: depthwise
        nn.Conv2d(4, 3, 3, padding="same"),  # 2
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),  # 4
    )


class WithHead(nn.Module):
    """A body and an auxiliary head that the forward does not call."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


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
