"""Every CUDA path of fimbench run, checked and timed on one GPU: one JSON file and one markdown table.

    python benchmarks/gpu_check.py [--out DIR] [--device cuda:N]   # on one GPU, under 8 minutes
    python benchmarks/gpu_check.py --dry-run [--out DIR]           # the same script on CPU, tiny sizes

Checks, each under its own time limit (and all within one overall budget); a failing check is recorded
with its reason and the others still run:

* ``data``: random MNIST-sized images (60000 + 10000, as ``mnist_all.mat``) imported with
  ``fimbench download-data mnist --source``; the data of the command-line checks below.
* ``train/<method>``: every method of :class:`fimbench.methods.Method` trains the MNIST autoencoder on
  random MNIST-sized data for a few hundred steps through the ``train`` engine: every logged loss finite,
  the last below the first.
* ``resume``: a ``fimbench train`` process (Deflation) SIGKILLed after its first checkpoint and continued
  with ``--resume`` ends with the ``metrics.jsonl`` rows and parameters of a run never stopped — the
  device's RNG and the Fisher-sampling generator restored.
* ``nproc-nccl``: that uninterrupted run again as the one worker of an nccl process group
  (``torch.distributed.run -m fimbench.engines.launch``, what ``--nproc N`` starts): the same rows and parameters.
* ``bf16-autocast``: a Deflation preconditioner under bfloat16 autocast with a ``torch.amp.GradScaler``.
* ``compile``: a ``torch.compile``d model with a K-FAC preconditioner; its first loss equals the eager one.
* ``fisher-error``: ``fimbench fisher-error --layer 5`` on the full-size MNIST autoencoder (the 7750² block).
* ``cost-profile``: ``fimbench cost-profile --dataset mnist``.
* ``timing``: step time ÷ SGD of every method at batch 512 and 2048 with ``benchmarks/step_time.py``'s
  timer (device synchronised before every clock read, CUDA events for the phases), beside ms/step and
  seconds per 50000-image epoch (steps per epoch × s/step, training only).

``--dry-run`` runs all of it on CPU with a (784, 32, 16, 8, 4, 8, 16, 32, 784) autoencoder, a few steps
and little data, so that the script never rots; the nccl check is skipped and the timing check runs for
two steps only, both recorded as skipped; ``torch.compile`` uses its ``aot_eager`` backend there
(inductor's C++ code generation takes minutes on a busy CPU). Writes ``<out>/gpu_check.json`` (rewritten
after every check) and ``<out>/gpu_check.md``; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from epoch_time import random_mnist
from step_time import time_method

from fimbench.cli import app
from fimbench.data import MNIST_MAT_FILE, DatasetSplits
from fimbench.engines.config import RunConfig, load_config
from fimbench.engines.device import device_description, environment
from fimbench.engines.models import ARCHITECTURES, Architecture, build_model
from fimbench.engines.optimizers import torch_optimizer
from fimbench.engines.train import run_training
from fimbench.files import atomic_write_json, atomic_write_text
from fimbench.methods import Method
from fimbench.optim import KroneckerPreconditioner

FIMBENCH = Path(sys.executable).with_name("fimbench")  # the console script beside this interpreter
MNIST_TRAIN_IMAGES = 50000  # an epoch of the MNIST autoencoder (the 60000-image pool's training split)
BF16_METHOD, COMPILE_METHOD = Method.DEFLATION, Method.KFAC
PARAMETER_TOLERANCE = 1e-5  # max |θ_resumed − θ_uninterrupted| (bit for bit is expected on one device)
LOSS_TOLERANCE = 1e-6  # relative difference of a metrics.jsonl value between two runs that should be one
COMPILE_TOLERANCE = 1e-4  # relative difference of the compiled model's first loss from the eager one's
SMALL_SYNTH = (640, 64)  # curves-synth images (train + val pool, test) of the dry run's command-line runs
TIMING_KEYS = ("wall_time", "time_per_step")  # and every seconds_* key: differ between identical runs


@dataclass(frozen=True)
class Plan:
    """Sizes and limits of one run of the checks (:data:`FULL` on a GPU, :data:`DRY` on CPU)."""

    dry_run: bool
    layers: tuple[int, ...]  # the autoencoder of every check
    rows: tuple[int, int, int]  # train / val / test images of the in-process training checks
    batch: int  # their mini-batch
    train_steps: int  # steps of every train/<method> check
    period: int  # T1 = T2 of the Kronecker methods in the training checks
    cli_dataset: str  # of the fimbench train runs (resume, nproc-nccl): the random MNIST, or a small curves-synth
    cli_batch: int
    cli_epochs: int
    cli_fisher_fraction: float
    resume_method: Method
    loop_steps: int  # steps of the bf16-autocast and compile checks
    fisher_iterations: int
    fisher_every: int
    fisher_batch: int
    cost_repeats: int
    profile_batch: int | None  # the batch of cost-profile's model (None: the preset's, 512)
    cost_methods: str  # cost-profile's --methods
    timing_batches: tuple[int, ...]
    timing_steps: int  # timed steps per method and batch (after one warm-up period of T1 = T2 = timing_period)
    timing_period: int
    compile_backend: str
    budget: float  # seconds for all checks together
    limits: dict[str, float] = field(default_factory=dict)  # seconds per check (by name, train/* as "train")


FULL = Plan(
    dry_run=False, layers=ARCHITECTURES["mnist"].layers, rows=(MNIST_TRAIN_IMAGES, 10000, 10000), batch=512,
    train_steps=300, period=100, cli_dataset="mnist", cli_batch=512, cli_epochs=3, cli_fisher_fraction=0.25,
    resume_method=Method.DEFLATION, loop_steps=200, fisher_iterations=100, fisher_every=20, fisher_batch=512,
    cost_repeats=3, profile_batch=None, cost_methods="all", timing_batches=(512, 2048), timing_steps=100,
    timing_period=100, compile_backend="inductor", budget=480.0,
    limits={"data": 60, "train": 60, "resume": 150, "nproc-nccl": 90, "bf16-autocast": 60, "compile": 150,
            "fisher-error": 120, "cost-profile": 150, "timing": 240},
)
DRY = Plan(
    dry_run=True, layers=(784, 32, 16, 8, 4, 8, 16, 32, 784), rows=(512, 128, 128), batch=64, train_steps=16,
    period=8, cli_dataset="curves-synth", cli_batch=64, cli_epochs=5, cli_fisher_fraction=0.25,
    resume_method=Method.KFAC, loop_steps=8, fisher_iterations=2, fisher_every=1, fisher_batch=64, cost_repeats=1,
    profile_batch=64, cost_methods="kfac,deflation", timing_batches=(64,),
    timing_steps=1, timing_period=3, compile_backend="aot_eager",
    budget=600.0,
    limits={"data": 120, "train": 60, "resume": 180, "nproc-nccl": 60, "bf16-autocast": 60, "compile": 120,
            "fisher-error": 120, "cost-profile": 120, "timing": 120},
)


class CheckFailed(Exception):
    """A check's verdict: it failed, for ``reason``; ``details`` are what it measured."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.details = details or {}


class CheckSkipped(CheckFailed):
    """The check does not apply here (``reason`` says why); ``details`` are what it measured anyway."""


class CheckTimeout(BaseException):
    """Raised in the main thread when a check runs past its limit (a BaseException, so that the CLI's
    error handling, which catches Exception, lets it through)."""


def require(condition: bool, reason: str, details: dict[str, Any]) -> None:
    if not condition:
        raise CheckFailed(reason, details)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` after ``seconds`` (SIGALRM; a long kernel is interrupted when it returns)."""

    def expire(signum: int, frame: object) -> None:
        raise CheckTimeout(f"ran past its {seconds:.3g} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    """What the checks share: the plan, the device, the output folder, and whether the random MNIST data
    set of the ``data`` check is in place."""

    plan: Plan
    device: torch.device
    out: Path
    data_ready: bool = False

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    @property
    def architecture(self) -> Architecture:
        """The plan's autoencoder with the MNIST likelihood (Bernoulli)."""
        return Architecture(self.plan.layers, ARCHITECTURES["mnist"].likelihood)

    @property
    def config_file(self) -> Path:
        """A YAML config holding the plan's layers (and batch, and curves-synth's size), for every command
        line (``--config``)."""
        path = self.work / "model.yaml"
        if not path.is_file():
            text = f"model:\n  layers: [{', '.join(map(str, self.plan.layers))}]\n"
            if self.plan.profile_batch is not None:
                text += f"training:\n  batch_size: {self.plan.profile_batch}\n"
            if self.plan.dry_run:
                text += f"data:\n  synth_train: {SMALL_SYNTH[0]}\n  synth_test: {SMALL_SYNTH[1]}\n"
            atomic_write_text(path, text)
        return path

    def needs_data(self) -> None:
        if not self.data_ready:
            raise CheckFailed("needs the random MNIST data set of the 'data' check, which failed")


def fimbench_command(*arguments: object) -> None:
    """Run one fimbench command in this process (its output on stderr); a non-zero exit is a failure
    whose reason is the command's ``error:`` line."""
    words = [str(argument) for argument in arguments]
    errors = io.StringIO()
    status: object = 0
    try:
        with redirect_stdout(sys.stderr), redirect_stderr(errors):
            app(words, prog_name="fimbench")
    except SystemExit as exit:
        status = exit.code
    finally:
        sys.stderr.write(errors.getvalue())
    if status not in (0, None):
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        raise CheckFailed(f"fimbench {words[0]} exited {status}: {lines[-1] if lines else 'no message'}")


@contextmanager
def started(command: list[str], log: Path, environment: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session (``environment`` added to ours), output to ``log``; it and its
    children are SIGKILLed on exit from the block if still running (a time limit, a failed check)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "COLUMNS": "200", **(environment or {})},
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def log_tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return " | ".join(text[-lines:]) or "no output"


def read_rows(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (of one ``kind``: epoch or step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if kind is None or row.get("kind") == kind]


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS and not k.startswith("seconds_")} for row in rows]


def largest_relative_difference(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> float:
    """The largest relative difference between the numbers of two runs' comparable rows (inf if the rows
    or their keys or non-numeric values differ)."""
    ours, theirs = comparable(ours), comparable(theirs)
    if len(ours) != len(theirs) or any(a.keys() != b.keys() for a, b in zip(ours, theirs)):
        return math.inf
    largest = 0.0
    for a, b in zip(ours, theirs):
        for key, value in a.items():
            other = b[key]
            if isinstance(value, (int, float)) and isinstance(other, (int, float)) and value is not None:
                largest = max(largest, abs(value - other) / max(abs(value), abs(other), 1e-30) if value != other else 0.0)
            elif value != other:
                return math.inf
    return largest


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def finite(values: list[float]) -> bool:
    return all(math.isfinite(value) for value in values)


def falls(losses: list[float], details: dict[str, Any]) -> None:
    """Every loss finite and the last below the first."""
    details.update(first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    require(len(losses) >= 2, "fewer than two losses were logged", details)
    require(finite(losses), "a loss is not finite", details)
    require(losses[-1] < losses[0], f"the loss did not fall ({losses[0]:.4g} → {losses[-1]:.4g})", details)


# ------------------------------------------------------------------------------------------- the checks


def check_data(context: Context) -> dict[str, Any]:
    """Random binary images in ``mnist_all.mat``'s layout (6000 + 1000 per digit), imported by the CLI."""
    images = random_mnist(seed=0, sizes=(60000, 0, 10000))
    pixels = {"train": images.train, "test": images.test}
    variables = {}
    for part, rows in pixels.items():
        as_bytes = (rows * 255).to(torch.uint8).numpy()
        for digit, block in enumerate(np.array_split(as_bytes, 10)):
            variables[f"{part}{digit}"] = block
    source = context.work / "raw" / MNIST_MAT_FILE
    source.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(source), variables, do_compression=False)
    fimbench_command("download-data", "mnist", "--source", source, "--data-dir", context.data_dir, "--force")
    context.data_ready = True
    return {"images": 70000, "data_dir": str(context.data_dir)}


STABLE_KRONECKER_STEP = {"optimizer.lr": 0.1, "optimizer.damping": 0.01}
"""A health check, not a tuning: the presets' per-method settings (lr 0.3) are chosen for whole runs and
may rise over a few hundred steps of random data, so every Kronecker method takes this shared step."""
STABLE_EXACT_STEP = {"optimizer.lr": 0.1, "optimizer.damping": 0.1}
"""The exact references' shared step: with the undamped sub-batch Fisher of rank ≤ m, λ 0.01 lets the
step grow along the Fisher's null space, so they take the damping of their preset."""


def stable_step(method: Method) -> dict[str, float]:
    """The shared health-check step of ``method`` (none for SGD and Adam)."""
    if method.value in ("sgd", "adam"):
        return {}
    return STABLE_EXACT_STEP if method.value.startswith("exact-ng") else STABLE_KRONECKER_STEP


def train_config(context: Context, method: Method, **overrides: Any) -> RunConfig:
    plan = context.plan
    steps_per_epoch = plan.rows[0] // plan.batch
    return load_config(
        None,
        {
            "data.dataset": "mnist",
            "model.layers": list(plan.layers),
            "optimizer.method": method.value,
            "optimizer.stats_every": plan.period,
            "optimizer.inverse_every": plan.period,
            "training.batch_size": plan.batch,
            "training.epochs": math.ceil(plan.train_steps / steps_per_epoch),
            "training.max_steps": plan.train_steps,
            "training.log_every": max(1, plan.train_steps // 20),
            "training.device": str(context.device),
            **stable_step(method),
            **overrides,
        },
    )


def check_train(context: Context, method: Method, data: DatasetSplits) -> dict[str, Any]:
    """``method`` through the train engine: completed, finite losses, the last logged below the first."""
    run_dir = context.work / "train" / method.value
    result = run_training(train_config(context, method), run_dir, dataset=data)
    losses = [row["train_loss"] for row in read_rows(run_dir, "step")]
    summary = result.summary
    details = {
        "steps": summary["steps"],
        "val_loss": summary["final"].get("val_loss"),
        "ms_per_step": 1e3 * summary["time_per_step"],
        "alignment_first_refresh": summary.get("alignment_first_refresh"),
    }
    require(result.status == "completed", f"the run ended {result.status}", details)
    falls(losses, details)
    require(finite([row["val_loss"] for row in result.rows]), "a validation loss is not finite", details)
    return details


def train_command(context: Context, out: Path) -> list[str]:
    """``fimbench train`` of the resume and nccl checks (without the program name)."""
    plan = context.plan
    return [
        "train", "--dataset", plan.cli_dataset, "--data-dir", str(context.data_dir), "--config", str(context.config_file),
        "--method", plan.resume_method.value, "--epochs", str(plan.cli_epochs), "--batch-size", str(plan.cli_batch),
        "--fisher-fraction", str(plan.cli_fisher_fraction), "--stats-every", str(plan.period),
        "--inverse-every", str(plan.period), "--seed", "0",
        "--device", str(context.device), "--quiet", "--out", str(out),
    ]


def compare_runs(run_dir: Path, reference: Path, details: dict[str, Any]) -> None:
    """``run_dir`` ended as ``reference`` did: metrics rows (timings aside) and final parameters."""
    rows, expected = read_rows(run_dir), read_rows(reference)
    details["rows"] = len(rows)
    details["rows_relative_difference"] = difference = largest_relative_difference(rows, expected)
    require(difference <= LOSS_TOLERANCE, f"metrics.jsonl differs from the uninterrupted run's (relative {difference:.3g})", details)
    ours, theirs = final_parameters(run_dir), final_parameters(reference)
    details["parameter_difference"] = gap = max(float((ours[key] - theirs[key]).abs().max()) for key in theirs)
    require(gap <= PARAMETER_TOLERANCE, f"the final parameters differ by {gap:.3g} from the uninterrupted run's", details)


def kill_after_checkpoint(process: subprocess.Popen[bytes], run_dir: Path) -> None:
    """SIGKILL ``process`` as soon as ``run_dir/checkpoint.pt`` exists (it is renamed into place whole)."""
    while not (run_dir / "checkpoint.pt").is_file() and process.poll() is None:
        time.sleep(0.005)
    if process.poll() is None:
        process.kill()


def check_resume(context: Context) -> dict[str, Any]:
    """A ``fimbench train`` process SIGKILLed after its first checkpoint and resumed, against the same run
    never stopped (trained in this process meanwhile)."""
    if context.plan.cli_dataset == "mnist":
        context.needs_data()
    whole, killed = context.work / "resume" / "uninterrupted", context.work / "resume" / "killed"
    log = context.work / "resume" / "killed.log"
    details: dict[str, Any] = {"method": context.plan.resume_method.value, "epochs": context.plan.cli_epochs}
    with started([str(FIMBENCH), *train_command(context, killed), "--overwrite"], log) as process:
        killer = threading.Thread(target=kill_after_checkpoint, args=(process, killed), daemon=True)
        killer.start()
        fimbench_command(*train_command(context, whole), "--overwrite")
        killer.join()
        process.wait()
    details["epochs_before_kill"] = len(read_rows(killed, "epoch")) if (killed / "metrics.jsonl").is_file() else 0
    require((killed / "checkpoint.pt").is_file(), f"the run to kill wrote no checkpoint: {log_tail(log)}", details)
    require(not (killed / "summary.json").is_file(), "the run finished before it could be killed", details)
    fimbench_command("train", "--resume", killed, "--quiet")
    compare_runs(killed, whole, details)
    return details


def check_nccl(context: Context) -> dict[str, Any]:
    """The resume check's uninterrupted run again, as one worker of ``torch.distributed.run`` in an nccl
    process group (``fimbench.engines.launch``, the path of ``--nproc N`` and of multi-node runs): the same rows
    and parameters. ``fimbench train --nproc 1`` itself trains in-process, without a process group."""
    if context.device.type != "cuda":
        raise CheckSkipped("nccl needs a CUDA device (dry run on CPU)")
    reference = context.work / "resume" / "uninterrupted"
    details: dict[str, Any] = {}
    require((reference / "summary.json").is_file(), "needs the uninterrupted run of the resume check", details)
    run_dir, log = context.work / "nccl" / "run", context.work / "nccl" / "launch.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference / "config.yaml", run_dir / "config.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
               "-m", "fimbench.engines.launch", str(run_dir)]
    with started(command, log, {"NCCL_DEBUG": "INFO"}) as process:
        status = process.wait()
    details["nccl_initialised"] = "NCCL INFO" in log.read_text(errors="replace")
    require(status == 0, f"torch.distributed.run -m fimbench.engines.launch exited {status}: {log_tail(log)}", details)
    summary = json.loads((run_dir / "summary.json").read_text())
    details.update(status=summary["status"], processes=summary["processes"])
    require(summary["status"] == "completed", f"the run ended {summary['status']}", details)
    compare_runs(run_dir, reference, details)
    return details


def loop_setup(context: Context, method: Method) -> tuple[torch.nn.Module, torch.optim.Optimizer, RunConfig, torch.Tensor]:
    """A fresh MNIST autoencoder on the device, its first-order optimizer (the preset's) and random data."""
    config = train_config(context, method)
    model = build_model(context.architecture, seed=0).to(context.device)
    optimizer = torch_optimizer(model, method, config.optimizer)
    data = random_mnist(seed=1, sizes=(4 * context.plan.batch, 0, 0)).train.to(context.device)
    return model, optimizer, config, data


def check_bf16(context: Context) -> dict[str, Any]:
    """Deflation preconditioning a model under bfloat16 autocast, its gradients scaled by a GradScaler."""
    model, optimizer, config, data = loop_setup(context, BF16_METHOD)
    likelihood, device, batch = context.architecture.likelihood, context.device, context.plan.batch
    scaler = torch.amp.GradScaler(device.type)
    preconditioner = KroneckerPreconditioner(
        model, likelihood, BF16_METHOD, config.optimizer, grad_scaler=scaler,
        generator=torch.Generator(device=device).manual_seed(2),
    )
    losses = []
    for step in range(context.plan.loop_steps):
        x = data[(step % 4) * batch : (step % 4 + 1) * batch]
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            output = model(x)
            loss = likelihood.nll(output, x).mean()
        scaler.scale(loss).backward()
        preconditioner.step(x)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach())
    details: dict[str, Any] = {"method": BF16_METHOD.value, "steps": len(losses), "output_dtype": str(output.dtype),
                               "scale": scaler.get_scale(), "alignment": preconditioner.alignment}
    require(output.dtype == torch.bfloat16, f"autocast left the output in {output.dtype}", details)
    falls(torch.stack(losses).float().tolist(), details)
    require(math.isfinite(scaler.get_scale()) and scaler.get_scale() > 0, "the gradient scale is not a positive number", details)
    return details


def check_compile(context: Context) -> dict[str, Any]:
    """K-FAC preconditioning a ``torch.compile``d model: its first loss is the eager model's, then it trains."""
    model, optimizer, config, data = loop_setup(context, COMPILE_METHOD)
    likelihood, device, batch = context.architecture.likelihood, context.device, context.plan.batch
    with torch.no_grad():
        eager = float(likelihood.nll(model(data[:batch]), data[:batch]).mean())
    compiled = torch.compile(model, backend=context.plan.compile_backend)
    preconditioner = KroneckerPreconditioner(
        compiled, likelihood, COMPILE_METHOD, config.optimizer, generator=torch.Generator(device=device).manual_seed(2)
    )
    losses = []
    for step in range(context.plan.loop_steps):
        x = data[(step % 4) * batch : (step % 4 + 1) * batch]
        optimizer.zero_grad()
        loss = likelihood.nll(compiled(x), x).mean()
        loss.backward()
        preconditioner.step(x)
        optimizer.step()
        losses.append(loss.detach())
    values = torch.stack(losses).tolist()
    details: dict[str, Any] = {"method": COMPILE_METHOD.value, "backend": context.plan.compile_backend, "eager_first_loss": eager}
    falls(values, details)
    gap = abs(values[0] - eager) / abs(eager)
    details["first_loss_relative_difference"] = gap
    require(gap <= COMPILE_TOLERANCE, f"the compiled model's first loss differs from the eager one's by {gap:.3g}", details)
    return details


def check_fisher_error(context: Context) -> dict[str, Any]:
    """``fimbench fisher-error --layer 5``: every Error 1 and Error 2 finite and non-negative (a ``network``
    row has Error 1 only)."""
    context.needs_data()
    plan, out = context.plan, context.work / "fisher-error"
    fimbench_command(
        "fisher-error", "--dataset", "mnist", "--data-dir", context.data_dir, "--config", context.config_file,
        "--layer", "5", "--iterations", plan.fisher_iterations, "--every", plan.fisher_every,
        "--batch-size", plan.fisher_batch, "--device", context.device, "--out", out, "--quiet",
    )
    import csv

    with (out / "errors.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    errors = [float(row[key]) for row in rows for key in ("error1", "error2") if key == "error1" or row["layer"] != "network"]
    p, q = plan.layers[4] + 1, plan.layers[5]
    details: dict[str, Any] = {"block": f"{p * q}²", "rows": len(rows), "methods": sorted({row["method"] for row in rows}),
                               "error1_max": max((float(row["error1"]) for row in rows), default=None)}
    require(len(rows) > 0, "errors.csv holds no measurement", details)
    require(finite(errors) and min(errors) >= 0, "an error is negative or not finite", details)
    return details


def numbers(value: object) -> Iterator[float]:
    """Every float in a JSON document."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, float):
        yield value


def check_cost_profile(context: Context) -> dict[str, Any]:
    """``fimbench cost-profile --dataset mnist``: ``cost.json`` written, every measured number finite."""
    out = context.work / "cost-profile"
    fimbench_command(
        "cost-profile", "--dataset", "mnist", "--config", context.config_file, "--repeats", context.plan.cost_repeats,
        "--methods", context.plan.cost_methods, "--device", context.device, "--out", out, "--quiet",
    )
    document = json.loads((out / "cost.json").read_text())
    measured = list(numbers(document))
    details: dict[str, Any] = {"numbers": len(measured)}
    require(len(measured) > 0 and finite(measured), "cost.json holds a non-finite number", details)
    return details


def check_timing(context: Context) -> dict[str, Any]:
    """Step time of every method ÷ SGD's at each batch (the dry run only exercises the code)."""
    plan, rows, broken = context.plan, [], []
    for batch in plan.timing_batches:
        measured: dict[str, float] = {}
        for method in Method:
            try:
                measured[method.value] = time_method(
                    method, context.device, plan.timing_steps, plan.timing_period, batch=batch, architecture=context.architecture
                )["step"]
            except Exception as error:  # one method failing does not stop the others' timing
                broken.append(f"{method.value} at batch {batch}: {type(error).__name__}: {first_line(error)}")
        sgd = measured.get(Method.SGD.value)
        for name, seconds in measured.items():
            rows.append({
                "method": name, "batch": batch, "ms_per_step": 1e3 * seconds,
                "ratio_to_sgd": seconds / sgd if sgd else None,
                "seconds_per_epoch": seconds * (MNIST_TRAIN_IMAGES // batch),
            })
    details: dict[str, Any] = {"rows": rows, "steps": plan.timing_steps, "period": plan.timing_period}
    require(not broken, "; ".join(broken), details)
    if plan.dry_run:
        raise CheckSkipped(f"dry run: the timing code ran ({plan.timing_steps} steps per method on the tiny model); "
                           "CPU numbers are not GPU timings", details)
    return details


# ------------------------------------------------------------------------------------------- running them


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_check(name: str, check: Callable[[], dict[str, Any]], limit: float, device: torch.device) -> dict[str, Any]:
    """Run one check under its time limit; whatever it raises becomes its recorded failure."""
    started_at = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    status, reason, details = "passed", "", {}
    try:
        with time_limit(limit):
            details = check()
    except CheckSkipped as skipped:
        status, reason, details = "skipped", str(skipped), skipped.details
    except CheckFailed as failure:
        status, reason, details = "failed", str(failure), failure.details
    except CheckTimeout as timeout:
        status, reason = "failed", str(timeout)
    except Exception as error:
        status, reason = "failed", f"{type(error).__name__}: {first_line(error)}"
        details = {"traceback": traceback.format_exc(limit=-8).splitlines()[-16:]}
    if device.type == "cuda":
        details["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
    return {"name": name, "status": status, "reason": reason, "seconds": time.perf_counter() - started_at, "details": details}


def checks(context: Context) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """``(name, limit key, check)`` in running order."""
    data = random_mnist(seed=0, sizes=context.plan.rows)
    training = [(f"train/{m.value}", "train", lambda m=m: check_train(context, m, data)) for m in Method]
    return [
        ("data", "data", lambda: check_data(context)),
        *training,
        ("resume", "resume", lambda: check_resume(context)),
        ("nproc-nccl", "nproc-nccl", lambda: check_nccl(context)),
        ("bf16-autocast", "bf16-autocast", lambda: check_bf16(context)),
        ("compile", "compile", lambda: check_compile(context)),
        ("fisher-error", "fisher-error", lambda: check_fisher_error(context)),
        ("cost-profile", "cost-profile", lambda: check_cost_profile(context)),
        ("timing", "timing", lambda: check_timing(context)),
    ]


def markdown(report: dict[str, Any]) -> str:
    """The checks and the timing table of ``report``."""
    lines = [f"# gpu_check — {report['environment']['device']}, torch {report['environment']['torch']}", ""]
    if report["dry_run"]:
        lines += ["Dry run on CPU (tiny sizes): the checks ran, no number here is a GPU measurement.", ""]
    lines += [f"{report['started']}, {report['seconds']:.0f} s; {report['verdict']}.", "",
              "| check | status | s | reason |", "|---|---|---:|---|"]
    for check in report["checks"]:
        lines.append(f"| {check['name']} | {check['status']} | {check['seconds']:.1f} | {check['reason'].replace('|', '/')} |")
    timing = next((c for c in report["checks"] if c["name"] == "timing"), None)
    rows = timing["details"].get("rows", []) if timing and timing["status"] == "passed" else []
    if rows:
        batches = sorted({row["batch"] for row in rows})
        header = " | ".join(f"ms/step @{b} | ÷ SGD @{b} | s/epoch @{b}" for b in batches)
        lines += ["", f"Step time of the MNIST autoencoder, random data, T1 = T2 = {timing['details']['period']} "
                  f"(mean of {timing['details']['steps']} steps after a warm-up period); s/epoch = "
                  f"{MNIST_TRAIN_IMAGES} images ÷ batch × s/step (training only).", "",
                  f"| method | {header} |", "|---|" + "---:|" * (3 * len(batches))]
        by_key = {(row["method"], row["batch"]): row for row in rows}
        for method in dict.fromkeys(row["method"] for row in rows):
            cells = []
            for batch in batches:
                row = by_key.get((method, batch))
                ratio = row and row["ratio_to_sgd"]
                cells += ["–"] * 3 if row is None else [
                    f"{row['ms_per_step']:.2f}", f"{ratio:.2f}" if ratio else "–", f"{row['seconds_per_epoch']:.2f}"]
            lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run on CPU with tiny sizes (CI)")
    parser.add_argument("--device", default=None, help="cuda or cuda:N (default: cuda; cpu with --dry-run)")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/gpu-check-<time>")
    args = parser.parse_args()
    plan = DRY if args.dry_run else FULL
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: no CUDA device here; run with --dry-run on CPU\n")
    if not args.dry_run and device.type != "cuda":
        parser.exit(2, "error: the full check needs a CUDA device; on CPU use --dry-run\n")
    out = args.out or Path("runs") / f"gpu-check-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    context = Context(plan, device, out)
    context.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "dry_run": plan.dry_run, "environment": environment(device), "plan": asdict(plan),
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "checks": [],
    }
    began = time.perf_counter()

    def save() -> None:
        failed = [check["name"] for check in report["checks"] if check["status"] == "failed"]
        report["seconds"] = time.perf_counter() - began
        report["failed"] = failed
        report["verdict"] = f"{len(failed)} of {len(report['checks'])} checks failed" if failed else "every check passed or was skipped"
        atomic_write_json(out / "gpu_check.json", report)
        atomic_write_text(out / "gpu_check.md", markdown(report))

    print(f"gpu_check on {device_description(device)}{' (dry run)' if plan.dry_run else ''} -> {out}", file=sys.stderr)
    for name, key, check in checks(context):
        left = plan.budget - (time.perf_counter() - began)
        if left <= 0:
            result = {"name": name, "status": "failed", "reason": f"not run: the {plan.budget:.0f} s budget was spent",
                      "seconds": 0.0, "details": {}}
        else:
            result = run_check(name, check, min(plan.limits[key], left), device)
        report["checks"].append(result)
        save()
        print(f"[{time.perf_counter() - began:6.1f} s] {name}: {result['status']} {result['reason']}", file=sys.stderr)
    save()
    print(f"{report['verdict']}; {out / 'gpu_check.json'}, {out / 'gpu_check.md'}", file=sys.stderr)
    sys.exit(1 if report["failed"] else 0)


if __name__ == "__main__":
    main()
