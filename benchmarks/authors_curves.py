"""fimbench's Figure 2 curves beside the paper authors' own runs, at the epochs their report gives.

    python benchmarks/authors_curves.py RUNS [--dataset curves] [--markdown FILE]

``RUNS`` is a ``fimbench reproduce figure2`` folder (its ``runs/``) or any folder of run directories; the runs are
read with fimbench's comparison code. For each method (the best group of its seeds, as ``report`` groups them) the
table gives the mean train loss per pixel over its seeds at epochs 1, 2, 5, 10, 20, 50 and 200 (the epochs
a run reached), its final train and validation loss per pixel and training seconds, beside the authors' numbers
(:data:`AUTHORS`: their A100 runs, 200 epochs; their CURVES report has the final losses and seconds only, their
MNIST and FACES reports the learning curves too).

Caveats the output states: fimbench's curves-synth is not CURVES (a synthetic stand-in of the same size and
784 pixels; the losses are not comparable in level, only in shape and ranking), the authors' released code
froze the preconditioner at initialisation and its Deflation and KFAC-corrected are not the paper's, and their
seconds are an A100's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from fimbench.engines.comparison import compare
from fimbench.errors import FimbenchError

EPOCHS = (1, 2, 5, 10, 20, 50, 200)
"""The epochs of the authors' learning curves."""
AUTHORS: dict[str, dict[str, dict[str, tuple[float, ...]]]] = {
    "curves": {
        "final": {  # train, val loss per pixel and seconds after 200 epochs, batch 256
            "kfac": (0.0752, 0.0771, 182), "kpsvd": (0.0750, 0.0772, 198), "deflation": (0.0747, 0.0758, 206),
            "kfac-corrected": (0.0705, 0.0724, 199), "lanczos": (0.0705, 0.0722, 341), "sgd": (0.0769, 0.0782, 84),
            "adam": (0.0796, 0.0826, 93),
        },
        "curve": {},
    },
    "mnist": {
        "final": {
            "kfac": (0.0692, 0.0777, 968), "kpsvd": (0.0693, 0.0781, 961), "deflation": (0.0653, 0.0801, 1052),
            "kfac-corrected": (0.0644, 0.0865, 1039), "lanczos": (0.0652, 0.0801, 1107), "sgd": (0.0768, 0.0791, 792),
            "adam": (0.0732, 0.0840, 807),
        },
        "curve": {
            "sgd": (0.346, 0.251, 0.197, 0.143, 0.113, 0.090, 0.077), "adam": (0.257, 0.161, 0.113, 0.097, 0.087, 0.080, 0.073),
            "kfac": (0.280, 0.202, 0.141, 0.111, 0.090, 0.077, 0.069), "kpsvd": (0.278, 0.197, 0.140, 0.112, 0.092, 0.077, 0.069),
            "deflation": (0.256, 0.159, 0.099, 0.080, 0.073, 0.068, 0.065), "lanczos": (0.254, 0.158, 0.099, 0.079, 0.072, 0.068, 0.065),
            "kfac-corrected": (0.214, 0.120, 0.085, 0.077, 0.071, 0.067, 0.064),
        },
    },
}
"""The paper authors' reference runs (A100, 200 epochs): per dataset the final (train, val loss per pixel, seconds)
and the train loss per pixel at :data:`EPOCHS`, for the paper's seven methods."""


def _at(rows: list[dict[str, float]], epoch: int) -> float | None:
    """The train loss per pixel logged at ``epoch``, if the run reached it."""
    return next((row["train_loss_per_pixel"] for row in rows if row.get("epoch") == epoch), None)


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if len(present) == len(values) and present else None


def table(runs: Path, dataset: str) -> str:
    """The Markdown comparison (module docstring)."""
    comparison = compare([runs])
    groups = [group for result in comparison.datasets for group in result.groups]
    if not groups:
        raise FimbenchError(f"no runs in {runs}")
    authors = AUTHORS[dataset]
    header = "| method | seeds | " + " | ".join(f"ep {e}" for e in EPOCHS) + " | final train/val | s | authors: " + (
        " | ".join(f"ep {e}" for e in EPOCHS) + " | " if authors["curve"] else ""
    ) + "final train/val | s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for group in groups:
        runs_rows = [run.rows for run in group.runs]
        ours = [_mean([_at(rows, epoch) for rows in runs_rows]) for epoch in EPOCHS]
        finals = [_mean([run.final_train_loss for run in group.runs]), _mean([run.final_val_loss for run in group.runs])]
        seconds = _mean([run.wall_time for run in group.runs])
        theirs_curve = authors["curve"].get(group.method)
        theirs = authors["final"].get(group.method)
        cells = [group.method, str(len(group.runs)), *(_cell(value) for value in ours)]
        cells += [f"{_cell(finals[0])}/{_cell(finals[1])}", _cell(seconds, ".0f")]
        if authors["curve"]:
            cells += [_cell(value) for value in theirs_curve] if theirs_curve else ["–"] * len(EPOCHS)
        cells += [f"{theirs[0]:.4f}/{theirs[1]:.4f}", f"{theirs[2]:.0f}"] if theirs else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a reproduce figure2 folder's runs/, or a folder of run directories")
    parser.add_argument("--dataset", choices=sorted(AUTHORS), default="curves", help="whose authors' numbers to show")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        text = table(args.runs, args.dataset)
    except FimbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
