"""``fimbench sweep``: grid expansion and scale, resume, divergence, best configs, executors (tiny runs)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from fimbench.cli.sweep import sweep
from fimbench.engines import sweep as sweep_module
from fimbench.engines.authors_scale import from_authors_scale
from fimbench.engines.config import load_config
from fimbench.engines.sweep import (
    KRONECKER_GRID,
    PAPER_GRID,
    PointState,
    SubmititRunner,
    format_value,
    inspect_points,
    parse_grid,
    plan_sweep,
    point_name,
    run_sweep,
)
from fimbench.engines.train import run_point, run_training
from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
KAPPA = 1 / 784  # curves-synth: Bernoulli over 784 pixels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def tiny(data_dir: Path, **extra: Any) -> dict[str, Any]:
    """Overrides of configs/smoke.yaml for runs of a fraction of a second: 3 steps per epoch, 4 steps."""
    return {
        "data.dataset": "curves-synth",
        "data.synth_train": 512,
        "data.synth_test": 128,
        "data.data_dir": str(data_dir),
        "model.layers": [784, 32, 784],
        "training.max_steps": 4,
        "optimizer.stats_every": 2,
        "optimizer.inverse_every": 2,
        **extra,
    }


@pytest.fixture(autouse=True)
def _restore_threads():
    """The debug executor runs points in this process, where run_point sets torch's thread count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def debug_runner(out: Path) -> SubmititRunner:
    """submitit's debug executor: jobs run in this process, one torch thread each (as with -j = cores)."""
    return SubmititRunner(out / "submitit", cluster="debug", cpus_per_job=1, worker=run_point)


class Recording:
    """Wraps a runner and remembers which points were submitted."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.submitted = runner, []

    def submit(self, states: Sequence[PointState]) -> None:
        self.submitted += [state.point.name for state in states]
        self.runner.submit(states)

    def poll(self) -> list[tuple[PointState, str | None]]:
        return self.runner.poll()

    def close(self) -> None:
        self.runner.close()


# ----------------------------------------------------------------------------------------------- expansion


def test_names_are_deterministic() -> None:
    assert format_value(0.03) == "3e-2" and format_value(78.4) == "7.84e1" and format_value(1.0) == "1e0"
    assert point_name("kfac", {"lr": 3e-2, "damping": 1e-3, "clip": 1e-2}) == "kfac-lr_3e-2-damping_1e-3-clip_1e-2"


def test_parse_grid() -> None:
    assert parse_grid(["lr=1e-1, 3e-2", "clip=1e-2"]) == {"lr": [0.1, 0.03], "clip": [0.01]}
    for bad in (["momentum=0.9"], ["lr"], ["lr=fast"], ["lr=-1"], ["lr=1", "lr=2"]):
        with pytest.raises(FimbenchError, match="--grid"):
            parse_grid(bad)


def test_default_grid_is_fimbenchs_for_kronecker_methods(tmp_path: Path) -> None:
    plan = plan_sweep(tmp_path, ["kfac", "sgd", "adam"], config_path=SMOKE, overrides={"data.dataset": "curves-synth"})
    by_method = {m: [p for p in plan.points if p.method == m] for m in ("kfac", "sgd", "adam")}
    sizes = [len(values) for values in KRONECKER_GRID.values()]
    assert [len(points) for points in by_method.values()] == [math.prod(sizes), 8, 8]
    assert [axis.values for axis in plan.grids["kfac"]] == list(KRONECKER_GRID.values())
    assert all(axis.authors_values is None for axis in plan.grids["kfac"])
    first = by_method["kfac"][0]
    assert first.values == {key: values[0] for key, values in KRONECKER_GRID.items()}
    assert first.config.optimizer.pi == "trace" and first.authors_values == {}
    assert [p.config.optimizer.lr for p in by_method["sgd"]] == pytest.approx([v * KAPPA for v in PAPER_GRID["lr"]])
    assert [p.config.optimizer.lr for p in by_method["adam"]] == pytest.approx(list(PAPER_GRID["lr"]))
    assert first.config.training.batch_size == 128  # the base config still applies


@pytest.mark.parametrize("method", ["kfac", "deflation"])
def test_authors_scale_grid_is_the_papers_converted(tmp_path: Path, method: str) -> None:
    plan = plan_sweep(tmp_path, [method], authors_scale=True, config_path=SMOKE, overrides={"data.dataset": "curves-synth"})
    assert len(plan.points) == 8 * 8 * 2 and len({point.name for point in plan.points}) == len(plan.points)
    lr_axis, damping_axis, clip_axis = plan.grids[method]
    assert sorted(lr_axis.authors_values) == sorted(PAPER_GRID["lr"])
    assert clip_axis.values == (1e-2, 1e-3)
    for point in plan.points:
        expected = from_authors_scale(Method(method), Likelihood.BERNOULLI, 784, point.authors_values["lr"], point.authors_values["damping"])
        optimizer = point.config.optimizer
        assert optimizer.lr == pytest.approx(expected["lr"]) and optimizer.damping == pytest.approx(expected["damping"])
        assert optimizer.pi == pytest.approx(expected["pi"])
    first = plan.points[0]
    assert first.authors_values == {"lr": 0.3, "damping": 0.3, "clip": 0.01}
    assert (first.config.optimizer.lr, first.config.optimizer.kl_clip) == (first.values["lr"], 0.01)


def test_explicit_grid_scale(tmp_path: Path) -> None:
    grid = {"lr": [0.1], "damping": [1e-3], "clip": [1e-2]}
    ours = plan_sweep(tmp_path, ["kfac", "sgd"], grid, config_path=SMOKE)
    assert [p.config.optimizer.lr for p in ours.points] == [0.1, 0.1]
    assert ours.points[0].authors_values == {}
    converted = plan_sweep(tmp_path, ["kfac", "sgd"], grid, authors_scale=True, config_path=SMOKE)
    kfac = from_authors_scale(Method.KFAC, Likelihood.BERNOULLI, 784, 0.1, 1e-3)
    assert converted.points[0].config.optimizer.lr == pytest.approx(kfac["lr"])
    assert converted.points[0].config.optimizer.damping == pytest.approx(kfac["damping"])
    assert converted.points[1].config.optimizer.lr == pytest.approx(0.1 * KAPPA)
    with pytest.raises(FimbenchError, match="tuned by none"):
        plan_sweep(tmp_path, ["sgd", "adam"], {"damping": [1.0]}, config_path=SMOKE)
    with pytest.raises(FimbenchError, match="unknown method"):
        plan_sweep(tmp_path, ["newton"], config_path=SMOKE)


# ----------------------------------------------------------------------------------------------- running


def test_sweep_writes_runs_manifest_and_best_configs(tmp_path: Path, data_dir: Path) -> None:
    grid = {"lr": [1e-3, 1e-5], "damping": [600.0], "clip": [1e-2]}
    plan = plan_sweep(tmp_path / "sw", ["kfac", "sgd"], grid, config_path=SMOKE, overrides=tiny(data_dir))
    result = run_sweep(plan, debug_runner(plan.out), poll_seconds=0.01)
    assert [state.status for state in result.states] == ["completed"] * 4
    for state in result.states:
        summary = json.loads((state.run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["method"] == state.point.method
        assert state.train_loss == summary["final"]["train_loss"]
    manifest = json.loads((plan.out / "sweep.json").read_text())
    assert manifest["dataset"] == "curves-synth" and set(manifest["methods"]) == {"kfac", "sgd"}
    assert manifest["methods"]["sgd"]["points"]["sgd-lr_1e-3"]["status"] == "completed"

    for method in ("kfac", "sgd"):
        states = [s for s in result.states if s.point.method == method]
        winner = min(states, key=lambda s: s.train_loss)
        path = result.best[method]
        assert path == plan.out / "best" / f"{method}.yaml"
        text = path.read_text()
        assert text.startswith(f"# Best {method} point") and winner.point.name in text.splitlines()[0]
        assert load_config(path) == winner.point.config  # ready for `fimbench train --config`


def test_resume_reruns_only_interrupted_and_missing_points(tmp_path: Path, data_dir: Path) -> None:
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e-3, 3e-4, 1e-4]}, config_path=SMOKE, overrides=tiny(data_dir))
    run_sweep(plan, debug_runner(plan.out), poll_seconds=0.01)
    done, interrupted, missing = (plan.out / point.name for point in plan.points)
    kept = (done / "summary.json").read_bytes()
    summary = json.loads((interrupted / "summary.json").read_text())
    (interrupted / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    for file in missing.iterdir():
        file.unlink()
    missing.rmdir()

    states = inspect_points(plan)
    assert [(s.status, s.resumed) for s in states] == [("completed", True), ("pending", False), ("pending", False)]
    runner = Recording(debug_runner(plan.out))
    result = run_sweep(plan, runner, poll_seconds=0.01)
    assert runner.submitted == [interrupted.name, missing.name]
    assert [state.status for state in result.states] == ["completed"] * 3
    assert (done / "summary.json").read_bytes() == kept

    changed = plan_sweep(plan.out, ["sgd"], {"lr": [1e-3]}, config_path=SMOKE, overrides=tiny(data_dir, **{"training.max_steps": 5}))
    with pytest.raises(FimbenchError, match="training.max_steps is 4 there, 5 now"):
        run_sweep(changed, debug_runner(plan.out), poll_seconds=0.01)


class _CtrlCAfter:
    """A training progress that presses Ctrl-C once ``epochs`` epochs are logged (after their checkpoint)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def start(self, total_steps: int, steps_per_epoch: int) -> None: ...
    def step(self, step: int, epoch: int, loss: float, steps_per_second: float) -> None: ...
    def warn(self, message: str) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None:
        if row["epoch"] >= self.epochs:
            raise KeyboardInterrupt


def _untimed(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows of a run without their clocks (wall_time, time_per_step, seconds_*)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("wall_time", "time_per_step") and not k.startswith("seconds")} for row in rows]


def test_resume_continues_interrupted_and_killed_points_from_their_checkpoints(tmp_path: Path, data_dir: Path) -> None:
    """Four K-FAC points stopped after 2 of 4 epochs: interrupted (Ctrl-C), killed (no summary, half a row
    logged after the checkpoint), crashed, and killed with a damaged checkpoint. The first two continue from
    their checkpoints (their first two rows kept, clocks included), the last two run again from scratch, and all
    four end exactly where an uninterrupted sweep of the same plan ends."""
    overrides = tiny(data_dir, **{"training.max_steps": None, "training.epochs": 4})
    grid = {"lr": [1e-3, 3e-4, 1e-4, 3e-5], "damping": [600.0], "clip": [1e-2]}
    whole = plan_sweep(tmp_path / "whole", ["kfac"], grid, config_path=SMOKE, overrides=overrides)
    run_sweep(whole, debug_runner(whole.out), poll_seconds=0.01)
    plan = plan_sweep(tmp_path / "sw", ["kfac"], grid, config_path=SMOKE, overrides=overrides)
    torch.set_num_threads(1)  # as the debug runner's workers
    for point in plan.points:
        with pytest.raises(KeyboardInterrupt):
            run_training(point.config, plan.out / point.name, progress=_CtrlCAfter(2))
    interrupted, killed, crashed, damaged = (plan.out / point.name for point in plan.points)
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "interrupted"
    (killed / "summary.json").unlink()
    with open(killed / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"kind": "epoch", "epoch": 3, "train_lo')  # a kill during the next epoch's row
    summary = json.loads((crashed / "summary.json").read_text())
    (crashed / "summary.json").write_text(json.dumps({**summary, "status": "crashed"}))
    (damaged / "summary.json").unlink()
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    logged = {run_dir.name: (run_dir / "metrics.jsonl").read_text().splitlines()[:2] for run_dir in (interrupted, killed)}

    runner = Recording(debug_runner(plan.out))
    result = run_sweep(plan, runner, poll_seconds=0.01)
    assert runner.submitted == [point.name for point in plan.points]
    assert [state.status for state in result.states] == ["completed"] * 4
    assert [state.continued_from for state in result.states] == [2, 2, 0, 2]  # the damaged one: its worker started afresh
    for state, reference in zip(result.states, whole.points):
        assert _untimed(state.run_dir) == _untimed(whole.out / reference.name)
        ours = torch.load(state.run_dir / "checkpoint.pt", weights_only=True)["model"]
        theirs = torch.load(whole.out / reference.name / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    for name, rows in logged.items():
        assert (plan.out / name / "metrics.jsonl").read_text().splitlines()[:2] == rows  # continued, not rerun
    for run_dir in (crashed, damaged):
        assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["wall_time"] != json.loads(
            (interrupted / "metrics.jsonl").read_text().splitlines()[0])["wall_time"]


def test_points_of_an_earlier_round_count_as_this_invocations_work(tmp_path: Path, data_dir: Path) -> None:
    """A tuned sweep's next round keeps the states of the points its earlier rounds ran (not 'resumed', so the
    estimate of the time left counts their work); a new invocation finds them finished by an earlier one."""
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e-3, 1e-4]}, config_path=SMOKE, overrides=tiny(data_dir))
    first = run_sweep(plan, debug_runner(plan.out), poll_seconds=0.01)
    runner = Recording(debug_runner(plan.out))
    again = run_sweep(plan, runner, poll_seconds=0.01, earlier=first.states)
    assert runner.submitted == [] and [state.resumed for state in again.states] == [False, False]
    assert [state.resumed for state in run_sweep(plan, runner, poll_seconds=0.01).states] == [True, True]


def test_divergence_is_recorded_not_a_crash(tmp_path: Path, data_dir: Path) -> None:
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e-3, 1e20]}, config_path=SMOKE, overrides=tiny(data_dir))
    result = run_sweep(plan, debug_runner(plan.out), poll_seconds=0.01)
    fine, diverged = result.states
    assert fine.status == "completed"
    assert diverged.status == "diverged" and "non-finite loss at step" in diverged.message
    assert json.loads((diverged.run_dir / "summary.json").read_text())["status"] == "diverged"
    assert "sgd-lr_1e-3" in result.best["sgd"].read_text().splitlines()[0]
    manifest = json.loads((plan.out / "sweep.json").read_text())
    assert manifest["methods"]["sgd"]["points"]["sgd-lr_1e20"]["status"] == "diverged"
    assert [(s.status, s.resumed) for s in inspect_points(plan)] == [("completed", True), ("diverged", True)]


class _Scripted:
    """A runner whose workers 'end' at once: without a summary (failed), or with Ctrl-C."""

    def __init__(self, interrupt: bool) -> None:
        self.interrupt, self.states, self.closed = interrupt, [], False

    def submit(self, states: Sequence[PointState]) -> None:
        self.states = list(states)

    def poll(self) -> list[tuple[PointState, str | None]]:
        if self.interrupt:
            raise KeyboardInterrupt
        ended, self.states = [(state, "worker exited with status 1: boom") for state in self.states], []
        return ended

    def close(self) -> None:
        self.closed = True


def test_failures_and_ctrl_c_are_recorded(tmp_path: Path, data_dir: Path) -> None:
    plan = plan_sweep(tmp_path / "sw", ["adam"], {"lr": [1e-3]}, config_path=SMOKE, overrides=tiny(data_dir))
    result = run_sweep(plan, _Scripted(interrupt=False), poll_seconds=0.01)
    assert [(s.status, s.message) for s in result.failed] == [("failed", "worker exited with status 1: boom")]
    assert result.best == {}
    runner = _Scripted(interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, runner, poll_seconds=0.01)
    assert runner.closed
    assert json.loads((plan.out / "sweep.json").read_text())["methods"]["adam"]["points"]["adam-lr_1e-3"]["status"] == "pending"


def test_submitit_local_executor(tmp_path: Path, data_dir: Path) -> None:
    """submitit's LocalExecutor pickles run_point into a fresh process, as SLURM would; a divergence there
    is still a result."""
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e20]}, config_path=SMOKE, overrides=tiny(data_dir))
    runner = SubmititRunner(plan.out / "submitit", cluster="local", time_minutes=5, cpus_per_job=1, worker=run_point)
    result = run_sweep(plan, runner, poll_seconds=0.2)
    assert [state.status for state in result.states] == ["diverged"]
    summary = json.loads((result.states[0].run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["device"].endswith("(1 threads)")  # cpus_per_job threads
    assert list((plan.out / "submitit").glob("*_result.pkl"))  # it went through submitit's job files


# ----------------------------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("sweep")(sweep)
    return app


def _base_config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"dataset": "curves-synth", "synth_train": 512, "synth_test": 128, "data_dir": str(data_dir)},
        "model": {"layers": [784, 32, 784]},
        "training": {"batch_size": 128, "epochs": 2, "max_steps": 4},
    }))
    return path


def test_cli_local_workers_dry_run_and_errors(tmp_path: Path, data_dir: Path) -> None:
    runner = CliRunner()
    base = _base_config(tmp_path, data_dir)
    out = tmp_path / "sw"
    args = ["sweep", "--config", str(base), "--methods", "sgd", "--grid", "lr=1e-3,1e-4", "--extend", "0", "--out", str(out)]  # the grid only
    dry = runner.invoke(_app(), [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "sgd-lr_1e-3" in dry.output and "2 points, 2 to run" in dry.output and not out.exists()

    ran = runner.invoke(_app(), [*args, "--jobs", "2"])
    assert ran.exit_code == 0, ran.output
    assert f"best sgd: {out / 'best' / 'sgd.yaml'}" in ran.output.replace("\n", "")
    cores = sweep_module.available_cores()
    for name in ("sgd-lr_1e-3", "sgd-lr_1e-4"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["device"].endswith(f"({max(1, cores // 2)} threads)")  # J workers share the cores

    bad = runner.invoke(_app(), ["sweep", "--config", str(base), "--methods", "sgd", "--grid", "clip=1e-2"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --grid clip is tuned by none of sgd")


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine is a SLURM cluster")
def test_cli_slurm_without_a_cluster_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    args = ["sweep", "--config", str(_base_config(tmp_path, data_dir)), "-m", "sgd", "--grid", "lr=1e-3", "--executor", "slurm"]
    result = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2 and result.output.startswith("error: submitit cannot use the slurm executor here")
    assert not (tmp_path / "sw").exists()


def test_slurm_submission_through_fake_commands(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SLURM path up to sbatch, with stand-ins for srun, sbatch and scancel: one job array whose
    script carries the partition, time, GPUs, CPUs and parallelism asked for."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    commands = {
        "srun": "exit 0",
        "sbatch": f'cp "$1" {tmp_path / "job.sh"}; echo "Submitted batch job 4242"',
        "scancel": f'echo "scancel $*" >> {calls}',
    }
    for name, body in commands.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e-3, 1e-4]}, config_path=SMOKE, overrides=tiny(data_dir))
    runner = SubmititRunner(plan.out / "submitit", partition="gpu", time_minutes=30, gpus_per_job=1, cpus_per_job=2, jobs=1, worker=run_point)
    runner.submit(inspect_points(plan))
    script = (tmp_path / "job.sh").read_text()
    for flag in ("--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=2", "--array=0-1%1", "--job-name=fimbench-sweep"):
        assert f"#SBATCH {flag}" in script
    runner.close()
    assert "scancel 4242_0" in calls.read_text() and "scancel 4242_1" in calls.read_text()


# ----------------------------------------------------------------------------------------------- seeds


def test_seeds_expand_each_setting_and_differ_only_in_the_seed(tmp_path: Path) -> None:
    plan = plan_sweep(tmp_path, ["kfac", "adam"], {"lr": [0.1, 0.01], "damping": [1.0], "clip": [1e-2]}, config_path=SMOKE, seeds=[0, 5])
    assert [point.name for point in plan.points[:2]] == ["kfac-lr_1e-1-damping_1e0-clip_1e-2-seed_0", "kfac-lr_1e-1-damping_1e0-clip_1e-2-seed_5"]
    assert len(plan.points) == 2 * 2 * 2 and len({point.name for point in plan.points}) == len(plan.points)
    first, second = plan.points[:2]
    assert (first.seed, second.seed) == (0, 5) and first.setting == second.setting == "kfac-lr_1e-1-damping_1e0-clip_1e-2"
    assert (first.config.training.seed, second.config.training.seed) == (0, 5)
    assert replace(second.config, training=replace(second.config.training, seed=0)) == first.config
    with pytest.raises(FimbenchError, match="either a seed"):
        plan_sweep(tmp_path, ["adam"], {"lr": [0.1]}, config_path=SMOKE, overrides={"training.seed": 3}, seeds=[0, 1])


def test_seeded_sweep_picks_the_best_mean_over_seeds(tmp_path: Path, data_dir: Path) -> None:
    plan = plan_sweep(tmp_path / "sw", ["sgd"], {"lr": [1e-3, 1e-5]}, config_path=SMOKE, overrides=tiny(data_dir), seeds=[0, 1])
    result = run_sweep(plan, debug_runner(plan.out), poll_seconds=0.01)
    assert [state.status for state in result.states] == ["completed"] * 4
    means = {
        setting: sum(s.train_loss for s in result.states if s.point.setting == setting) / 2  # type: ignore[misc]
        for setting in ("sgd-lr_1e-3", "sgd-lr_1e-5")
    }
    assert len({s.train_loss for s in result.states}) == 4  # the seeds give different runs
    winner = min(means, key=means.__getitem__)
    header = result.best["sgd"].read_text().splitlines()
    assert winner in header[0] and "mean over seeds 0, 1" in header[1] and f"{means[winner]:.6g}" in header[1]
    assert result.best_points["sgd"].setting == winner and result.best_points["sgd"].seed == 0
    manifest = json.loads((plan.out / "sweep.json").read_text())
    assert manifest["methods"]["sgd"]["points"][f"{winner}-seed_1"]["seed"] == 1
