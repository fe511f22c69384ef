"""Behaviour snapshot: every command's numbers on curves-synth with fixed seeds, timings left out.

A refactor that claims "behaviour unchanged" runs this before and after and compares: ``train`` for every
method (and the variants: two-level, exact damping, the qmodel rule), ``fisher-error`` with every method and
both coarse spaces, ``cost-profile`` (ranks and solver iterations; its timings vary), ``sweep`` and
``report``. Numbers are compared exactly; a difference is printed with its path in the snapshot.

Usage::

    python benchmarks/behaviour_snapshot.py --out /tmp/before.json
    python benchmarks/behaviour_snapshot.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("sgd", "adam", "kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected", "ekfac", "exact-ng", "exact-ng-block")
TRAIN_VARIANTS: dict[str, list[str]] = {
    **{method: ["--method", method] for method in METHODS},
    "kfac+nicolaides": ["--method", "kfac", "--coarse", "nicolaides"],
    "ekfac+spectral": ["--method", "ekfac", "--coarse", "spectral"],
    "deflation+exact": ["--method", "deflation", "--damping-form", "exact"],
    "lanczos-qmodel": ["--method", "lanczos", "--step-rule", "qmodel"],
    "kfac-qmodel": ["--method", "kfac", "--step-rule", "qmodel"],
}
SMALL = ["--set", "data.synth_train=600", "--set", "data.synth_test=200"]
TIMING_WORDS = ("second", "time", "wall", "speedup", "started", "finished", "elapsed", "path", "runs", "run_dir", "out")
"""Keys holding any of these words hold times, dates or paths: they differ between two snapshots."""


def fimbench(*arguments: str) -> None:
    """Run one fimbench command with one torch thread; fail loudly."""
    command = [sys.executable, "-m", "fimbench", *arguments, "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def metrics(run: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl without timing fields."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [strip_timing(row) for row in rows]


def snapshot(work: Path) -> dict[str, Any]:
    """Every command's numbers (module docstring)."""
    result: dict[str, Any] = {"train": {}}
    for name, options in TRAIN_VARIANTS.items():
        out = work / f"train-{name}"
        fimbench("train", "--config", "configs/smoke.yaml", *options, *SMALL, "--epochs", "1", "--seed", "3", "--out", str(out))
        result["train"][name] = metrics(out)
    out = work / "fisher-error"
    fimbench("fisher-error", "-d", "curves-synth", "--methods", ",".join(m for m in METHODS if m not in ("sgd", "adam")),
             "--coarse", "nicolaides,spectral", "--layer", "2,5", "--iterations", "6", "--every", "3", "--seed", "1",
             "--batch-size", "64", "--out", str(out))
    with open(out / "errors.csv") as handle:
        result["fisher_error"] = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]
    out = work / "cost"
    fimbench("cost-profile", "-d", "curves-synth", "--methods", "all", "--repeats", "1", "--out", str(out))
    cost = json.loads((out / "cost.json").read_text())
    result["cost"] = [
        [method["method"], [[layer["p"], layer["q"], layer["rank"], layer["iterations_cold"], layer["iterations_warm"]]
                            for layer in method["layers"]]]
        for method in cost["profile"]["methods"]
    ]
    out = work / "sweep"
    fimbench("sweep", "-d", "curves-synth", "-m", "kfac,ekfac,adam", "--grid", "lr=1e-2,1e-3", "--grid", "damping=1e-2",
             "--grid", "clip=1e-2", "--epochs", "1", "--max-steps", "8", "--seed", "2", *SMALL, "--out", str(out))
    result["sweep"] = {str(path.relative_to(out)): metrics(path.parent) for path in sorted(out.rglob("metrics.jsonl"))}
    report = work / "report"
    fimbench("report", str(out), str(work / "train-kfac"), "--out", str(report))
    result["report"] = strip_timing(json.loads((report / "report.json").read_text()))
    return result


def strip_timing(value: Any) -> Any:
    """``value`` without the keys that hold times, dates or paths (they differ between two snapshots)."""
    if isinstance(value, dict):
        return {key: strip_timing(item) for key, item in value.items() if key != "run" and not any(word in key for word in TIMING_WORDS)}
    if isinstance(value, list):
        return [strip_timing(item) for item in value]
    return value


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths where ``after`` differs from ``before``."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = [f"{path}/{key}: only in one" for key in set(before) ^ set(after)]
        return found + [d for key in before if key in after for d in differences(before[key], after[key], f"{path}/{key}")]
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{path}: length {len(before)} → {len(after)}"]
        return [d for index, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{index}]")]
    return [] if before == after else [f"{path}: {before!r} → {after!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the snapshot (JSON)")
    parser.add_argument("--compare", type=Path, help="an earlier snapshot to compare with")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        taken = snapshot(Path(work))
    arguments.out.write_text(json.dumps(taken, indent=1, sort_keys=True))
    if arguments.compare is not None:
        before, after = (strip_timing(json.loads(path.read_text())) for path in (arguments.compare, arguments.out))
        found = differences(before, after)
        print("\n".join(found[:50]) if found else "identical")
        raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()
