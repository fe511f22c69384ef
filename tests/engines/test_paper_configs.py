"""``configs/paper/<dataset>-<method>.yaml`` hold the authors' selected hyperparameters in fimbench's scale
(damping split included), and their SGD/Adam baselines (Nesterov SGD, weight decay 1e-3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fimbench.engines.authors_scale import from_authors_scale
from fimbench.engines.config import load_config
from fimbench.engines.models import ARCHITECTURES
from fimbench.methods import PAPER_METHODS, Method

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
BATCH = {"curves": 256, "mnist": 512, "faces": 1024}
# Authors' scale: (lr, damping) per method and dataset; SGD lr 0.3 and Adam lr 1e-3 everywhere.
TUNED: dict[str, dict[str, tuple[float, float | None]]] = {
    "kfac": {"curves": (0.1, 3e-3), "mnist": (0.01, 1e-4), "faces": (0.1, 1e-3)},
    "kpsvd": {"curves": (0.1, 3e-3), "mnist": (0.01, 1e-4), "faces": (0.1, 1e-3)},
    "kfac-corrected": {"curves": (0.1, 0.03), "mnist": (0.1, 0.01), "faces": (0.1, 0.03)},
    "deflation": {"curves": (0.1, 0.1), "mnist": (3e-3, 1e-3), "faces": (3e-3, 1e-3)},
    "lanczos": {"curves": (1e-3, 1e-3), "mnist": (1e-3, 1e-3), "faces": (1e-3, 1e-3)},
    "sgd": {dataset: (0.3, None) for dataset in BATCH},
    "adam": {dataset: (1e-3, None) for dataset in BATCH},
}


def test_one_file_per_dataset_and_method() -> None:
    expected = {f"{dataset}-{method.value}.yaml" for dataset in BATCH for method in PAPER_METHODS}
    assert {path.name for path in PAPER.glob("*.yaml")} == expected


@pytest.mark.parametrize("dataset", sorted(BATCH))
@pytest.mark.parametrize("method", [method.value for method in PAPER_METHODS])
def test_paper_config_matches_design(dataset: str, method: str) -> None:
    config = load_config(PAPER / f"{dataset}-{method}.yaml")
    kind = Method(method)
    architecture = ARCHITECTURES[dataset]
    lr, damping = TUNED[method][dataset]
    weight_decay = 1e-3  # every optimizer of the authors' runs
    expected = from_authors_scale(kind, architecture.likelihood, architecture.layers[0], lr, damping, weight_decay)
    optimizer = config.optimizer
    assert (config.data.dataset, optimizer.method) == (dataset, method)
    assert (config.training.batch_size, config.training.epochs) == (BATCH[dataset], 200)
    assert math.isclose(optimizer.lr, expected["lr"], rel_tol=1e-12)
    assert math.isclose(optimizer.weight_decay, expected["weight_decay"], rel_tol=1e-12, abs_tol=0.0)
    assert optimizer.momentum == 0.9
    assert optimizer.nesterov == (kind is Method.SGD)
    if kind.is_kronecker:
        assert math.isclose(optimizer.damping, expected["damping"], rel_tol=1e-12)
        assert math.isclose(optimizer.pi, expected["pi"], rel_tol=1e-12)
        assert optimizer.kl_clip == 1e-2
        assert (optimizer.stats_every, optimizer.inverse_every) == (100, 100)
        assert (optimizer.ema_decay, optimizer.fisher_fraction) == (0.95, 0.25)
    text = (PAPER / f"{dataset}-{method}.yaml").read_text(encoding="utf-8")
    assert f"lr {lr:g}" in text and "from_authors_scale" in text  # the authors' values and the conversion are documented
