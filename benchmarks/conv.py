"""Kronecker methods on the convolutional autoencoder (configs/curves-conv.yaml) — issue 12's evidence.

1. Step time: ms per training step of every optimizer with the preset's settings (batch 256, Fisher
   sub-batch 64, T1 = T2 = 20), averaged over whole T1/T2 cycles after a warm-up cycle, ÷ the SGD step
   measured in the same run, split into statistics / refresh (approximation + inversion) / precondition.
   The methods run in ``--rounds`` interleaved rounds and each keeps its fastest round (contention on a
   shared host only adds time); "overhead ÷ SGD" is the time of the three Kronecker phases over the SGD step.
2. Error 1 and Error 2 of every method on the chosen layers along an Adam run (``fisher-error``'s engine,
   true Fisher on the whole mini-batch of 256), written to ``--out`` (errors.csv, summary.json, figure1.png).
3. Symmetric factors: on each conv layer, the best Kronecker rank-2 error with symmetric factors (what
   Deflation / Lanczos return) against the unconstrained one, from a dense SVD of ``Z(F)`` on a Fisher batch
   of 64, at initialisation and after ``--adam-steps`` Adam steps (curvature/shared_weights.py explains why
   they can differ when T > 1). On the same statistics, K-FAC-expand's scale ``‖F̂‖/‖F‖`` and the Error 1
   of its best multiple ``c F̂``, ``sqrt(1 − ⟨F, F̂⟩² / (‖F‖² ‖F̂‖²))``: how much of K-FAC's error is scale.

    OMP_NUM_THREADS=1 python benchmarks/conv.py [--steps 60] [--rounds 3] [--iterations 400] [--every 40]
                                                [--layers 1,2,5,6] [--out benchmarks/conv] [--threads 1]

On a shared CPU, run with one thread: torch's OpenMP threads otherwise spin against the other jobs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fimbench.curvature import approximate
from fimbench.curvature.kronecker import vec
from fimbench.curvature.shared_weights import per_example_gradients
from fimbench.data import DatasetSplits, load_dataset
from fimbench.engines.config import RunConfig, load_config
from fimbench.engines.device import device_description, resolve_device
from fimbench.engines.fisher_error import FisherErrorSettings, run_fisher_error, write_run
from fimbench.engines.models import build_model, resolve_architecture
from fimbench.engines.optimizers import configured_preconditioner, torch_optimizer
from fimbench.fisher.capture import capture_statistics, kronecker_layers, layer_shape
from fimbench.methods import Method
from fimbench.timing import PhaseTimer, time_training_steps

PRESET = Path(__file__).resolve().parents[1] / "configs" / "curves-conv.yaml"
METHODS = [Method.SGD, Method.ADAM, Method.KFAC, Method.KPSVD, Method.DEFLATION, Method.LANCZOS, Method.KFAC_CORRECTED]
KRONECKER = [method for method in METHODS if method.is_kronecker]


def preset(method: Method, **overrides: object) -> RunConfig:
    return load_config(PRESET, {"optimizer.method": method.value, "training.device": "cpu", **overrides})


def time_method(method: Method, data: DatasetSplits, device: torch.device, steps: int, seed: int = 0) -> dict[str, float]:
    """Seconds per step (and per phase) over ``steps`` steps after one warm-up T1 cycle."""
    config = preset(method)
    settings, batch = config.optimizer, config.training.batch_size
    model = build_model(resolve_architecture(config, data.input_dim), seed).to(device)
    likelihood = model.likelihood
    optimizer = torch_optimizer(model, method, settings)
    timer = PhaseTimer(device)
    preconditioner = None
    if method.is_kronecker:
        preconditioner = configured_preconditioner(
            model, likelihood, settings, torch.Generator(device=device).manual_seed(seed), timer
        )
    train = data.train.to(device)
    batches = train.shape[0] // batch

    def one_step(step: int) -> None:
        x = train[(step % batches) * batch : (step % batches + 1) * batch]
        optimizer.zero_grad(set_to_none=False)
        likelihood.nll(model(x), x).mean().backward()
        if preconditioner is not None:
            preconditioner.step(x)
        optimizer.step()

    for step in range(settings.stats_every):  # warm-up: the first (cold) refresh and one whole cycle
        one_step(step)
    return time_training_steps(one_step, steps, timer, device)


def dense_rearrangement(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dense ``Z(F)`` (p² × q²): ``Z[μ + ν p, i + j q] = (1/m) Σ_n DW_n[i, μ] DW_n[j, ν]`` (reference only)."""
    D = per_example_gradients(a.double(), g.double())
    p, q = a.shape[-1], g.shape[-1]
    return torch.einsum("niu,njv->vuji", D, D).reshape(p * p, q * q) / a.shape[0]


def symmetric_split(Z: torch.Tensor, p: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the symmetric block ``P Z P`` and of the antisymmetric block ``(I − P) Z (I − P)``,
    with ``P vec(X) = vec(½ (X + Xᵀ))`` applied as an index permutation (no d² × d² matrix)."""

    def transposed(d: int) -> torch.Tensor:
        index = torch.arange(d * d)
        return (index % d) * d + index // d  # vec(Xᵀ)[j·d + i] = vec(X)[i·d + j]

    rows, columns = transposed(p), transposed(q)
    symmetric = 0.25 * (Z + Z[rows] + Z[:, columns] + Z[rows][:, columns])
    antisymmetric = 0.25 * (Z - Z[rows] - Z[:, columns] + Z[rows][:, columns])
    return torch.linalg.svdvals(symmetric), torch.linalg.svdvals(antisymmetric)


def symmetric_gap(data: DatasetSplits, layers: list[int], adam_steps: int, device: torch.device, seed: int = 0) -> list[dict[str, float]]:
    """Best rank-2 Error 1 with symmetric factors vs unconstrained, per conv layer, at 0 and ``adam_steps`` steps."""
    config = preset(Method.ADAM)
    model = build_model(resolve_architecture(config, data.input_dim), seed).to(device)
    optimizer = torch_optimizer(model, Method.ADAM, config.optimizer)
    blocks = kronecker_layers(model)
    train = data.train.to(device)
    batch, fisher = config.training.batch_size, round(config.training.batch_size * config.optimizer.fisher_fraction)
    rows = []
    for step in range(adam_steps + 1):
        x = train[(step * batch) % (train.shape[0] - batch) :][:batch]
        if step in (0, adam_steps):
            chosen = [blocks[layer - 1] for layer in layers]
            stats = capture_statistics(model, x[:fisher], model.likelihood, chosen, generator=torch.Generator().manual_seed(seed))
            for layer, block, stat in zip(layers, chosen, stats):
                if stat.a.ndim != 3:
                    continue
                p, q = layer_shape(block)
                Z = dense_rearrangement(stat.a, stat.g)
                sym, anti = (torch.cat([values, values.new_zeros(2)]) for values in symmetric_split(Z, p, q))  # q = 1: one σ
                norm = float(torch.linalg.norm(Z))
                both = torch.sort(torch.cat([sym, anti]), descending=True).values
                A, G = approximate(Method.KFAC, stat.a, stat.g).terms[0]
                kfac_norm = float(torch.linalg.norm(A.double())) * float(torch.linalg.norm(G.double()))
                cosine = float((Z * torch.outer(vec(A.double()), vec(G.double()))).sum()) / (norm * kfac_norm)
                rows.append(
                    {
                        "step": step,
                        "layer": layer,
                        "p": p,
                        "q": q,
                        "sigma2_sym": float(sym[1]) / float(sym[0]),
                        "sigma1_anti": float(anti[0]) / float(sym[0]),
                        "error1_rank2_symmetric": math.sqrt(max(norm**2 - float(sym[:2].square().sum()), 0.0)) / norm,
                        "error1_rank2_unconstrained": math.sqrt(max(norm**2 - float(both[:2].square().sum()), 0.0)) / norm,
                        "kfac_scale": kfac_norm / norm,
                        "kfac_scaled_error1": math.sqrt(max(1.0 - cosine**2, 0.0)),
                    }
                )
        if step == adam_steps:
            break
        optimizer.zero_grad(set_to_none=False)
        model.likelihood.nll(model(x), x).mean().backward()
        optimizer.step()
    return rows


def fisher_error_tables(console: Console, layers: tuple[int, ...], iterations: int, every: int, data: DatasetSplits, out: Path) -> None:
    """Run ``fisher-error``'s engine with the preset's Adam, write the run to ``out`` and print Error 1 / 2."""
    config = preset(Method.ADAM)
    settings = FisherErrorSettings(layers=layers, iterations=iterations, every=every)
    started = time.perf_counter()
    result = run_fisher_error(config, settings, dataset=data)
    write_run(result, out)
    console.print(f"fisher-error: {time.perf_counter() - started:.0f} s, written to {out}")
    for metric in ("error1", "error2"):
        table = Table(title=f"{'Error 1' if metric == 'error1' else 'Error 2'} along training: first → median → last measurement")
        table.add_column("method")
        for layer in result.layers:
            p, q = result.layer_shapes[layer]
            table.add_column(f"layer {layer} (p={p}, q={q})", justify="right")
        for entry in result.entries:
            cells = []
            for layer in result.layers:
                values = [getattr(row, metric) for row in result.rows if row.layer == layer and row.method == entry.method.value]
                cells.append(f"{values[0]:.3f} → {statistics.median(values):.3f} → {values[-1]:.3f}")
            table.add_row(entry.label, *cells)
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per method (whole T1 = 20 cycles)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; each method keeps its fastest")
    parser.add_argument("--iterations", type=int, default=400, help="fisher-error: Adam iterations")
    parser.add_argument("--every", type=int, default=40, help="fisher-error: measure every K iterations")
    parser.add_argument("--layers", default="1,2,5,6", help="fisher-error: layers (1-based; 1, 2, 5, 6 are the convolutions)")
    parser.add_argument("--adam-steps", type=int, default=200, help="symmetric-factor check: Adam steps before the second check")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/conv"), help="directory of the fisher-error run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-fisher-error", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    device = resolve_device("cpu")
    console = Console()
    data = load_dataset("curves-synth")
    console.print(f"{device_description(device)}, torch {torch.__version__}, curves-synth {tuple(data.train.shape)}")

    if not args.skip_timing:
        rounds = [{method: time_method(method, data, device, args.steps) for method in METHODS} for _ in range(args.rounds)]
        timings = {method: min((run[method] for run in rounds), key=lambda result: result["step"]) for method in METHODS}
        sgd = timings[Method.SGD]["step"]
        table = Table(title=f"conv autoencoder (configs/curves-conv.yaml), batch 256, T1 = T2 = 20 — {device_description(device)}")
        for header in ("method", "ms/step", "÷ SGD", "statistics ms", "refresh ms", "precondition ms", "overhead ÷ SGD"):
            table.add_column(header, justify="right")
        for method, result in timings.items():
            overhead = result["statistics"] + result["refresh"] + result["precondition"]
            table.add_row(
                method.value, f"{1e3 * result['step']:.1f}", f"{result['step'] / sgd:.2f}",
                f"{1e3 * result['statistics']:.2f}", f"{1e3 * result['refresh']:.2f}", f"{1e3 * result['precondition']:.2f}",
                f"{overhead / sgd:.3f}",
            )
        console.print(table)

    layers = tuple(int(item) for item in args.layers.split(","))
    if not args.skip_fisher_error:
        fisher_error_tables(console, layers, args.iterations, args.every, data, args.out)

    gap = symmetric_gap(data, list(layers), args.adam_steps, device)
    table = Table(title="best rank 2 with symmetric factors vs unconstrained (dense SVD of Z(F), Fisher batch 64)")
    headers = (
        "step", "layer", "p×q", "σ₂(sym)/σ₁", "σ₁(anti)/σ₁", "Error 1 rank 2, symmetric", "unconstrained",
        "K-FAC ‖F̂‖/‖F‖", "K-FAC best c: Error 1",
    )
    for header in headers:
        table.add_column(header, justify="right")
    for row in gap:
        table.add_row(
            str(row["step"]), str(row["layer"]), f"{row['p']}×{row['q']}", f"{row['sigma2_sym']:.3f}", f"{row['sigma1_anti']:.3f}",
            f"{row['error1_rank2_symmetric']:.4f}", f"{row['error1_rank2_unconstrained']:.4f}",
            f"{row['kfac_scale']:.3f}", f"{row['kfac_scaled_error1']:.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
