"""The qmodel step rule: α and μ minimise the quadratic model ``M(δ) = gᵀδ + ½ δᵀ(F + (λ + η)I)δ`` over
``δ = αΔ + μδ₀`` — checked against a dense float64 computation with the exact Fisher of the sub-batch from
``torch.func`` per-example gradients (empirical Fisher, so the Fisher is known exactly), the α-only fallback,
resume from a state dict, the refusals, and the CLI training every Kronecker method with it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, runner, tiny_config
from reference import DTYPE, mat_ref, per_example_weight_gradients, vec_ref
from torch import nn

from fimbench.cli import app
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import weight_gradient, weight_of
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner
from fimbench.preconditioner.step_rule import span_minimiser

STEP = 1e-9  # relative: α, μ, the update and M against the dense closed form (float64)
PRODUCT = 1e-11  # relative: Fisher–vector products against the dense Fisher
METHODS = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]
WIDTHS = (6, 5, 3, 6)
LIKELIHOOD = Likelihood.BERNOULLI


def batch(seed: int, size: int = 24) -> torch.Tensor:
    return (torch.rand(size, WIDTHS[0], generator=torch.Generator().manual_seed(seed), dtype=DTYPE) > 0.5).to(DTYPE)


def flat(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Every layer's (q, p) matrix, column-major, one after the other (the dense coordinates)."""
    return torch.cat([vec_ref(matrix) for matrix in matrices])


def dense_fisher(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``JᵀJ/m`` from per-example gradients (data targets: the empirical Fisher of the autoencoder)."""
    per_example = per_example_weight_gradients(model, x, x, LIKELIHOOD.value)
    rows = torch.stack([flat([layer[n] for layer in per_example]) for n in range(x.shape[0])])
    return rows.T @ rows / x.shape[0]


def preconditioner_for(model: nn.Module, method: str = "kfac", **settings) -> KroneckerPreconditioner:
    options = dict(step_rule="qmodel", damping=0.3, empirical_fisher=True, fisher_fraction=0.5, stats_every=1)
    return KroneckerPreconditioner(model, LIKELIHOOD, method, **{**options, **settings})


def test_span_minimiser_is_the_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        root = torch.randn(2, 2, generator=gen, dtype=DTYPE)
        curvature, linear = root @ root.T + 0.1 * torch.eye(2, dtype=DTYPE), torch.randn(2, generator=gen, dtype=DTYPE)
        expected = -torch.linalg.solve(curvature, linear)
        assert torch.allclose(span_minimiser(linear, curvature, 1e-12), expected, rtol=STEP, atol=0)
    collinear = torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=DTYPE)  # δ₀ = Δ / 2 in the C inner product
    linear = torch.tensor([-2.0, -1.0], dtype=DTYPE)
    assert span_minimiser(linear, collinear, 1e-12).tolist() == [0.5, 0.0]  # α-only: −b₀/A₀₀
    no_previous = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=DTYPE)
    assert span_minimiser(linear, no_previous, 1e-12).tolist() == [0.5, 0.0]
    assert span_minimiser(torch.zeros(2, dtype=DTYPE), torch.zeros(2, 2, dtype=DTYPE), 1e-12).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("method", ["kfac", "deflation", "exact-ng"])
def test_steps_minimise_the_quadratic_model_with_the_exact_fisher(make_mlp, method: str) -> None:
    """Three steps with weight decay η and adaptive damping judged every step: each update equals the
    dense minimiser of the 2 × 2 model with F = JᵀJ/m of the half of the batch that the statistics did not
    see (α-only on the first step), the trial holds M_h(δ) = M(δ) − η(θᵀδ + ½‖δ‖²), and the epoch means are those of α, μ, −M."""
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=1)
    eta, damping = 0.05, 0.3
    preconditioner = preconditioner_for(
        model, method, weight_decay=eta, damping_schedule="adaptive", damping_every=1, damping_min=0.3, damping_max=0.3,
        inverse_every=1,  # exact-ng: factorised on each step's sub-batch, the F of the dense check below
    )
    layers = preconditioner.layers
    previous = None
    recorded = []
    for step in range(3):
        x = batch(step)
        model.zero_grad()
        loss = LIKELIHOOD.nll(model(x), x).mean()
        loss.backward()
        theta = [weight_of(layer).detach().clone() for layer in layers]
        g = [weight_gradient(layer).detach().clone() + eta * t for layer, t in zip(layers, theta)]
        preconditioner.step(x, x)
        assert all(layer.weight.grad is None and layer.bias.grad is None for layer in layers)
        delta = flat([weight_of(layer).detach() for layer in layers]) - flat(theta)
        half = x.shape[0] // 2
        fisher = dense_fisher(model_at(model, layers, theta), x[:half])  # the statistics' sub-batch
        model_fisher = dense_fisher(model_at(model, layers, theta), x[half:])  # the model's: the other half
        if method == "exact-ng":  # F̃ = F_m + λI of this step's sub-batch (T1 = 1)
            direction = -torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0], dtype=DTYPE), flat(g))
        else:
            direction = flat([
                -mat_ref(torch.linalg.solve(inverse.operator.to_dense(), vec_ref(gradient)), *gradient.shape)
                for inverse, gradient in zip(preconditioner.inverses, g)
            ])
        curvature = model_fisher + (damping + eta) * torch.eye(fisher.shape[0], dtype=DTYPE)
        gradient = flat(g)
        basis = [direction] if previous is None else [direction, previous]
        A = torch.stack([torch.stack([u @ curvature @ v for v in basis]) for u in basis])
        b = torch.stack([gradient @ u for u in basis])
        coefficients = -torch.linalg.solve(A, b)
        expected = sum(c * u for c, u in zip(coefficients, basis))
        assert float((delta - expected).abs().max()) <= STEP * float(expected.abs().max())
        model_value = float(gradient @ expected + 0.5 * expected @ curvature @ expected)
        model_h = model_value - eta * float(flat(theta) @ expected + 0.5 * expected @ expected)
        assert float(preconditioner.damping_state.trial.predicted) == pytest.approx(model_h, rel=STEP)
        with torch.no_grad():
            preconditioner.adapt_damping(loss.detach(), LIKELIHOOD.nll(model(x), x).mean())
        alpha, mu = coefficients.tolist() if previous is not None else (float(coefficients[0]), 0.0)
        recorded.append((alpha, mu, -model_value))
        previous = delta
    summary = preconditioner.pop_diagnostics()
    means = [sum(values) / 3 for values in zip(*recorded)]
    assert [summary["step_size"], summary["momentum"], summary["predicted_decrease"]] == pytest.approx(means, rel=STEP)
    assert summary["kl_clip_factor"] == 1.0 and recorded[1][1] != 0.0


def model_at(model: nn.Module, layers: list[nn.Linear], theta: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with each layer's ``[W | b]`` set to ``theta`` (the parameters of the statistics)."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer, matrix in zip([m for m in twin.modules() if isinstance(m, nn.Linear)], theta):
            layer.weight.copy_(matrix[:, :-1])
            layer.bias.copy_(matrix[:, -1])
    return twin


def test_fisher_vector_products_through_the_preconditioner_equal_the_dense_fisher(make_mlp) -> None:
    """``preconditioner.fisher`` (set by the statistics update of the Fisher sub-batch, the first half of
    the batch): its ``matvec`` and ``bilinear`` equal products with the dense JᵀJ/m of that sub-batch."""
    model = make_mlp(WIDTHS, LIKELIHOOD, seed=2)
    preconditioner = preconditioner_for(model, step_rule="fixed")
    x = batch(3)
    preconditioner.update_statistics(x, x)
    dense = dense_fisher(model, x[:12])
    gen = torch.Generator().manual_seed(4)
    shapes = [weight_of(layer).shape for layer in preconditioner.layers]
    left = [torch.randn(shape, generator=gen, dtype=DTYPE) for shape in shapes]
    right = [torch.randn(shape, generator=gen, dtype=DTYPE) for shape in shapes]
    product = flat(preconditioner.fisher.matvec(left))
    expected = dense @ flat(left)
    assert float((product - expected).abs().max()) <= PRODUCT * float(expected.abs().max())
    assert float(preconditioner.fisher.bilinear(left, right)) == pytest.approx(float(flat(left) @ dense @ flat(right)), rel=PRODUCT)


def test_state_dict_round_trip_continues_the_same_steps() -> None:
    """Saved after 6 steps (blocks refreshed every 3 steps, the model's F captured every step, λ judged every
    5th step with that trial still pending), loaded into a fresh preconditioner with another generator: the
    pending judgement, then the next 4 steps match bit for bit, diagnostics included; a fixed-rule
    preconditioner refuses the state."""
    def build(seed: int):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 8))
        preconditioner = KroneckerPreconditioner(
            model, LIKELIHOOD, "lanczos", step_rule="qmodel", damping=10.0, stats_every=3, inverse_every=2,
            damping_schedule="adaptive", damping_every=5, weight_decay=1e-3, generator=torch.Generator().manual_seed(seed),
        )
        return model, preconditioner

    def train(model, preconditioner, batches, judge: bool = True) -> None:
        for x in batches:
            model.zero_grad()
            loss = LIKELIHOOD.nll(model(x), x).mean()
            loss.backward()
            preconditioner.step(x, x)
            if preconditioner.awaiting_loss and judge:
                with torch.no_grad():
                    preconditioner.adapt_damping(loss.detach(), LIKELIHOOD.nll(model(x), x).mean())

    batches = [torch.rand(16, 8, generator=torch.Generator().manual_seed(i)).round() for i in range(10)]
    model, preconditioner = build(0)
    train(model, preconditioner, batches[:5])
    train(model, preconditioner, batches[5:6], judge=False)  # step 6 is judged after the save
    assert preconditioner.awaiting_loss and preconditioner.quadratic_rule.previous is not None
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "preconditioner": preconditioner.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    restored, fresh = build(7)
    restored.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["preconditioner"])
    x = batches[5]
    with torch.no_grad():
        after = LIKELIHOOD.nll(model(x), x).mean()
    before = torch.tensor(0.0)
    assert fresh.adapt_damping(before, after) == preconditioner.adapt_damping(before, after)
    train(model, preconditioner, batches[6:])
    train(restored, fresh, batches[6:])
    for ours, theirs in zip(model.parameters(), restored.parameters()):
        assert torch.equal(ours, theirs)
    assert preconditioner.pop_diagnostics() == fresh.pop_diagnostics()
    fixed = KroneckerPreconditioner(
        nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 8)), LIKELIHOOD, "lanczos", damping=10.0, stats_every=3,
        inverse_every=2, damping_schedule="adaptive", damping_every=5,
    )
    with pytest.raises(FimbenchError, match="step_rule='qmodel'"):
        fixed.load_state_dict(saved["preconditioner"])


def test_qmodel_refuses_what_it_cannot_do(make_mlp) -> None:
    model = make_mlp(WIDTHS, LIKELIHOOD)
    with pytest.raises(FimbenchError, match="kl_clip"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", step_rule="qmodel", kl_clip=1e-3)
    with pytest.raises(FimbenchError, match="GradScaler"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", step_rule="qmodel", grad_scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(FimbenchError, match="weight_decay"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", weight_decay=1e-4)  # the fixed rule's is the optimizer's
    with pytest.raises(FimbenchError, match="step_rule"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", step_rule="linesearch")
    normed = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 6)).to(DTYPE)
    with pytest.raises(FimbenchError, match="no Fisher for the trainable parameters of 1"):
        KroneckerPreconditioner(normed, LIKELIHOOD, "kfac", step_rule="qmodel")
    with pytest.raises(FimbenchError, match="no Fisher"):
        KroneckerPreconditioner(model, LIKELIHOOD, "kfac", step_rule="qmodel", skip_layers=[model.linear_layers()[0]])
    frozen = make_mlp(WIDTHS, LIKELIHOOD)
    for parameter in frozen.linear_layers()[0].parameters():
        parameter.requires_grad_(False)
    KroneckerPreconditioner(frozen, LIKELIHOOD, "kfac", step_rule="qmodel")  # a frozen layer needs no step


@pytest.mark.parametrize("method", [*METHODS, "ekfac", "exact-ng"])
def test_cli_trains_with_the_qmodel_rule(tmp_path: Path, method: str) -> None:
    """configs/smoke.yaml's narrow variant, 6 steps with statistics every 5 and λ adapted every 2 steps: the
    run completes, its rows hold α, μ and the predicted decrease, and the table shows them."""
    config = tiny_config(tmp_path, method=method)
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--config", str(config), "--step-rule", "qmodel", "--damping", "150", "--damping-schedule", "adaptive",
        "--max-steps", "6", "--set", "optimizer.damping_every=2", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step_size"] > 0 and rows[-1]["predicted_decrease"] > 0 and "momentum" in rows[-1]
    assert rows[-1]["damping_adaptations"] >= 1 and rows[-1]["seconds_step_rule"] >= 0
    assert "−M(δ)" in result.output and "KL clip" not in result.output
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["optimizer"] is None and checkpoint["preconditioner"]["settings"]["step_rule"] == "qmodel"


def test_cli_warns_of_the_qmodel_rule_under_a_fixed_damping(tmp_path: Path) -> None:
    """The rule trains under a fixed λ as asked, with one warning naming the protocol it belongs to; under
    adaptive damping (the test above) there is no warning."""
    config = tiny_config(tmp_path, method="kfac")
    result = runner.invoke(app, [
        "train", "--config", str(config), "--step-rule", "qmodel", "--damping", "150", "--max-steps", "2", "--out", str(tmp_path / "run"),
    ])
    assert result.exit_code == 0, result.output
    assert "warning: step rule qmodel with a fixed damping λ = 150" in result.output
    assert "--damping-schedule adaptive" in result.output
    adaptive = runner.invoke(app, [
        "train", "--config", str(config), "--step-rule", "qmodel", "--damping", "150", "--damping-schedule", "adaptive",
        "--max-steps", "2", "--out", str(tmp_path / "adaptive"),
    ])
    assert adaptive.exit_code == 0 and "warning: step rule qmodel" not in adaptive.output


def test_cli_refuses_options_the_quadratic_model_replaces(tmp_path: Path) -> None:
    config = str(tiny_config(tmp_path, method="kfac"))
    for extra, named in (
        (["--lr", "0.1"], "--lr"), (["--momentum", "0.5"], "--momentum"), (["--kl-clip", "1e-3"], "--kl-clip"),
        (["--set", "optimizer.lr=0.1"], "--lr"),
    ):
        result = runner.invoke(app, ["train", "--config", config, "--step-rule", "qmodel", *extra, "--out", str(tmp_path / "r")])
        assert named in one_line_error(result)
        assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["train", "--config", config, "-m", "sgd", "--step-rule", "qmodel", "--out", str(tmp_path / "r")])
    assert "preconditioned methods" in one_line_error(result)
    result = runner.invoke(app, ["train", "--config", config, "--step-rule", "newton", "--out", str(tmp_path / "r")])
    assert "step_rule" in one_line_error(result)
    result = runner.invoke(app, ["sweep", "--config", config, "-m", "kfac", "--step-rule", "qmodel", "--grid", "lr=0.1",
                                 "--dry-run", "--out", str(tmp_path / "s")])
    assert "damping only" in one_line_error(result)


def test_sweep_with_the_qmodel_rule_tunes_damping_only(tmp_path: Path) -> None:
    from fimbench.engines.sweep import plan_sweep

    config = tiny_config(tmp_path, method="kfac")
    plan = plan_sweep(tmp_path / "s", ["kfac", "sgd"], {"damping": [1.0, 10.0]}, config_path=config,
                      overrides={"optimizer.step_rule": "qmodel"})
    names = [point.name for point in plan.points if point.method == "kfac"]
    assert names == ["kfac-damping_1e0", "kfac-damping_1e1"]
    assert all(point.config.optimizer.step_rule == "qmodel" for point in plan.points)
