"""``fimbench fisher-error`` (Figure 1) through Typer's test runner on a small curves-synth set."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fimbench.cli import app as fimbench_app
from fimbench.cli.common import console
from fimbench.cli.fisher_error import fisher_error
from fimbench.engines.fisher_error import CSV_COLUMNS, FIGURE_PANEL, figure_layout
from fimbench.engines.fisher_error.records import MEASURES
from fimbench.fisher.subspace import DEFAULT_TOP_K

runner = CliRunner()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("fisher-error")(fisher_error)


@app.callback()
def _root() -> None:
    """A local app: fimbench.cli registers the command itself."""


DPI = 120  # plots.save_png
METHODS = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]



@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that rich does not wrap the tables' headers."""
    monkeypatch.setattr(console, "_width", 200)


@pytest.fixture
def small(tmp_path: Path) -> list[str]:
    """Common options: a 600-image curves-synth set in tmp_path, batch 32."""
    config = tmp_path / "small.yaml"
    config.write_text("data:\n  synth_train: 600\n  synth_test: 50\n", encoding="utf-8")
    return ["fisher-error", "--dataset", "curves-synth", "--config", str(config), "--data-dir", str(tmp_path / "data"),
            "--batch-size", "32", "--device", "cpu"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def expected_size(layers: int) -> tuple[int, int]:
    rows, columns = figure_layout(layers)
    return round(columns * FIGURE_PANEL[0] * DPI), round(rows * FIGURE_PANEL[1] * DPI)


def test_run_writes_table_csv_summary_and_figure(small: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, small + ["--layer", "5,6", "--iterations", "4", "--every", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("Error 1", "E1 med", "E2<KFAC", "KFAC", "KPSVD", "Deflation", "Lanczos", "KFAC-corrected", "gram/"):
        assert text in result.stdout

    with open(out / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CSV_COLUMNS == (
        "iteration", "layer", "method", "rank", "error1", "error2", "kl_forward", "kl_reverse", "direction_error",
        "direction_cosine", "subspace_alignment", "iterations", "seconds", "path",
    )
    for r in rows:  # every method of the paper damps and inverts at rank ≤ 2: all five measures exist, in range
        assert float(r["kl_forward"]) > 0 and float(r["kl_reverse"]) > 0 and float(r["direction_error"]) > 0, r
        assert -1.0 <= float(r["direction_cosine"]) <= 1.0 and 0.0 <= float(r["subspace_alignment"]) <= 1.0, r
    assert len(rows) == 3 * (2 + 1) * 5  # measurements at 0, 2, 4 × (layers + network) × methods
    network = [r for r in rows if r["layer"] == "network"]
    rows = [r for r in rows if r["layer"] != "network"]
    assert len(network) == 3 * 5 and all(r["error2"] == "nan" and r["path"] == "gram" for r in network)
    blocks = {(r["iteration"], r["method"]): [] for r in rows}
    for r in rows:
        blocks[(r["iteration"], r["method"])].append(float(r["error1"]))
    for r in network:  # the cross-layer error adds the off-diagonal blocks to the blocks' own errors
        assert 0.0 < float(r["error1"]) < 1.0 and float(r["error1"]) > min(blocks[(r["iteration"], r["method"])])
    assert {(int(r["iteration"]), int(r["layer"])) for r in rows} == {(i, layer) for i in (0, 2, 4) for layer in (5, 6)}
    assert {r["method"] for r in rows} == set(METHODS)
    assert all(0.0 <= float(r["error1"]) < 1.0 and 0.0 <= float(r["error2"]) < 1.0 for r in rows)
    assert {r["path"] for r in rows} <= {"gram/kron", "gram/dense", "gram/lanczos"}
    assert {r["rank"] for r in rows if r["method"] in ("kfac", "kpsvd")} == {"1"}

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["measurements"] == 3 and summary["layers"] == [5, 6]
    assert summary["layer_shapes"]["5"] == {"p": 51, "q": 25, "block_size": 1275}
    by_method = {s["method"]: s for s in summary["summary"]}
    assert set(by_method) == set(METHODS) and by_method["kfac"]["beats_kfac_error1"] is None
    assert by_method["deflation"]["error1_max"] <= by_method["kfac"]["error1_max"]
    assert len(summary["summary_by_layer"]) == (2 + 1) * 5 and len(summary["training_loss"]) == 4
    assert summary["summary_by_layer"][-1]["layer"] == "network" and by_method["kfac"]["network_error1_median"] > 0
    assert "net E1 med" in result.stdout and "net KL rev" in result.stdout and "damped measures at λ = 0.01, k = 10" in result.stdout
    assert set(by_method["kfac"]["measures_median"]) == set(by_method["kfac"]["network_measures_median"]) == set(MEASURES)
    assert summary["damping"] == 0.01 and summary["top_k"] == 10

    assert png_size(out / "figure1.png") == expected_size(3) == (3024, 936)  # layers 5, 6 and the network × 7 metrics
    import matplotlib.image

    assert matplotlib.image.imread(out / "figure1.png").shape[:2] == (936, 3024)


def test_all_layers_and_lanczos_ranks(small: list[str], tmp_path: Path) -> None:
    out = tmp_path / "all"
    args = small + ["--layer", "all", "--methods", "kfac,deflation", "--lanczos-rank", "3", "--iterations", "0",
                    "--batch-size", "16", "--optimizer", "sgd", "--empirical-fisher", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (12 + 1) * (2 + 3)  # (12 Linear layers + network) × (kfac, deflation, lanczos at ranks 1, 2, 3)
    rows = [r for r in rows if r["layer"] != "network"]
    lanczos = {int(r["layer"]): [] for r in rows}
    for r in rows:
        if r["method"] == "lanczos":
            lanczos[int(r["layer"])].append((int(r["rank"]), float(r["error1"])))
    for layer, errors in lanczos.items():
        ranked = [error for _, error in sorted(errors)]
        assert all(later <= earlier + 1e-5 for earlier, later in zip(ranked, ranked[1:])), layer
    beyond_closed_form = [r for r in rows if r["method"] == "lanczos" and r["rank"] == "3"]  # no closed-form damped solve
    assert beyond_closed_form and all(r[name] == "nan" for r in beyond_closed_form for name in MEASURES)
    assert all(r[name] != "nan" for r in rows if r["rank"] != "3" for name in MEASURES)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["optimizer"] == "sgd" and summary["fisher"].startswith("empirical")
    assert png_size(out / "figure1.png") == expected_size(13) == (3024, 4056)  # 13 rows × 7 columns


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "kfac,foo"], "error: unknown method 'foo'"),
        (["--methods", "kfac,sgd"], "error: unknown method 'sgd'"),
        (["--layer", "13"], "error: layer 13 is out of range: the curves-synth autoencoder has 12 Linear layers (1-12)"),
        (["--layer", "five"], "error: --layer must be 'all' or Linear layer numbers"),
        (["--optimizer", "rmsprop"], "error: unknown optimizer 'rmsprop'"),
        (["--every", "0"], "error: --iterations must be ≥ 0 and --every ≥ 1"),
        (["--lanczos-rank", "0"], "error: --lanczos-rank must be at least 1"),
        (["--top-k", "0"], "error: --top-k must be at least 1"),
        (["--batch-size", "100000"], "error: batch size 100000 exceeds the 480 training examples"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(small: list[str], tmp_path: Path, extra: list[str], message: str) -> None:
    result = runner.invoke(app, small + extra + ["--out", str(tmp_path / "never")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "never").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    result = runner.invoke(fimbench_app, ["fisher-error", "--dataset", "cifar", "--out", str(tmp_path / "never")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--dataset' / '-d'")
    assert "'cifar' is not one of 'curves', 'mnist', 'faces', 'curves-synth'" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "never").exists()


def test_exact_references_and_their_network_error(small: list[str], tmp_path: Path) -> None:
    """exact-ng-block: per-block error 0 and a nonzero network error; exact-ng: 0 in both."""
    out = tmp_path / "exact"
    args = small + ["--layer", "4,5,6", "--methods", "kfac,exact-ng,exact-ng-block", "--iterations", "2", "--every", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "exact NG" in result.stdout and "exact NG (blocks)" in result.stdout
    with open(out / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * (3 + 1) * 3
    exact = ("0.0", "0.0", "0.0", "1.0", "1.0")  # F̂ = F: kl_forward, kl_reverse, direction_error, cosine, alignment
    for r in rows:
        if r["method"].startswith("exact") and r["layer"] != "network":
            assert (r["error1"], r["error2"], r["rank"], r["path"]) == ("0.0", "0.0", "0", "exact")
            assert tuple(r[name] for name in MEASURES) == exact
    network = {(r["iteration"], r["method"]): r for r in rows if r["layer"] == "network"}
    for iteration in ("0", "2"):
        assert float(network[(iteration, "exact-ng")]["error1"]) == 0.0
        assert tuple(network[(iteration, "exact-ng")][name] for name in MEASURES) == exact
        block, kfac = network[(iteration, "exact-ng-block")], network[(iteration, "kfac")]
        assert 0.0 < float(block["error1"]) < float(kfac["error1"])
        assert 0.0 < float(block["kl_reverse"]) < float(kfac["kl_reverse"])  # dropping the cross-layer blocks only
    assert png_size(out / "figure1.png") == expected_size(4)


def test_errors_along_a_preconditioned_methods_own_path(small: list[str], tmp_path: Path) -> None:
    """``--optimizer kfac``: K-FAC (its preset: its preconditioner, then momentum SGD) trains the network
    between the measurements, so the losses differ from Adam's path; ``muon``, which takes its own step, works
    too."""
    def run(optimizer: str) -> dict:
        out = tmp_path / optimizer
        result = runner.invoke(app, [*small, "--layer", "5", "--methods", "kfac,shampoo", "--optimizer", optimizer,
                                     "--iterations", "4", "--every", "2", "--seed", "0", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        return json.loads((out / "summary.json").read_text())

    kfac, adam, muon = run("kfac"), run("adam"), run("muon")
    assert kfac["optimizer"] == "kfac" and muon["optimizer"] == "muon"
    losses = {name: [row["loss"] for row in summary["training_loss"]] for name, summary in (("kfac", kfac), ("adam", adam), ("muon", muon))}
    assert all(len(values) == 4 for values in losses.values())
    assert losses["kfac"][0] == losses["adam"][0] == losses["muon"][0]  # the same network and first batch
    assert losses["kfac"][1:] != losses["adam"][1:] and losses["muon"][1:] != losses["adam"][1:]
    kfac_rows = [r for r in csv.DictReader((tmp_path / "kfac" / "errors.csv").open(encoding="utf-8"))]
    assert all(r[name] != "nan" for r in kfac_rows for name in MEASURES)  # measured at K-FAC's own λ


def test_top_k_and_damping_options(small: list[str], tmp_path: Path) -> None:
    """``--top-k`` and ``--damping`` reach the measures; the help states the default k."""
    help_text = runner.invoke(app, ["fisher-error", "--help"], terminal_width=400).stdout
    assert f"default: {DEFAULT_TOP_K}," in " ".join(help_text.split())
    out = tmp_path / "k"
    result = runner.invoke(app, [*small, "--layer", "5", "--methods", "kfac", "--iterations", "0", "--top-k", "3",
                                 "--damping", "0.5", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top_k"] == 3 and summary["damping"] == 0.5

