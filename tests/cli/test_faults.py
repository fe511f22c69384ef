"""The CLI under faults and in scripts: exit statuses, one ``error:`` line, ``--json``/``--quiet``, run
directories, ``--set``, caches, signals.

Every fault test asserts the exit status, exactly one ``error:`` line on stderr, no traceback, and that
every file left behind is whole. In-process (Typer's runner) wherever a signal is not needed.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import FIMBENCH, QUIET_ENV, wait_for
from typer.testing import CliRunner, Result

from fimbench import exit_codes
from fimbench.cli import app

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
runner = CliRunner()


# ----------------------------------------------------------------------------------------------- helpers


def tiny_config(tmp_path: Path, synth_train: int = 640, **training: Any) -> Path:
    """configs/smoke.yaml on a small curves-synth set and a narrow autoencoder: a run takes well under a second."""
    config = yaml.safe_load(SMOKE.read_text())
    config["data"].update({"synth_train": synth_train, "synth_test": 64, "data_dir": str(tmp_path / "data")})
    config["model"] = {"layers": [784, 16, 784]}
    config["training"].update({"batch_size": 64, "epochs": 2, **training})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def files_are_whole(folder: Path) -> None:
    """Every JSON, JSON-lines and YAML file below ``folder`` parses, and no temporary file is left."""
    for path in folder.rglob("*"):
        assert not path.name.endswith((".tmp", ".part")), f"left over: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())


def error_line(stderr: str, stdout: str, status: int, exit_code: int) -> str:
    """The one ``error:`` line of a failed command (and no traceback anywhere)."""
    assert exit_code == status, stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stdout + stderr
    return errors[0]


def fault(result: Result, status: int = exit_codes.USAGE) -> str:
    return error_line(result.stderr, result.stdout, status, result.exit_code)


def invoke(args: Sequence[str]) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


# ----------------------------------------------------------------------------------------------- exit statuses


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--no-such-option"], "No such option: --no-such-option"),
        (["train", "--dataset", "cifar"], "'cifar' is not one of 'curves', 'mnist', 'faces', 'curves-synth'"),
        (["cost-profile", "--dataset", "cifar"], "'cifar' is not one of"),
        (["trian"], "No such command 'trian'"),
        (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    line = fault(invoke(args))
    assert message in line and "--help" in line


def test_diverged_run_exits_3_and_its_json_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(["train", "-c", tiny_config(tmp_path), "-m", "sgd", "--lr", "1e20", "--out", out, "--json"])
    assert "non-finite loss" in fault(result, exit_codes.DIVERGED)
    document = json.loads(result.stdout)
    assert document["status"] == "diverged" and document["run_dir"] == str(out)
    assert document["diverged_at_step"] >= 1
    files_are_whole(out)


class _FailingRunner:
    """A sweep runner whose every point ends at once without a summary: a failed worker."""

    def __init__(self, jobs: int = 1, *, worker: Any) -> None:
        self.states: list[Any] = []

    def submit(self, states: Sequence[Any]) -> None:
        self.states = list(states)

    def poll(self) -> list[tuple[Any, str | None]]:
        ended, self.states = [(state, "worker exited with status 1: boom") for state in self.states], []
        return ended

    def close(self) -> None:
        self.states = []


def test_sweep_with_failed_points_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fimbench.engines.sweep.LocalRunner", _FailingRunner)
    out = tmp_path / "sw"
    result = invoke(["sweep", "-c", tiny_config(tmp_path), "-m", "sgd", "--grid", "lr=1e-3,1e-4", "--out", out, "--json"])
    assert "2 point(s) failed" in fault(result, exit_codes.SWEEP_FAILED)
    assert result.stderr.count("failed: sgd-lr_") == 2
    document = json.loads(result.stdout)
    assert [point["status"] for point in document["points"]] == ["failed", "failed"]
    files_are_whole(out)


def test_interrupt_exits_130_and_keeps_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fimbench.cli.train import RichTrainProgress

    def interrupt_in_epoch_two(self: Any, step: int, epoch: int, loss: float, steps_per_second: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RichTrainProgress, "step", interrupt_in_epoch_two)
    out = tmp_path / "run"
    result = invoke(["train", "-c", tiny_config(tmp_path), "-m", "sgd", "--out", out, "--json"])
    assert fault(result, exit_codes.INTERRUPTED).startswith("error: interrupted; what was logged is kept in")
    assert json.loads(result.stdout)["status"] == "interrupted"
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    files_are_whole(out)


def test_exit_statuses_are_in_the_help() -> None:
    for args in (["--help"], ["train", "--help"], ["sweep", "--help"]):
        text = " ".join(invoke(args).stdout.split())
        assert "Exit status: 0 success; 2 usage error or bad input; 3 run diverged" in text
        assert "4 a sweep finished with failed points; 5 internal error (a bug: the traceback is in crash.log); 130 interrupted" in text


# ----------------------------------------------------------------------------------------------- --json and --quiet


def test_train_json_is_the_only_stdout(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(["train", "-c", tiny_config(tmp_path), "-m", "kfac", "--out", out, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "completed" and document["run_dir"] == str(out) and document["epochs"] == 2
    assert document == {"run_dir": str(out), **json.loads((out / "summary.json").read_text())}
    assert "val loss" in result.stderr and "curvature work per epoch" in result.stderr


def test_train_quiet_prints_the_summary_table_only(tmp_path: Path) -> None:
    result = invoke(["train", "-c", tiny_config(tmp_path), "-m", "kfac", "--out", tmp_path / "run", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "val loss" in result.stdout
    assert "steps/s" not in result.stdout and "curvature work" not in result.stdout and "results in" not in result.stdout
    assert result.stderr == ""


def test_every_command_has_json(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert invoke(["train", "-c", config, "-m", "adam", "--out", run, "-q"]).exit_code == 0
    commands = {
        "fisher-error": ["fisher-error", "-c", config, "--iterations", "2", "--every", "2", "--batch-size", "32",
                         "--layer", "1", "-m", "kfac", "--out", tmp_path / "fe", "--json"],
        "cost-profile": ["cost-profile", "--widths", "8", "--batches", "8", "-m", "kfac", "--repeats", "1",
                         "--device", "cpu", "--out", tmp_path / "cost", "--json"],
        "sweep": ["sweep", "-c", config, "-m", "sgd", "--grid", "lr=1e-3", "--out", tmp_path / "sw", "--dry-run", "--json"],
        "report": ["report", run, "--json"],
    }
    documents = {}
    for name, args in commands.items():
        result = invoke(args)
        assert result.exit_code == 0, (name, result.output)
        documents[name] = json.loads(result.stdout)
    assert documents["fisher-error"]["files"]["summary.json"] == str(tmp_path / "fe" / "summary.json")
    assert documents["cost-profile"]["run_dir"] == str(tmp_path / "cost") and "exponents" in documents["cost-profile"]
    assert [point["status"] for point in documents["sweep"]["points"]] == ["pending"]
    assert documents["report"]["datasets"][0]["results"][0]["method"] == "adam"


# ----------------------------------------------------------------------------------------------- run directories


def test_train_refuses_an_existing_run_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path)
    assert invoke(["train", "-c", config, "-m", "sgd", "--out", out, "-q"]).exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    again = invoke(["train", "-c", config, "-m", "adam", "--out", out])
    assert "already holds a run; pass --overwrite" in fault(again)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # nothing lost

    replaced = invoke(["train", "-c", config, "-m", "adam", "--out", out, "--overwrite", "-q"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "summary.json").read_text())["method"] == "adam"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    files_are_whole(out)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "-c", "CONFIG"],
        ["fisher-error", "-c", "CONFIG", "--iterations", "0"],
        ["cost-profile", "--widths", "8", "--batches", "8", "--repeats", "1"],
        ["sweep", "-c", "CONFIG", "-m", "sgd", "--grid", "lr=1e-3"],
    ],
)
def test_an_out_that_cannot_be_created_is_one_line(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "some_file"
    blocker.write_text("not a directory\n")
    config = tiny_config(tmp_path)
    args = [str(config) if arg == "CONFIG" else arg for arg in command]
    line = fault(invoke([*args, "--out", blocker / "sub"]))
    assert line == f"error: cannot create --out {blocker / 'sub'}: {blocker} is not a directory"
    assert blocker.read_text() == "not a directory\n"


def test_report_out_that_cannot_be_created(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke(["train", "-c", tiny_config(tmp_path), "-m", "sgd", "--out", run, "-q"]).exit_code == 0
    blocker = tmp_path / "some_file"
    blocker.write_text("x")
    assert "is not a directory" in fault(invoke(["report", run, "--out", blocker / "sub"]))


def test_bad_input_leaves_no_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    line = fault(invoke(["train", "-d", "faces", "--data-dir", tmp_path / "empty", "--out", out]))
    assert "fimbench download-data faces" in line
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------------------------- --set


def test_set_reaches_model_keys_and_null(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "-c", tiny_config(tmp_path), "-m", "kfac", "--out", out, "-q",
            "--set", "model.layers=[784, 8, 784]", "--set", "model.activation=tanh", "--set", "optimizer.kl_clip=null",
            "--set", "training.max_steps=3", "--set", "optimizer.damping=1e-2"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"] == {"layers": [784, 8, 784], "activation": "tanh", "likelihood": None, "architecture": "mlp"}
    assert resolved["optimizer"]["kl_clip"] is None and resolved["optimizer"]["damping"] == 0.01
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_set_keys_come_from_the_config_dataclasses(tmp_path: Path) -> None:
    """Every field of every config section can be set (here: to its own default)."""
    import dataclasses

    from fimbench.cli.options import with_sets
    from fimbench.engines.config import NULL, SECTIONS, RunConfig, load_config

    specs = [
        f"{section}.{field.name}={json.dumps(getattr(cls(), field.name))}"
        for section, cls in SECTIONS.items()
        for field in dataclasses.fields(cls)
    ]
    overrides = with_sets({}, specs)
    assert len(overrides) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert overrides["model.layers"] is NULL and overrides["optimizer.lr"] == 0.01
    assert load_config(None, overrides) == RunConfig()  # every preset value overridden by its default


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("optimizer.lrr=0.1", "unknown config key 'optimizer.lrr' in the command line; known keys: method, lr,"),
        ("optimiser.lr=0.1", "unknown config section 'optimiser' in --set optimiser.lr=0.1; expected one of data, "
                             "model, optimizer, training; did you mean 'optimizer'?"),
        ("lr=0.1", "--set takes SECTION.KEY=VALUE"),
        ("optimizer.lr", "--set takes SECTION.KEY=VALUE"),
        ("training.batch_size=large", "config key 'training.batch_size' in the command line must be of type int"),
        ("model.layers=[784, 8", "--set model.layers: VALUE is not valid YAML"),
        ("methods.kfac=1", "unknown config section 'methods'"),
    ],
)
def test_set_errors(tmp_path: Path, spec: str, message: str) -> None:
    line = fault(invoke(["train", "-c", tiny_config(tmp_path), "--set", spec, "--out", tmp_path / "run"]))
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "run").exists()


def test_set_suggests_the_closest_key(tmp_path: Path) -> None:
    line = fault(invoke(["train", "--set", "optimizer.dampnig=1", "--out", tmp_path / "run"]))
    assert line.endswith("did you mean 'optimizer.damping'?")
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  activaton: tanh\n")
    assert fault(invoke(["train", "-c", bad])).endswith("did you mean 'model.activation'?")


def test_set_and_an_option_for_the_same_key(tmp_path: Path) -> None:
    line = fault(invoke(["train", "--lr", "0.1", "--set", "optimizer.lr=0.2", "--out", tmp_path / "run"]))
    assert line == "error: optimizer.lr given both by an option and by --set; give it once"


def test_set_on_sweep_reaches_every_point(tmp_path: Path) -> None:
    result = invoke(["sweep", "-c", tiny_config(tmp_path), "-m", "sgd,adam", "--grid", "lr=1e-3", "--dry-run", "--json",
                     "--set", "model.layers=[784,4,784]", "--out", tmp_path / "sw"])
    assert result.exit_code == 0, result.output
    from fimbench.cli.options import with_sets
    from fimbench.engines.sweep import plan_sweep

    plan = plan_sweep(tmp_path / "sw", ["sgd", "adam"], {"lr": [1e-3]}, config_path=tiny_config(tmp_path),
                      overrides=with_sets({}, ["model.layers=[784,4,784]"]))
    assert {tuple(point.config.model.layers or ()) for point in plan.points} == {(784, 4, 784)}
    assert len(json.loads(result.stdout)["points"]) == 2


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {batch_size: 64\noptimizer: [")
    assert "malformed YAML" in fault(invoke(["train", "-c", bad, "--out", tmp_path / "run"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("momentum=0.9", "--grid takes KEY=V1,V2,... with KEY one of lr, damping, clip"),
        ("lr=fast", "--grid lr: values must be numbers"),
        ("lr=-1", "--grid lr: give one or more positive numbers"),
    ],
)
def test_bad_grid(tmp_path: Path, grid: str, message: str) -> None:
    result = invoke(["sweep", "-c", tiny_config(tmp_path), "-m", "sgd", "--grid", grid, "--out", tmp_path / "sw"])
    assert message in fault(result)
    assert not (tmp_path / "sw").exists()


def test_missing_data(tmp_path: Path) -> None:
    for command in (["train"], ["fisher-error"], ["sweep", "-m", "sgd", "--grid", "lr=1e-3"]):
        result = invoke([*command, "-d", "mnist", "--data-dir", tmp_path / "store", "--out", tmp_path / "out"])
        assert "dataset 'mnist' is not in" in fault(result) and "fimbench download-data mnist" in result.stderr
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- vocabulary


def test_one_vocabulary_across_commands() -> None:
    helps = {command: " ".join(runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).stdout.split())
             for command in ("train", "fisher-error", "cost-profile", "sweep")}
    for command in ("fisher-error", "cost-profile", "sweep"):
        assert "--methods -m" in helps[command], command
    for command in ("train", "fisher-error"):
        assert "--empirical-fisher --true-fisher" in helps[command], command
    for command, text in helps.items():
        assert "<curves|mnist|faces|curves-synth>" in text, command
    for command in ("train", "sweep"):
        assert "--set" in helps[command] and "SECTION.KEY=VALUE" in helps[command], command


def test_cost_profile_accepts_every_dataset(tmp_path: Path) -> None:
    result = invoke(["cost-profile", "-d", "curves-synth", "-m", "kfac", "--repeats", "1", "--device", "cpu",
                     "--out", tmp_path / "cost", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dataset"] == "curves-synth" and document["layers"][0] == 784


def test_choice_names_match_the_engines() -> None:
    from fimbench import data
    from fimbench.curvature import APPROXIMATIONS
    from fimbench.methods import Method
    from fimbench.names import DATASETS, KRONECKER_METHODS, METHODS

    assert METHODS == tuple(method.value for method in Method)
    assert set(KRONECKER_METHODS) < {method.value for method in APPROXIMATIONS}  # and Shampoo's Kronecker product
    assert DATASETS == data.DATASETS and set(data.DOWNLOADABLE) < set(DATASETS)


# ----------------------------------------------------------------------------------------------- caches


@pytest.fixture
def curves_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A data directory holding a tiny CURVES imported from ``raw.mat`` (30 + 10 rows): (store, raw file)."""
    import numpy as np
    import scipy.io

    from fimbench import data
    from fimbench.data import parse

    monkeypatch.setattr(parse, "EXPECTED_ROWS", {**parse.EXPECTED_ROWS, "curves": {"bdata": 30, "bdatatest": 10}})
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw.mat"
    scipy.io.savemat(raw, {"bdata": rng.random((30, 784)), "bdatatest": rng.random((10, 784))})
    store = tmp_path / "store"
    data.download_dataset("curves", store, source=str(raw))
    return store, raw


def _train_on(store: Path, out: Path) -> Result:
    return invoke(["train", "-d", "curves", "--data-dir", store, "--batch-size", "8", "--max-steps", "2", "-m", "sgd",
                   "--set", "model.layers=[784,8,784]", "--out", out, "-q"])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cache_is_rebuilt_from_the_raw_file(curves_store: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    from fimbench import data

    store, _ = curves_store
    cache = store / "curves.pt"
    good = cache.read_bytes()
    manifest = json.loads((store / "curves.json").read_text())
    assert manifest["processed"]["sha256"] == hashlib.sha256(good).hexdigest()
    if damage == "truncate":
        cache.write_bytes(good[: len(good) // 2])
    else:
        cache.write_bytes(good[:-64] + bytes(64))  # same size, different bytes
    result = _train_on(store, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert data.read_manifest("curves", store) is not None
    assert data.load_dataset("curves", store).train.shape == (24, 784)
    files_are_whole(store)


def test_corrupt_cache_without_its_raw_file_names_the_fetch_command(curves_store: tuple[Path, Path], tmp_path: Path) -> None:
    store, raw = curves_store
    (store / "curves.pt").write_bytes((store / "curves.pt").read_bytes()[:100])
    raw.unlink()
    line = fault(_train_on(store, tmp_path / "run"))
    assert line.startswith(f"error: the cache {store / 'curves.pt'} of 'curves' does not match its manifest")
    assert line.endswith(f"fetch it again with: fimbench download-data curves --force --data-dir {store}")
    assert not (tmp_path / "run").exists()


def test_damaged_curves_synth_cache_is_generated_again(tmp_path: Path) -> None:
    from fimbench import data

    first = data.load_dataset("curves-synth", tmp_path, synth_train=40, synth_test=10)
    (cache,) = tmp_path.glob("curves-synth-*.pt")
    cache.write_bytes(cache.read_bytes()[:50])
    again = data.load_dataset("curves-synth", tmp_path, synth_train=40, synth_test=10)
    assert all(a.equal(b) for a, b in zip((first.train, first.test), (again.train, again.test)))
    manifest = json.loads(cache.with_suffix(".json").read_text())
    assert manifest["bytes"] == cache.stat().st_size
    files_are_whole(tmp_path)


# ----------------------------------------------------------------------------------------------- report on a folder


def test_report_finds_runs_and_sweeps_below_a_folder(tmp_path: Path) -> None:
    from helpers import make_run

    folder = tmp_path / "runs"
    make_run(folder / "loop" / "seed0-kfac", "kfac", [0.30, 0.20], 2.0)
    make_run(folder / "loop" / "deeper" / "adam", "adam", [0.40, 0.25], 1.0)
    sweep = folder / "sweeps" / "sw"
    make_run(sweep / "sgd-lr_1e-3", "sgd", [0.50, 0.45], 0.5, lr=1e-3)  # two settings: two groups
    make_run(sweep / "sgd-lr_1e-2", "sgd", [0.50, 0.35], 0.5, lr=1e-2)
    (sweep / "sweep.json").write_text(json.dumps({"methods": {"sgd": {"points": {"sgd-lr_1e-3": {}, "sgd-lr_1e-2": {}}}}}))
    result = invoke(["report", folder, "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["datasets"][0]["results"]
    assert sorted((entry["method"], entry["run"]) for entry in results) == [
        ("adam", "adam"), ("kfac", "seed0-kfac"), ("sgd", "sgd-lr_1e-2")  # the sweep's best point only
    ]


def test_report_on_a_folder_without_runs(tmp_path: Path) -> None:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    line = fault(invoke(["report", tmp_path / "empty"]))
    assert line.endswith("nor a sweep directory (sweep.json), and holds none below it")


# ----------------------------------------------------------------------------------------------- help and tables


def test_download_data_help_keeps_its_default_and_env_var() -> None:
    text = " ".join(runner.invoke(app, ["download-data", "--help"], env={"COLUMNS": "250"}).stdout.split())
    assert "Dataset cache directory (default: the per-user cache directory). [env var: FIMBENCH_DATA]" in text


def test_long_training_table_is_thinned_unless_full_table(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, synth_train=160, epochs=45)  # 2 steps per epoch
    thinned = invoke(["train", "-c", config, "-m", "sgd", "--out", tmp_path / "a", "-q"])
    assert thinned.exit_code == 0, thinned.output
    epochs = [int(line.split("│")[1]) for line in thinned.stdout.splitlines() if line.startswith("│")]
    assert len(epochs) == 21 and epochs[0] == 1 and epochs[-1] == 45 and epochs == sorted(set(epochs))
    assert "21 of 45 epochs (all in metrics.jsonl; --full-table shows every one)" in " ".join(thinned.stdout.split())
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 45
    full = invoke(["train", "-c", config, "-m", "sgd", "--out", tmp_path / "b", "-q", "--full-table"])
    assert [int(line.split("│")[1]) for line in full.stdout.splitlines() if line.startswith("│")] == list(range(1, 46))


def test_tables_stay_whole_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    """Typer's runner captures the output (not a terminal, 80 columns): no cell is cut to '…'."""
    result = invoke(["fisher-error", "-c", tiny_config(tmp_path), "--layer", "1", "--iterations", "2", "--every", "2",
                     "--batch-size", "32", "--out", tmp_path / "fe"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    header = next(line for line in result.stdout.splitlines() if "E1 med" in line)
    assert len(header) > 80 and all(name in header for name in ("E1<KFAC", "E2<KFAC", "iters", "paths"))
    assert "KFAC-corrected" in result.stdout and "iteration" in result.stdout


# ----------------------------------------------------------------------------------------------- processes and signals


def _logged_epochs(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_help_and_version_import_no_torch_matplotlib_or_scipy() -> None:
    script = (
        "import sys\n"
        "from fimbench.cli import app\n"
        "for argv in (['--help'], ['--version'], ['reproduce', 'figure2', '--help'], *([c, '--help'] for c in "
        "('train', 'fisher-error', 'cost-profile', 'sweep', 'report', 'reproduce', 'download-data'))):\n"
        "    try:\n"
        "        app(argv, prog_name='fimbench')\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, argv\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=QUIET_ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "heavy: []"


def test_shell_completion(tmp_path: Path) -> None:
    env = {**QUIET_ENV, "_FIMBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "fimbench train --dataset ", "COMP_CWORD": "3"}
    completed = subprocess.run([FIMBENCH], capture_output=True, text=True, env=env, timeout=60)
    assert completed.stdout.split() == ["curves", "mnist", "faces", "curves-synth"]
    installed = subprocess.run([FIMBENCH, "--install-completion", "bash"], capture_output=True, text=True,
                               env={**QUIET_ENV, "HOME": str(tmp_path)}, timeout=60)
    assert installed.returncode == 0, installed.stderr
    assert "_FIMBENCH_COMPLETE=complete_bash" in (tmp_path / ".bash_completions" / "fimbench.sh").read_text()


def _start_training(tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    config = tiny_config(tmp_path, epochs=500)
    args = [FIMBENCH, "train", "-c", config, "-m", "kfac", "--out", out, "--json"]
    return subprocess.Popen([str(arg) for arg in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET_ENV)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_or_termination_during_a_run(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C, and SIGTERM (kill, timeout, SLURM's time limit) alike: interrupted after a whole epoch."""
    out = tmp_path / "run"
    process = _start_training(tmp_path, out)
    wait_for(lambda: _logged_epochs(out) >= 2, process)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    line = error_line(stderr, stdout, exit_codes.INTERRUPTED, process.returncode)
    assert line == f"error: interrupted; what was logged is kept in {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(stdout) == {"run_dir": str(out), **summary}
    assert summary["status"] == "interrupted" and summary["epochs"] == _logged_epochs(out) >= 2
    files_are_whole(out)


def test_termination_of_a_two_worker_run_stops_every_worker(tmp_path: Path) -> None:
    """SIGTERM to ``train --nproc 2`` (SLURM's time limit): the launcher forwards it to both workers and waits;
    rank 0 records interrupted after a whole epoch, nothing prints a traceback, and no worker is left running
    (the workers run in sessions of their own, so a launcher killed without forwarding would orphan them)."""
    out = tmp_path / "run"
    args = [FIMBENCH, "train", "-c", tiny_config(tmp_path, epochs=500), "-m", "kfac", "--nproc", "2", "--out", out, "--json"]
    process = subprocess.Popen([str(arg) for arg in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET_ENV)
    wait_for(lambda: _logged_epochs(out) >= 2, process, seconds=120)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    line = error_line(stderr, stdout, exit_codes.INTERRUPTED, process.returncode)
    assert line == f"error: interrupted; what was logged is kept in {out}" and stderr.strip() == line
    workers = subprocess.run(["pgrep", "-f", f"fimbench.engines.launch {out}"], capture_output=True, text=True)
    assert workers.stdout == ""
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(stdout) == {"run_dir": str(out), **summary}
    assert summary["status"] == "interrupted" and summary["epochs"] == _logged_epochs(out) >= 2
    files_are_whole(out)


def test_sigkill_during_a_run_leaves_whole_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _start_training(tmp_path, out)
    wait_for(lambda: _logged_epochs(out) >= 2, process)
    process.kill()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL and "Traceback" not in stderr
    files_are_whole(out)
    assert not (out / "summary.json").exists() and _logged_epochs(out) >= 2
    report = invoke(["report", out, "--json"])  # what was logged is still read
    assert report.exit_code == 0, report.output
    (result,) = json.loads(report.stdout)["datasets"][0]["results"]
    assert result["status"] == "incomplete" and result["epochs"] >= 2


def test_background_sweep_stopped_by_sigterm_continues_its_points(tmp_path: Path) -> None:
    """A sweep started as a background job (SIGINT inherited ignored) and stopped with SIGTERM: its workers
    stop at once (they record 'interrupted' rather than being killed after the grace period), and the rerun
    continues the interrupted point from its checkpoint instead of starting it again."""
    out = tmp_path / "sw"
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["training"]["epochs"] = 60
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    args = [str(arg) for arg in [FIMBENCH, "sweep", "-c", tmp_path / "long.yaml", "-m", "kfac", "--grid", "lr=1e-3",
                                 "--grid", "damping=600", "--grid", "clip=1e-2", "--extend", "0", "-j", "1", "--out", out, "--json"]]
    point = out / "kfac-lr_1e-3-damping_6e2-clip_1e-2"

    def as_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET_ENV,
                               preexec_fn=as_background_job)
    wait_for(lambda: _logged_epochs(point) >= 2, process, seconds=120)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=25)  # within the 30 s a worker that ignores SIGINT would get
    error_line(stderr, stdout, exit_codes.INTERRUPTED, process.returncode)
    summary = json.loads((point / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["epochs"] < 60
    files_are_whole(out)
    stopped_at = torch.load(point / "checkpoint.pt", weights_only=True)["counters"]["epoch"]
    assert stopped_at in (summary["epochs"] - 1, summary["epochs"])  # SIGTERM may come between a row and its checkpoint
    kept = (point / "metrics.jsonl").read_text().splitlines()[:stopped_at]

    resumed = subprocess.run(args, capture_output=True, text=True, env=QUIET_ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [p["status"] for p in json.loads(resumed.stdout)["points"]] == ["completed"]
    assert (point / "worker.log").read_text().startswith(f"continuing from the checkpoint after epoch {stopped_at}")
    assert (point / "metrics.jsonl").read_text().splitlines()[:stopped_at] == kept  # continued, not rerun
    assert json.loads((point / "summary.json").read_text())["epochs"] == 60
    files_are_whole(out)


def test_sweep_interrupted_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = [str(arg) for arg in [FIMBENCH, "sweep", "-c", tiny_config(tmp_path), "-m", "sgd",
                                 "--grid", "lr=1e-3,1e-4", "--extend", "0", "-j", "1", "--out", out, "--json"]]
    first = out / "sgd-lr_1e-3"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET_ENV)
    wait_for(lambda: (first / "summary.json").is_file(), process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    line = error_line(stderr, stdout, exit_codes.INTERRUPTED, process.returncode)
    assert line == f"error: interrupted; rerun the same command to resume the sweep in {out}"
    statuses = {point["name"]: point["status"] for point in json.loads(stdout)["points"]}
    assert statuses["sgd-lr_1e-3"] == "completed"
    assert set(statuses.values()) - {"completed"} and "running" not in statuses.values()
    files_are_whole(out)
    kept = (first / "summary.json").read_bytes()

    resumed = subprocess.run(args, capture_output=True, text=True, env=QUIET_ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    points = json.loads(resumed.stdout)["points"]
    assert [point["status"] for point in points] == ["completed"] * 2
    assert [point["resumed"] for point in points][0] is True
    assert (first / "summary.json").read_bytes() == kept  # the finished point was not run again
    assert (out / "best" / "sgd.yaml").is_file()
    files_are_whole(out)
