"""An unexpected exception (a bug) in a command or a sweep point: one ``error: internal error in …`` line, no
traceback on the terminal, the traceback in ``crash.log`` (the run directory's, else a temporary file), exit
status 5, and what was logged kept.

The bug is a monkeypatched engine function that raises ``RuntimeError("boom")``; runs are tiny curves-synth ones.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from helpers import runner, tiny_config
from typer.testing import Result

from fimbench import exit_codes
from fimbench.cli import app
from fimbench.errors import CRASH_LOG, FimbenchError

ERROR_LINE = re.compile(r"^error: internal error in (?P<where>.+?): RuntimeError: boom \(traceback in (?P<log>.+)\)$")


def invoke(args: Sequence[object]) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def crash_line(result: Result) -> re.Match[str]:
    """The one ``error:`` line of a command ended by the bug, with no traceback anywhere in its output."""
    assert result.exit_code == exit_codes.INTERNAL_ERROR, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    match = ERROR_LINE.match(errors[0])
    assert match is not None, errors[0]
    return match


def holds_the_traceback(log: Path) -> None:
    text = log.read_text()
    assert "internal error in" in text.splitlines()[0]
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text


@pytest.fixture
def crash_in_epoch_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training raises RuntimeError("boom") when it ends its second epoch (the first is logged)."""
    from fimbench.engines import train

    epoch_row = train._epoch_row

    def crashing(run: Any, epoch: int, means: list[float]) -> dict[str, Any]:
        if epoch == 2:
            raise RuntimeError("boom")
        return epoch_row(run, epoch, means)

    monkeypatch.setattr(train, "_epoch_row", crashing)


@pytest.fixture
def temporary_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts new files (a crash log without a run directory), inside the test's folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_train_crash_keeps_the_log_and_writes_crash_log(tmp_path: Path, crash_in_epoch_two: None, temporary_dir: Path) -> None:
    out = tmp_path / "run"
    result = invoke(["train", "-c", tiny_config(tmp_path), "-m", "sgd", "--out", out, "--json"])
    match = crash_line(result)
    assert match["where"] == "train" and match["log"] == str(out / CRASH_LOG)
    holds_the_traceback(out / CRASH_LOG)
    assert "_epoch_row" in (out / CRASH_LOG).read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]  # what was logged before the crash is kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "crashed" and summary["epochs"] == 1
    assert json.loads(result.stdout) == {"run_dir": str(out), **summary}  # --json: the run's document, as on divergence
    assert not list(temporary_dir.glob("fimbench-crash-*"))


def test_overwrite_removes_an_old_crash_log(tmp_path: Path, crash_in_epoch_two: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path)
    crash_line(invoke(["train", "-c", config, "-m", "sgd", "--out", out, "-q"]))
    monkeypatch.undo()  # the bug fixed
    rerun = invoke(["train", "-c", config, "-m", "sgd", "--out", out, "-q", "--overwrite"])
    assert rerun.exit_code == 0, rerun.output
    assert not (out / CRASH_LOG).exists()
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (RuntimeError("boom"), exit_codes.INTERNAL_ERROR, None),
        (FimbenchError("bad input"), exit_codes.USAGE, "error: bad input"),
        (KeyboardInterrupt(), exit_codes.INTERRUPTED, "error: interrupted"),
        (typer.Exit(7), 7, None),
        (SystemExit(9), 9, None),
    ],
)
def test_command_without_run_directory(
    tmp_path: Path, temporary_dir: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, status: int, line: str | None
) -> None:
    """A bug in download-data (no run directory): the crash log is a temporary file; the errors that have
    their own status, and exits, keep it."""

    def download_dataset(*args: Any, **kwargs: Any) -> Path:
        raise raised

    monkeypatch.setattr("fimbench.data.download_dataset", download_dataset)
    result = invoke(["download-data", "curves", "--data-dir", tmp_path / "data"])
    if status != exit_codes.INTERNAL_ERROR:
        assert result.exit_code == status, result.output
        assert result.stderr.splitlines() == ([line] if line else [])
        assert not list(temporary_dir.glob("fimbench-crash-*"))
        return
    match = crash_line(result)
    assert match["where"] == "download-data"
    log = Path(match["log"])
    assert log.parent == temporary_dir and log.name.startswith("fimbench-crash-") and log.suffix == ".log"
    holds_the_traceback(log)


def test_subcommand_crash_names_it_and_uses_its_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def plan_figure2(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("fimbench.engines.figure2.plan_figure2", plan_figure2)
    out = tmp_path / "figure2"
    match = crash_line(invoke(["reproduce", "figure2", "-d", "curves-synth", "--out", out]))
    assert match["where"] == "reproduce figure2" and match["log"] == str(out / CRASH_LOG)
    holds_the_traceback(out / CRASH_LOG)


def test_exit_status_5_is_in_the_help() -> None:
    text = " ".join(invoke(["train", "--help"]).stdout.split())
    assert "5 internal error (a bug: the traceback is in crash.log)" in text


# ----------------------------------------------------------------------------------------------- sweep points


class _InProcessRunner:
    """A sweep runner that runs each point here, through run_worker as both real runners do (so the
    monkeypatched bug applies), and reports a failed point's error as they do."""

    def __init__(self, jobs: int = 1, *, worker: Any) -> None:
        self.worker = worker
        self.states: list[Any] = []

    def submit(self, states: Sequence[Any]) -> None:
        self.states = list(states)

    def poll(self) -> list[tuple[Any, str | None]]:
        from fimbench.engines.sweep.runners import run_worker

        ended: list[tuple[Any, str | None]] = []
        for state in self.states:
            try:
                run_worker(self.worker, str(state.run_dir), 1)
                ended.append((state, None))
            except FimbenchError as error:
                ended.append((state, str(error)))
        self.states = []
        return ended

    def close(self) -> None:
        self.states = []


def test_sweep_point_crash_is_a_failed_point(tmp_path: Path, crash_in_epoch_two: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fimbench.engines.sweep.LocalRunner", _InProcessRunner)
    out = tmp_path / "sw"
    result = invoke(["sweep", "-c", tiny_config(tmp_path), "-m", "sgd", "--grid", "lr=1e-3", "--out", out, "--json"])
    assert result.exit_code == exit_codes.SWEEP_FAILED, result.output
    assert "Traceback" not in result.stdout + result.stderr
    point = out / "sgd-lr_1e-3"
    failed = f"failed: sgd-lr_1e-3: internal error in sweep point sgd-lr_1e-3: RuntimeError: boom (traceback in {point / CRASH_LOG})"
    assert failed in result.stderr.splitlines()
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: 1 point(s) failed; rerun the same command to retry them"
    ]
    holds_the_traceback(point / CRASH_LOG)
    assert json.loads((point / "summary.json").read_text())["status"] == "crashed"
    assert len((point / "metrics.jsonl").read_text().splitlines()) == 1
    (state,) = json.loads(result.stdout)["points"]
    assert state["status"] == "failed" and "RuntimeError: boom" in state["message"]


def _crashing_worker(run_dir: str, threads: int) -> str:
    raise RuntimeError("boom")


def test_worker_process_reports_a_crash_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fimbench.engines.sweep.worker import main

    point = tmp_path / "point"
    point.mkdir()
    assert main([f"{__name__}:_crashing_worker", str(point), "1"]) == exit_codes.INTERNAL_ERROR
    assert capsys.readouterr().err.splitlines() == [
        f"error: internal error in sweep point point: RuntimeError: boom (traceback in {point / CRASH_LOG})"
    ]
    holds_the_traceback(point / CRASH_LOG)


def test_local_runner_worker_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real worker process of the local runner: the point fails with the worker's one line, and neither
    worker.log nor the sweep's output holds a traceback."""
    from fimbench.engines.sweep.runners import WORKER_LOG, LocalRunner

    (tmp_path / "buggy.py").write_text("def worker(run_dir, threads):\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker = importlib.import_module("buggy").worker
    del sys.modules["buggy"]  # the worker's process imports it by name

    point = tmp_path / "point"
    point.mkdir()
    local = LocalRunner(1, worker=worker)
    state = SimpleNamespace(run_dir=point)
    local.submit([state])  # type: ignore[list-item]
    deadline = time.monotonic() + 60
    while not (ended := local.poll()):
        assert time.monotonic() < deadline, "the worker did not end"
        time.sleep(0.05)
    line = f"error: internal error in sweep point point: RuntimeError: boom (traceback in {point.absolute() / CRASH_LOG})"
    assert ended == [(state, f"worker exited with status {exit_codes.INTERNAL_ERROR}: {line}")]
    assert (point / WORKER_LOG).read_text().splitlines() == [line]
    holds_the_traceback(point / CRASH_LOG)
