"""Figure 1 engine (§4.1): how far each Kronecker approximation is from the exact Fisher block along training.

A training method (Adam by default; any method ``train`` takes, so that the errors can be measured where that
method takes the network: ``--optimizer kfac``) trains the dataset's autoencoder. Before step i, for
every i divisible by ``every`` (and once more after the last step), the current mini-batch is drawn,
targets are sampled from the model (true Fisher; data targets with ``empirical``), ``(ā, g)`` are
captured for the chosen layers, and every method approximates ``F = (1/m) Σ_t ā_t ā_tᵀ ⊗ g_t g_tᵀ`` from
these same statistics — no EMA, each warm-started from its own previous result (§4): each method's
per-layer block (:mod:`fimbench.preconditioner.blocks`) is fitted to the batch and measured against the exact
block by :mod:`fimbench.fisher.block_errors`, without building a p·q-sized matrix (EKFAC: the batch's own eigenbasis
and eigenvalues). The exact-NG references take the exact blocks themselves (``exact-ng-block``:
``F̂_l = F_ll``; ``exact-ng``, which couples the layers: ``F̂ = F``), so their per-block errors are 0 by
definition (path ``exact``). Each measurement also gives one row per
entry whose ``layer`` is ``network``: the cross-layer Error 1 ``‖F − F̂‖_F / ‖F‖_F`` of the multi-layer
Fisher over the chosen layers (:mod:`fimbench.fisher.network_error`; Error 2 is NaN there) — block-diagonality's
share of the error beside the Kronecker structure's. Layers are the
model's Linear and Conv2d layers in module order; a Conv2d's block is the shared-weight one,
``F = (1/m) Σ_n vec(G_nᵀ A_n) vec(G_nᵀ A_n)ᵀ`` over its T output pixels (curvature/shared_weights.py).

The engine returns dataclasses and never prints; progress goes to an optional :class:`FisherErrorProgress`.
:func:`fimbench.engines.fisher_error.outputs.write_run` writes ``errors.csv``, ``summary.json`` and ``figure1.png`` into a run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import torch
from torch import Tensor

from fimbench.curvature import ApproximationOptions
from fimbench.data import DatasetSplits, batch_indices
from fimbench.engines.config import OptimizerConfig, RunConfig
from fimbench.engines.dataset import check_batch_size, load_configured_dataset
from fimbench.engines.device import environment, resolve_device
from fimbench.engines.fisher_error.records import (
    Entry,
    ErrorRow,
    FisherErrorProgress,
    FisherErrorResult,
    FisherErrorSettings,
)
from fimbench.engines.models import Autoencoder, ConvAutoencoder, build_model, default_architecture, resolve_architecture
from fimbench.engines.optimizers import configured_preconditioner, torch_optimizer
from fimbench.errors import FimbenchError
from fimbench.fisher.block_errors import METRIC_DTYPE, ExactFisher
from fimbench.fisher.capture import LayerStatistics, capture_statistics, kronecker_layers, layer_shape
from fimbench.fisher.network_error import NETWORK, NetworkTerms, network_error, network_squared_norm
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.methods import Command, Method
from fimbench.names import check_dataset, command_methods
from fimbench.preconditioner.blocks import BlockSettings, CurvatureBlock, new_block
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.preconditioner.two_level import CoarseSpace, coarse_vector, two_level_terms
from fimbench.timing import timed_call


def resolve_layers(requested: tuple[int, ...] | None, count: int, dataset: str, kind: str = "Linear") -> list[int]:
    """Check 1-based layer numbers against the autoencoder's ``count`` parameterised layers (``kind``)."""
    if requested is None:
        return list(range(1, count + 1))
    for layer in requested:
        if not 1 <= layer <= count:
            raise FimbenchError(f"layer {layer} is out of range: the {dataset} autoencoder has {count} {kind} layers (1-{count})")
    return list(requested)


def validate(config: RunConfig, settings: FisherErrorSettings) -> list[int]:
    """Reject bad settings before any data is loaded; returns the resolved layer numbers."""
    dataset = config.data.dataset
    check_dataset(dataset)
    trainers = command_methods(Command.TRAIN)
    if config.optimizer.method not in trainers:
        raise FimbenchError(f"unknown optimizer '{config.optimizer.method}'; choose from {', '.join(trainers)}")
    if not config.optimizer.lr > 0:
        raise FimbenchError(f"the learning rate must be positive, got {config.optimizer.lr}")
    if settings.iterations < 0 or settings.every < 1:
        raise FimbenchError(f"--iterations must be ≥ 0 and --every ≥ 1, got {settings.iterations} and {settings.every}")
    if settings.lanczos_rank is not None and settings.lanczos_rank < 1:
        raise FimbenchError(f"--lanczos-rank must be at least 1, got {settings.lanczos_rank}")
    if config.training.batch_size < 1:
        raise FimbenchError(f"the batch size must be at least 1, got {config.training.batch_size}")
    if not settings.methods and settings.lanczos_rank is None:
        raise FimbenchError("nothing to measure: give --methods or --lanczos-rank")
    default = default_architecture(dataset, config.model.architecture)
    widths = config.model.layers or default.layers
    return resolve_layers(settings.layers, len(widths) - 1, dataset, "Conv2d/Linear" if default.kind == "conv" else "Linear")


class FisherErrorMeter:
    """Measures every entry on the chosen layers of ``model`` from one mini-batch, keeping warm starts.

    ``measure`` = one capture pass (sampled or data targets), then per layer the exact block's Gram
    quantities and, per entry, its layer's block :meth:`~fimbench.preconditioner.blocks.CurvatureBlock.fit`
    to the batch (timed; warm-started from its previous fit) and :meth:`~fimbench.preconditioner.blocks.CurvatureBlock.errors`.
    """

    def __init__(
        self,
        model: Autoencoder | ConvAutoencoder,
        layers: list[int],
        entries: list[Entry],
        config: RunConfig,
        device: torch.device,
        empirical: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        modules = kronecker_layers(model)
        self.model = model
        self.layers = layers
        self.modules = [modules[layer - 1] for layer in layers]
        self.entries = entries
        self.device = device
        self.empirical = empirical
        self.generator = generator
        options = config.optimizer
        self.blocks: dict[Entry, list[CurvatureBlock]] = {}
        for entry in entries:
            if entry.coarse == CoarseSpace.NONE:
                rank = entry.rank if entry.method.record.adjustable_rank else options.lanczos_rank
                settings = BlockSettings(ApproximationOptions(options.tol, options.max_iterations, rank, options.krylov_dim))
                self.blocks[entry] = [new_block(entry.method, settings) for _ in layers]

    def measure(self, iteration: int, x: Tensor) -> list[ErrorRow]:
        """One row per (layer, entry) and one network row per entry for the mini-batch ``x`` (module docstring)."""
        captured = capture_statistics(
            self.model, x, self.model.likelihood, self.modules, targets=x if self.empirical else None, generator=self.generator
        )
        rows: list[ErrorRow] = []
        terms: dict[Entry, list[NetworkTerms]] = {entry: [] for entry in self.entries}
        for index, (layer, stats) in enumerate(zip(self.layers, captured)):
            fisher = ExactFisher(stats.a, stats.g)
            for entry, blocks in self.blocks.items():
                seconds, report = timed_call(partial(blocks[index].fit, stats), self.device)
                measured = blocks[index].errors(fisher)
                terms[entry].append(measured.terms)
                errors = measured.errors
                rows.append(
                    ErrorRow(
                        iteration=iteration,
                        layer=layer,
                        method=entry.method.value,
                        rank=entry.rank,
                        error1=errors.error1.value,
                        error2=errors.error2.value,
                        iterations=0 if report is None else report.iterations,
                        seconds=seconds,
                        path=errors.path,
                    )
                )
        squared_norm = network_squared_norm(captured)
        for entry in self.entries:
            if entry.coarse != CoarseSpace.NONE:
                one_level = Entry(entry.method, entry.rank)
                whole = sum(terms[one_level][1:], terms[one_level][0])
                terms[entry] = [two_level_network_terms(captured, self.blocks[one_level], entry.coarse, whole)]
        return rows + self.network_rows(iteration, squared_norm, terms, rows)

    def network_rows(
        self, iteration: int, squared_norm: float, blocks: dict[Entry, list[NetworkTerms]], rows: list[ErrorRow]
    ) -> list[ErrorRow]:
        """Per entry, the network error of ``blockdiag(F̂_l)`` from its blocks' terms (a method that couples the
        layers, ``exact-ng``: ``F̂ = F``)."""
        network = []
        for entry, terms in blocks.items():
            couples = entry.method.record.couples_layers
            whole = NetworkTerms(squared_norm, squared_norm) if couples else sum(terms[1:], terms[0])
            own = [row for row in rows if row.method == entry.method.value and row.rank == entry.rank]  # the blocks
            network.append(
                ErrorRow(
                    iteration=iteration,
                    layer=NETWORK,
                    method=entry.name,
                    rank=entry.rank,
                    error1=network_error(squared_norm, whole).value,
                    error2=math.nan,
                    iterations=sum(row.iterations for row in own),
                    seconds=sum(row.seconds for row in own),
                    path="gram",
                )
            )
        return network


def two_level_network_terms(
    statistics: list[LayerStatistics], blocks: list[CurvatureBlock], coarse: str, one_level: NetworkTerms
) -> NetworkTerms:
    """The network terms of the two-level approximation ``P⁻¹`` of the fitted ``blocks`` (undamped;
    :func:`fimbench.preconditioner.two_level.two_level_terms`) with the coarse space ``coarse`` (nicolaides or
    spectral); ``one_level`` are the blocks' own terms."""
    fisher = SubBatchFisher(statistics)
    matvecs, vectors = [], []
    for block, stats in zip(blocks, statistics):
        like = torch.zeros(stats.g.shape[-1], stats.a.shape[-1], dtype=METRIC_DTYPE, device=stats.a.device)
        matvec, first = block.operator()
        matvecs.append(matvec)
        vectors.append(coarse_vector(coarse, first, like))
    return two_level_terms(fisher, matvecs, vectors, one_level)


@dataclass
class Trainer:
    """The method that moves the network between measurements, stepping as ``fimbench train`` does: its torch
    optimizer (None when the quadratic model takes the step), after its preconditioner for a preconditioned
    method (statistics every T1 steps, refactorisation every T2, adaptive damping's second loss)."""

    model: Autoencoder | ConvAutoencoder
    optimizer: torch.optim.Optimizer | None
    preconditioner: KroneckerPreconditioner | None

    @classmethod
    def of(cls, model: Autoencoder | ConvAutoencoder, method: Method, options: OptimizerConfig, generator: torch.Generator) -> Trainer:
        """``method``'s trainer of ``model`` with ``options``; ``generator`` samples its Fisher's targets."""
        preconditioner = configured_preconditioner(model, model.likelihood, options, generator) if method.is_preconditioned else None
        takes_step = preconditioner is not None and preconditioner.quadratic_rule is not None
        return cls(model, None if takes_step else torch_optimizer(model, method, options), preconditioner)

    def step(self, x: Tensor) -> Tensor:
        """One step on the mini-batch ``x`` (an autoencoder's targets are its inputs); returns the loss before it."""
        model, likelihood = self.model, self.model.likelihood
        (model if self.optimizer is None else self.optimizer).zero_grad(set_to_none=False)
        loss = likelihood.nll(model(x), x).mean()
        loss.backward()
        if self.preconditioner is not None:
            self.preconditioner.step(x, x)
        if self.optimizer is not None:
            self.optimizer.step()
        if self.preconditioner is not None and self.preconditioner.awaiting_loss:
            with torch.no_grad():
                self.preconditioner.adapt_damping(loss.detach(), likelihood.nll(model(x), x).mean())
        return loss.detach()


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """Mini-batch indices, epoch after epoch, without end."""
    while True:
        yield from batch_indices(n, batch_size, generator, device)


def run_fisher_error(
    config: RunConfig,
    settings: FisherErrorSettings,
    progress: FisherErrorProgress | None = None,
    dataset: DatasetSplits | None = None,
) -> FisherErrorResult:
    """Train with ``config.optimizer.method`` (any training method: :class:`Trainer`) for ``settings.iterations`` steps, measuring
    every ``settings.every`` steps (module docstring). ``dataset`` replaces loading ``config.data.dataset``.

    Ctrl-C ends the run early: the result comes back with ``status = "interrupted"`` and what was measured.
    """
    layers = validate(config, settings)
    device = resolve_device(config.training.device)
    training, options = config.training, config.optimizer
    data = dataset or load_configured_dataset(config)
    check_batch_size(training.batch_size, data)
    architecture = resolve_architecture(config, data.input_dim)
    model = build_model(architecture, seed=training.seed).to(device)
    trainer = Trainer.of(model, Method(options.method), options, torch.Generator(device=device).manual_seed(training.seed + 3))
    entries = settings.entries()
    meter = FisherErrorMeter(
        model, layers, entries, config, device, settings.empirical, torch.Generator(device=device).manual_seed(training.seed + 2)
    )
    blocks = kronecker_layers(model)
    result = FisherErrorResult(
        dataset=config.data.dataset,
        layers=layers,
        layer_shapes={layer: layer_shape(blocks[layer - 1]) for layer in layers},
        entries=entries,
    )
    result.info = {
        "dataset": config.data.dataset,
        "synthetic": data.synthetic,
        "layers": layers,
        "entries": [{"method": entry.name, "rank": entry.rank} for entry in entries],
        "optimizer": options.method,
        "lr": options.lr,
        "batch_size": training.batch_size,
        "iterations": settings.iterations,
        "every": settings.every,
        "lanczos_rank": settings.lanczos_rank,
        "fisher": "empirical" if settings.empirical else "true (targets sampled from the model)",
        "tol": options.tol,
        "max_iterations": options.max_iterations,
        "seed": training.seed,
        **environment(device),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if progress is not None:
        progress.start(result, settings.iterations // settings.every + 1)
    train_x = data.train.to(device)
    batches = _batches(train_x.shape[0], training.batch_size, torch.Generator().manual_seed(training.seed + 1), device)
    started = time.perf_counter()
    try:
        for iteration in range(settings.iterations + 1):
            x = train_x[next(batches)]
            if iteration % settings.every == 0:
                rows = meter.measure(iteration, x)
                result.rows += rows
                if progress is not None:
                    progress.measured(iteration, rows)
            if iteration == settings.iterations:
                break
            value = float(trainer.step(x))
            if not math.isfinite(value):
                raise FimbenchError(f"non-finite training loss ({value}) at iteration {iteration}; lower the learning rate")
            result.losses.append((iteration, value))
            if progress is not None:
                progress.step(iteration + 1, value)
    except KeyboardInterrupt:
        result.status = "interrupted"
    result.info["seconds"] = time.perf_counter() - started
    result.info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result.info["status"] = result.status
    return result
