"""Steady-state training-step time of every optimizer on the MNIST autoencoder (issue 3's benchmark).

MNIST architecture (784-1000-500-250-30-250-500-1000-784, BCE), batch 512, Fisher sub-batch 128,
random data. For each method (with its preset's torch optimizer; Shampoo's roots and SOAP's eigenbasis every
T2 steps): ms per step averaged over a window that contains whole T1/T2 cycles,
its ratio to the SGD step measured in the same run, and the split statistics / refresh (power SVD or
Lanczos + inversion) / precondition. Then, with T1 = T2 = 1, the refresh time per step of every
Kronecker method relative to K-FAC's (warm-started), and the first (cold) refresh.

    python benchmarks/step_time.py [--steps 100] [--device cpu] [--threads N] [--methods a,b] [--coarse nicolaides]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from rich.console import Console
from rich.table import Table

from fimbench.engines.config import resolve_config
from fimbench.engines.device import device_description, resolve_device
from fimbench.engines.models import ARCHITECTURES, Architecture, build_model
from fimbench.engines.optimizers import torch_optimizer
from fimbench.methods import PRECONDITIONED_METHODS, Family, Method, methods_of
from fimbench.optim import KroneckerPreconditioner
from fimbench.timing import PhaseTimer, synchronize, time_training_steps

BATCH, FISHER_FRACTION = 512, 0.25
# lr/damping of configs/mnist.yaml (they only matter for the numbers' stability, not for the timing)
SETTINGS = {"damping": 61.47, "kl_clip": 1e-2}


def time_method(
    method: Method,
    device: torch.device,
    steps: int,
    period: int,
    seed: int = 0,
    batch: int = BATCH,
    architecture: Architecture = ARCHITECTURES["mnist"],
    coarse: str = "none",
) -> dict[str, float]:
    """Average seconds per step (and per phase) over ``steps`` steps after a warm-up cycle, with mini-batches
    of ``batch`` random images (the MNIST autoencoder unless ``architecture`` says otherwise); ``coarse``: the
    two-level correction of a block-diagonal method."""
    model = build_model(architecture, seed).to(device)
    likelihood = architecture.likelihood
    generator = torch.Generator().manual_seed(seed)
    data = (torch.rand(4 * batch, architecture.layers[0], generator=generator) < 0.3).float().to(device)
    timer = PhaseTimer(device)
    settings = resolve_config(None, {"data.dataset": "mnist", "optimizer.method": method.value}).optimizer
    optimizer = torch_optimizer(model, method, dataclasses.replace(settings, inverse_every=period))  # the preset's optimizer
    preconditioner = None
    if method.is_preconditioned:
        preconditioner = KroneckerPreconditioner(
            model, likelihood, method, stats_every=period, inverse_every=period, fisher_fraction=FISHER_FRACTION,
            generator=torch.Generator(device=device).manual_seed(seed), timer=timer, coarse=coarse, **SETTINGS,
        )
    first_refresh = 0.0

    def one_step(step: int) -> None:
        x = data[(step % 4) * batch : (step % 4 + 1) * batch]
        optimizer.zero_grad(set_to_none=False)
        likelihood.nll(model(x), x).mean().backward()
        if preconditioner is not None:
            preconditioner.step(x)
        optimizer.step()

    synchronize(device)
    one_step(0)  # includes the first, cold refresh
    synchronize(device)
    if preconditioner is not None:
        phases = timer.reset()
        first_refresh = phases.get("approximate", 0.0) + phases.get("invert", 0.0)
    for step in range(1, max(period, 3)):  # finish the first cycle: warm-up
        one_step(step)
    return {**time_training_steps(one_step, steps, timer, device), "first_refresh": first_refresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per method with T1 = T2 = 100")
    parser.add_argument("--fast-steps", type=int, default=10, help="timed steps per method with T1 = T2 = 1 (0: skip that table)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--coarse", default="none", help="two-level coarse space for the block-diagonal methods")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: SGD, Adam and every preconditioned one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    console = Console()
    methods = [Method.SGD, Method.ADAM, *PRECONDITIONED_METHODS, *methods_of(Family.OPTIMIZER)]
    if args.methods:
        methods = [Method.SGD, *(Method(name) for name in args.methods.split(",") if name != Method.SGD.value)]

    slow = {
        method: time_method(method, device, args.steps, 100, coarse=args.coarse if method.is_block_diagonal else "none")
        for method in methods
    }
    sgd = slow[Method.SGD]["step"]
    table = Table(title=f"MNIST autoencoder, batch {BATCH}, T1 = T2 = 100 — {device_description(device)}")
    for header in ("method", "ms/step", "÷ SGD", "statistics ms", "refresh ms", "precondition ms"):
        table.add_column(header, justify="right")
    for method, result in slow.items():
        table.add_row(
            method.value, f"{1e3 * result['step']:.1f}", f"{result['step'] / sgd:.2f}",
            f"{1e3 * result['statistics']:.2f}", f"{1e3 * result['refresh']:.2f}", f"{1e3 * result['precondition']:.2f}",
        )
    console.print(table)

    kronecker = [method for method in methods if method.is_kronecker]
    if Method.KFAC not in kronecker or args.fast_steps < 1:
        return
    fast = {method: time_method(method, device, args.fast_steps, 1, coarse=args.coarse) for method in kronecker}
    kfac = fast[Method.KFAC]["refresh"]
    table = Table(title=f"T1 = T2 = 1 (refresh every step, warm-started) — {device_description(device)}")
    for header in ("method", "ms/step", "÷ SGD", "refresh ms", "refresh ÷ KFAC", "first (cold) refresh s"):
        table.add_column(header, justify="right")
    for method, result in fast.items():
        table.add_row(
            method.value, f"{1e3 * result['step']:.1f}", f"{result['step'] / sgd:.2f}",
            f"{1e3 * result['refresh']:.1f}", f"{result['refresh'] / kfac:.2f}", f"{result['first_refresh']:.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
