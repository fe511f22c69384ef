"""Stability matrix: every method × many seeds through `fimbench train`, counting what can go wrong.

Scenarios (each run is an ordinary run directory under ``--out``):

* ``presets``: curves-synth at its full size (16000 train / 4000 val), each method at its preset, 20 epochs;
* ``figure2``: the settings of RESULTS' "Figure 2, reproduced": 5000 / 2000 images, T1 = T2 = 20, 20 epochs;
* ``qmodel``: ``--step-rule qmodel`` from its defaults, every preconditioned method, full curves-synth;
* ``mnist``: the MNIST autoencoder (batch 512) on 50000 MNIST-sized curves-synth images, ``--mnist-steps`` steps.

Per run it records the exit status, whether stderr holds a Python traceback, the final train loss per pixel,
and the refresh guard's activations (``summary.json``). Counted per scenario and method:

* crash: an exit status other than 0 (completed) and 3 (diverged), or a traceback;
* diverged: exit status 3 (a non-finite loss, or a curvature with no earlier inverse to keep);
* guard: runs with at least one guard activation (and the total number of activations);
* stuck: a run whose final train loss per pixel is within 2 % of the plateau, the loss of the best
  constant output (the training split's mean image), which an autoencoder sits on before it learns a code.

Rerunning the same command resumes: runs with a ``result.json`` are kept. Runs go one per core (``-j``),
each with one torch thread.

    python benchmarks/stability.py --out stability -j 2 [--scenarios presets,figure2,qmodel,mnist]
        [--seeds 10] [--qmodel-seeds 3] [--mnist-seeds 1] [--methods kfac,deflation] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fimbench.data import load_dataset
from fimbench.methods import Method

PRECONDITIONED = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected", "ekfac", "exact-ng", "exact-ng-block"]
ALL_METHODS = ["sgd", "adam", *PRECONDITIONED]
STUCK_MARGIN = 0.02
FIGURE2 = ["--set", "data.synth_train=5000", "--set", "data.synth_test=2000",
           "--set", "optimizer.stats_every=20", "--set", "optimizer.inverse_every=20"]
MNIST = ["--config", str(Path(__file__).parent / "cross_layer" / "mnist-shaped.yaml"),
         "--set", "data.synth_train=62500", "--set", "data.synth_test=2000"]


@dataclass(frozen=True)
class Job:
    """One training run of the matrix."""

    scenario: str
    method: str
    seed: int
    arguments: tuple[str, ...]

    def directory(self, root: Path) -> Path:
        return root / self.scenario / self.method / f"seed-{self.seed}"


def scenario_jobs(name: str, methods: Sequence[str], seeds: int, epochs: int, mnist_steps: int) -> list[Job]:
    """The jobs of one scenario (module docstring)."""
    if name == "presets":
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs))) for m in methods for s in range(seeds)]
    if name == "figure2":
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs), *FIGURE2)) for m in methods for s in range(seeds)]
    if name == "qmodel":
        chosen = [m for m in methods if m in PRECONDITIONED]
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs), "--step-rule", "qmodel")) for m in chosen for s in range(seeds)]
    if name == "mnist":
        steps = ("--set", f"training.max_steps={mnist_steps}", "--epochs", "1")
        return [Job(name, m, s, (*MNIST, *steps)) for m in methods for s in range(seeds)]
    raise SystemExit(f"error: unknown scenario {name!r}; choose from presets, figure2, qmodel, mnist")


def run_job(job: Job, root: Path) -> dict:
    """Train one job (or read its kept result) and classify its outcome."""
    directory = job.directory(root)
    result_path = directory / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fimbench", "train", "-m", job.method, "--seed", str(job.seed), *job.arguments,
               "--out", str(directory / "run"), "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    (directory / "stderr.txt").write_text(completed.stderr)
    summary_path = directory / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    final = summary.get("final", {})
    result = {
        "scenario": job.scenario,
        "method": job.method,
        "seed": job.seed,
        "exit_status": completed.returncode,
        "traceback": "Traceback (most recent call last)" in completed.stderr,
        "error_line": next((line for line in completed.stderr.splitlines() if line.startswith("error:")), None),
        "status": summary.get("status"),
        "final_train_loss_per_pixel": final.get("train_loss_per_pixel"),
        "guard_activations": summary.get("guard_activations", 0),
        "guard_events": summary.get("guard_events", []),
        "seconds": seconds,
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def plateau(scenario: str) -> float:
    """Loss per pixel of the best constant output (the training split's mean image), the plateau."""
    sizes = {"figure2": (5000, 2000), "mnist": (62500, 2000)}.get(scenario, (20000, 10000))
    splits = load_dataset("curves-synth", synth_train=sizes[0], synth_test=sizes[1])
    x = splits.train.double()
    mean = x.mean(dim=0).clamp(1e-7, 1 - 1e-7)
    return float(-(x * mean.log() + (1 - x) * (1 - mean).log()).mean())


def tabulate(results: list[dict], plateaus: dict[str, float]) -> str:
    """The matrix as a Markdown table: one row per scenario and method."""
    lines = ["| scenario | method | runs | crash | traceback | diverged | guard runs (events) | stuck | final loss/px min–max |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    keys = sorted({(r["scenario"], r["method"]) for r in results}, key=lambda k: (k[0], ALL_METHODS.index(k[1])))
    for scenario, method in keys:
        rows = [r for r in results if r["scenario"] == scenario and r["method"] == method]
        crashes = sum(r["exit_status"] not in (0, 3) or r["traceback"] for r in rows)
        losses = [r["final_train_loss_per_pixel"] for r in rows if r["exit_status"] == 0 and r["final_train_loss_per_pixel"] is not None]
        stuck = sum(loss >= (1 - STUCK_MARGIN) * plateaus[scenario] for loss in losses)
        guard_runs = sum(r["guard_activations"] > 0 for r in rows)
        events = sum(r["guard_activations"] for r in rows)
        spread = f"{min(losses):.4f}–{max(losses):.4f}" if losses else "–"
        lines.append(f"| {scenario} | {method} | {len(rows)} | {crashes} | {sum(r['traceback'] for r in rows)} | "
                     f"{sum(r['exit_status'] == 3 for r in rows)} | {guard_runs} ({events}) | {stuck} | {spread} |")
    return "\n".join(lines)


def trajectories(root: Path, scenario: str, method: str, plateau_value: float) -> str:
    """Each seed's run of ``scenario``/``method`` epoch by epoch, stuck seeds first: train loss per pixel,
    alignment cos(F̃⁻¹∇, ∇), safeguard τ, λ and the KL-clip factor ν (what item 6 of the stability issue compares)."""
    lines = ["| seed | stuck | epoch | loss/px | alignment | τ | λ | ν |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    runs = []
    for directory in sorted((root / scenario / method).glob("seed-*"), key=lambda path: int(path.name.split("-")[1])):
        metrics = directory / "run" / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if row.get("kind") == "epoch"]
        stuck = bool(rows) and rows[-1]["train_loss_per_pixel"] >= (1 - STUCK_MARGIN) * plateau_value
        runs.append((not stuck, int(directory.name.split("-")[1]), stuck, rows))
    for _, seed, stuck, rows in sorted(runs):
        for row in rows[:: max(1, len(rows) // 5)] + rows[-1:]:
            values = [row.get(key) for key in ("train_loss_per_pixel", "alignment", "correction_scale", "damping", "kl_clip_factor")]
            cells = ["–" if value is None else f"{value:.4g}" for value in values]
            lines.append(f"| {seed} | {'yes' if stuck else 'no'} | {row['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("stability"))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--scenarios", default="presets,figure2,qmodel,mnist")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--qmodel-seeds", type=int, default=3)
    parser.add_argument("--mnist-seeds", type=int, default=1)
    parser.add_argument("--mnist-steps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--explain", metavar="SCENARIO/METHOD", help="print the trajectories of one cell's seeds instead of running")
    args = parser.parse_args()
    if args.explain:
        scenario, method = args.explain.split("/")
        print(trajectories(args.out, scenario, method, plateau(scenario)))
        return
    methods = [Method(name).value for name in args.methods.split(",")]
    scenarios = args.scenarios.split(",")
    seeds = {"qmodel": args.qmodel_seeds, "mnist": args.mnist_seeds}
    jobs = [job for name in scenarios for job in scenario_jobs(name, methods, seeds.get(name, args.seeds), args.epochs, args.mnist_steps)]
    torch.set_num_threads(1)
    plateaus = {name: plateau(name) for name in scenarios}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: run_job(job, args.out), jobs))
    table = tabulate(results, plateaus)
    report = {"plateaus": plateaus, "stuck_margin": STUCK_MARGIN, "seconds": time.perf_counter() - started, "results": results}
    (args.out / "stability.json").write_text(json.dumps(report, indent=1))
    (args.out / "stability.md").write_text(table + "\n")
    print("plateau loss per pixel: " + ", ".join(f"{name} {value:.4f}" for name, value in plateaus.items()))
    print(table)


if __name__ == "__main__":
    main()
