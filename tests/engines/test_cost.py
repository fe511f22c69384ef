"""``fimbench cost-profile``: tiny sweeps and profiles through Typer's runner, exponent fits, the timer.

No assertion on absolute times: only structure, exact fits on synthetic timings, and synchronisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from fimbench import timing
from fimbench.cli.cost import cost_profile
from fimbench.engines.cost import (
    PHASES,
    YARDSTICKS,
    CostPoint,
    LayerCost,
    MethodCost,
    ModelProfile,
    Timing,
    fit_exponents,
    profiler,
    sweep_exponents,
)
from fimbench.engines.models import Architecture
from fimbench.fisher.likelihood import Likelihood
from fimbench.timing import measure

runner = CliRunner()
TIMING_FIELDS = {"median", "q1", "q3", "low", "high", "samples"}


def _app() -> typer.Typer:
    """An app holding only ``cost-profile`` (the callback keeps it a subcommand)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("cost-profile")(cost_profile)
    return app


def _check_method(entry: dict, method: str, layers: int, repeats: int) -> None:
    assert entry["method"] == method and len(entry["layers"]) == layers
    assert set(entry["precondition"]) == TIMING_FIELDS
    for layer in entry["layers"]:
        assert set(layer["times"]) == set(PHASES)
        for phase in PHASES:
            stats = layer["times"][phase]
            assert set(stats) == TIMING_FIELDS and len(stats["samples"]) == repeats
            assert stats["low"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["high"]
        if method == "kfac":
            assert layer["iterations_cold"] is None and layer["iterations_warm"] is None
        else:
            assert layer["iterations_cold"] >= 1 and layer["iterations_warm"] >= 1


def test_tiny_sweep_prints_tables_and_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        _app(),
        ["cost-profile", "--widths", "16,32", "--batches", "8,16", "--repeats", "2", "--methods", "kfac,kpsvd",
         "--device", "cpu", "--out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for text in ("Table 1, measured", "KFAC", "KPSVD", "F̂⁻¹ inverse", "fitted exponents", "4k₁md²", "★"):
        assert text in result.output
    data = json.loads((out / "cost.json").read_text())
    assert data["mode"] == "sweep" and data["widths"] == [16, 32] and data["fisher_batches"] == [8, 16]
    assert data["environment"]["repeats"] == 2 and data["environment"]["device_type"] == "cpu"
    assert [(p["width"], p["fisher_batch"]) for p in data["points"]] == [(16, 8), (16, 16), (32, 8), (32, 16)]
    for point in data["points"]:
        profile = point["profile"]
        assert profile["fisher_batch_size"] == point["fisher_batch"]
        assert profile["batch_size"] == 4 * point["fisher_batch"]
        assert list(profile["yardsticks"]) == list(YARDSTICKS)
        for entry, method in zip(profile["methods"], ["kfac", "kpsvd"]):
            _check_method(entry, method, layers=1, repeats=2)
            assert (entry["layers"][0]["p"], entry["layers"][0]["q"]) == (point["width"] + 1, point["width"])
    fits = data["exponents"]
    assert [(f["method"], f["phase"]) for f in fits] == [(m, p) for m in ("kfac", "kpsvd") for p in PHASES]
    for fit in fits:
        for axis, others in (("d", ["8", "16"]), ("m", ["16", "32"])):
            assert set(fit[axis]) == {"fitted", "per_other", "paper", "model"}
            assert sorted(fit[axis]["per_other"], key=int) == others
    assert [f for f in fits if f["method"] == "kfac" and f["phase"] == "inverse"][0]["d"]["paper"] == 3.0
    assert sum(f["dominant"] for f in fits) == 2  # one per method
    assert (out / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_profile_per_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--dataset`` profiles every layer of the dataset's autoencoder (shrunk here) at its preset batch."""
    monkeypatch.setitem(profiler.ARCHITECTURES, "curves", Architecture((12, 6, 12), Likelihood.BERNOULLI))
    out = tmp_path / "run"
    result = runner.invoke(
        _app(),
        ["cost-profile", "--dataset", "curves", "--repeats", "1", "--methods", "deflation,kfac", "--device", "cpu",
         "--out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "curves autoencoder (2 layers), batch 256, Fisher batch 64" in result.output
    assert "per layer" in result.output and "Deflation" in result.output
    data = json.loads((out / "cost.json").read_text())
    assert data["mode"] == "dataset" and data["layers"] == [12, 6, 12] and data["exponents"] == []
    methods = data["profile"]["methods"]
    _check_method(methods[0], "deflation", layers=2, repeats=1)
    _check_method(methods[1], "kfac", layers=2, repeats=1)
    assert methods[0]["settings"]["method"] == "deflation" and methods[0]["layers"][0]["rank"] == 2
    assert [(layer["q"], layer["p"]) for layer in methods[1]["layers"]] == [(6, 13), (12, 7)]
    assert not (out / "cost.png").exists()


def test_fitted_exponents_are_exact_on_power_laws() -> None:
    widths, batches = [128, 256, 512, 1024], [64, 256, 1024]
    d = torch.tensor(widths, dtype=torch.float64).unsqueeze(1)
    m = torch.tensor(batches, dtype=torch.float64).unsqueeze(0)
    per_m, per_d = fit_exponents(widths, batches, 3e-9 * d**2.7 * m**0.6)
    assert per_m is not None and per_d is not None
    assert list(per_m) == batches and list(per_d) == widths
    assert all(abs(value - 2.7) < 1e-12 for value in per_m.values())
    assert all(abs(value - 0.6) < 1e-12 for value in per_d.values())
    assert fit_exponents(widths, [64], 2e-9 * d**3)[1] is None


def test_sweep_exponents_recover_synthetic_timings() -> None:
    """t = c·d^a·m^b exactly for every phase: fitted exponents are a and b, dominance follows the times."""
    exponents = {"build_cold": (2.0, 1.0), "build_warm": (1.5, 1.25), "inverse": (3.0, 0.0), "apply": (2.5, 0.0)}
    scales = {"build_cold": 1e-9, "build_warm": 1e-9, "inverse": 2e-9, "apply": 1e-10}
    widths, batches = [128, 256, 512], [64, 256]
    points = []
    for d in widths:
        for m in batches:
            times = {phase: Timing.of([scales[phase] * d**a * m**b]) for phase, (a, b) in exponents.items()}
            layer = LayerCost(0, d + 1, d, 1, None, None, times)
            methods = [MethodCost("kfac", {}, [layer], Timing.of([1.0]))]
            points.append(CostPoint(d, m, ModelProfile(4 * m, m, {}, methods)))
    fits = sweep_exponents(widths, batches, points)
    assert [fit.phase for fit in fits] == list(PHASES)
    for fit in fits:
        a, b = exponents[fit.phase]
        assert fit.d is not None and fit.m is not None
        assert abs(fit.d.fitted - a) < 1e-12 and abs(fit.m.fitted - b) < 1e-12
        assert all(abs(value - a) < 1e-12 for value in fit.d.per_other.values())
        assert (fit.d.paper, fit.m.paper) == ((2.0, 1.0) if fit.phase.startswith("build") else (3.0, 0.0))
        assert fit.dominant == (fit.phase == "inverse")
    inverse = next(fit for fit in fits if fit.phase == "inverse")
    assert inverse.within_tolerance is True and abs(inverse.d.model - 3.0) < 0.1  # type: ignore[union-attr]


class _FakeEvent:
    """Stands in for ``torch.cuda.Event``: logs ``record`` and reports 2 ms between two events."""

    def __init__(self, log: list[str], enable_timing: bool = False) -> None:
        assert enable_timing
        self.log = log

    def record(self) -> None:
        self.log.append("record")

    def elapsed_time(self, end: _FakeEvent) -> float:
        self.log.append("elapsed")
        return 2.0


def test_measure_synchronises_cuda_around_every_timed_region(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "Event", lambda enable_timing=False: _FakeEvent(log, enable_timing))
    seconds = measure(lambda: log.append("call"), torch.device("cuda"), repeats=2, warmup=1,
                      setup=lambda: log.append("setup"))
    assert seconds == [0.002, 0.002]
    region = ["setup", "sync", "record", "call", "record", "sync", "elapsed"]
    assert log == ["setup", "call", *region, *region]


def test_measure_synchronises_cpu_around_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    clock = iter([10.0, 10.5, 20.0, 20.25])

    def tick() -> float:
        log.append("clock")
        return next(clock)

    monkeypatch.setattr(timing, "synchronize", lambda device: log.append("sync"))
    monkeypatch.setattr(timing.time, "perf_counter", tick)
    seconds = measure(lambda: log.append("call"), torch.device("cpu"), repeats=2, warmup=0)
    assert seconds == [0.5, 0.25]
    assert log == ["sync", "clock", "call", "sync", "clock"] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--widths", "16", "--methods", "kfac,adagrad"], "error: unknown method 'adagrad'; choose from kfac, kpsvd"),
        (["--dataset", "mnist", "--widths", "128"], "error: choose either --dataset or --widths/--batches, not both"),
        (["--dataset", "mnist", "--batches", "64"], "error: choose either --dataset or --widths/--batches, not both"),
        (["--widths", "16,0", "--batches", "8"], "error: --widths takes positive integers, got '0'"),
        (["--widths", "16", "--batches", "-8"], "error: --batches takes positive integers, got '-8'"),
        (["--widths", "16", "--batches", "eight"], "error: --batches takes positive integers, got 'eight'"),
        (["--widths", "16", "--repeats", "0"], "error: --repeats must be at least 1, got 0"),
        (["--widths", "16", "--methods", ","], "error: no method to profile"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(_app(), ["cost-profile", *args, "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
