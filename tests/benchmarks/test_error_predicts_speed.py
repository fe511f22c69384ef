"""benchmarks/error_predicts_speed.py on synthetic inputs: a measure built to rank the methods as their time to
target does (ρ = +1, a tight interval) and one built the other way (ρ = −1), the target and time to target as
fimbench's report computes them, the bootstrap's seed, the default-rank rows, and the ``error:`` exit."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fimbench.engines.comparison import compare
from fimbench.engines.rundir import append_metrics, start_metrics, write_config, write_summary, write_sweep_manifest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import error_predicts_speed as eps  # noqa: E402

DATASET = "curves-synth"
SEEDS = (0, 1, 2)
EPOCHS = 20
SPEED = {"lanczos": 1.0, "deflation": 1.5, "kpsvd": 2.0, "kfac": 3.0}  # slowest to fastest
ADAM_SPEED = 0.5  # worse than every chosen method: it must not set the default target
COLUMNS = ("iteration", "layer", "method", "rank", "error1", "error2", "kl_forward", "kl_reverse", "direction_error",
           "direction_cosine", "subspace_alignment", "iterations", "seconds", "path")


def loss(speed: float, epoch: int) -> float:
    return 0.5 * 0.9 ** (speed * epoch)


def write_run(root: Path, method: str, seed: int, speed: float, epochs: int = EPOCHS) -> str:
    """One run directory as ``fimbench train`` leaves it (config.yaml, metrics.jsonl, summary.json), written
    by fimbench's own writers; one second per epoch."""
    name = f"{method}-lr_1e-1-seed_{seed}"
    folder = root / name
    folder.mkdir(parents=True)
    config = {"data": {"dataset": DATASET}, "optimizer": {"method": method, "lr": 0.1}, "training": {"seed": seed, "epochs": epochs}}
    write_config(folder, yaml.safe_dump(config))
    metrics = start_metrics(folder)
    for epoch in range(1, epochs + 1):
        per_pixel = loss(speed, epoch)
        append_metrics(metrics, {
            "kind": "epoch", "epoch": epoch, "step": 10 * epoch, "train_loss": 784 * per_pixel, "train_loss_per_pixel": per_pixel,
            "val_loss": 784 * per_pixel, "val_loss_per_pixel": per_pixel, "wall_time": float(epoch),
        })
    write_summary(folder, {"status": "completed", "dataset": DATASET, "method": method, "variant": method, "seed": seed,
                           "epochs": epochs, "device": "CPU"})
    return name


def make_figure2(root: Path, speeds: dict[str, float] | None = None, seeds: tuple[int, ...] = SEEDS) -> Path:
    """A ``fimbench reproduce figure2`` folder: ``runs/`` with one run per method and seed, ``sweep.json``
    naming them, and ``best/`` (not runs)."""
    runs = root / "runs"
    points: dict[str, dict[str, dict]] = {}
    for method, speed in (speeds or {**SPEED, "adam": ADAM_SPEED}).items():
        for seed in seeds:
            name = write_run(runs, method, seed, speed + 0.01 * seed)  # seed 0 is each method's slowest
            points.setdefault(method, {})[name] = {"seed": seed}
    write_sweep_manifest(runs, {"dataset": DATASET, "methods": {m: {"grid": {}, "points": p} for m, p in points.items()}})
    (runs / "best").mkdir()
    (runs / "best" / "kfac.yaml").write_text("optimizer: {method: kfac}\n")
    return root


def monotone(method: str, seed: int) -> float:
    """Larger for slower methods, in every seed: ranks the methods as their time to target does."""
    return 1.0 / SPEED[method] + 0.001 * seed


def write_errors(folder: Path, seed: int, methods: dict[str, tuple[int, ...]] | None = None,
                 columns: tuple[str, ...] = COLUMNS, noise_seed: int = 0) -> Path:
    """A ``fimbench fisher-error`` folder: layers 1 and 2 at iterations 0 and 20, and the network rows.
    ``error1``, ``direction_error`` grow with the time to target, ``kl_forward``, ``direction_cosine`` shrink;
    ``error2`` is noise. Lanczos is also measured at ranks 1 and 3, with values that would reverse the order."""
    methods = methods if methods is not None else {"kfac": (1,), "kpsvd": (1,), "deflation": (2,), "lanczos": (1, 2, 3), "shampoo": (1,)}
    noise = np.random.default_rng(1000 * noise_seed + seed)
    folder.mkdir(parents=True)
    rows = []
    for method, ranks in methods.items():
        for rank in ranks:
            value = monotone(method, seed) if method in SPEED else 0.5
            if method == "lanczos" and rank != 2:
                value = 100.0 + rank  # wrong rows: would make lanczos the best, not the worst
            for iteration in (0, 20):
                for layer in (1, 2, "network"):
                    offset = 0.1 * layer if isinstance(layer, int) else 0.0
                    rows.append({
                        "iteration": iteration, "layer": layer, "method": method, "rank": rank,
                        "error1": value + offset, "error2": "nan" if layer == "network" else noise.random(),
                        "kl_forward": 10.0 - value + offset, "kl_reverse": "nan" if iteration == 0 else value,
                        "direction_error": value, "direction_cosine": 1.0 - value, "subspace_alignment": noise.random(),
                        "iterations": 3, "seconds": 0.01, "path": "gram/kron",
                    })
        if method == "kfac":
            rows.append({**rows[-1], "method": "kfac+nicolaides", "error1": 1e6})  # two-level: ignored
    with (folder / "errors.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (folder / "summary.json").write_text(json.dumps({"seed": seed, "optimizer": "kfac", "dataset": DATASET}))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("inputs")
    return make_figure2(root / "figure2"), [write_errors(root / f"errors-{seed}", seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def report(inputs: tuple[Path, list[Path]]) -> dict:
    figure2, errors = inputs
    return eps.analyse(figure2, errors, resamples=200, seed=0)


def cell(report: dict, measure: str, scope: str, outcome: str) -> dict:
    row = next(r for r in report["correlations"] if r["measure"] == measure and r["scope"] == scope)
    return row["outcomes"][outcome]


def test_methods_are_those_in_both_inputs_at_paired_seeds(report: dict) -> None:
    assert report["methods"] == ["kfac", "kpsvd", "deflation", "lanczos"]  # not adam (no errors), not shampoo (no runs)
    assert report["seeds"] == {"paired": True, "errors": [0, 1, 2], "training": [0, 1, 2]}
    assert ("error2", "network") not in {(r["measure"], r["scope"]) for r in report["correlations"]}
    assert len(report["correlations"]) == 13


@pytest.mark.parametrize("outcome", eps.OUTCOMES)
def test_monotone_measure_gives_rho_one_with_a_tight_interval(report: dict, outcome: str) -> None:
    for measure, scope, expected in [("error1", "layers", 1.0), ("error1", "network", 1.0), ("direction_error", "layers", 1.0),
                                     ("kl_forward", "layers", -1.0), ("direction_cosine", "network", -1.0)]:
        result = cell(report, measure, scope, outcome)
        assert result["rho"] == pytest.approx(expected), (measure, scope)
        assert result["interval"] == pytest.approx([expected, expected])
        assert result["methods"] == 4 and result["undefined_resamples"] == 0
    assert cell(report, "error1", "layers", outcome)["predicting_fraction"] == 1.0  # lower is better: + predicts
    assert cell(report, "kl_forward", "layers", outcome)["predicting_fraction"] == 0.0
    assert cell(report, "direction_cosine", "layers", outcome)["predicting_fraction"] == 1.0  # higher is better: − predicts


def test_nan_cells_are_skipped_in_the_run_average(report: dict) -> None:
    kfac = next(row for row in report["per_method"] if row["method"] == "kfac")
    assert kfac["measures"]["kl_reverse/layers"] == pytest.approx(np.mean([monotone("kfac", s) for s in SEEDS]))
    assert kfac["measures"]["error1/layers"] == pytest.approx(np.mean([monotone("kfac", s) for s in SEEDS]) + 0.15)
    assert kfac["measures"]["error1/network"] == pytest.approx(np.mean([monotone("kfac", s) for s in SEEDS]))  # not the +1e6 row


def test_default_rank_rows_are_used(report: dict) -> None:
    lanczos = next(row for row in report["per_method"] if row["method"] == "lanczos")
    assert report["ranks"] == {"kfac": 1, "kpsvd": 1, "deflation": 2, "lanczos": 2}
    assert lanczos["rank"] == 2
    assert lanczos["per_seed_measures"]["1"]["error1/network"] == pytest.approx(monotone("lanczos", 1))  # not rank 1's 101


def test_method_without_its_default_rank_is_left_out(tmp_path: Path) -> None:
    run = eps.read_errors(write_errors(tmp_path / "e", 0, {"kfac": (1,), "lanczos": (1, 3)}))
    assert set(run.averages) == {"kfac"} and run.ranks["lanczos"] == [1, 3]
    assert any("default rank 2" in note for note in run.warnings)


def test_target_and_time_to_target_are_fimbench_reports(inputs: tuple[Path, list[Path]], report: dict) -> None:
    figure2, _ = inputs
    worst = loss(SPEED["lanczos"], EPOCHS)  # lanczos seed 0's final loss; adam is worse but not chosen
    assert report["target"]["value"] == worst and "lanczos seed 0" in report["target"]["source"]
    assert report["not_reached"]["count"] == 0
    reference = {(r.method, r.seed): r for r in compare([figure2 / "runs"], target=worst).datasets[0].results}
    for row in report["per_method"]:
        for seed, run in row["per_seed_runs"].items():
            expected = reference[(row["method"], int(seed))]
            assert run["epochs_to_target"] == expected.epochs_to_target
            assert run["seconds_to_target"] == expected.seconds_to_target
            assert run["final_train_loss"] == expected.final_train_loss
    kpsvd = next(row for row in report["per_method"] if row["method"] == "kpsvd")
    assert kpsvd["per_seed_runs"]["0"]["epochs_to_target"] == math.ceil(EPOCHS * SPEED["lanczos"] / SPEED["kpsvd"])


def test_a_target_not_reached_is_infinite_and_counted(inputs: tuple[Path, list[Path]]) -> None:
    figure2, errors = inputs
    target = loss(SPEED["deflation"] + 0.02, EPOCHS) * 0.999  # below every deflation and lanczos final loss
    result = eps.analyse(figure2, errors, target=target, resamples=0)
    assert result["target"] == {"value": target, "source": "--target", "unit": "train loss per pixel"}
    assert result["not_reached"]["count"] == 6
    lanczos = next(row for row in result["per_method"] if row["method"] == "lanczos")
    assert lanczos["outcomes"]["seconds_to_target"] == math.inf and lanczos["not_reached"] == 3
    assert "interval" not in cell(result, "error1", "layers", "seconds_to_target")
    assert cell(result, "error1", "layers", "final_train_loss")["rho"] == pytest.approx(1.0)


def test_bootstrap_is_reproducible_from_its_seed(inputs: tuple[Path, list[Path]]) -> None:
    figure2, errors = inputs
    first = eps.analyse(figure2, errors, resamples=100, seed=7)
    assert eps.analyse(figure2, errors, resamples=100, seed=7)["correlations"] == first["correlations"]
    generator = np.random.default_rng(0)
    measures, outcomes = generator.random((5, 3, 4)), generator.random((5, 3, 2))
    same = eps.bootstrap(measures, outcomes, True, 50, 3)
    np.testing.assert_array_equal(same, eps.bootstrap(measures, outcomes, True, 50, 3))
    assert not np.array_equal(same, eps.bootstrap(measures, outcomes, True, 50, 4), equal_nan=True)


def test_seed_sets_that_differ_are_resampled_independently(tmp_path: Path, inputs: tuple[Path, list[Path]]) -> None:
    figure2, errors = inputs
    result = eps.analyse(figure2, errors[:2], resamples=50)
    assert result["seeds"] == {"paired": False, "errors": [0, 1], "training": [0, 1, 2]}
    assert "independent" in result["bootstrap"]["resampling"]
    assert cell(result, "error1", "layers", "seconds_to_target")["interval"] == pytest.approx([1.0, 1.0])


def test_command_line_writes_json_and_markdown(tmp_path: Path, inputs: tuple[Path, list[Path]]) -> None:
    figure2, errors = inputs
    out, md = tmp_path / "out.json", tmp_path / "table.md"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "error_predicts_speed.py"), "--figure2", str(figure2), "--errors", ",".join(map(str, errors)),
         "--bootstrap", "50", "--seed", "1", "--out", str(out), "--markdown", str(md)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert report["command"].startswith("python benchmarks/error_predicts_speed.py --figure2")
    assert report["bootstrap"]["resamples"] == 50 and report["question"] == eps.QUESTION
    assert completed.stdout == md.read_text()
    assert "| error1 | layers | lower | +1.00 | [+1.00, +1.00] |" in completed.stdout
    assert "| lanczos | 2 |" in completed.stdout


def _bad_kl(root: Path) -> list[str]:
    errors = [write_errors(root / "e", 0, columns=tuple(c for c in COLUMNS if not c.startswith("kl_")))]
    return ["--figure2", str(make_figure2(root / "f")), "--errors", ",".join(map(str, errors))]


def _two_methods(root: Path) -> list[str]:
    errors = [write_errors(root / "e", 0, {"kfac": (1,), "kpsvd": (1,)})]
    return ["--figure2", str(make_figure2(root / "f", seeds=(0,))), "--errors", ",".join(map(str, errors))]


def _no_common(root: Path) -> list[str]:
    errors = [write_errors(root / "e", 0, {"shampoo": (1,)})]
    return ["--figure2", str(make_figure2(root / "f", seeds=(0,))), "--errors", ",".join(map(str, errors))]


def _no_figure2(root: Path) -> list[str]:
    return ["--figure2", str(root / "absent"), "--errors", str(write_errors(root / "e", 0))]


def _no_errors(root: Path) -> list[str]:
    return ["--figure2", str(make_figure2(root / "f", seeds=(0,))), "--errors", str(root / "absent")]


@pytest.mark.parametrize(("make", "message"), [
    (_bad_kl, "lacks the column(s) kl_forward, kl_reverse"),
    (_two_methods, "at least 3 methods"),
    (_no_common, "no method has both"),
    (_no_figure2, "does not exist"),
    (_no_errors, "does not exist"),
])
def test_bad_input_is_one_error_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str) -> None:
    assert eps.main(make(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and message in captured.err
