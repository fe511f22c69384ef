"""EKFAC, exact damping and the two-level correction through :class:`KroneckerPreconditioner`: the library
entry point, bit-for-bit resume from ``state_dict`` (T1 < T2, adaptive damping, sampled targets), EKFAC's
basis schedule, and the damped operator that adaptive damping's M(δ) uses."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import mlp, train_steps

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import weight_gradient
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner
from fimbench.preconditioner.eigenbasis_block import EigenbasisBlock
from fimbench.preconditioner.two_level import TwoLevel


def make(model, method: str, seed: int, **settings) -> KroneckerPreconditioner:
    return KroneckerPreconditioner(
        model, Likelihood.BERNOULLI, method, damping=1e-2, stats_every=1, inverse_every=3, fisher_fraction=0.5,
        damping_schedule="adaptive", damping_every=4, generator=torch.Generator().manual_seed(seed), **settings,
    )


def batches(count: int) -> list[torch.Tensor]:
    return [torch.rand(16, 12, generator=torch.Generator().manual_seed(i)).round() for i in range(count)]


@pytest.mark.parametrize(
    "method, settings",
    [("ekfac", {}), ("kfac", {"damping_form": "exact"}), ("deflation", {"coarse": "residual"}),
     ("ekfac", {"coarse": "spectral"}), ("kfac-corrected", {"coarse": "nicolaides", "damping_form": "exact"})],
)
def test_state_dict_round_trip_reproduces_the_next_steps(method, settings):
    data = batches(12)
    model = mlp(0)
    preconditioner = make(model, method, 1, **settings)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, preconditioner, optimizer, data[:8])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "preconditioner": preconditioner.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    restored = mlp(5)
    fresh = make(restored, method, 99, **settings)
    fresh_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(saved["model"])
    fresh_optimizer.load_state_dict(saved["optimizer"])
    fresh.load_state_dict(saved["preconditioner"])
    train_steps(model, preconditioner, optimizer, data[8:])
    train_steps(restored, fresh, fresh_optimizer, data[8:])
    for ours, theirs in zip(model.parameters(), restored.parameters()):
        assert torch.equal(ours, theirs)
    assert preconditioner.pop_diagnostics() == fresh.pop_diagnostics()


def test_two_level_state_refuses_a_one_level_preconditioner():
    model = mlp(0)
    two_level = make(model, "kfac", 1, coarse="nicolaides")
    train_steps(model, two_level, torch.optim.SGD(model.parameters(), lr=0.1), batches(2))
    with pytest.raises(FimbenchError, match="coarse='nicolaides'"):
        make(mlp(0), "kfac", 1, coarse="spectral").load_state_dict(two_level.state_dict())
    with pytest.raises(FimbenchError, match="coarse space is nicolaides"):
        make(mlp(0), "kfac", 1, coarse="spectral").load_state_dict(two_level.state_dict(), strict=False)


@pytest.mark.parametrize("method, settings", [("exact-ng", {}), ("ekfac", {"coarse": "residual"})])
def test_float32_state_continues_a_float64_model_with_gram_quantities_kept_in_float64(method, settings):
    """The estimate is cast to the new factor dtype; the two-level coarse matrix, a float64 Gram quantity
    in every precision, stays float64; the next steps run."""
    model = mlp(0)
    preconditioner = make(model, method, 1, **settings)
    train_steps(model, preconditioner, torch.optim.SGD(model.parameters(), lr=0.1), batches(3))
    state = preconditioner.state_dict()
    model.double()
    widened = make(model, method, 1, **settings)
    widened.load_state_dict(state)
    if method == "exact-ng":
        assert widened.damped_fisher.fisher.statistics[0].a.dtype == torch.float64
    else:
        assert widened.damped_fisher.inner.blocks[0].approximation.scales.dtype == torch.float64
        assert widened.damped_fisher.coarse_matrix.dtype == torch.float64
    train_steps(model, widened, torch.optim.SGD(model.parameters(), lr=0.1), [batch.double() for batch in batches(5)[3:]])
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_ekfac_basis_moves_only_at_the_first_update_after_a_refresh():
    """T1 = 1, T2 = 3: refreshes at steps 0, 3, 6; the basis is new at the updates of steps 1, 4 (and 0)."""
    model = mlp(0)
    preconditioner = KroneckerPreconditioner(
        model, Likelihood.BERNOULLI, "ekfac", damping=1e-2, stats_every=1, inverse_every=3, fisher_fraction=0.5,
        generator=torch.Generator().manual_seed(1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    block = preconditioner.blocks[0]
    assert isinstance(block, EigenbasisBlock)
    bases = []
    for x in batches(6):
        train_steps(model, preconditioner, optimizer, [x])
        bases.append(block.approximation.bases[0].clone())
    changed = [not torch.equal(bases[i], bases[i - 1]) for i in range(1, 6)]
    assert changed == [True, False, False, True, False]


def test_two_level_step_is_the_one_level_step_plus_a_constant_per_layer():
    """Nicolaides through the library entry point (no KL clip): the two-level step minus the one-level step
    of the same blocks is ``β_l 1 1ᵀ / ‖1 1ᵀ‖`` in layer l, with ``(C + λI) β = R₀ᵀ ∇`` (C from the exact Fisher)."""
    x = batches(1)[0]
    steps, gradients = [], []
    for coarse in ("none", "nicolaides"):
        model = mlp(0)
        preconditioner = KroneckerPreconditioner(model, "bernoulli", "kpsvd", coarse=coarse, kl_clip=None,
                                                 generator=torch.Generator().manual_seed(0))
        Likelihood.BERNOULLI.nll(model(x), x).mean().backward()
        gradients = [weight_gradient(layer).clone() for layer in preconditioner.layers]
        preconditioner.step(x)
        steps.append([weight_gradient(layer).clone() for layer in preconditioner.layers])
    curvature = preconditioner.damped_fisher
    assert isinstance(curvature, TwoLevel)
    differences = [two - one for one, two in zip(*steps)]
    beta = torch.stack([difference.mean() * difference.numel() ** 0.5 for difference in differences])
    for difference, coefficient, one in zip(differences, beta, steps[0]):  # float32 steps: round-off of their size
        constant = torch.full_like(difference, float(coefficient) / difference.numel() ** 0.5)
        assert torch.allclose(difference, constant, atol=1e-5 * float(one.abs().max()))
    projections = torch.stack([gradient.sum() / gradient.numel() ** 0.5 for gradient in gradients]).double()
    system = curvature.coarse_matrix + preconditioner.damping * torch.eye(len(gradients), dtype=torch.float64)
    assert torch.allclose(system @ beta.double(), projections, rtol=1e-4, atol=1e-8)
