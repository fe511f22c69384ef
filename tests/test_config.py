"""Config resolution, strict validation, and the presets' conversion of the authors' settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimbench.config import load_config, preset_path
from fimbench.conventions import from_authors_scale, loss_scale
from fimbench.curvature import Method
from fimbench.errors import FimbenchError
from fimbench.models import Likelihood

# DESIGN §4: the authors' tuned (lr, damping) per benchmark, in their loss scale.
AUTHORS = {
    "curves": {"kfac": (0.1, 3e-3), "kpsvd": (0.1, 3e-3), "kfac-corrected": (0.1, 0.03), "deflation": (0.1, 0.1), "lanczos": (1e-3, 1e-3)},
    "mnist": {"kfac": (0.01, 1e-4), "kpsvd": (0.01, 1e-4), "kfac-corrected": (0.1, 0.01), "deflation": (3e-3, 1e-3), "lanczos": (1e-3, 1e-3)},
    "faces": {"kfac": (0.1, 1e-3), "kpsvd": (0.1, 1e-3), "kfac-corrected": (0.1, 0.03), "deflation": (3e-3, 1e-3), "lanczos": (1e-3, 1e-3)},
}
GEOMETRY = {"curves": (Likelihood.BERNOULLI, 784, 256), "mnist": (Likelihood.BERNOULLI, 784, 512), "faces": (Likelihood.GAUSSIAN, 625, 1024)}
PRESET_PRECISION = 1e-5  # presets are written with 6 significant digits


@pytest.mark.parametrize("dataset", sorted(AUTHORS))
def test_presets_are_the_converted_authors_settings(dataset: str) -> None:
    likelihood, pixels, batch = GEOMETRY[dataset]
    for method, (lr, damping) in AUTHORS[dataset].items():
        config = load_config(None, {"data.dataset": dataset, "optimizer.method": method})
        expected = from_authors_scale(Method(method), likelihood, pixels, lr, damping, weight_decay=1e-3)
        assert config.optimizer.lr == pytest.approx(expected["lr"], rel=PRESET_PRECISION)
        assert config.optimizer.damping == pytest.approx(expected["damping"], rel=PRESET_PRECISION)
        assert config.optimizer.weight_decay == pytest.approx(expected["weight_decay"], rel=PRESET_PRECISION)
        assert config.optimizer.kl_clip == 1e-2 and config.training.batch_size == batch
        assert config.optimizer.stats_every == config.optimizer.inverse_every == 100
    sgd = load_config(None, {"data.dataset": dataset, "optimizer.method": "sgd"})
    assert sgd.optimizer.lr == pytest.approx(0.3 * loss_scale(likelihood, pixels), rel=PRESET_PRECISION)


def test_conversion_matches_updates_step_for_step() -> None:
    """κ-scaled objective: lr_a·(F_a + λ_a)⁻¹∇h_a == lr·(F + λ)⁻¹∇h for scalars F, ∇h."""
    kappa = loss_scale(Likelihood.GAUSSIAN, 625)
    fisher, gradient, lr_a, damping_a = 3.7, 1.3, 0.1, 1e-3
    converted = from_authors_scale(Method.KFAC, Likelihood.GAUSSIAN, 625, lr_a, damping_a)
    authors_step = lr_a * (kappa * gradient) / (kappa**2 * fisher + damping_a)
    our_step = converted["lr"] * gradient / (fisher + converted["damping"])
    assert our_step == pytest.approx(authors_step, rel=1e-12)
    sgd = from_authors_scale(Method.SGD, Likelihood.GAUSSIAN, 625, 0.3)
    assert sgd["lr"] * gradient == pytest.approx(0.3 * kappa * gradient)


def test_curves_synth_uses_the_curves_preset() -> None:
    assert preset_path("curves-synth") == preset_path("curves")
    assert load_config(None, {"data.dataset": "curves-synth"}).training.batch_size == 256


def test_resolution_order(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text(
        "data: {dataset: curves}\noptimizer: {method: kfac, damping: 5.0}\n"
        "methods:\n  kfac: {lr: 2.0}\n  sgd: {lr: 9.0}\ntraining: {epochs: 3}\n"
    )
    config = load_config(user, {"training.epochs": 7})
    assert config.optimizer.lr == 2.0  # user methods.kfac beats the preset's methods.kfac
    assert config.optimizer.damping == 5.0  # user optimizer beats the preset's methods.kfac
    assert config.training.epochs == 7  # CLI beats everything
    assert config.training.batch_size == 256  # from the preset


def test_floats_accept_ints_and_yaml_exponent_strings(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("optimizer: {lr: 1, damping: 1e-3}\n")
    config = load_config(user)
    assert config.optimizer.lr == 1.0 and config.optimizer.damping == 1e-3


@pytest.mark.parametrize(
    "text, message",
    [
        ("optimiser: {lr: 1}\n", "unknown config section 'optimiser'"),
        ("training: {batch_size: 1.5}\n", "'training.batch_size'"),
        ("training: {batch_size: true}\n", "'training.batch_size'"),
        ("model: {layers: 5}\n", "'model.layers' in"),
        ("- a\n- b\n", "must hold a mapping"),
        ("methods: [kfac]\n", "'methods'"),
    ],
)
def test_strict_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FimbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
