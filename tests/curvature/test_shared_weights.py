"""Shared weights (Conv2d, Linear over a sequence) against a dense Fisher from torch.func per-example gradients.

Per-example gradients come from ``vmap(grad(...))`` of the real layers (tests/reference.py style, no
fimbench code on that side); the dense Fisher is their outer-product average, ``Z(F)`` its block-by-block
rearrangement and the best Kronecker rank-r approximation a dense SVD of it. Everything is float64.

With T > 1 positions, ``Z(F)`` splits into a symmetric and an antisymmetric block; fimbench's methods
return the best approximation with symmetric factors, the dense SVD of ``P Z(F) P`` (P: symmetrisation).
Its leading pair is the unconstrained optimum (Prop. 3.2); the tests check both, and that the split is exact.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as functional
from reference import (
    DTYPE,
    best_kronecker,
    fisher_from_gradients,
    frobenius_error_dense,
    kron_sum,
    mat_ref,
    random_spd,
    random_symmetric,
    rearrange_ref,
    relative_error,
    spectral_error_dense,
    vec_ref,
)
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fimbench.curvature import KroneckerSum, approximate
from fimbench.curvature.shared_weights import BatchProducts, SharedWeightOperator, kfac_expand_factors, product_form
from fimbench.data import load_dataset
from fimbench.engines.config import load_config
from fimbench.engines.cost import profile_dataset
from fimbench.engines.fisher_error import FisherErrorSettings, run_fisher_error
from fimbench.engines.models import Architecture, ConvAutoencoder, build_model, default_architecture, resolve_architecture
from fimbench.engines.train import run_training
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import (
    ExactFisher,
    exact_block,
    frobenius_error,
    spectral_error,
)
from fimbench.fisher.capture import capture_statistics, kronecker_layers, layer_shape, weight_gradient
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method
from fimbench.optim import KroneckerPreconditioner

EXACT_RTOL = 1e-10  # identities that hold up to float64 round-off
SOLVER_TOL = 1e-12  # power SVD / Lanczos stopping tolerance in these tests
OPTIMUM_RTOL = 1e-6  # an iterative optimum against the dense SVD's
METRIC_RTOL = 1e-8  # fast error metrics against their dense definitions
SOLVE_RTOL = 1e-8  # preconditioned gradient against a dense solve
BATCH = 6

CONV_CASES = {
    "stride2-pad1": dict(stride=2, padding=1, dilation=1, bias=True),
    "dilated-no-bias": dict(stride=1, padding=2, dilation=2, bias=False),
}


class ConvNet(nn.Module):
    """Conv2d(2 → 3, 3×3) on 2×6×6 images, tanh, then a Linear read-out of 4 outputs."""

    def __init__(self, stride: int, padding: int, dilation: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
        side = (6 + 2 * padding - dilation * 2 - 1) // stride + 1
        self.head = nn.Linear(3 * side * side, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.conv(x.reshape(-1, 2, 6, 6))).flatten(1))


class SequenceNet(nn.Module):
    """Linear(4 → 3) applied to each of 5 tokens (m, 5, 4), tanh, then a Linear read-out of 6 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Linear(4, 3)
        self.head = nn.Linear(15, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.token(x.reshape(-1, 5, 4))).flatten(1))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    model = model.to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=DTYPE) * 0.6)
    return model


def per_example_gradients_ref(model: nn.Module, layer: str, x: Tensor, y: Tensor) -> Tensor:
    """``DW_n = ∂ℓ_n/∂[W | b]`` of one layer by ``vmap(grad)`` (weight reshaped to (out, -1)): (m, q, p)."""
    params = {name: value.detach() for name, value in model.named_parameters()}

    def loss_one(parameters: dict[str, Tensor], x_n: Tensor, y_n: Tensor) -> Tensor:
        output = functional_call(model, parameters, (x_n.unsqueeze(0),))
        return 0.5 * ((output - y_n.unsqueeze(0)) ** 2).sum()

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    weight = grads[f"{layer}.weight"].reshape(x.shape[0], grads[f"{layer}.weight"].shape[1], -1)
    if f"{layer}.bias" not in grads:
        return weight
    return torch.cat([weight, grads[f"{layer}.bias"].unsqueeze(-1)], dim=-1)


def im2col_ref(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Patches (m, L, C·kh·kw) by explicit loops over output pixels: channel-major, then kernel row, column."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = functional.pad(x, (pw, pw, ph, ph))
    rows = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    patches = []
    for i in range(rows):
        for j in range(cols):
            window = padded[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            patches.append(window.reshape(x.shape[0], -1))
    return torch.stack(patches, dim=1)


def conv_problem(case: str, seed: int = 0):
    model = seeded(ConvNet(**CONV_CASES[case]), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, 72, generator=generator, dtype=DTYPE)
    y = torch.randn(BATCH, 4, generator=generator, dtype=DTYPE)
    return model, model.conv, "conv", x, y


def sequence_problem(seed: int = 0):
    model = seeded(SequenceNet(), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, 20, generator=generator, dtype=DTYPE)
    y = torch.randn(BATCH, 6, generator=generator, dtype=DTYPE)
    return model, model.token, "token", x, y


PROBLEMS = {
    "conv-stride2-pad1": lambda: conv_problem("stride2-pad1"),
    "conv-dilated-no-bias": lambda: conv_problem("dilated-no-bias"),
    "sequence-linear": sequence_problem,
}


@pytest.fixture(params=list(PROBLEMS), scope="module")
def problem(request):
    """``(model, layer, name, x, y, a, g, dense F)``: captured 3-D statistics and the torch.func Fisher."""
    model, layer, name, x, y = PROBLEMS[request.param]()
    stats = capture_statistics(model, x, Likelihood.GAUSSIAN, [layer], targets=y)[0]
    F = fisher_from_gradients(per_example_gradients_ref(model, name, x, y))
    return model, layer, name, x, y, stats.a, stats.g, F


def test_capture_is_three_dimensional_with_the_documented_layout(problem):
    model, layer, _, x, _, a, g, _ = problem
    p, q = layer_shape(layer)
    assert a.ndim == 3 and g.ndim == 3 and a.shape[:2] == g.shape[:2] and a.shape[2] == p and g.shape[2] == q
    assert a.shape[1] > 1
    if isinstance(layer, nn.Conv2d):
        patches = im2col_ref(x.reshape(-1, 2, 6, 6), layer)
        torch.testing.assert_close(a[:, :, : patches.shape[2]], patches, rtol=0, atol=0)
    else:
        torch.testing.assert_close(a[:, :, :-1], x.reshape(BATCH, 5, 4), rtol=0, atol=0)
    if layer.bias is not None:
        assert bool((a[:, :, -1] == 1).all())


def test_exact_block_equals_the_dense_fisher_of_per_example_gradients(problem):
    *_, a, g, F = problem
    torch.testing.assert_close(exact_block(a, g), F, rtol=EXACT_RTOL, atol=EXACT_RTOL * float(F.abs().max()))


@pytest.mark.parametrize("form", ["gradients", "positions"])
def test_both_product_forms_equal_the_dense_rearrangement(problem, form):
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    Z = rearrange_ref(F, p, q)
    batch = BatchProducts(a, g, form)
    generator = torch.Generator().manual_seed(3)
    V = torch.randn(q, q, generator=generator, dtype=DTYPE)
    U = torch.randn(p, p, generator=generator, dtype=DTYPE)
    scale = float(Z.abs().max())
    torch.testing.assert_close(vec_ref(batch.z(V)), Z @ vec_ref(V), rtol=EXACT_RTOL, atol=EXACT_RTOL * scale * q)
    torch.testing.assert_close(vec_ref(batch.zt(U)), Z.T @ vec_ref(U), rtol=EXACT_RTOL, atol=EXACT_RTOL * scale * p)
    assert math.isclose(batch.squared_norm, float(F.square().sum()), rel_tol=EXACT_RTOL)


@pytest.mark.parametrize("form", ["gradients", "positions"])
@pytest.mark.parametrize("m, T, p, q", [(3, 2, 7, 6), (4, 9, 3, 2)])  # p q > m T², and p q < m T²
def test_squared_norm_from_either_side(form, m, T, p, q):
    generator = torch.Generator().manual_seed(9)
    a = torch.randn(m, T, p, generator=generator, dtype=DTYPE)
    g = torch.randn(m, T, q, generator=generator, dtype=DTYPE)
    gradients = torch.stack([sum(torch.outer(g[n, t], a[n, t]) for t in range(T)) for n in range(m)])
    F = fisher_from_gradients(gradients)
    assert math.isclose(BatchProducts(a, g, form).squared_norm, float(F.square().sum()), rel_tol=EXACT_RTOL)


def symmetriser(d: int) -> Tensor:
    """``P`` (d² × d²) with ``P vec(X) = vec(½ (X + Xᵀ))``, from the commutation permutation."""
    index = torch.arange(d * d)
    transpose = (index % d) * d + index // d  # vec(Xᵀ)[j·d + i] = vec(X)[i·d + j]
    K = torch.eye(d * d, dtype=DTYPE)[transpose]
    return 0.5 * (torch.eye(d * d, dtype=DTYPE) + K)


def symmetric_block(F: Tensor, p: int, q: int) -> Tensor:
    return symmetriser(p) @ rearrange_ref(F, p, q) @ symmetriser(q)


def best_symmetric_kronecker(F: Tensor, p: int, q: int, rank: int) -> list[tuple[Tensor, Tensor]]:
    """``argmin ‖F − Σ_{k≤r} R_k ⊗ S_k‖_F`` over symmetric factors: the top-r SVD of ``P Z(F) P``."""
    U, sigma, Vh = torch.linalg.svd(symmetric_block(F, p, q), full_matrices=False)
    return [
        (math.sqrt(float(sigma[k])) * mat_ref(U[:, k], p, p), math.sqrt(float(sigma[k])) * mat_ref(Vh[k], q, q))
        for k in range(rank)
    ]


def test_z_splits_exactly_into_symmetric_and_antisymmetric_blocks(problem):
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    Z = rearrange_ref(F, p, q)
    P_p, P_q = symmetriser(p), symmetriser(q)
    scale = float(Z.abs().max())
    assert float((P_p @ Z @ (torch.eye(q * q, dtype=DTYPE) - P_q)).abs().max()) <= EXACT_RTOL * scale
    assert float(((torch.eye(p * p, dtype=DTYPE) - P_p) @ Z @ P_q).abs().max()) <= EXACT_RTOL * scale
    full, symmetric = torch.linalg.svdvals(Z), torch.linalg.svdvals(P_p @ Z @ P_q)
    assert math.isclose(float(full[0]), float(symmetric[0]), rel_tol=EXACT_RTOL)  # Prop. 3.2


def test_unconstrained_rank_two_can_be_antisymmetric():
    """On the dilated convolution the antisymmetric block's σ₁ exceeds the symmetric block's σ₂: the
    unconstrained best rank 2 is strictly better than the best with symmetric factors."""
    model, layer, name, x, y = conv_problem("dilated-no-bias")
    F = fisher_from_gradients(per_example_gradients_ref(model, name, x, y))
    p, q = layer_shape(layer)
    _, unconstrained = best_kronecker(F, p, q, 2)
    constrained = float(torch.linalg.norm(F - kron_sum(best_symmetric_kronecker(F, p, q, 2))))
    assert unconstrained < 0.99 * constrained


def solver_options() -> dict[str, float | int]:
    return dict(tol=SOLVER_TOL, max_iterations=5000)


@pytest.mark.parametrize("method, rank", [("kpsvd", 1), ("deflation", 2), ("lanczos", 1), ("lanczos", 2)])
def test_iterative_methods_reach_the_best_kronecker_approximation_of_dense_z(problem, method, rank):
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    optimum = best_symmetric_kronecker(F, p, q, rank)
    approximation = approximate(method, a, g, rank=rank, **solver_options())
    assert approximation.rank == rank
    F_hat = approximation.to_dense()
    tolerance = OPTIMUM_RTOL * float(F.abs().max())
    torch.testing.assert_close(F_hat, kron_sum(optimum), rtol=0, atol=tolerance)
    if rank == 1:  # Prop. 3.2: the leading pair is also the unconstrained optimum
        unconstrained, _ = best_kronecker(F, p, q, 1)
        torch.testing.assert_close(F_hat, kron_sum(unconstrained), rtol=0, atol=tolerance)
    A, G = approximation.terms[0]
    assert float(torch.linalg.eigvalsh(A).min()) >= -OPTIMUM_RTOL * float(A.abs().max())  # Prop. 3.2: PSD
    assert float(torch.linalg.eigvalsh(G).min()) >= -OPTIMUM_RTOL * float(G.abs().max())


def test_kfac_uses_the_expand_factors(problem):
    *_, a, g, _ = problem
    m, T = a.shape[:2]
    A_expected = sum(torch.outer(a[n, t], a[n, t]) for n in range(m) for t in range(T)) / (m * T)
    G_expected = sum(torch.outer(g[n, t], g[n, t]) for n in range(m) for t in range(T)) / m
    (A, G), = approximate("kfac", a, g).terms
    torch.testing.assert_close(A, A_expected, rtol=EXACT_RTOL, atol=EXACT_RTOL)
    torch.testing.assert_close(G, G_expected, rtol=EXACT_RTOL, atol=EXACT_RTOL)


def test_kfac_corrected_is_kfac_plus_the_best_correction(problem):
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    A, G = kfac_expand_factors(a, g)
    (correction,) = best_symmetric_kronecker(F - torch.kron(A, G), p, q, 1)
    approximation = approximate("kfac-corrected", a, g, **solver_options())
    torch.testing.assert_close(approximation.terms[0][0], A)
    torch.testing.assert_close(approximation.terms[0][1], G)
    torch.testing.assert_close(
        approximation.to_dense(), torch.kron(A, G) + torch.kron(*correction), rtol=0, atol=OPTIMUM_RTOL * float(F.abs().max())
    )


def test_ema_prior_enters_the_target(problem):
    """With a prior and ρ, Deflation reaches the best rank 2 of ``ρ F̂_old + (1 − ρ) F`` (dense SVD)."""
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    decay = 0.7
    prior = approximate("deflation", a[: BATCH // 2], g[: BATCH // 2], **solver_options())
    target = decay * prior.to_dense() + (1 - decay) * F
    optimum = best_symmetric_kronecker(target, p, q, 2)
    approximation = approximate("deflation", a, g, prior=prior, decay=decay, **solver_options())
    torch.testing.assert_close(approximation.to_dense(), kron_sum(optimum), rtol=0, atol=OPTIMUM_RTOL * float(target.abs().max()))


def test_error_metrics_accept_three_dimensional_statistics(problem):
    *_, a, g, F = problem
    fisher = ExactFisher(a, g)
    assert math.isclose(fisher.squared_norm, float(F.square().sum()), rel_tol=EXACT_RTOL)
    for method in ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"):
        terms = approximate(method, a, g, **solver_options()).terms
        assert math.isclose(frobenius_error(fisher, terms).value, frobenius_error_dense(a, g, terms).value, rel_tol=METRIC_RTOL)
        assert math.isclose(spectral_error(fisher, terms).value, spectral_error_dense(a, g, terms).value, rel_tol=METRIC_RTOL)
        F_hat = kron_sum([(A, G) for A, G in terms])
        assert math.isclose(frobenius_error(fisher, terms).value, relative_error(F, F_hat), rel_tol=METRIC_RTOL)


def test_one_position_gives_todays_results(make_statistics):
    a, g = make_statistics(12, 5, 4)
    for method in ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"):
        flat, shared = approximate(method, a, g), approximate(method, a.unsqueeze(1), g.unsqueeze(1))
        assert flat.iterations == shared.iterations
        for (A, G), (A3, G3) in zip(flat.terms, shared.terms):
            assert torch.equal(A, A3) and torch.equal(G, G3)
    assert torch.equal(exact_block(a, g), exact_block(a.unsqueeze(1), g.unsqueeze(1)))
    flat_fisher, shared_fisher = ExactFisher(a, g), ExactFisher(a.unsqueeze(1), g.unsqueeze(1))
    assert math.isclose(flat_fisher.squared_norm, shared_fisher.squared_norm, rel_tol=EXACT_RTOL)


def test_operator_with_low_rank_terms_against_dense(problem):
    """``P (0.4 Z(F)) P + 0.6 vec(R) vec(S)ᵀ − 0.3 vec(R²) vec(S²)ᵀ`` (symmetric R, S): products and norm."""
    *_, a, g, F = problem
    p, q = a.shape[2], g.shape[2]
    generator = torch.Generator().manual_seed(5)
    R, S = random_symmetric(p, generator), random_spd(q, generator)
    operator = SharedWeightOperator.build(a, g, batch_weight=0.4, terms=[(0.6, R, S)])
    operator = operator.deflated(0.3, operator.activations.coordinates(R @ R), operator.derivatives.coordinates(S @ S))
    low_rank = 0.6 * torch.outer(vec_ref(R), vec_ref(S)) - 0.3 * torch.outer(vec_ref(R @ R), vec_ref(S @ S))
    dense = 0.4 * symmetric_block(F, p, q) + low_rank
    unprojected = 0.4 * rearrange_ref(F, p, q) + low_rank
    assert math.isclose(operator.frobenius_norm(), float(torch.linalg.norm(unprojected)), rel_tol=EXACT_RTOL)
    V = torch.randn(q, q, generator=generator, dtype=DTYPE)
    U = torch.randn(p, p, generator=generator, dtype=DTYPE)
    scale = float(dense.abs().max()) * max(p, q)
    image = operator.activations.matrix(operator.matvec(operator.derivatives.coordinates(V)))
    torch.testing.assert_close(vec_ref(image), dense @ vec_ref(V), rtol=EXACT_RTOL, atol=EXACT_RTOL * scale)
    image = operator.derivatives.matrix(operator.rmatvec(operator.activations.coordinates(U)))
    torch.testing.assert_close(vec_ref(image), dense.T @ vec_ref(U), rtol=EXACT_RTOL, atol=EXACT_RTOL * scale)


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"])
def test_preconditioned_gradient_equals_the_dense_damped_solve(problem, method):
    model, layer, *_ = problem
    x = problem[3]
    damping = 0.1
    preconditioner = KroneckerPreconditioner(
        model, Likelihood.GAUSSIAN, method, damping=damping, kl_clip=None, fisher_fraction=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert layer in preconditioner.layers
    model.zero_grad()
    Likelihood.GAUSSIAN.nll(model(x), problem[4]).mean().backward()
    index = preconditioner.layers.index(layer)
    gradient = weight_gradient(layer).clone()
    preconditioner.step(x)
    approximation = preconditioner.approximations[index]
    assert isinstance(approximation, KroneckerSum) and approximation.p == layer_shape(layer)[0]
    dense = approximation.damped(damping).to_dense()
    expected = torch.linalg.solve(dense, vec_ref(gradient))
    result = weight_gradient(layer)
    assert result.shape == gradient.shape
    torch.testing.assert_close(vec_ref(result), expected, rtol=SOLVE_RTOL, atol=SOLVE_RTOL * float(expected.abs().max()))


def test_bad_shapes_and_layers_are_user_errors(make_statistics):
    a, g = make_statistics(4, 3, 2)
    with pytest.raises(FimbenchError, match="same m"):
        approximate("kpsvd", a.reshape(2, 2, 3), g)
    with pytest.raises(FimbenchError, match="same m"):
        approximate("kpsvd", a.reshape(4, 1, 3), g.reshape(2, 2, 2))
    with pytest.raises(FimbenchError, match="groups"):
        kronecker_layers(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))
    with pytest.raises(FimbenchError, match="padding"):
        kronecker_layers(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))


# ----------------------------------------------------------------------------- the convolutional preset
CONV_PRESET = Path(__file__).resolve().parents[2] / "configs" / "curves-conv.yaml"
PRESET_STEPS = 6
METHODS = ["sgd", "adam", "kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]


@pytest.fixture(scope="module")
def tiny_curves(tmp_path_factory):
    return load_dataset("curves-synth", data_dir=tmp_path_factory.mktemp("data"), synth_train=256, synth_test=64)


def preset_config(method: str, **extra):
    overrides = {
        "optimizer.method": method,
        "training.batch_size": 32,
        "training.max_steps": PRESET_STEPS,
        "training.device": "cpu",
        "training.log_every": 1,
        "optimizer.stats_every": 3,
        "optimizer.inverse_every": 3,
        **extra,
    }
    return load_config(CONV_PRESET, overrides)


def test_conv_preset_builds_the_documented_autoencoder():
    config = preset_config("sgd")
    architecture = resolve_architecture(config, 784)
    model = build_model(architecture, seed=0)
    assert isinstance(model, ConvAutoencoder)
    layers = kronecker_layers(model)
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.Conv2d, nn.Linear, nn.Linear, nn.Conv2d, nn.Conv2d]
    assert [layer_shape(layer) for layer in layers] == [(10, 8), (73, 16), (785, 32), (33, 784), (145, 8), (73, 1)]
    assert model(torch.rand(3, 784)).shape == (3, 784)
    mnist = load_config(CONV_PRESET, {"data.dataset": "mnist", "optimizer.method": "kfac"})
    assert mnist.model.architecture == "conv" and mnist.optimizer.lr == 1.0  # the conv preset's, not MNIST's


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_the_conv_preset(method, tiny_curves, tmp_path):
    config = preset_config(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = run_training(config, tmp_path / method, dataset=tiny_curves)
    assert result.status == "completed" and result.summary["steps"] == PRESET_STEPS
    losses = [row["train_loss"] for row in (json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "step"]
    assert all(math.isfinite(loss) for loss in losses)
    assert result.rows[-1]["val_loss"] < losses[0]  # below the untrained model's first-batch loss
    if method not in ("sgd", "adam"):
        assert result.rows[-1]["statistics_updates"] == 2 and 0.0 < result.rows[-1]["kl_clip_factor"] <= 1.0


def test_fisher_error_on_the_conv_preset(tiny_curves):
    """The four conv layers; KPSVD (the best rank 1) never above K-FAC, Deflation never above KPSVD."""
    config = preset_config("adam", **{"optimizer.lr": 1e-3})
    settings = FisherErrorSettings(layers=(1, 2, 5, 6), iterations=2, every=2)
    result = run_fisher_error(config, settings, dataset=tiny_curves)
    assert result.layers == [1, 2, 5, 6]
    assert result.layer_shapes[1] == (10, 8) and result.layer_shapes[5] == (145, 8)
    errors = {(row.iteration, row.layer, row.method): row.error1 for row in result.rows}
    for (iteration, layer, method), error in errors.items():
        assert math.isfinite(error)
        if method == "kpsvd":
            assert error <= errors[(iteration, layer, "kfac")] + METRIC_RTOL
            assert errors[(iteration, layer, "deflation")] <= error + METRIC_RTOL


def test_conv_architecture_errors():
    with pytest.raises(FimbenchError, match="model.architecture"):
        default_architecture("curves", "transformer")
    with pytest.raises(FimbenchError, match="divisible by 4"):
        build_model(default_architecture("faces", "conv"), seed=0)
    with pytest.raises(FimbenchError, match="j ≥ 1"):
        build_model(Architecture((784, 8, 784), Likelihood.BERNOULLI, kind="conv"), seed=0)


def test_cost_profile_on_the_conv_preset():
    cost = profile_dataset("curves", [Method.KFAC, Method.DEFLATION], torch.device("cpu"), repeats=1, warmup=0, config=CONV_PRESET)
    assert cost.layers == (784, 8, 16, 32, 16, 8, 784) and cost.profile.batch_size == 256
    for method in cost.profile.methods:
        assert [(layer.p, layer.q) for layer in method.layers] == [(10, 8), (73, 16), (785, 32), (33, 784), (145, 8), (73, 1)]
    assert cost.profile.methods[0].settings["lr"] == 1.0  # the conv preset's K-FAC settings


def test_product_form_follows_the_documented_multiply_add_counts():
    assert product_form(196, 145, 8) == "gradients"  # p q (p + q) = 177 k < T (p² + q²) = 4.1 M
    assert product_form(2, 100, 100) == "positions"  # 2 M > T (p² + q²) + T² (p + q) = 40.8 k
