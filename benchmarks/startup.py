"""Start-up time of the ``fimbench`` command against ``python -c "import torch"``, side by side.

Each round runs every command once, in turn (so that a busy machine slows all of them alike); the table
gives the median wall time over the rounds and its ratio to importing torch. Target: ``--help``,
``--version`` and every subcommand's ``--help`` under 0.4 × the torch import.

    python benchmarks/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGET = 0.4
SUBCOMMANDS = ("train", "fisher-error", "cost-profile", "sweep", "report", "download-data")


def commands() -> dict[str, list[str]]:
    """The reference (``import torch``) and each timed ``fimbench`` invocation, by label."""
    fimbench = str(Path(sys.executable).with_name("fimbench"))
    timed = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "fimbench --version": [fimbench, "--version"],
        "fimbench --help": [fimbench, "--help"],
    }
    timed.update({f"fimbench {name} --help": [fimbench, name, "--help"] for name in SUBCOMMANDS})
    return timed


def wall_time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    timed = commands()
    for argv in timed.values():  # warm the file cache once
        wall_time(argv)
    samples: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.rounds):
        for label, argv in timed.items():
            samples[label].append(wall_time(argv))
    medians = {label: statistics.median(values) for label, values in samples.items()}
    reference = medians['python -c "import torch"']
    table = Table(title=f"start-up, median of {args.rounds} interleaved rounds (target: < {TARGET} × import torch)")
    for header in ("command", "median s", "min s", "÷ import torch", "target"):
        table.add_column(header, justify="left" if header == "command" else "right")
    for label, median in medians.items():
        ratio = median / reference
        check = "" if label.startswith("python") else ("✓" if ratio < TARGET else "✗")
        table.add_row(label, f"{median:.3f}", f"{min(samples[label]):.3f}", f"{ratio:.2f}", check)
    Console().print(table)


if __name__ == "__main__":
    main()
