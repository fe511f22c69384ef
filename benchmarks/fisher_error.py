"""`fimbench fisher-error` at full size (issue 4's targets), on random data of each benchmark's shape.

1. MNIST layer 5 (31 × 250 factors, a 7750² block), batch 512: one full measurement — capture, all five
   methods, Error 1 and Error 2 — cold (iteration 0) and warm-started after 5 Adam steps. Target ≤ 20 s.
2. FACES layer 5 (31 × 500, a 15500² block), batch 1024: the engine (Adam, FACES-sized training set,
   two measurements) in a child process; its peak resident memory. Target ≤ 8 GiB.
3. CURVES ``--layer all`` (all 12 blocks, up to 314000²), batch 256, on curves-synth: completion time.

    python benchmarks/fisher_error.py [--device cpu] [--threads N] [--curves-iterations 20] [--curves-every 10]
                                      [--skip-curves]

On a shared CPU, pass ``--threads 1`` when other jobs run: torch's OpenMP threads otherwise spin against
them and small operations slow down by orders of magnitude.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from fimbench.data import DatasetSplits
from fimbench.engines.config import load_config
from fimbench.engines.device import device_description, resolve_device
from fimbench.engines.fisher_error import FisherErrorMeter, FisherErrorSettings, run_fisher_error
from fimbench.engines.models import ARCHITECTURES, build_model
from fimbench.timing import synchronize

GIB = 1024**3
MNIST_SECONDS_TARGET, FACES_BYTES_TARGET = 20.0, 8 * GIB
FACES_TRAIN = 82800  # the FACES training split (docs/design.md §2), kept in memory as the real run does


def random_images(n: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Sparse binary-looking images in [0, 1] (about MNIST's ink fraction)."""
    return (torch.rand(n, pixels, generator=generator) < 0.2).float()


def mnist_measurement(device: torch.device, seed: int = 0) -> list[dict[str, object]]:
    """Seconds of one full measurement of MNIST layer 5 at batch 512, cold and warm-started."""
    config = load_config(None, {"data.dataset": "mnist", "optimizer.method": "adam"})
    architecture = ARCHITECTURES["mnist"]
    model = build_model(architecture, seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    batches = [random_images(512, 784, generator).to(device) for _ in range(6)]
    settings = FisherErrorSettings(layers=(5,))
    meter = FisherErrorMeter(
        model, [5], settings.entries(), config, device, generator=torch.Generator(device=device).manual_seed(seed + 2)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    results = []
    for label, batch in (("cold (iteration 0)", batches[0]), ("warm (after 5 Adam steps)", batches[-1])):
        synchronize(device)
        start = time.perf_counter()
        rows = meter.measure(0, batch)
        synchronize(device)
        seconds = time.perf_counter() - start
        results.append({"label": label, "seconds": seconds, "rows": [dataclasses.asdict(row) for row in rows]})
        for x in batches[:5]:
            optimizer.zero_grad()
            architecture.likelihood.nll(model(x), x).mean().backward()
            optimizer.step()
    return results


def faces_child(device: str, threads: int | None) -> None:
    """Child process: the engine on FACES layer 5 at batch 1024; prints JSON with its peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(FACES_TRAIN, 625, generator=generator)
    dataset = DatasetSplits(
        name="faces", train=train, val=train[:1024], test=train[:1024], image_shape=(25, 25), synthetic=True
    )
    config = load_config(None, {"data.dataset": "faces", "optimizer.method": "adam", "training.device": device})
    start = time.perf_counter()
    result = run_fisher_error(config, FisherErrorSettings(layers=(5,), iterations=1, every=1), dataset=dataset)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "rows": [dataclasses.asdict(r) for r in result.rows]}))


def faces_memory(device: str, threads: int | None) -> dict[str, object]:
    command = [sys.executable, __file__, "--faces-child", "--device", device]
    if threads:
        command += ["--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def curves_all(device: str, iterations: int, every: int) -> dict[str, object]:
    """The engine on every CURVES layer at batch 256 (curves-synth, 2000 images)."""
    with tempfile.TemporaryDirectory() as data_dir:
        config = load_config(
            None,
            {"data.dataset": "curves-synth", "data.data_dir": data_dir, "data.synth_train": 2000, "data.synth_test": 10,
             "optimizer.method": "adam", "training.device": device},
        )
        start = time.perf_counter()
        result = run_fisher_error(config, FisherErrorSettings(layers=None, iterations=iterations, every=every))
        seconds = time.perf_counter() - start
    measurements = len({row.iteration for row in result.rows})
    paths = sorted({row.path for row in result.rows})
    return {"seconds": seconds, "measurements": measurements, "rows": len(result.rows), "paths": paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--curves-iterations", type=int, default=20)
    parser.add_argument("--curves-every", type=int, default=10)
    parser.add_argument("--skip-curves", action="store_true")
    parser.add_argument("--faces-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.faces_child:
        faces_child(args.device, args.threads)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    console = Console()
    console.print(f"fimbench fisher-error benchmark — {device_description(device)}, torch {torch.__version__}")

    mnist = mnist_measurement(device)
    details = Table(title="MNIST layer 5, batch 512: one full measurement", header_style="bold")
    for header in ("measurement", "method", "Error 1", "Error 2", "iterations", "approx. s", "path"):
        details.add_column(header)
    for measurement in mnist:
        for row in measurement["rows"]:  # type: ignore[union-attr]
            details.add_row(str(measurement["label"]), row["method"], f"{row['error1']:.4g}", f"{row['error2']:.4g}",
                            str(row["iterations"]), f"{row['seconds']:.3f}", row["path"])
    console.print(details)

    faces = faces_memory(args.device, args.threads)
    table = Table(title="issue 4 targets", header_style="bold")
    for header in ("measurement", "measured", "target", "met"):
        table.add_column(header)
    for measurement in mnist:
        seconds = float(measurement["seconds"])  # type: ignore[arg-type]
        table.add_row(f"MNIST layer 5 @512, full measurement, {measurement['label']}", f"{seconds:.1f} s",
                      f"≤ {MNIST_SECONDS_TARGET:.0f} s", "yes" if seconds <= MNIST_SECONDS_TARGET else "NO")
    peak = int(faces["peak_bytes"])  # type: ignore[arg-type]
    faces_paths = ", ".join(sorted({row["path"] for row in faces["rows"]}))  # type: ignore[union-attr]
    table.add_row(f"FACES layer 5 @1024, 2 measurements + 1 Adam step, peak RSS ({faces_paths})",
                  f"{peak / GIB:.2f} GiB in {float(faces['seconds']):.0f} s",  # type: ignore[arg-type]
                  "≤ 8 GiB", "yes" if peak <= FACES_BYTES_TARGET else "NO")
    if not args.skip_curves:
        curves = curves_all(args.device, args.curves_iterations, args.curves_every)
        table.add_row(
            f"CURVES --layer all @256, {curves['measurements']} measurements × 12 layers × 5 methods "
            f"({', '.join(curves['paths'])})",  # type: ignore[arg-type]
            f"{float(curves['seconds']):.0f} s",  # type: ignore[arg-type]
            "completes",
            "yes",
        )
    console.print(table)


if __name__ == "__main__":
    main()
