"""``--step-rule qmodel`` from its defaults: the damping of ``configs/<dataset>-qmodel.yaml`` (adaptive from
λ₀ = 150, floor 0.01) unless the user sets one (``fimbench.engines.config``, layer 2). The presets' λ, chosen
for the fixed rule, made K-FAC diverge at step 3; a λ the user gives alone stays fixed, with the warning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, runner, tiny_config

from fimbench.cli import app
from fimbench.engines.config import OptimizerConfig, dump_config, load_config

QMODEL = {"optimizer.step_rule": "qmodel"}
WARNING = "warning: step rule qmodel with a fixed damping"


def qmodel_defaults(preset: str) -> dict[str, Any]:
    """The optimizer section of ``configs/<preset>-qmodel.yaml``, less its method."""
    section = yaml.safe_load((ROOT / "configs" / f"{preset}-qmodel.yaml").read_text())["optimizer"]
    return {key: value for key, value in section.items() if key != "method"}


def damping_of(optimizer: OptimizerConfig) -> tuple[str, float, float]:
    return optimizer.damping_schedule, optimizer.damping, optimizer.damping_min


def train(tmp_path: Path, *extra: str, name: str = "run") -> tuple[Any, dict[str, Any]]:
    """One step of ``train --step-rule qmodel`` on the tiny config (K-FAC): the result and the resolved config."""
    config = tiny_config(tmp_path, method="kfac")
    out = tmp_path / name
    result = runner.invoke(app, ["train", "--config", str(config), "--step-rule", "qmodel", *extra, "--max-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result, yaml.safe_load((out / "config.yaml").read_text())["optimizer"]


@pytest.mark.parametrize(("dataset", "preset"), [("curves", "curves"), ("curves-synth", "curves"), ("mnist", "mnist"), ("faces", "faces")])
@pytest.mark.parametrize("method", ["kfac", "kpsvd", "lanczos", "ekfac", "exact-ng"])
def test_qmodel_takes_the_damping_of_its_config(dataset: str, preset: str, method: str) -> None:
    """Whatever λ the preset or its ``methods.<method>`` section sets for the fixed rule (K-FAC 0.01, KPSVD 0.1)."""
    optimizer = load_config(None, {**QMODEL, "data.dataset": dataset, "optimizer.method": method}).optimizer
    defaults = qmodel_defaults(preset)
    assert damping_of(optimizer) == (defaults["damping_schedule"], defaults["damping"], defaults["damping_min"])
    assert damping_of(optimizer) == ("adaptive", 150.0, 0.01)
    fixed = load_config(None, {"data.dataset": dataset, "optimizer.method": method}).optimizer
    assert fixed.damping_schedule == "fixed" and fixed.damping < 1  # the fixed rule keeps its presets


def test_first_order_methods_keep_their_presets() -> None:
    """SGD and Adam ignore the step rule, and so its defaults."""
    for method in ("sgd", "adam"):
        config = load_config(None, {**QMODEL, "optimizer.method": method})
        assert config == load_config(None, {"optimizer.method": method, "optimizer.step_rule": "qmodel"})
        assert damping_of(config.optimizer) == damping_of(load_config(None, {"optimizer.method": method}).optimizer)


def test_what_the_user_sets_wins(tmp_path: Path) -> None:
    """The user's values (options, ``--set``, the ``--config`` file and its ``methods.<method>``) win key by key;
    a λ given without a schedule is fixed; the presets' values are not the user's."""
    kfac = {**QMODEL, "optimizer.method": "kfac"}

    def resolved(path: Path | None = None, **overrides: Any) -> tuple[str, float, float]:
        return damping_of(load_config(path, {**kfac, **{f"optimizer.{key}": value for key, value in overrides.items()}}).optimizer)

    assert resolved(damping=0.01) == ("fixed", 0.01, 0.01)
    assert resolved(damping_schedule="fixed") == ("fixed", 150.0, 0.01)
    assert resolved(damping_schedule="adaptive") == ("adaptive", 150.0, 0.01)
    assert resolved(damping_schedule="adaptive", damping=10.0) == ("adaptive", 10.0, 0.01)
    assert resolved(damping_min=1.0) == ("adaptive", 150.0, 1.0)
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"optimizer": {"damping": 0.3}}))
    assert resolved(top) == ("fixed", 0.3, 0.01)
    assert resolved(top, damping_schedule="adaptive") == ("adaptive", 0.3, 0.01)
    per_method = tmp_path / "per_method.yaml"
    per_method.write_text(yaml.safe_dump({"methods": {"kfac": {"damping": 0.2}, "kpsvd": {"damping_schedule": "fixed"}}}))
    assert resolved(per_method) == ("fixed", 0.2, 0.01)
    assert damping_of(load_config(per_method, {**QMODEL, "optimizer.method": "kpsvd"}).optimizer) == ("fixed", 150.0, 0.01)
    qmodel_file = ROOT / "configs" / "curves-qmodel.yaml"
    deflation = {**QMODEL, "optimizer.method": "deflation", "data.dataset": "curves"}
    assert load_config(qmodel_file, {"optimizer.method": "deflation"}) == load_config(None, deflation)


def test_a_resolved_config_resolves_as_written(tmp_path: Path) -> None:
    """A run directory's config.yaml (what ``--resume`` and a sweep's best config read) sets every key."""
    for overrides in ({}, {"optimizer.damping": 0.01}, {"optimizer.damping_schedule": "fixed"}):
        config = load_config(None, {**QMODEL, "optimizer.method": "kpsvd", **overrides})
        written = tmp_path / "config.yaml"
        written.write_text(dump_config(config))
        assert load_config(written) == config


def test_cli_train_resolves_the_qmodel_defaults(tmp_path: Path) -> None:
    result, optimizer = train(tmp_path)
    defaults = qmodel_defaults("curves")
    assert {key: optimizer[key] for key in defaults} == defaults
    assert WARNING not in result.output


def test_cli_train_keeps_an_explicit_fixed_damping_and_warns(tmp_path: Path) -> None:
    result, optimizer = train(tmp_path, "--damping", "0.01", name="option")
    assert (optimizer["damping_schedule"], optimizer["damping"]) == ("fixed", 0.01)
    assert f"{WARNING} λ = 0.01" in result.output
    result, optimizer = train(tmp_path, "--set", "optimizer.damping=0.01", name="set")
    assert (optimizer["damping_schedule"], optimizer["damping"]) == ("fixed", 0.01)
    assert f"{WARNING} λ = 0.01" in result.output


def test_cli_train_respects_an_explicit_fixed_schedule(tmp_path: Path) -> None:
    result, optimizer = train(tmp_path, "--damping-schedule", "fixed")
    assert (optimizer["damping_schedule"], optimizer["damping"]) == ("fixed", 150.0)
    assert f"{WARNING} λ = 150" in result.output


def test_cli_train_from_the_defaults_stays_finite(tmp_path: Path) -> None:
    """Two epochs (16 steps) on the tiny set: with the presets' fixed λ = 0.01 this run diverged at step 4."""
    config = tiny_config(tmp_path, method="kfac")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config), "--step-rule", "qmodel", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert WARNING not in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in rows]
    assert len(rows) == 2 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert math.isfinite(rows[-1]["val_loss"]) and rows[-1]["damping_adaptations"] >= 1


def test_sweep_points_resolve_through_the_same_defaults(tmp_path: Path) -> None:
    """A qmodel sweep's damping axis is a λ the user gives: fixed, or λ₀ with the adaptive schedule set."""
    from fimbench.engines.sweep import plan_sweep

    config = tiny_config(tmp_path, method="kfac")
    fixed = plan_sweep(tmp_path / "fixed", ["kfac"], {"damping": [1.0, 10.0]}, config_path=config, overrides=QMODEL)
    assert [damping_of(point.config.optimizer) for point in fixed.points] == [("fixed", 1.0, 0.01), ("fixed", 10.0, 0.01)]
    adaptive = plan_sweep(
        tmp_path / "adaptive", ["kfac"], {"damping": [1.0, 10.0]}, config_path=config,
        overrides={**QMODEL, "optimizer.damping_schedule": "adaptive"},
    )
    assert [damping_of(point.config.optimizer) for point in adaptive.points] == [("adaptive", 1.0, 0.01), ("adaptive", 10.0, 0.01)]
