"""``fimbench reproduce figure2``: the §4.2 protocol end to end on tiny runs, its resume, progress and errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from fimbench.cli import app
from fimbench.engines.config import load_config
from fimbench.engines.figure2 import Figure2Plan, plan_figure2, run_figure2, seconds_left
from fimbench.engines.sweep import PointState, SubmititRunner, SweepPlan
from fimbench.engines.train import run_point

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
GRID = {"lr": [1e-3, 1e-5], "damping": [600.0], "clip": [1e-2]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _restore_threads():
    """The debug executor runs points in this process, where run_point sets torch's thread count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(data_dir: Path) -> dict[str, Any]:
    """configs/smoke.yaml on 512 examples (4 steps of 128 per epoch), a narrow autoencoder."""
    return {
        "data.dataset": "curves-synth",
        "data.synth_train": 512,
        "data.synth_test": 128,
        "data.data_dir": str(data_dir),
        "model.layers": [784, 32, 784],
        "optimizer.stats_every": 4,  # one refresh per epoch
        "optimizer.inverse_every": 4,
    }


def debug_runner(stage: SweepPlan) -> SubmititRunner:
    return SubmititRunner(stage.out / "submitit", cluster="debug", cpus_per_job=1, worker=run_point)


def figure2_plan(out: Path, data_dir: Path) -> Figure2Plan:
    return plan_figure2(
        out, ["kfac", "kpsvd"], GRID, config_path=SMOKE, overrides=tiny(data_dir), sweep_epochs=1, epochs=2, seeds=[0, 1, 2]
    )


class Interrupting:
    """A runner that runs the first ``allowed`` runs it is given, leaves the next one killed half-way (one
    metrics row, no summary), then gets Ctrl-C."""

    def __init__(self, allowed: int) -> None:
        self.allowed, self.inner, self.started = allowed, None, 0

    def __call__(self, stage: SweepPlan) -> Interrupting:
        self.inner = debug_runner(stage)  # type: ignore[assignment]
        return self

    def submit(self, states: Sequence[PointState]) -> None:
        states = list(states)
        self.inner.submit(states[: self.allowed])  # type: ignore[union-attr]
        self.killed = states[self.allowed]
        (self.killed.run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 1}) + "\n")

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended = self.inner.poll()  # type: ignore[union-attr]
        if not ended:
            raise KeyboardInterrupt
        return ended

    def close(self) -> None:
        self.inner.close()  # type: ignore[union-attr]


class Stages:
    """Records the stages and progress updates."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.updates: list[tuple[str, int, float | None]] = []

    def stage(self, name: str, plan: SweepPlan | None) -> None:
        self.names.append(name)

    def update(self, states: Sequence[PointState], seconds: float | None) -> None:
        self.updates.append((self.names[-1], sum(s.status in ("pending", "running") for s in states), seconds))


def test_protocol_end_to_end_and_resume_after_an_interruption(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "fig2"
    plan = figure2_plan(out, data_dir)
    assert len(plan.sweep.points) == 2 + 2
    assert len(plan_figure2(out, ["kfac", "adam"], GRID, config_path=SMOKE).sweep.points) == 2 + 8  # Adam: its default grid
    interrupting = Interrupting(allowed=3)
    first = Stages()

    def sweep_then_interrupt(stage: SweepPlan) -> Any:
        return debug_runner(stage) if stage.out.name == "sweep" else interrupting(stage)

    with pytest.raises(KeyboardInterrupt):
        run_figure2(plan, sweep_then_interrupt, first, poll_seconds=0.01)
    assert first.names == ["sweep", "runs"]
    runs = out / "runs"
    manifest = json.loads((runs / "sweep.json").read_text())
    statuses = [point["status"] for method in manifest["methods"].values() for point in method["points"].values()]
    assert sorted(statuses) == ["completed"] * 3 + ["interrupted"] + ["pending"] * 2
    finished = {path.parent.name: path.read_bytes() for path in runs.glob("*/summary.json")}
    assert len(finished) == 3

    best = load_config(out / "sweep" / "best" / "kfac.yaml")
    seeded = load_config(runs / next(name for name in manifest["methods"]["kfac"]["points"]) / "config.yaml")
    assert (seeded.optimizer.lr, seeded.training.epochs) == (best.optimizer.lr, 2) and best.training.epochs == 1

    submitted: list[str] = []

    def recording(stage: SweepPlan) -> Any:
        runner = debug_runner(stage)
        submit = runner.submit
        runner.submit = lambda states: (submitted.extend(s.point.name for s in states), submit(states))  # type: ignore[method-assign]
        return runner

    second = Stages()
    result = run_figure2(plan, recording, second, poll_seconds=0.01)
    assert second.names == ["sweep", "runs", "report"]
    assert len(submitted) == 3 and not set(submitted) & set(finished)  # only the interrupted and never-started runs
    assert interrupting.killed.point.name in submitted
    assert {path.parent.name: path.read_bytes() for path in runs.glob("*/summary.json") if path.parent.name in finished} == finished
    (dataset,) = result.comparison.datasets
    assert [(group.method, group.seeds) for group in dataset.groups] == [("kfac", [0, 1, 2]), ("kpsvd", [0, 1, 2])]
    report = json.loads((out / "report" / "report.json").read_text())
    assert [(c["method"], c["baseline"]) for c in report["comparisons"]] == [("kpsvd", "kfac")]
    assert all(c["significant"] in (True, False) for c in report["comparisons"])
    assert (out / "report" / "figure2.png").stat().st_size > 0
    assert (out / "report" / "profile.png").stat().st_size > 0  # the performance profiles, since the report has a target


def test_seconds_left_counts_work_done_in_this_invocation() -> None:
    plan = plan_figure2(Path("unused"), ["kfac", "sgd"], {"lr": [0.1]}, config_path=SMOKE, sweep_epochs=4)
    kfac, sgd = (PointState(point, Path(point.name)) for point in plan.sweep.points[:2] if point.method in ("kfac", "sgd"))
    kfac.status, kfac.epoch, kfac.wall_time = "running", 2, 6.0  # 3 s per epoch, 2 of 4 epochs done
    sgd.status = "pending"  # no rate of its own: the mean over methods, 3 s
    # 6 training seconds done in 12 wall seconds (half the throughput); left: 2 epochs + 4 epochs, × 3 s, × 2
    assert seconds_left([kfac, sgd], 12.0) == pytest.approx(36.0)
    assert seconds_left([kfac, sgd], 12.0, future=[("kfac", 10)]) == pytest.approx(36.0 + 60.0)
    kfac.continued_from = 1  # continued after 1 epoch an earlier invocation trained: 3 s done in 12 s
    assert seconds_left([kfac, sgd], 12.0) == pytest.approx(72.0)
    kfac.resumed = True  # finished by an earlier invocation: no throughput yet
    assert seconds_left([kfac, sgd], 12.0) is None


def test_cli_runs_the_protocol_and_prints_progress(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fimbench.cli.reproduce as reproduce

    monkeypatch.setattr(reproduce, "make_runner", lambda stage, *args: debug_runner(stage))
    out = tmp_path / "fig2"
    sets = [item for key, value in tiny(data_dir).items() for item in ("--set", f"{key}={json.dumps(value)}")]
    arguments = ["reproduce", "figure2", "-c", str(SMOKE), "-m", "kfac,kpsvd", "--grid", "lr=1e-3", "--grid", "damping=600",
                 "--grid", "clip=1e-2", "--sweep-epochs", "1", "--epochs", "1", "--seeds", "2", "--out", str(out), *sets]
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["out"] == str(out) and document["report"] == str(out / "report")
    assert [group["seeds"] for group in document["datasets"][0]["groups"]] == [[0, 1], [0, 1]]
    assert "stage 1/3 sweep: 2 runs" in result.stderr and "stage 2/3 runs: 4 runs" in result.stderr
    assert "runs done, 0 left" in result.stderr and "left in all" in result.stderr
    assert "final train loss/pixel, method − baseline" in result.stderr

    again = CliRunner().invoke(app, [*arguments, "--quiet"])  # everything finished: kept, the report rewritten
    assert again.exit_code == 0, again.output
    assert "stage" not in again.stdout and "KFAC" in again.stdout


def test_cli_budget_gives_each_method_its_tuning_record(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fimbench.cli.reproduce as reproduce

    monkeypatch.setattr(reproduce, "make_runner", lambda stage, *args: debug_runner(stage))
    out = tmp_path / "fig2"
    sets = [item for key, value in tiny(data_dir).items() for item in ("--set", f"{key}={json.dumps(value)}")]
    arguments = ["reproduce", "figure2", "-c", str(SMOKE), "-m", "kfac,kpsvd", "--grid", "lr=1e-3,1e-5", "--grid", "damping=600",
                 "--grid", "clip=1e-2", "--sweep-epochs", "1", "--epochs", "1", "--seeds", "1", "--budget", "3", "--out", str(out), *sets]
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    tuning = json.loads(result.stdout)["tuning"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["tuning"] == tuning and set(tuning) == {"kfac", "kpsvd"}
    for record in tuning.values():
        assert record["search"] == "grid" and record["budget"] == 3 and 2 <= record["trials"] <= 3
        assert record["trials_of_budget"] == f"{record['trials']}/3" and record["state"] != "pending"
        assert record["trials"] == 2 + len(record["extensions"])
        edge = any(warning.startswith(f"{record['method']}: tuning ended 'edge") for warning in report["warnings"])
        assert edge == record["state"].startswith("edge")
    assert "tuning" in result.stderr and "/3" in result.stderr
    manifest = json.loads((out / "sweep" / "sweep.json").read_text())
    assert {method: entry["tuning"] for method, entry in manifest["methods"].items()} == tuning


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seeds", "x"], "--seeds takes a count"),
        (["--set", "training.epochs=3"], "do not set training.epochs"),
        (["--set", "training.seed=3"], "do not set training.seed"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["-m", "newton"], "unknown method"),
        (["--grid", "momentum=1"], "--grid takes KEY"),
        (["-m", "sgd,adam", "--grid", "lr=1"], "none is among --methods"),
        (["--out", "FILE/below"], "is not a directory"),
        (["-m", "kfac,sgd", "--budget", "10"], "more points than --budget 10 (kfac 32; a point is one run"),
        (["--search", "quasi-random"], "--search quasi-random needs --budget"),
        (["--extend", "-1"], "--extend must be at least 0"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    (tmp_path / "FILE").write_text("")
    arguments = [argument.replace("FILE", str(tmp_path / "FILE")) for argument in arguments]
    result = CliRunner().invoke(app, ["reproduce", "figure2", "-c", str(SMOKE), "--out", str(tmp_path / "out"), *arguments])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


class FailingFirst:
    """The debug runner, except that the first run of the runs stage fails (its worker 'raises')."""

    def __init__(self, stage: SweepPlan) -> None:
        self.inner, self.held = debug_runner(stage), []
        self.fail = stage.out.name == "runs"

    def submit(self, states: Sequence[PointState]) -> None:
        states = list(states)
        if self.fail:
            self.held, states = states[:1], states[1:]
        self.inner.submit(states)

    def poll(self) -> list[tuple[PointState, str | None]]:
        ended, self.held = [(state, "worker exited with status 1: boom") for state in self.held], []
        return ended + self.inner.poll()

    def close(self) -> None:
        self.inner.close()


def test_a_failed_run_is_reported_and_left_out(tmp_path: Path, data_dir: Path) -> None:
    plan = figure2_plan(tmp_path / "fig2", data_dir)
    result = run_figure2(plan, FailingFirst, poll_seconds=0.01)
    (failed,) = result.failed
    assert failed.parent == plan.out / "runs" and failed.name.startswith("kfac-") and failed.name.endswith("-seed_0")
    kfac, kpsvd = result.comparison.datasets[0].groups
    assert kfac.seeds == [1, 2] and kpsvd.seeds == [0, 1, 2]  # the failed run logged nothing: not a run yet
    assert result.to_dict()["failed"] == [str(failed)] and (plan.out / "report" / "report.json").is_file()
