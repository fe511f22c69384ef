"""Stability matrix: every method × many seeds through `fimbench train`, counting what can go wrong.

Scenarios (each run is an ordinary run directory under ``--runs``):

* ``presets``: curves-synth at its full size (16000 train / 4000 val), each method at its preset, 20 epochs;
* ``figure2``: the settings of RESULTS' "Figure 2, reproduced": 5000 / 2000 images, T1 = T2 = 20, 20 epochs;
* ``qmodel``: ``--step-rule qmodel`` from its defaults, every preconditioned method, full curves-synth;
* ``mnist``: the MNIST autoencoder (batch 512) on 50000 MNIST-sized curves-synth images, ``--mnist-steps`` steps
  (300 by default; too few to leave or reach a plateau, so no run counts as stuck there);
* ``figure2-damped``: ``figure2`` with λ = 0.1 instead of the presets' 0.01 (does more damping remove the
  seeds stuck on the plateau?).

Per run it records the exit status, whether stderr holds a Python traceback, the final train loss per pixel,
and the refresh guard's activations (``summary.json``). Counted per scenario and method:

* crash: an exit status other than 0 (completed) and 3 (diverged), or a traceback;
* diverged: exit status 3 (a non-finite loss, or a curvature with no earlier inverse to keep);
* guard: runs with at least one guard activation (and the total number of activations);
* stuck: a run whose best epoch's train loss per pixel is within 0.5 % of the plateau (or above it), the
  loss of the best constant output (the training split's mean image), on which an autoencoder sits when no
  code unit carries information; ``--explain`` counts the code units alive at the end of each run;
* setback: a completed run whose final epoch is more than 10 % above its best (a loss spike late in the run).

Each finished run appends one line to ``--results`` (a JSON-lines file small enough to commit; the
matrix recorded in RESULTS is ``benchmarks/stability/results.jsonl``). Rerunning the same command resumes:
runs already in that file are kept, in this session or a later one. Runs go one per core (``-j``), each
with one torch thread. ``--explain SCENARIO/METHOD`` prints a cell's trajectories from its run directories.

    python benchmarks/stability.py --results benchmarks/stability/results.jsonl --runs /tmp/stability -j 2 \
        [--scenarios presets,figure2,qmodel,mnist] [--seeds 10] [--qmodel-seeds 3] [--mnist-seeds 1] \
        [--methods kfac,deflation] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fimbench.data import DatasetSplits, load_dataset
from fimbench.engines.models import build_model, default_architecture
from fimbench.methods import Method

PRECONDITIONED = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected", "ekfac", "exact-ng", "exact-ng-block"]
ALL_METHODS = ["sgd", "adam", *PRECONDITIONED]
STUCK_MARGIN = 0.005  # stuck runs end 0.0–0.3 % below (or above) the plateau; SGD's slow learners 1–4 % below
SETBACK = 1.10
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

    @property
    def key(self) -> tuple[str, str, int]:
        return self.scenario, self.method, self.seed


def scenario_jobs(name: str, methods: Sequence[str], seeds: int, epochs: int, mnist_steps: int) -> list[Job]:
    """The jobs of one scenario (module docstring)."""
    if name == "presets":
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs))) for m in methods for s in range(seeds)]
    if name == "figure2":
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs), *FIGURE2)) for m in methods for s in range(seeds)]
    if name == "figure2-damped":
        damped = ("-d", "curves-synth", "--epochs", str(epochs), *FIGURE2, "--damping", "0.1")
        return [Job(name, m, s, damped) for m in methods if m in PRECONDITIONED for s in range(seeds)]
    if name == "qmodel":
        chosen = [m for m in methods if m in PRECONDITIONED]
        return [Job(name, m, s, ("-d", "curves-synth", "--epochs", str(epochs), "--step-rule", "qmodel")) for m in chosen for s in range(seeds)]
    if name == "mnist":
        steps = ("--set", f"training.max_steps={mnist_steps}", "--epochs", "100")  # max_steps ends it (98 steps an epoch)
        return [Job(name, m, s, (*MNIST, *steps)) for m in methods for s in range(seeds)]
    raise SystemExit(f"error: unknown scenario {name!r}; choose from presets, figure2, qmodel, mnist, figure2-damped")


def run_job(job: Job, root: Path) -> dict:
    """Train one job in its run directory under ``root`` and classify its outcome."""
    directory = job.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fimbench", "train", "-m", job.method, "--seed", str(job.seed), *job.arguments,
               "--out", str(directory / "run"), "--quiet", "--overwrite"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    (directory / "stderr.txt").write_text(completed.stderr)
    summary_path = directory / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    final = summary.get("final", {})
    metrics = directory / "run" / "metrics.jsonl"
    epochs = [row for row in map(json.loads, metrics.read_text().splitlines()) if row.get("kind") == "epoch"] if metrics.exists() else []
    result = {
        "scenario": job.scenario,
        "method": job.method,
        "seed": job.seed,
        "exit_status": completed.returncode,
        "traceback": "Traceback (most recent call last)" in completed.stderr,
        "error_line": next((line for line in completed.stderr.splitlines() if line.startswith("error:")), None),
        "status": summary.get("status"),
        "final_train_loss_per_pixel": final.get("train_loss_per_pixel"),
        "best_train_loss_per_pixel": min((row["train_loss_per_pixel"] for row in epochs), default=None),
        "guard_activations": summary.get("guard_activations", 0),
        "guard_events": summary.get("guard_events", []),
        "seconds": seconds,
    }
    return result


class ResultsFile:
    """The JSON-lines file of finished runs: read once to resume, appended as each run finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        lines = path.read_text().splitlines() if path.exists() else []
        self.results = [json.loads(line) for line in lines if line.strip()]

    def done(self, job: Job) -> bool:
        return any((r["scenario"], r["method"], r["seed"]) == job.key for r in self.results)

    def add(self, result: dict) -> None:
        with self.lock:
            self.results.append(result)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(result) + "\n")


def plateau(scenario: str) -> float:
    """Loss per pixel of the best constant output (the training split's mean image), the plateau."""
    sizes = {"figure2": (5000, 2000), "figure2-damped": (5000, 2000), "mnist": (62500, 2000)}.get(scenario, (20000, 10000))
    splits = load_dataset("curves-synth", synth_train=sizes[0], synth_test=sizes[1])
    x = splits.train.double()
    mean = x.mean(dim=0).clamp(1e-7, 1 - 1e-7)
    return float(-(x * mean.log() + (1 - x) * (1 - mean).log()).mean())


def tabulate(results: list[dict], plateaus: dict[str, float]) -> str:
    """The matrix as a Markdown table: one row per scenario and method."""
    lines = ["| scenario | method | runs | crash | traceback | diverged | guard runs (events) | stuck | setback | final loss/px min–max |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    keys = sorted({(r["scenario"], r["method"]) for r in results}, key=lambda k: (k[0], ALL_METHODS.index(k[1])))
    for scenario, method in keys:
        rows = [r for r in results if r["scenario"] == scenario and r["method"] == method]
        crashes = sum(r["exit_status"] not in (0, 3) or r["traceback"] for r in rows)
        finished = [r for r in rows if r["exit_status"] == 0 and r["final_train_loss_per_pixel"] is not None]
        losses = [r["final_train_loss_per_pixel"] for r in finished]
        best = [r.get("best_train_loss_per_pixel") or r["final_train_loss_per_pixel"] for r in finished]
        stuck = "–" if scenario == "mnist" else sum(loss >= (1 - STUCK_MARGIN) * plateaus[scenario] for loss in best)
        setbacks = sum(final > SETBACK * low for final, low in zip(losses, best))
        guard_runs = sum(r["guard_activations"] > 0 for r in rows)
        events = sum(r["guard_activations"] for r in rows)
        spread = f"{min(losses):.4f}–{max(losses):.4f}" if losses else "–"
        lines.append(f"| {scenario} | {method} | {len(rows)} | {crashes} | {sum(r['traceback'] for r in rows)} | "
                     f"{sum(r['exit_status'] == 3 for r in rows)} | {guard_runs} ({events}) | {stuck} | {setbacks} | {spread} |")
    return "\n".join(lines)


def code_units_alive(run: Path, splits: DatasetSplits) -> tuple[int, int]:
    """(alive, width) of the narrowest hidden ReLU layer (the code) of a run's final model: units that are
    positive for at least one of the first 2000 training images. A dead unit passes no gradient back."""
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(default_architecture("curves-synth"), 0)
    model.load_state_dict(checkpoint["model"])
    outputs: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    with torch.no_grad():
        model(splits.train[:2000].float())
    code = min(outputs, key=lambda output: output.shape[1])
    return int((code > 0).any(dim=0).sum()), code.shape[1]


def trajectories(root: Path, scenario: str, method: str, plateau_value: float) -> str:
    """Each seed's run of ``scenario``/``method`` epoch by epoch, stuck seeds first: train loss per pixel,
    alignment cos(F̃⁻¹∇, ∇), safeguard τ, λ and the KL-clip factor ν, and the code units alive at the end."""
    splits = load_dataset("curves-synth", synth_train=5000, synth_test=2000) if "figure2" in scenario else load_dataset("curves-synth")
    lines = ["| seed | stuck | code alive | epoch | loss/px | alignment | τ | λ | ν |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    runs = []
    for directory in sorted((root / scenario / method).glob("seed-*"), key=lambda path: int(path.name.split("-")[1])):
        metrics = directory / "run" / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if row.get("kind") == "epoch"]
        stuck = bool(rows) and rows[-1]["train_loss_per_pixel"] >= (1 - STUCK_MARGIN) * plateau_value
        alive, width = code_units_alive(directory / "run", splits)
        runs.append((not stuck, int(directory.name.split("-")[1]), stuck, f"{alive}/{width}", rows))
    for _, seed, stuck, alive, rows in sorted(runs):
        for row in rows[:: max(1, len(rows) // 4)] + rows[-1:]:
            values = [row.get(key) for key in ("train_loss_per_pixel", "alignment", "correction_scale", "damping", "kl_clip_factor")]
            cells = ["–" if value is None else f"{value:.4g}" for value in values]
            lines.append(f"| {seed} | {'yes' if stuck else 'no'} | {alive} | {row['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("stability/results.jsonl"))
    parser.add_argument("--runs", type=Path, default=Path("stability/runs"))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--scenarios", default="presets,figure2,qmodel,mnist")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--qmodel-seeds", type=int, default=3)
    parser.add_argument("--mnist-seeds", type=int, default=1)
    parser.add_argument("--mnist-steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--explain", metavar="SCENARIO/METHOD", help="print the trajectories of one cell's seeds instead of running")
    args = parser.parse_args()
    if args.explain:
        scenario, method = args.explain.split("/")
        print(trajectories(args.runs, scenario, method, plateau(scenario)))
        return
    methods = [Method(name).value for name in args.methods.split(",")]
    scenarios = args.scenarios.split(",")
    seeds = {"qmodel": args.qmodel_seeds, "mnist": args.mnist_seeds}
    jobs = [job for name in scenarios for job in scenario_jobs(name, methods, seeds.get(name, args.seeds), args.epochs, args.mnist_steps)]
    torch.set_num_threads(1)
    plateaus = {name: plateau(name) for name in scenarios}
    store = ResultsFile(args.results)
    pending = [job for job in jobs if not store.done(job)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: store.add(run_job(job, args.runs)), pending))
    chosen = {job.key for job in jobs}
    results = [r for r in store.results if (r["scenario"], r["method"], r["seed"]) in chosen]
    print("plateau loss per pixel: " + ", ".join(f"{name} {value:.4f}" for name, value in plateaus.items()))
    print(tabulate(results, plateaus))


if __name__ == "__main__":
    main()
