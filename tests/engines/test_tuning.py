"""Equal tuning: the budget, the edge extension and the quasi-random search of ``fimbench sweep`` (toy runs:
the final train loss is a known function of the point's values, written as a run writes it)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fimbench.cli import sweep as sweep_cli
from fimbench.engines.rundir import append_metrics, start_metrics, write_summary
from fimbench.engines.sweep import (
    PointState,
    SettingsRule,
    SweepPlan,
    Tuning,
    format_value,
    plan_sweep,
    plan_tuned,
    run_tuned_sweep,
)
from fimbench.engines.sweep import orchestration as orchestration_module
from fimbench.errors import FimbenchError
from fimbench.names import DEFAULT_EXTEND, SEARCHES

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
Objective = Callable[[Mapping[str, float]], float]


@pytest.fixture(autouse=True)
def _no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Toy runs read no data: the sweep need not build curves-synth's cache."""
    monkeypatch.setattr(orchestration_module, "prepare_data", lambda config: None)


def log_distance(**optimum: float) -> Objective:
    """Σ (log10 v − log10 optimum)² over the keys given: the optimum's loss is 0."""
    return lambda values: sum((math.log10(values[key]) - math.log10(best)) ** 2 for key, best in optimum.items())


class Toy:
    """A runner whose points end at once, each with one epoch row and the summary.json a run writes, its final
    train loss ``objective(values)``: a non-finite loss is a divergence."""

    def __init__(self, objective: Objective) -> None:
        self.objective, self.ended, self.submitted = objective, [], []

    def submit(self, states: Sequence[PointState]) -> None:
        self.submitted += [state.point.name for state in states]
        self.ended += list(states)

    def poll(self) -> list[tuple[PointState, str | None]]:
        for state in self.ended:
            loss = self.objective(state.point.values)
            row = {"kind": "epoch", "epoch": 1, "train_loss": loss, "val_loss": loss, "wall_time": 0.01}
            metrics = start_metrics(state.run_dir)
            if math.isfinite(loss):
                append_metrics(metrics, row)
            write_summary(state.run_dir, {
                "status": "completed" if math.isfinite(loss) else "diverged",
                "dataset": state.point.config.data.dataset,
                "method": state.point.method,
                "diverged_at_step": None if math.isfinite(loss) else 1,
                "final": {key: value for key, value in row.items() if key != "kind"} if math.isfinite(loss) else {},
            })
        ended, self.ended = [(state, None) for state in self.ended], []
        return ended

    def close(self) -> None:
        pass


def planner(out: Path, methods: Sequence[str], grid: Mapping[str, Sequence[float]], seeds: Sequence[int] | None = None
            ) -> Callable[[SettingsRule], SweepPlan]:
    return partial(plan_sweep, out, methods, grid, False, SMOKE, {"data.dataset": "curves-synth"}, seeds)


def tune(out: Path, methods: Sequence[str], grid: Mapping[str, Sequence[float]], tuning: Tuning, objective: Objective,
         seeds: Sequence[int] | None = None) -> tuple[Any, Toy]:
    toy = Toy(objective)
    result = run_tuned_sweep(planner(out, methods, grid, seeds), tuning, toy, poll_seconds=0.0, runs_per_setting=len(seeds or [0]))
    return result, toy


def best_values(result: Any, method: str) -> dict[str, str]:
    return {key: format_value(value) for key, value in result.result.best_points[method].values.items()}


# ----------------------------------------------------------------------------------------------- extension


def test_extension_walks_past_the_grid_to_the_optimum_and_resumes(tmp_path: Path) -> None:
    """SGD: lr's optimum 0.9 lies one step past the grid {0.1, 0.3}; K-FAC: (lr 0.9, damping 1) lies past the
    grid's corner, reached along the lines through the best point. A rerun runs nothing."""
    objectives = {"sgd": log_distance(lr=0.9), "kfac": log_distance(lr=0.9, damping=1.0)}

    def objective(values: Mapping[str, float]) -> float:
        return objectives["kfac" if "damping" in values else "sgd"](values)

    grid = {"lr": [0.1, 0.3], "damping": [1e-2, 1e-1], "clip": [1e-2]}
    result, _ = tune(tmp_path / "sw", ["sgd", "kfac"], grid, Tuning(), objective)

    sgd = result.records["sgd"]
    assert best_values(result, "sgd") == {"lr": "9e-1"} and sgd.state == "inside"
    assert (sgd.trials, sgd.budget, sgd.extend) == (4, None, DEFAULT_EXTEND)
    assert [(e["axis"], e["direction"], format_value(e["value"]), e["kind"], e["point"]) for e in sgd.extensions] == [
        ("lr", "up", "9e-1", "edge", "sgd-lr_9e-1"), ("lr", "up", "2.7e0", "edge", "sgd-lr_2.7e0"),
    ]
    kfac = result.records["kfac"]
    assert best_values(result, "kfac") == {"lr": "9e-1", "damping": "1e0", "clip": "1e-2"} and kfac.state == "inside"
    assert kfac.trials == 4 + 2 + 3 + 2 and {e["kind"] for e in kfac.extensions} == {"edge", "fill"}
    manifest = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert manifest["methods"]["sgd"]["tuning"]["state"] == "inside" and len(manifest["methods"]["kfac"]["points"]) == 11
    assert manifest["methods"]["kfac"]["tuning"]["trials_of_budget"] == "11"
    assert manifest["methods"]["kfac"]["tuning"]["best"] == "kfac-lr_9e-1-damping_1e0-clip_1e-2"
    assert "kfac-lr_9e-1-damping_1e0-clip_1e-2" in (tmp_path / "sw" / "best" / "kfac.yaml").read_text().splitlines()[0]

    rerun, toy = tune(tmp_path / "sw", ["sgd", "kfac"], grid, Tuning(), objective)
    assert toy.submitted == [] and {m: r.to_dict() for m, r in rerun.records.items()} == {m: r.to_dict() for m, r in result.records.items()}


def test_budget_and_bounds_stop_the_extension(tmp_path: Path) -> None:
    corner = log_distance(lr=0.9, damping=1.0)
    grid = {"lr": [0.1, 0.3], "damping": [1e-2, 1e-1], "clip": [1e-2]}
    spent, toy = tune(tmp_path / "a", ["kfac"], grid, Tuning(budget=6), corner)
    record = spent.records["kfac"]
    assert (record.trials, record.state) == (6, "edge, budget spent") and len(toy.submitted) == 6
    assert record.to_dict()["trials_of_budget"] == "6/6" and {e["stopped_by"] for e in record.edges} == {"--budget"}

    seeded, toy = tune(tmp_path / "b", ["kfac"], grid, Tuning(budget=13), corner, seeds=[0, 1])
    assert seeded.records["kfac"].trials <= 13 and len(toy.submitted) == seeded.records["kfac"].trials == 12  # 2 runs a setting

    far, _ = tune(tmp_path / "c", ["sgd"], {"lr": [0.01, 0.03]}, Tuning(), log_distance(lr=5.0))
    assert far.records["sgd"].state == "edge at bound (lr 2.7e-1)" and far.records["sgd"].edges[0]["stopped_by"] == "--extend 2"
    limited, _ = tune(tmp_path / "d", ["sgd"], {"lr": [1.0, 3.0]}, Tuning(extend=5), log_distance(lr=100.0))
    assert limited.records["sgd"].state == "edge at bound (lr 9e0)"  # 27 > 10, the limit of lr
    assert limited.records["sgd"].edges[0]["stopped_by"] == "limit lr in [1e-8, 1e1]"
    off, toy = tune(tmp_path / "e", ["sgd"], {"lr": [0.01, 0.03]}, Tuning(extend=0), log_distance(lr=0.09))
    assert off.records["sgd"].state == "edge at bound (lr 3e-2)" and len(toy.submitted) == 2


def test_a_diverged_step_counts_and_is_worse_than_any_loss(tmp_path: Path) -> None:
    def diverges_above(values: Mapping[str, float]) -> float:
        return math.inf if values["lr"] > 0.05 else log_distance(lr=1.0)(values)

    result, toy = tune(tmp_path / "sw", ["sgd"], {"lr": [0.01, 0.03]}, Tuning(budget=5), diverges_above)
    record = result.records["sgd"]
    assert toy.submitted == ["sgd-lr_1e-2", "sgd-lr_3e-2", "sgd-lr_9e-2"] and record.trials == 3
    assert record.state == "inside" and best_values(result, "sgd") == {"lr": "3e-2"}


def test_a_grid_larger_than_the_budget_is_an_error(tmp_path: Path) -> None:
    grid = {"lr": [0.1, 0.3], "damping": [1e-2, 1e-1], "clip": [1e-2]}
    with pytest.raises(FimbenchError, match=r"more points than --budget 3 \(kfac 4;.*--search quasi-random"):
        plan_tuned(planner(tmp_path / "sw", ["kfac"], grid), Tuning(budget=3))
    for bad, message in (({"budget": 0}, "--budget must be at least 1"), ({"extend": -1}, "--extend must be at least 0"),
                         ({"search": "random"}, "--search is one of"), ({"search": "quasi-random"}, "needs --budget")):
        with pytest.raises(FimbenchError, match=message):
            Tuning(**bad)
    assert not (tmp_path / "sw").exists()


# ----------------------------------------------------------------------------------------------- quasi-random


def test_quasi_random_draws_the_budget_inside_the_log_box(tmp_path: Path) -> None:
    grid = {"lr": [0.01, 0.1, 1.0], "damping": [1e-3, 1.0], "clip": [1e-2]}
    tuning = Tuning(budget=7, search="quasi-random")
    result, toy = tune(tmp_path / "sw", ["kfac", "sgd"], grid, tuning, log_distance(lr=0.2))
    for method in ("kfac", "sgd"):
        points = [state.point for state in result.result.states if state.point.method == method]
        assert len(points) == 7 and len({point.name for point in points}) == 7
        assert all(0.01 <= point.values["lr"] <= 1.0 for point in points)
        record = result.records[method]
        assert (record.trials, record.state, record.extensions, record.extend) == (7, "quasi-random: no extension", [], None)
    kfac = [state.point.values for state in result.result.states if state.point.method == "kfac"]
    assert all(1e-3 <= values["damping"] <= 1.0 and values["clip"] == 1e-2 for values in kfac)
    assert all(float(format_value(value)) == value for values in kfac for value in values.values())  # as named
    assert len(toy.submitted) == 14

    same = plan_tuned(planner(tmp_path / "other", ["kfac"], grid), tuning)
    assert [point.values for point in same.points] == kfac  # the same seed, the same points
    other = plan_tuned(planner(tmp_path / "other", ["kfac"], grid), Tuning(budget=7, search="quasi-random", seed=1))
    assert [point.values for point in other.points] != kfac
    larger = plan_tuned(planner(tmp_path / "other", ["kfac"], grid), Tuning(budget=9, search="quasi-random"))
    assert [point.values for point in larger.points][:7] == kfac  # a larger budget keeps the smaller one's points
    seeded = plan_tuned(planner(tmp_path / "other", ["kfac"], grid, seeds=[0, 1]), tuning, runs_per_setting=2)
    assert len(seeded.points) == 6  # 3 settings of 2 runs within the budget of 7
    with pytest.raises(FimbenchError, match="every tuned key has one value"):
        plan_tuned(planner(tmp_path / "other", ["sgd"], {"lr": [0.1]}), tuning)


# ----------------------------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("sweep")(sweep_cli.sweep)
    return app


def test_cli_budget_report_error_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toys: list[Toy] = []

    def make_toy(*args: Any) -> Toy:
        toys.append(Toy(log_distance(lr=0.09)))
        return toys[-1]

    monkeypatch.setattr(sweep_cli, "make_runner", make_toy)
    out = tmp_path / "sw"
    arguments = ["sweep", "-c", str(SMOKE), "-d", "curves-synth", "-m", "sgd", "--grid", "lr=0.01,0.03", "--out", str(out)]
    runner = CliRunner()
    too_small = runner.invoke(_app(), [*arguments, "--budget", "1"])
    lines = [line for line in too_small.output.splitlines() if line.strip()]
    assert too_small.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: the grid has more points than --budget 1")
    assert not out.exists()

    ran = runner.invoke(_app(), [*arguments, "--budget", "3", "--json"])
    assert ran.exit_code == 0, ran.output
    document = json.loads(ran.stdout)
    assert document["tuning"]["sgd"]["trials_of_budget"] == "3/3" and document["tuning"]["sgd"]["state"] == "edge, budget spent"
    assert "tuning" in ran.stderr and "edge, budget spent" in ran.stderr and len(toys[0].submitted) == 3

    again = runner.invoke(_app(), [*arguments, "--budget", "3"])
    assert again.exit_code == 0 and toys[1].submitted == [] and "3/3" in again.output


def test_the_cli_defaults_are_the_engines() -> None:
    assert sweep_cli.TUNING["extend"].default == DEFAULT_EXTEND and tuple(search.value for search in sweep_cli.Search) == SEARCHES
