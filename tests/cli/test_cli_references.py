"""EKFAC, exact damping and the two-level correction from the command line: train (variant names in the
summary), fisher-error (EKFAC rows and two-level network rows), cost-profile, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import one_line_error, runner, tiny_config

from fimbench.cli import app


@pytest.mark.parametrize(
    "args, variant",
    [(["--method", "ekfac"], "ekfac"), (["--method", "kfac", "--damping-form", "exact"], "kfac+exact"),
     (["--method", "kpsvd", "--coarse", "spectral"], "kpsvd+spectral"),
     (["--method", "ekfac", "--coarse", "residual", "--damping-form", "exact"], "ekfac+residual")],
)
def test_train_runs_each_reference(tmp_path: Path, args: list[str], variant: str) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), *args, "--max-steps", "6", "--json", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["variant"] == variant and document["status"] == "completed"
    assert json.loads((out / "summary.json").read_text())["variant"] == variant


@pytest.mark.parametrize(
    "args, message",
    [(["--method", "kfac", "--coarse", "krylov"], "error: unknown coarse space 'krylov'"),
     (["--method", "kfac", "--damping-form", "eigen"], "error: the damping form must be one of factored, exact"),
     (["--method", "exact-ng", "--coarse", "nicolaides"], "error: coarse=nicolaides corrects a block-diagonal method")],
)
def test_train_bad_reference_settings_are_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "never"
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), *args, "--max-steps", "2", "--out", str(out)])
    assert one_line_error(result).startswith(message)
    assert not out.exists()


def test_fisher_error_measures_ekfac_and_two_level_network_rows(tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text("data:\n  synth_train: 300\n  synth_test: 50\n", encoding="utf-8")
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "fisher-error", "--dataset", "curves-synth", "--config", str(config), "--data-dir", str(tmp_path / "data"),
        "--batch-size", "32", "--device", "cpu", "--layer", "5,6", "--methods", "kfac,ekfac", "--coarse", "nicolaides",
        "--iterations", "2", "--every", "2", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "EKFAC + nicolaides" in result.stdout and "gram/diag" in result.stdout
    with open(out / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["layer"], row["method"]) for row in rows} == {
        (layer, method) for layer in ("5", "6", "network") for method in ("kfac", "ekfac")
    } | {("network", "kfac+nicolaides"), ("network", "ekfac+nicolaides")}
    ekfac = [float(row["error1"]) for row in rows if row["method"] == "ekfac" and row["layer"] != "network"]
    kfac = [float(row["error1"]) for row in rows if row["method"] == "kfac" and row["layer"] != "network"]
    assert all(e <= k + 1e-9 for e, k in zip(ekfac, kfac))  # optimal in K-FAC's own eigenbasis
    assert (out / "figure1.png").is_file()
    bad = runner.invoke(app, ["fisher-error", "--coarse", "residual", "--out", str(tmp_path / "never")])
    assert one_line_error(bad).startswith("error: --coarse takes nicolaides and/or spectral")


def test_cost_profile_times_ekfac(tmp_path: Path) -> None:
    out = tmp_path / "cost"
    result = runner.invoke(app, ["cost-profile", "--widths", "16", "--batches", "8", "--methods", "ekfac,kfac", "--repeats", "1",
                                 "--device", "cpu", "--out", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert "ekfac" in result.stdout


def test_cost_profile_of_a_two_level_method_times_its_corrected_step() -> None:
    """profile_model with coarse=nicolaides: the blocks' phases and a precondition step that runs the coarse correction."""
    import torch

    from fimbench.engines.config import OptimizerConfig
    from fimbench.engines.cost.profiler import profile_model
    from fimbench.engines.models import Architecture, build_model
    from fimbench.fisher.likelihood import Likelihood
    from fimbench.methods import Method

    model = build_model(Architecture((12, 6, 12), Likelihood.BERNOULLI), seed=0)
    inputs = torch.rand(16, 12, generator=torch.Generator().manual_seed(0)).round()
    configs = {Method.DEFLATION: OptimizerConfig(method="deflation", coarse="nicolaides"), Method.EKFAC: OptimizerConfig(method="ekfac", coarse="spectral")}
    profile = profile_model(model, inputs, configs, OptimizerConfig(), repeats=1, warmup=0)
    for cost in profile.methods:
        assert len(cost.layers) == 2 and cost.precondition.median > 0
        assert cost.settings["coarse"] in ("nicolaides", "spectral")
