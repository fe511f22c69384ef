"""Does the curvature act? Every Kronecker method under four damping settings, with SGD and Adam alongside.

On curves-synth (CURVES autoencoder, batch 256, T1 = T2 = 100) for ``--epochs`` epochs:

* ``old``: the conversion fimbench used before, trace π with ``λ = λ_a / κ²`` (the authors' tuned λ_a);
* ``authors``: the authors' exact damping split (``fimbench.engines.authors_scale.from_authors_scale``: their λ_a, lr_a);
* ``adaptive``: fimbench's preset (trace π, λ₀ = 0.01, lr 0.1) with Levenberg–Marquardt damping;
* ``preset``: fimbench's preset with fixed λ = 0.01 (configs/curves.yaml);
* SGD and Adam: ``baseline`` from configs/curves.yaml (the authors' learning rates, no weight decay) and
  ``authors`` (their exact baselines: Nesterov SGD, weight decay 1e-3, converted).

For each run: the alignment cos(F̃⁻¹∇, ∇) after the first refresh and at the end, the final train loss per
pixel, and the epochs and seconds to reach SGD's and Adam's final train loss. Every run is an ordinary run
directory under ``--out`` (finished ones are kept when the script is run again).

    python benchmarks/damping.py --epochs 20 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path
from typing import Any

import torch

from fimbench.engines.authors_scale import AUTHORS_WEIGHT_DECAY, from_authors_scale, loss_scale
from fimbench.engines.comparison import compare
from fimbench.engines.config import load_config
from fimbench.engines.models import ARCHITECTURES
from fimbench.engines.rundir import read_summary
from fimbench.engines.train import run_training
from fimbench.methods import Method

KRONECKER = ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]
CURVES_TUNED = {  # the authors' (lr, damping) on CURVES, in their scale
    "kfac": (0.1, 3e-3), "kpsvd": (0.1, 3e-3), "kfac-corrected": (0.1, 0.03), "deflation": (0.1, 0.1), "lanczos": (1e-3, 1e-3),
}
CONDITIONS = ("old", "authors", "adaptive", "preset")
FIRST_ORDER_LR = {"sgd": 0.3, "adam": 1e-3}  # the authors' learning rates, in their scale


def optimizer_overrides(method: str, condition: str) -> dict[str, Any]:
    """The optimizer settings of one (method, condition) cell (module docstring)."""
    if condition in ("preset", "baseline"):
        return {}
    if condition == "adaptive":
        return {"damping_schedule": "adaptive"}
    architecture = ARCHITECTURES["curves"]
    if method in FIRST_ORDER_LR:  # the authors' baseline
        converted = from_authors_scale(Method(method), architecture.likelihood, 784, FIRST_ORDER_LR[method], weight_decay=AUTHORS_WEIGHT_DECAY)
        return {**converted, "nesterov": method == "sgd"}
    lr_a, damping_a = CURVES_TUNED[method]
    converted = from_authors_scale(Method(method), architecture.likelihood, 784, lr_a, damping_a, AUTHORS_WEIGHT_DECAY)
    if condition == "old":
        kappa = loss_scale(architecture.likelihood, 784)
        return {"lr": converted["lr"], "weight_decay": converted["weight_decay"], "damping": damping_a / kappa**2, "pi": "trace"}
    return converted


def cells(methods: list[str]) -> list[tuple[str, str]]:
    first_order = [(method, condition) for method in FIRST_ORDER_LR for condition in ("baseline", "authors")]
    return [(method, condition) for method in methods for condition in CONDITIONS] + first_order


def run_cell(job: tuple[str, str, int, str, str]) -> str:
    method, condition, epochs, out, data_dir = job
    torch.set_num_threads(1)
    run_dir = Path(out) / f"{condition}-{method}"
    if read_summary(run_dir).get("status") == "completed":
        return f"{run_dir.name}: kept"
    overrides = {"data.dataset": "curves-synth", "data.data_dir": data_dir, "training.epochs": epochs, "optimizer.method": method}
    overrides.update({f"optimizer.{key}": value for key, value in optimizer_overrides(method, condition).items()})
    result = run_training(load_config(None, overrides), run_dir)
    return f"{run_dir.name}: {result.status}, {result.summary['train_seconds']:.0f} s"


def summarise(out: Path, methods: list[str]) -> dict[str, Any]:
    """Per cell: alignments, final loss, and epochs / seconds to SGD's and Adam's final train loss."""
    run_dirs = [out / f"{condition}-{method}" for method, condition in cells(methods)]
    finals = {result.run: result.final_train_loss for result in compare(run_dirs).datasets[0].results}
    targets = {"sgd": finals["baseline-sgd"], "adam": finals["baseline-adam"]}
    reached = {name: {r.run: r for r in compare(run_dirs, target).datasets[0].results} for name, target in targets.items()}
    rows = []
    for run_dir in run_dirs:
        sgd, adam = reached["sgd"][run_dir.name], reached["adam"][run_dir.name]
        rows.append({
            "run": run_dir.name, "alignment_first": read_summary(run_dir).get("alignment_first_refresh"), "alignment_final": sgd.alignment,
            "correction_scale": sgd.correction_scale, "final_train_loss": sgd.final_train_loss,
            "final_val_loss": sgd.final_val_loss, "epochs_to_sgd": sgd.epochs_to_target, "seconds_to_sgd": sgd.seconds_to_target,
            "epochs_to_adam": adam.epochs_to_target, "seconds_to_adam": adam.seconds_to_target, "seconds": sgd.wall_time,
        })
    return {"targets": targets, "rows": rows}


def markdown(summary: dict[str, Any]) -> str:
    def cell(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [
        f"targets: SGD's final train loss/px {summary['targets']['sgd']:.4f}, Adam's {summary['targets']['adam']:.4f}",
        "",
        "| run | alignment first → final | τ | train/px | val/px | epochs / s to SGD | epochs / s to Adam | time s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['run']} | {cell(row['alignment_first'], '.3f')} → {cell(row['alignment_final'], '.3f')} "
            f"| {cell(row['correction_scale'], '.2g')} | {row['final_train_loss']:.4f} | {row['final_val_loss']:.4f} "
            f"| {cell(row['epochs_to_sgd'], 'd')} / {cell(row['seconds_to_sgd'], '.0f')} "
            f"| {cell(row['epochs_to_adam'], 'd')} / {cell(row['seconds_to_adam'], '.0f')} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--methods", default=",".join(KRONECKER))
    parser.add_argument("--out", type=Path, default=Path("runs/damping"))
    parser.add_argument("--data-dir", default=None, help="curves-synth cache (default: fimbench's)")
    args = parser.parse_args()
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    jobs = [(method, condition, args.epochs, str(args.out), args.data_dir) for method, condition in cells(methods)]
    args.out.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for message in pool.imap_unordered(run_cell, jobs):
            print(message, flush=True)
    summary = summarise(args.out, methods)
    (args.out / "damping.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(markdown(summary))


if __name__ == "__main__":
    main()
