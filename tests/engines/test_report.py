"""``fimbench report`` on hand-made run and sweep directories: values, warnings, figure, JSON and CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import typer
from helpers import make_run
from rich.console import Console
from typer.testing import CliRunner

from fimbench.cli.report import report
from fimbench.cli.tables import comparison_table, differences_table
from fimbench.engines.comparison import compare, write_csv, write_figure2, write_report_json
from fimbench.engines.rundir import read_metrics
from fimbench.errors import FimbenchError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "kfac": make_run(tmp_path / "kfac", "kfac", [0.30, 0.20, 0.10], 2.0),
        "adam": make_run(tmp_path / "adam", "adam", [0.40, 0.30, 0.25], 1.0),
        "sgd": make_run(tmp_path / "sgd", "sgd", [0.50, 0.40, 0.35], 0.5),
    }


def test_comparison_values(runs: dict[str, Path]) -> None:
    comparison = compare([runs["sgd"], runs["kfac"], runs["adam"]])
    assert comparison.warnings == []
    (dataset,) = comparison.datasets
    assert dataset.dataset == "curves-synth"
    assert dataset.target == 0.35 and dataset.target_source == "worst final train loss (sgd)"
    kfac, sgd, adam = dataset.results  # method order: KFAC first, then SGD and Adam as in fimbench.engines.plots
    assert [kfac.method, sgd.method, adam.method] == ["kfac", "sgd", "adam"]
    assert (kfac.final_train_loss, kfac.best_train_loss, kfac.epochs) == (0.10, 0.10, 3)
    assert kfac.final_val_loss == pytest.approx(0.11) and kfac.best_val_loss == pytest.approx(0.11)
    assert kfac.final_val_reconstruction_error == pytest.approx(11.0)
    assert kfac.final_train_objective == pytest.approx(78.4)
    assert (kfac.wall_time, kfac.time_per_epoch, kfac.device) == (6.0, 2.0, "NVIDIA A100")
    # target 0.35: KFAC reaches it at epoch 1 (2 s), Adam at epoch 2 (2 s), SGD at epoch 3 (1.5 s)
    assert [(r.epochs_to_target, r.seconds_to_target) for r in (kfac, sgd, adam)] == [(1, 2.0), (3, 1.5), (2, 2.0)]
    assert [r.speedup_vs_kfac for r in (kfac, sgd, adam)] == pytest.approx([1.0, 2.0 / 1.5, 1.0])
    assert [r.speedup_vs_adam for r in (kfac, sgd, adam)] == pytest.approx([1.0, 2.0 / 1.5, 1.0])

    explicit = compare([runs["kfac"], runs["adam"]], target=0.2).datasets[0]
    assert [(r.method, r.epochs_to_target, r.speedup_vs_adam) for r in explicit.results] == [
        ("kfac", 2, None),
        ("adam", None, None),
    ]


def test_table_renders_the_values(runs: dict[str, Path]) -> None:
    console = Console(record=True, width=250)
    console.print(comparison_table(compare(list(runs.values())).datasets[0]))
    text = console.export_text()
    assert "target train loss/pixel 0.35 (worst final train loss (sgd))" in text
    assert "device: NVIDIA A100" in text and "mean ± sd (min–max) over seeds" in text
    kfac = next(line for line in text.splitlines() if line.startswith("│ KFAC"))
    cells = [cell.strip() for cell in kfac.strip("│").split("│")]
    # method, run, seeds, final, min–max (none for one seed), best, final val, s/epoch, epochs / s to target, × KFAC, × Adam
    assert cells[:12] == ["KFAC", "kfac", "1", "0.1", "", "0.1", "0.11", "2", "1", "2", "1.00", "1.00"]
    sgd = next(line for line in text.splitlines() if line.startswith("│ SGD"))
    assert "1.33" in sgd


def test_truncated_metrics_and_missing_summary_are_warnings(tmp_path: Path) -> None:
    killed = make_run(tmp_path / "killed", "deflation", [0.3, 0.2, 0.15], 1.0, status=None)
    with open(killed / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "epoch": 4, "train_loss": 0.1, "trai')  # a write cut short by a kill
    rows, warnings = read_metrics(killed / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert warnings == [f"{killed / 'metrics.jsonl'}: its last line is not valid JSON (a write cut short?); skipped it"]

    fine = make_run(tmp_path / "fine", "kfac", [0.3, 0.2], 1.0, device="CPU x86_64 (8 threads)")
    comparison = compare([fine, killed])
    assert any("its last line is not valid JSON" in warning for warning in comparison.warnings)
    assert any("no summary.json" in warning for warning in comparison.warnings)
    assert any("different devices" in warning for warning in comparison.warnings)
    kfac, deflation = comparison.datasets[0].results
    assert (deflation.status, deflation.epochs, deflation.final_train_loss, deflation.device) == ("incomplete", 3, 0.15, "unknown")
    assert comparison.datasets[0].target == 0.2  # the worst completed run's final loss


def test_sweep_dir_contributes_its_best_point(tmp_path: Path, runs: dict[str, Path]) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep / "kfac-lr_1e0", "kfac", [0.3, 0.2], 1.0, lr=1.0)
    make_run(sweep / "kfac-lr_1e1", "kfac", [0.3, 0.1], 1.0, lr=10.0)
    make_run(sweep / "kfac-lr_1e2", "kfac", [0.3, 0.01], 1.0, status="diverged", lr=100.0)
    manifest = {"dataset": "curves-synth", "methods": {"kfac": {"points": {"kfac-lr_1e0": {}, "kfac-lr_1e1": {}, "kfac-lr_1e2": {}}}, "adam": {"points": {"adam-lr_1e-3": {}}}}}
    (sweep / "sweep.json").write_text(json.dumps(manifest))
    comparison = compare([sweep, runs["sgd"]])
    assert [(r.method, r.run) for r in comparison.datasets[0].results] == [("kfac", "kfac-lr_1e1"), ("sgd", "sgd")]
    assert comparison.warnings == [f"{sweep}: no completed adam point yet; adam is left out"]


def test_figure_json_and_csv(tmp_path: Path, runs: dict[str, Path]) -> None:
    make_run(tmp_path / "faces-kfac", "kfac", [0.05, 0.03], 3.0, dataset="faces")
    comparison = compare([*runs.values(), tmp_path / "faces-kfac"])
    assert [d.dataset for d in comparison.datasets] == ["curves-synth", "faces"]
    write_figure2(comparison, tmp_path / "out" / "figure2.png")
    png = (tmp_path / "out" / "figure2.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    height, width, _ = matplotlib.image.imread(tmp_path / "out" / "figure2.png").shape
    assert width > 2 * height  # four panels per row, two dataset rows

    write_report_json(comparison, tmp_path / "out" / "report.json")
    data: dict[str, Any] = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [len(d["results"]) for d in data["datasets"]] == [3, 1]
    assert "rows" not in data["datasets"][0]["results"][0]
    write_csv(comparison, tmp_path / "table.csv")
    table = list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))
    assert [(row["dataset"], row["method"]) for row in table] == [
        ("curves-synth", "kfac"), ("curves-synth", "sgd"), ("curves-synth", "adam"), ("faces", "kfac")
    ]
    assert float(table[0]["seconds_to_target"]) == 2.0


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FimbenchError, match="neither a run directory"):
        compare([tmp_path])
    with pytest.raises(FimbenchError, match="not a directory"):
        compare([tmp_path / "nowhere"])


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("report")(report)
    return app


def test_cli(tmp_path: Path, runs: dict[str, Path]) -> None:
    with open(runs["adam"] / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "ep')
    result = CliRunner().invoke(
        _app(), ["report", *map(str, runs.values()), "--out", str(tmp_path / "out"), "--csv", str(tmp_path / "t.csv")]
    )
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "not valid JSON" in result.output
    assert "KFAC" in result.output and "Adam" in result.output
    assert (tmp_path / "out" / "figure2.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "t.csv").is_file()
    missing = CliRunner().invoke(_app(), ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ") and "not a directory" in missing.output


# ----------------------------------------------------------------------------------------------- seeds and significance

T_975_DOF_4 = 2.7764451051977987  # Student's t quantile 0.975 with 4 degrees of freedom (tables)


def test_welch_difference_against_hand_and_scipy() -> None:
    from scipy import stats

    from fimbench.engines.significance import spread, welch_difference

    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    test = welch_difference(a, b)  # variances 1 and 1: se = √(2/3), ν = (2/3)² / (2 · (1/3)² / 2) = 4
    half = T_975_DOF_4 * (2 / 3) ** 0.5
    assert test.difference == -3.0 and test.degrees_of_freedom == pytest.approx(4.0)
    assert test.interval == pytest.approx((-3.0 - half, -3.0 + half)) and test.significant is True

    a, b = [0.101, 0.104, 0.099, 0.106], [0.100, 0.115, 0.108]  # unequal variances and sizes
    test = welch_difference(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert test.interval == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-12)
    assert test.degrees_of_freedom == pytest.approx(reference.df) and test.significant is False and reference.pvalue > 0.05
    a, b = [0.101, 0.104, 0.099, 0.106], [0.130, 0.145, 0.138]
    reference = stats.ttest_ind(a, b, equal_var=False)
    test = welch_difference(a, b)
    assert test.interval == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-12)
    assert test.significant is True and reference.pvalue < 0.05

    single = welch_difference([0.1], [0.2, 0.3])
    assert (single.difference, single.interval, single.significant) == (pytest.approx(-0.15), None, None)
    constant = welch_difference([0.2, 0.2], [0.1, 0.1])
    assert constant.interval == pytest.approx((0.1, 0.1)) and constant.significant is True
    summary = spread([0.10, 0.12, 0.14])
    assert summary is not None and (summary.mean, summary.sd, summary.low, summary.high) == pytest.approx((0.12, 0.02, 0.10, 0.14))


def seeded(root: Path, method: str, finals: list[float], seconds_per_epoch: float = 1.0, lr: float = 0.1) -> list[Path]:
    """One run per seed of ``method``: train loss per pixel 0.5 at epoch 1, then its final value."""
    return [
        make_run(root / f"{method}-lr_{lr}-seed_{seed}", method, [0.5, final], seconds_per_epoch, lr=lr, seed=seed)
        for seed, final in enumerate(finals)
    ]


def test_seeds_are_grouped_aggregated_and_compared(tmp_path: Path) -> None:
    seeded(tmp_path, "kfac", [0.10, 0.12, 0.14], 2.0)
    seeded(tmp_path, "deflation", [0.11, 0.13, 0.15], 3.0)  # +0.01, with the same spread: not significant
    seeded(tmp_path, "adam", [0.20, 0.21, 0.22])  # +0.09 vs KFAC: significant
    make_run(tmp_path / "sgd", "sgd", [0.5, 0.3], 0.5)  # a single seed
    comparison = compare([tmp_path])
    (dataset,) = comparison.datasets
    assert [(g.method, g.name, g.seeds) for g in dataset.groups] == [
        ("kfac", "kfac-lr_0.1", [0, 1, 2]), ("deflation", "deflation-lr_0.1", [0, 1, 2]),
        ("sgd", "sgd", [None]), ("adam", "adam-lr_0.1", [0, 1, 2]),
    ]
    kfac = dataset.groups[0]
    assert kfac.values("final_train_loss") == [0.10, 0.12, 0.14]
    final = kfac.stats["final_train_loss"]
    assert final is not None and (final.mean, final.sd, final.low, final.high) == pytest.approx((0.12, 0.02, 0.10, 0.14))
    assert kfac.stats["time_per_epoch"].mean == 2.0  # type: ignore[union-attr]
    # target: the worst final train loss, SGD's 0.3, reached by every run at epoch 2
    assert kfac.stats["seconds_to_target"].mean == 4.0 and dataset.groups[1].speedup_vs_kfac == pytest.approx(4.0 / 6.0)  # type: ignore[union-attr]

    verdicts = {(d.method, d.baseline): d for d in dataset.differences}
    deflation = verdicts[("deflation", "kfac")]
    expected = welch_difference_interval([0.11, 0.13, 0.15], [0.10, 0.12, 0.14])
    assert deflation.difference == pytest.approx(0.01) and deflation.interval == pytest.approx(expected)
    assert deflation.significant is False
    assert verdicts[("adam", "kfac")].significant is True and verdicts[("adam", "kfac")].difference == pytest.approx(0.09)
    assert verdicts[("kfac", "adam")].difference == pytest.approx(-0.09) and verdicts[("kfac", "adam")].significant is True
    assert verdicts[("sgd", "kfac")].significant is None and verdicts[("sgd", "kfac")].interval is None
    assert ("kfac", "kfac") not in verdicts and ("adam", "adam") not in verdicts

    write_report_json(comparison, tmp_path / "out" / "report.json")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    group = data["datasets"][0]["groups"][0]
    assert (group["method"], group["seeds"], group["values"]["final_train_loss"]) == ("kfac", [0, 1, 2], [0.10, 0.12, 0.14])
    assert group["stats"]["final_train_loss"]["sd"] == pytest.approx(0.02)
    item = next(c for c in data["comparisons"] if (c["method"], c["baseline"]) == ("deflation", "kfac"))
    assert item["difference"] == pytest.approx(0.01) and item["interval"] == pytest.approx(list(expected))
    assert item["significant"] is False and "Welch" in item["test"]
    single = next(c for c in data["comparisons"] if (c["method"], c["baseline"]) == ("sgd", "adam"))
    assert single["significant"] is None and single["interval"] is None

    console = Console(record=True, width=250)
    console.print(comparison_table(dataset), differences_table(dataset))
    text = console.export_text()
    assert "0.12 ± 0.02" in text and "0.1–0.14" in text and "3 (3/3)" not in text and "2 ± 0 (3/3)" in text
    assert "untested: a single seed" in text and "no significant difference" in text and "lower" in text

    write_figure2(comparison, tmp_path / "out" / "figure2.png")
    assert (tmp_path / "out" / "figure2.png").read_bytes().startswith(PNG_MAGIC)


def welch_difference_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    return tuple(stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95))  # type: ignore[return-value]


def test_group_curve_is_the_mean_with_a_min_max_band(tmp_path: Path) -> None:
    from fimbench.engines.comparison import group_curve

    make_run(tmp_path / "a-seed_0", "kfac", [0.4, 0.2, 0.1], 1.0, seed=0)
    make_run(tmp_path / "a-seed_1", "kfac", [0.6, 0.4], 3.0, seed=1)  # stopped after two epochs
    (group,) = compare([tmp_path]).datasets[0].groups
    curve = group_curve(group, "train_loss_per_pixel", "epoch")
    assert [pytest.approx(part) for part in ([1, 2], [0.5, 0.3], [0.4, 0.2], [0.6, 0.4])] == list(curve)
    xs, *_ = group_curve(group, "train_loss_per_pixel", "wall_time")
    assert xs == pytest.approx([2.0, 4.0])  # the mean training seconds of the seeds at each epoch


def test_sweep_of_one_setting_reports_every_seed_however_it_ended(tmp_path: Path) -> None:
    sweep = tmp_path / "runs"
    make_run(sweep / "kfac-lr_1e-1-seed_0", "kfac", [0.3, 0.2], 1.0, seed=0)
    make_run(sweep / "kfac-lr_1e-1-seed_1", "kfac", [0.3, 0.25], 1.0, seed=1, status="diverged")
    make_run(sweep / "adam-lr_1e-3-seed_0", "adam", [0.3, 0.2], 1.0, lr=1e-3, seed=0)
    make_run(sweep / "adam-lr_1e-2-seed_0", "adam", [0.3, 0.1], 1.0, lr=1e-2, seed=0, status="diverged")
    points = {"kfac": ["kfac-lr_1e-1-seed_0", "kfac-lr_1e-1-seed_1"], "adam": ["adam-lr_1e-3-seed_0", "adam-lr_1e-2-seed_0"]}
    manifest = {"dataset": "curves-synth", "methods": {m: {"points": {name: {} for name in names}} for m, names in points.items()}}
    (sweep / "sweep.json").write_text(json.dumps(manifest))
    kfac, adam = compare([sweep]).datasets[0].groups
    assert [run.status for run in kfac.runs] == ["completed", "diverged"] and kfac.seeds == [0, 1]
    assert [run.seed for run in kfac.counted] == [0] and kfac.stats["final_train_loss"].values == (0.2,)  # type: ignore[union-attr]
    console = Console(record=True, width=250)
    console.print(comparison_table(compare([sweep]).datasets[0]))
    text = console.export_text()
    assert "KFAC (diverged)" in text and "1 of 2" in text
    assert [run.run for run in adam.runs] == ["adam-lr_1e-3-seed_0"]  # two settings: the best fully completed one
