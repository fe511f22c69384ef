"""Performance profiles of ``fimbench report`` (both clocks), and the epochs and seconds to target per group in
the table, report.json and the CSV, on hand-made runs of known times."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import typer
from helpers import make_run
from rich.console import Console
from typer.testing import CliRunner

from fimbench.cli.report import report
from fimbench.cli.tables import comparison_table
from fimbench.engines.comparison import (
    PROFILE_FILE,
    Comparison,
    DatasetComparison,
    compare,
    performance_profiles,
    write_csv,
    write_profile,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET = 0.3
# (method, seed): train loss per pixel per epoch, seconds per epoch. With TARGET 0.3 the times to target are
#            seed 0            seed 1
#   kfac     epoch 2, 4 s      epoch 1, 2 s
#   adam     epoch 3, 3 s      epoch 4, 4 s
#   sgd      epoch 8, 2 s      never
RUNS: dict[tuple[str, int], tuple[list[float], float]] = {
    ("kfac", 0): ([0.5, 0.25], 2.0),
    ("kfac", 1): ([0.25, 0.2], 2.0),
    ("adam", 0): ([0.5, 0.4, 0.28], 1.0),
    ("adam", 1): ([0.5, 0.4, 0.35, 0.29], 1.0),
    ("sgd", 0): ([0.5] * 7 + [0.3], 0.25),
    ("sgd", 1): ([0.5, 0.4], 0.25),
}


def make_runs(root: Path, runs: dict[tuple[str, int], tuple[list[float], float]] = RUNS, dataset: str = "curves-synth") -> Path:
    for (method, seed), (losses, seconds) in runs.items():
        make_run(root / f"{method}-seed_{seed}", method, losses, seconds, dataset=dataset, seed=seed)
    return root


@pytest.fixture
def comparison(tmp_path: Path) -> Comparison:
    return compare([make_runs(tmp_path / "runs")], target=TARGET)


def test_ratios_and_rho_on_both_clocks(comparison: Comparison) -> None:
    profiles = comparison.profiles
    assert profiles is not None and comparison.warnings == []
    assert profiles.solvers == ["kfac", "sgd", "adam"]
    assert [(p.dataset, p.seed) for p in profiles.problems] == [("curves-synth", 0), ("curves-synth", 1)]

    epochs = profiles.clocks["epochs"]  # seed 0: best 2 epochs (KFAC); seed 1: best 1 epoch (KFAC), SGD never
    assert epochs.times == [{"kfac": 2, "sgd": 8, "adam": 3}, {"kfac": 1, "sgd": None, "adam": 4}]
    assert epochs.ratios == [{"kfac": 1.0, "sgd": 4.0, "adam": 1.5}, {"kfac": 1.0, "sgd": math.inf, "adam": 4.0}]
    assert epochs.tau_max == 8.0  # the smallest power of 2 above the largest finite ratio, 4
    assert epochs.taus == [1.0, 1.5, 4.0, 8.0]
    assert epochs.rho == {"kfac": [1.0, 1.0, 1.0, 1.0], "sgd": [0.0, 0.0, 0.5, 0.5], "adam": [0.0, 0.5, 1.0, 1.0]}
    assert [epochs.rho_at("sgd", tau) for tau in (3.99, 4.0, 1000.0)] == [0.0, 0.5, 0.5]  # never solves seed 1
    assert [epochs.rho_at("adam", tau) for tau in (1.0, 1.49, 2.0, 3.99)] == [0.0, 0.0, 0.5, 0.5]

    seconds = profiles.clocks["seconds"]  # seed 0: best 2 s (SGD); seed 1: best 2 s (KFAC)
    assert seconds.ratios == [{"kfac": 2.0, "sgd": 1.0, "adam": 1.5}, {"kfac": 1.0, "sgd": math.inf, "adam": 2.0}]
    assert seconds.tau_max == 4.0  # at least 4
    assert seconds.taus == [1.0, 1.5, 2.0, 4.0]
    assert seconds.rho == {"kfac": [0.5, 0.5, 1.0, 1.0], "sgd": [0.5, 0.5, 0.5, 0.5], "adam": [0.0, 0.5, 1.0, 1.0]}


def test_both_clocks_per_group_in_table_json_and_csv(comparison: Comparison, tmp_path: Path) -> None:
    kfac, sgd, adam = comparison.datasets[0].groups
    assert [run.seconds_to_target for run in sgd.runs] == [2.0, None] and [run.seed for run in sgd.reached] == [0]
    console = Console(record=True, width=250)
    console.print(comparison_table(comparison.datasets[0]))
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.strip("│").split("│")]
            for line in console.export_text().splitlines() if line.startswith("│ ")}
    assert rows["KFAC"][8:10] == ["1.5 ± 0.71 (2/2)", "3 ± 1.4"]  # epochs and seconds to target
    assert rows["SGD"][8:10] == ["8 (1/2)", "2"]

    group = comparison.to_dict()["datasets"][0]["groups"][1]
    assert group["target_reached"] == {"n": 1, "of": 2, "seeds": [0]}
    assert group["stats"]["epochs_to_target"]["mean"] == 8 and group["stats"]["seconds_to_target"]["n"] == 1

    write_csv(comparison, tmp_path / "table.csv")
    table = list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))
    kfac_row = next(row for row in table if row["method"] == "kfac")
    assert kfac_row["group"] == "kfac" and kfac_row["group_target_reached"] == "2/2"
    assert float(kfac_row["group_epochs_to_target_mean"]) == 1.5 and float(kfac_row["group_seconds_to_target_mean"]) == 3.0
    assert float(kfac_row["group_seconds_to_target_sd"]) == pytest.approx(2**0.5)
    sgd_rows = [row for row in table if row["method"] == "sgd"]
    assert [row["group_target_reached"] for row in sgd_rows] == ["1/2", "1/2"]
    assert [row["seconds_to_target"] for row in sgd_rows] == ["2.0", ""] and sgd_rows[0]["group_seconds_to_target_sd"] == "0.0"


def test_report_folder_has_the_profile_figure_and_json(comparison: Comparison, tmp_path: Path) -> None:
    written = write_report(comparison, tmp_path / "out")
    assert [path.name for path in written] == ["figure2.png", "profile.png", "report.json"]
    figure = tmp_path / "out" / PROFILE_FILE
    assert "profile" in figure.name and figure.read_bytes().startswith(PNG_MAGIC)
    height, width, _ = matplotlib.image.imread(figure).shape
    assert width > 1.5 * height  # two panels side by side: epochs and seconds

    data: dict[str, Any] = json.loads((tmp_path / "out" / "report.json").read_text())["profiles"]
    assert "Dolan & Moré" in data["definition"] and "AlgoPerf" in data["definition"] and "every solver" in data["pairing"]
    assert data["solvers"] == [{"label": m, "method": m} for m in ("kfac", "sgd", "adam")]
    assert data["problems"] == [{"dataset": "curves-synth", "seed": 0}, {"dataset": "curves-synth", "seed": 1}]
    assert set(data["clocks"]) == {"epochs", "seconds"}
    epochs, seconds = data["clocks"]["epochs"], data["clocks"]["seconds"]
    assert (epochs["tau_max"], epochs["tau"], epochs["rho"]["adam"]) == (8.0, [1.0, 1.5, 4.0, 8.0], [0.0, 0.5, 1.0, 1.0])
    assert (seconds["tau_max"], seconds["tau"], seconds["rho"]["kfac"]) == (4.0, [1.0, 1.5, 2.0, 4.0], [0.5, 0.5, 1.0, 1.0])
    unsolved = epochs["problems"][1]
    assert (unsolved["seed"], unsolved["best"], unsolved["times"]["sgd"], unsolved["ratios"]) == (
        1, 1.0, None, {"kfac": 1.0, "sgd": None, "adam": 4.0}
    )
    assert seconds["problems"][0]["ratios"] == {"kfac": 2.0, "sgd": 1.0, "adam": 1.5} and seconds["problems"][0]["best"] == 2.0


def test_seeds_not_run_by_every_method_are_dropped(tmp_path: Path) -> None:
    runs = {**RUNS, ("kfac", 2): ([0.1], 2.0), ("adam", 3): ([0.1], 1.0)}
    make_runs(tmp_path / "runs", runs)
    make_run(tmp_path / "runs" / "faces-kfac", "kfac", [0.25], 1.0, dataset="faces")  # only KFAC on faces
    comparison = compare([tmp_path / "runs"], target=TARGET)
    profiles = comparison.profiles
    assert profiles is not None and [p.seed for p in profiles.problems] == [0, 1]
    assert profiles.clocks["epochs"].rho["adam"] == [0.0, 0.5, 1.0, 1.0]  # as without the extra seeds
    assert "curves-synth: seeds 2, 3 are not run by every method (kfac, sgd, adam lack some); left out of the performance profiles" in comparison.warnings
    assert "faces: no run of sgd, adam; left out of the performance profiles" in comparison.warnings


def test_unreached_target_and_no_target(tmp_path: Path) -> None:
    comparison = compare([make_runs(tmp_path / "runs")], target=0.01)  # nobody gets there
    profiles = comparison.profiles
    assert profiles is not None and len(profiles.problems) == 2
    for clock in profiles.clocks.values():
        assert (clock.tau_max, clock.taus) == (4.0, [1.0, 4.0])
        assert clock.rho == {"kfac": [0.0, 0.0], "sgd": [0.0, 0.0], "adam": [0.0, 0.0]}
    assert write_profile(comparison, tmp_path / "profile.png") and (tmp_path / "profile.png").is_file()

    untargeted = DatasetComparison("curves-synth", None, "none: no train loss per pixel logged", [])
    assert performance_profiles([untargeted]) is None
    assert not write_profile(Comparison([untargeted], []), tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_unseeded_runs_and_two_groups_of_one_method(tmp_path: Path) -> None:
    make_run(tmp_path / "kfac-a", "kfac", [0.5, 0.2], 1.0, lr=0.1)
    make_run(tmp_path / "kfac-b", "kfac", [0.2], 3.0, lr=1.0)
    make_run(tmp_path / "adam", "adam", [0.5, 0.4, 0.2], 0.5)
    profiles = compare([tmp_path], target=TARGET).profiles
    assert profiles is not None and [(p.dataset, p.seed) for p in profiles.problems] == [("curves-synth", None)]
    assert profiles.solvers == ["kfac (kfac-a)", "kfac (kfac-b)", "adam"]
    assert profiles.clocks["epochs"].ratios == [{"kfac (kfac-a)": 2.0, "kfac (kfac-b)": 1.0, "adam": 3.0}]
    assert profiles.clocks["seconds"].ratios == [{"kfac (kfac-a)": 2.0 / 1.5, "kfac (kfac-b)": 2.0, "adam": 1.0}]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("report")(report)
    return app


def test_cli_writes_the_profile(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    result = CliRunner().invoke(_app(), ["report", str(runs), "--target", str(TARGET), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "profile.png" in result.output
    assert (tmp_path / "out" / "profile.png").read_bytes().startswith(PNG_MAGIC)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["profiles"]["clocks"]["seconds"]["rho"]["sgd"] == [0.5, 0.5, 0.5, 0.5]
    printed = CliRunner().invoke(_app(), ["report", str(runs), "--target", str(TARGET), "--json"])
    assert printed.exit_code == 0 and json.loads(printed.stdout)["profiles"]["clocks"]["epochs"]["tau_max"] == 8.0
