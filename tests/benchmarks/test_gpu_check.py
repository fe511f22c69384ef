"""benchmarks/gpu_check.py: its CPU dry run end to end (so the GPU script never rots), how a check's
failure, exception or time limit is recorded without stopping the others, and the GPU timing table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fimbench.methods import Method

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402

NOT_ON_CPU = {"nproc-nccl", "timing"}  # skipped in the dry run, with their reason


def test_dry_run_passes_every_check_that_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    failed = {check["name"]: check["reason"] for check in report["checks"] if check["status"] == "failed"}
    assert completed.returncode == 0 and not failed, (failed, completed.stderr[-3000:])
    expected = {"data", "resume", "bf16-autocast", "compile", "fisher-error", "cost-profile"} | {f"train/{m.value}" for m in Method}
    assert set(statuses) == expected | NOT_ON_CPU
    assert all(statuses[name] == "passed" for name in expected)
    assert all(statuses[name] == "skipped" for name in NOT_ON_CPU)
    assert report["dry_run"] and report["failed"] == []
    resume = next(check for check in report["checks"] if check["name"] == "resume")["details"]
    assert resume["epochs_before_kill"] < resume["epochs"] and resume["parameter_difference"] <= gpu_check.PARAMETER_TOLERANCE
    table = (out / "gpu_check.md").read_text()
    assert "| resume | passed |" in table and "| nproc-nccl | skipped |" in table and "Dry run on CPU" in table


def test_a_failing_check_is_recorded_with_its_reason_and_the_next_one_runs() -> None:
    cpu = torch.device("cpu")

    def fails() -> dict[str, object]:
        raise gpu_check.CheckFailed("the loss did not fall", {"first_loss": 1.0})

    def breaks() -> dict[str, object]:
        raise ValueError("a defect\nsecond line")

    def hangs() -> dict[str, object]:
        while True:
            time.sleep(0.01)

    results = [gpu_check.run_check(name, check, 0.3, cpu) for name, check in
               (("fails", fails), ("breaks", breaks), ("hangs", hangs), ("passes", lambda: {"value": 2}))]
    assert [(r["status"], r["reason"]) for r in results] == [
        ("failed", "the loss did not fall"),
        ("failed", "ValueError: a defect"),
        ("failed", "ran past its 0.3 s limit"),
        ("passed", ""),
    ]
    assert results[0]["details"] == {"first_loss": 1.0} and results[3]["details"] == {"value": 2}
    assert results[2]["seconds"] < 5 and "traceback" in results[1]["details"]


def test_markdown_puts_gpu_timings_beside_the_ratios() -> None:
    rows = [
        {"method": "sgd", "batch": 512, "ms_per_step": 2.0, "ratio_to_sgd": 1.0, "seconds_per_epoch": 0.194},
        {"method": "kfac", "batch": 512, "ms_per_step": 4.2, "ratio_to_sgd": 2.1, "seconds_per_epoch": 0.4074},
        {"method": "sgd", "batch": 2048, "ms_per_step": 5.0, "ratio_to_sgd": 1.0, "seconds_per_epoch": 0.12},
    ]
    report = {
        "dry_run": False, "environment": {"device": "NVIDIA H200", "torch": "2.x"}, "started": "now", "seconds": 300.0,
        "verdict": "every check passed or was skipped",
        "checks": [{"name": "timing", "status": "passed", "reason": "", "seconds": 60.0,
                    "details": {"rows": rows, "steps": 100, "period": 100}}],
    }
    table = gpu_check.markdown(report)
    assert "# gpu_check — NVIDIA H200" in table and "Dry run" not in table
    assert "| method | ms/step @512 | ÷ SGD @512 | s/epoch @512 | ms/step @2048 | ÷ SGD @2048 | s/epoch @2048 |" in table
    assert "| kfac | 4.20 | 2.10 | 0.41 | – | – | – |" in table
