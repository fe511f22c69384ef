"""``exact-ng`` and ``exact-ng-block`` through the commands: ``train``, ``cost-profile``, ``sweep`` + ``report``
on tiny curves-synth configs (configs/smoke.yaml), and the damping conversion from the authors' scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fimbench.cli import app
from fimbench.engines.authors_scale import from_authors_scale
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
EXACT = ["exact-ng", "exact-ng-block"]
runner = CliRunner()


def tiny_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(SMOKE.read_text())
    config["data"].update({"synth_train": 384, "synth_test": 64, "data_dir": str(tmp_path / "data")})
    config["model"] = {"layers": [784, 16, 8, 16, 784]}
    config["training"].update({"batch_size": 64, "epochs": 2})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("method", EXACT)
def test_train_runs_and_learns(tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--method", method, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["statistics_updates"] > 0 and rows[-1]["correction_scale"] is None
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"]["method"] == method


def test_cost_profile_times_the_exact_references(tmp_path: Path) -> None:
    out = tmp_path / "cost"
    args = ["cost-profile", "--widths", "8,16", "--batches", "4,8", "--repeats", "1", "--methods", "kfac,exact-ng,exact-ng-block",
            "--device", "cpu", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    point = document["points"][0]["profile"]
    methods = {cost["method"]: cost for cost in point["methods"]}
    assert set(methods) == {"kfac", "exact-ng", "exact-ng-block"}
    for name in EXACT:
        layer = methods[name]["layers"][0]
        assert layer["rank"] == 0 and set(layer["times"]) == {"build_cold", "build_warm", "inverse", "apply"}
    orders = {(fit["method"], fit["phase"]): fit["paper_order"] for fit in document["exponents"]}
    assert orders[("exact-ng", "inverse")] == "m³/3" and orders[("exact-ng-block", "build_warm")] == "m²(p+q)"


def test_sweep_and_report(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "--config", str(tiny_config(tmp_path)), "--methods", "exact-ng,exact-ng-block", "--grid", "lr=0.1",
            "--grid", "damping=1e-2,1e-1", "--grid", "clip=1e-2", "--set", "training.max_steps=6", "-j", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for method in EXACT:
        assert (out / "best" / f"{method}.yaml").exists()
        for damping in ("1e-2", "1e-1"):
            summary = json.loads((out / f"{method}-lr_1e-1-damping_{damping}-clip_1e-2" / "summary.json").read_text())
            assert summary["status"] == "completed"
    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "exact NG" in report.stdout and "exact NG (blocks)" in report.stdout


def test_authors_scale_damping_of_the_exact_references() -> None:
    """Their F_a + λ_a I = κ² (F + λ_a/κ² I): λ = λ_a / κ², lr = lr_a / κ."""
    kappa = 1 / 784
    converted = from_authors_scale(Method.EXACT_NG, Likelihood.BERNOULLI, 784, lr=0.1, damping=1e-3)
    assert converted["damping"] == pytest.approx(1e-3 / kappa**2) and converted["lr"] == pytest.approx(0.1 / kappa)
