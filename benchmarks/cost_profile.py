"""The paper's Table 1 measured (issue 5's benchmark): the MNIST autoencoder profile and a width/batch sweep.

1. MNIST autoencoder (784-1000-500-250-30-250-500-1000-784, BCE), batch 512, Fisher sub-batch 128, random
   data, configs/mnist.yaml settings: per method the build (cold / warm, with k), inverse and apply cost
   summed over the 8 layers and per layer, the precondition step, and the SGD-step yardstick.
2. One square layer Linear(d, d), d = 128, 256, 512, Fisher batch m = 64, 256: the same phases and the
   fitted exponents of cost vs d and vs m beside Table 1's orders and fimbench's modelled ones.

Same engine and tables as ``fimbench cost-profile --dataset mnist`` and
``fimbench cost-profile --widths 128,256,512 --batches 64,256``; cost.json (and cost.png) are written to
``<out>/mnist`` and ``<out>/sweep``.

    python benchmarks/cost_profile.py [--repeats 5] [--device auto] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console

from fimbench.cli.tables import dataset_tables, sweep_tables
from fimbench.curvature import APPROXIMATIONS
from fimbench.engines.cost import profile_dataset, profile_sweep, write_outputs
from fimbench.engines.device import resolve_device

console = Console()

WIDTHS = (128, 256, 512)
FISHER_BATCHES = (64, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of every measurement")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/cost-benchmark-<time>")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = args.out or Path("runs") / f"cost-benchmark-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    methods = list(APPROXIMATIONS)

    started = time.perf_counter()
    mnist = profile_dataset("mnist", methods, device, args.repeats)
    for table in dataset_tables(mnist):
        console.print(table)
    write_outputs(mnist, out / "mnist")
    console.print(f"MNIST profile: {time.perf_counter() - started:.0f} s\n")

    started = time.perf_counter()
    sweep = profile_sweep(WIDTHS, FISHER_BATCHES, methods, device, args.repeats)
    for table in sweep_tables(sweep):
        console.print(table)
    write_outputs(sweep, out / "sweep")
    console.print(f"sweep: {time.perf_counter() - started:.0f} s; cost.json and cost.png in {out}")


if __name__ == "__main__":
    main()
