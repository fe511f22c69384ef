"""`fimbench train` through Typer's runner: every documented example and error message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import one_line_error, runner, tiny_config

from fimbench import __version__
from fimbench.cli import app


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_train_options_are_the_arguments_of_train() -> None:
    """``TrainOptions(**locals())`` in ``train``: one field per argument, by the same name, in the same order."""
    import dataclasses
    import inspect

    from fimbench.cli.train import train
    from fimbench.cli.train_options import TrainOptions

    assert [field.name for field in dataclasses.fields(TrainOptions)] == list(inspect.signature(train).parameters)


@pytest.mark.parametrize("command", ["train", "download-data"])
def test_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout


def test_train_writes_run_directory_and_table(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--method", "kfac", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kfac on curves-synth" in result.stdout and "val loss" in result.stdout
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optimizer"]["method"] == "kfac"
    assert (resolved["optimizer"]["lr"], resolved["optimizer"]["pi"]) == (0.3, "trace")  # configs/curves.yaml, methods.kfac
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert {"seconds_statistics", "seconds_refresh", "seconds_precondition", "kl_clip_factor"} <= rows[0].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 16


def test_cli_options_override_the_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--config", str(tiny_config(tmp_path)), "--method", "adam", "--lr", "0.003", "--max-steps", "3"]
    result = runner.invoke(app, args + ["--log-every", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optimizer"]["lr"] == 0.003 and resolved["training"]["max_steps"] == 3
    kinds = [json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["step", "step", "step", "epoch"]


def test_unknown_method_is_rejected(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--method", "newton", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "newton" in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    line = one_line_error(runner.invoke(app, ["train", "--dataset", "cifar", "--out", str(tmp_path / "r")]))
    assert "'cifar' is not one of" in line and "curves-synth" in line


def test_missing_data_names_the_fetch_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--dataset", "faces", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert "fimbench download-data faces" in one_line_error(result)
    assert not (tmp_path / "r").exists()


def test_malformed_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {batch_size: 64\noptimizer: [")
    assert "malformed YAML" in one_line_error(runner.invoke(app, ["train", "--config", str(bad)]))


def test_config_key_typo_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("optimizer:\n  lrr: 0.1\n")
    assert "'optimizer.lrr'" in one_line_error(runner.invoke(app, ["train", "--config", str(bad)]))


def test_config_wrong_type_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "type.yaml"
    bad.write_text("training:\n  batch_size: large\n")
    assert "'training.batch_size'" in one_line_error(runner.invoke(app, ["train", "--config", str(bad)]))


def test_missing_config_file(tmp_path: Path) -> None:
    assert "config file not found" in one_line_error(runner.invoke(app, ["train", "--config", str(tmp_path / "no.yaml")]))


def test_cuda_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--device", "cuda"])
    assert "CUDA is not available" in one_line_error(result)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_log(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path)
    args = ["train", "--config", str(config), "--method", "sgd", "--lr", "1e6", "--out", str(out)]
    line = one_line_error(runner.invoke(app, args), status=3)
    assert "non-finite loss" in line and "at step" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert 1 <= step <= 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == step
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").exists()


def test_ctrl_c_stops_cleanly_and_keeps_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt after the first epoch: exit 130, summary says interrupted, epoch 1 stays logged."""
    from fimbench.cli.train import RichTrainProgress

    def interrupt_in_epoch_two(self, step: int, epoch: int, loss: float, steps_per_second: float) -> None:  # type: ignore[no-untyped-def]
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RichTrainProgress, "step", interrupt_in_epoch_two)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--method", "sgd", "--out", str(out)])
    assert result.exit_code == 130 and result.stderr.startswith("error: interrupted")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]


def test_damping_options_and_the_sgd_warning(tmp_path: Path) -> None:
    """``--pi`` and ``--damping-schedule`` reach the run; a fixed damping that swamps the curvature is warned once."""
    config = str(tiny_config(tmp_path))
    swamped = runner.invoke(app, ["train", "--config", config, "--method", "kpsvd", "--damping", "1e6", "--pi", "2.5",
                                  "--max-steps", "3", "--out", str(tmp_path / "a")])
    assert swamped.exit_code == 0, swamped.output
    warnings = [line for line in swamped.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "close to SGD" in warnings[0]
    adapting = runner.invoke(app, ["train", "--config", config, "--method", "kpsvd", "--damping", "1e6",
                                   "--damping-schedule", "adaptive", "--max-steps", "3", "--out", str(tmp_path / "d")])
    assert adapting.exit_code == 0 and "warning: " not in adapting.stderr  # an adaptive λ₀ is only where λ starts
    resolved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["optimizer"]
    assert (resolved["pi"], resolved["damping"]) == (2.5, 1e6)
    acting = runner.invoke(app, ["train", "--config", config, "--method", "kfac", "--damping-schedule", "adaptive",
                                 "--nesterov", "--max-steps", "3", "--out", str(tmp_path / "b")])
    assert acting.exit_code == 0, acting.output
    assert "warning: " not in acting.stderr
    row = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["alignment"] < 0.99 and row["damping_adaptations"] == 1
    resolved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["optimizer"]
    assert (resolved["pi"], resolved["damping_schedule"], resolved["nesterov"]) == ("trace", "adaptive", True)
    for bad in (["--pi", "wide"], ["--pi", "-1"], ["--damping-schedule", "cosine"]):
        one_line_error(runner.invoke(app, ["train", "--config", config, "--method", "kfac", "--max-steps", "1", *bad,
                                           "--out", str(tmp_path / "c")]))


def test_seeds_write_one_run_per_seed_differing_only_in_the_seed(tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    config = tiny_config(tmp_path)
    result = runner.invoke(app, ["train", "--config", str(config), "--method", "sgd", "--seeds", "2", "--out", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["seeds"] == [0, 1] and [run["run_dir"] for run in document["runs"]] == [str(out / "seed_0"), str(out / "seed_1")]
    first, second = (yaml.safe_load((out / f"seed_{seed}" / "config.yaml").read_text()) for seed in (0, 1))
    assert (first["training"]["seed"], second["training"]["seed"]) == (0, 1)
    second["training"]["seed"] = 0
    assert first == second  # nothing else differs
    losses = [json.loads((out / f"seed_{seed}" / "summary.json").read_text())["final"]["train_loss"] for seed in (0, 1)]
    assert losses[0] != losses[1]  # another initialisation and data order
    from fimbench.engines.comparison import compare

    (group,) = compare([out]).datasets[0].groups  # the seeds are one group, named after their folder
    assert (group.name, group.seeds, group.values("final_train_loss")) == ("seeds", [0, 1], [
        json.loads((out / f"seed_{seed}" / "summary.json").read_text())["final"]["train_loss_per_pixel"] for seed in (0, 1)
    ])

    listed = runner.invoke(app, ["train", "--config", str(config), "--method", "sgd", "--seeds", "3,7", "--max-steps", "1", "--out", str(tmp_path / "listed"), "-q"])
    assert listed.exit_code == 0, listed.output
    assert sorted(path.name for path in (tmp_path / "listed").iterdir()) == ["seed_3", "seed_7"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seeds", "0"], "--seeds takes a count"),
        (["--seeds", "1,x"], "--seeds takes a count"),
        (["--seeds", "1,1"], "lists a seed twice"),
        (["--seeds", "2", "--seed", "4"], "either --seed or --seeds"),
        (["--seeds", "2", "--resume", "somewhere"], "--seeds cannot be given with --resume"),
    ],
)
def test_bad_seeds_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--out", str(tmp_path / "x"), *arguments])
    assert message in one_line_error(result)
    assert not (tmp_path / "x").exists()


def test_tensorboard_event_files_hold_the_metrics(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(tiny_config(tmp_path)), "-m", "kfac", "--tensorboard", "--log-every", "5", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert list(out.glob("events.out.tfevents.*"))
    events = event_accumulator.EventAccumulator(str(out))
    events.Reload()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if row.get("kind", "epoch") == "epoch"]
    steps = [row for row in rows if row.get("kind") == "step"]
    assert steps and set(events.Tags()["scalars"]) >= {"train_loss", "val_loss_per_pixel", "alignment", "epoch", "step/train_loss"}
    for key in ("train_loss", "val_loss_per_pixel", "alignment", "epoch"):
        scalars = events.Scalars(key)
        assert [scalar.step for scalar in scalars] == [row["step"] for row in epochs]
        assert [scalar.value for scalar in scalars] == pytest.approx([row[key] for row in epochs], rel=1e-6)  # float32 in the file
    assert [s.value for s in events.Scalars("step/train_loss")] == pytest.approx([row["train_loss"] for row in steps], rel=1e-6)


def test_tensorboard_without_the_extra_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "tensorboard" else real(name, *args))
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--tensorboard", "--out", str(tmp_path / "run")])
    assert "pip install 'fimbench[tensorboard]'" in one_line_error(result)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- bare train


def _resolved_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arguments: list[str]) -> dict[str, dict[str, object]]:
    """The config ``fimbench train ARGUMENTS`` would train with (the run itself is stopped before it starts)."""
    from fimbench.errors import FimbenchError

    seen = []

    def stop(resolved, run_dir, overwrite, resume):  # type: ignore[no-untyped-def]
        seen.append(resolved.to_dict())
        raise FimbenchError("stopped by the test")

    monkeypatch.setattr("fimbench.cli.train._run", stop)
    result = runner.invoke(app, ["train", *arguments, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")])
    assert "stopped by the test" in one_line_error(result)
    return seen[0]


def test_bare_train_runs_the_quick_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bare ``fimbench train`` (where and how it runs may be given) is configs/quickstart.yaml: K-FAC with the
    quadratic-model steps, 5 epochs of curves-synth, the qmodel rule's adaptive damping from λ₀ = 150."""
    for extra in ([], ["--quiet", "--json", "--device", "cpu", "--log-every", "10", "--full-table"]):
        config = _resolved_run(monkeypatch, tmp_path, extra)
        assert config["data"]["dataset"] == "curves-synth" and config["training"]["epochs"] == 5
        optimizer = config["optimizer"]
        assert (optimizer["method"], optimizer["step_rule"], optimizer["damping_schedule"], optimizer["damping"]) == (
            "kfac", "qmodel", "adaptive", 150.0
        )


@pytest.mark.parametrize(
    "arguments",
    [["--method", "sgd"], ["--method", "kfac"], ["--epochs", "3"], ["--lr", "0.2"], ["--seed", "1"], ["--set", "optimizer.momentum=0.5"],
     ["--dataset", "curves-synth"]],
)
def test_an_option_that_says_what_to_train_leaves_the_quick_start_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arguments: list[str]
) -> None:
    """Such a run resolves as before the quick start existed: the dataset's preset (CURVES: SGD, 200 epochs), then the options."""
    config = _resolved_run(monkeypatch, tmp_path, arguments)
    method = arguments[1] if arguments[0] == "--method" else "sgd"
    epochs = int(arguments[1]) if arguments[0] == "--epochs" else 200
    assert (config["optimizer"]["method"], config["training"]["epochs"], config["optimizer"]["step_rule"]) == (method, epochs, "fixed")
