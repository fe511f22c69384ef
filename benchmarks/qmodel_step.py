"""Extra cost per step of the qmodel step rule, for every Kronecker method, against the fixed rule.

An autoencoder of the paper (default MNIST: 784-1000-500-250-30-250-500-1000-784, BCE), batch 512, Fisher
sub-batch 128, random data, T1 = T2 = ``--period``. For each method, ms per step with the fixed rule
(torch SGD with momentum on the KL-clipped F̃⁻¹∇h) and with ``step_rule="qmodel"`` (the capture of this
step's Fisher sub-batch, the two Jacobian products J Δ and J δ₀ and the 2 × 2 model; the preconditioner
takes the step), measured one after the other in the same run, their ratio, and qmodel's split: statistics
(the per-step capture, with the T1 update) and step rule. Both at a fixed λ: adaptive damping's extra
forward pass every T3 steps is the same under either rule.

    python benchmarks/qmodel_step.py [--dataset mnist] [--steps 100] [--period 100] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from fimbench.engines.device import device_description, resolve_device
from fimbench.engines.models import ARCHITECTURES, build_model
from fimbench.methods import KRONECKER_METHODS, Method
from fimbench.optim import KroneckerPreconditioner
from fimbench.timing import PhaseTimer, synchronize, time_training_steps

BATCH, FISHER_FRACTION, DAMPING = 512, 0.25, 150.0  # configs/<dataset>-qmodel.yaml's initial λ


def time_rule(dataset: str, method: Method, step_rule: str, device: torch.device, steps: int, period: int) -> dict[str, float]:
    """Seconds per step (and per phase) over ``steps`` steps after a warm-up cycle."""
    architecture = ARCHITECTURES[dataset]
    model = build_model(architecture, 0).to(device)
    likelihood = architecture.likelihood
    width = architecture.layers[0]
    data = (torch.rand(4 * BATCH, width, generator=torch.Generator().manual_seed(0)) < 0.3).float().to(device)
    timer = PhaseTimer(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9) if step_rule == "fixed" else None
    preconditioner = KroneckerPreconditioner(
        model, likelihood, method, step_rule=step_rule, damping=DAMPING, stats_every=period, inverse_every=period,
        fisher_fraction=FISHER_FRACTION, generator=torch.Generator(device=device).manual_seed(0), timer=timer,
    )

    def one_step(step: int) -> None:
        x = data[(step % 4) * BATCH : (step % 4 + 1) * BATCH]
        model.zero_grad(set_to_none=False)
        likelihood.nll(model(x), x).mean().backward()
        preconditioner.step(x)
        if optimizer is not None:
            optimizer.step()

    for step in range(period):  # a whole first cycle, cold refresh included: warm-up
        one_step(step)
    synchronize(device)
    return time_training_steps(one_step, steps, timer, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=("curves", "mnist", "faces"))
    parser.add_argument("--steps", type=int, default=100, help="timed steps per method and rule")
    parser.add_argument("--period", type=int, default=100, help="T1 = T2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    table = Table(
        title=f"{args.dataset} autoencoder, batch {BATCH}, Fisher batch {int(BATCH * FISHER_FRACTION)}, "
        f"T1 = T2 = {args.period} — {device_description(device)}",
        header_style="bold",
    )
    for header in ("method", "fixed ms/step", "qmodel ms/step", "qmodel ÷ fixed", "extra ms", "statistics ms (fixed → qmodel)", "step rule ms"):
        table.add_column(header, justify="right")
    for method in KRONECKER_METHODS:
        fixed = time_rule(args.dataset, method, "fixed", device, args.steps, args.period)
        qmodel = time_rule(args.dataset, method, "qmodel", device, args.steps, args.period)
        table.add_row(
            method.value, f"{1e3 * fixed['step']:.1f}", f"{1e3 * qmodel['step']:.1f}", f"{qmodel['step'] / fixed['step']:.2f}",
            f"{1e3 * (qmodel['step'] - fixed['step']):.1f}", f"{1e3 * fixed['statistics']:.2f} → {1e3 * qmodel['statistics']:.2f}",
            f"{1e3 * qmodel['step_rule']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
