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
from dataclasses import dataclass, replace
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
from fimbench.fisher.capture import LayerStatistics, capture_statistics, kronecker_layers, layer_shape, weight_gradient
from fimbench.fisher.damped_measures import MISSING_MEASURES, BlockMeasures, damped_measures
from fimbench.fisher.network_error import NETWORK, NetworkTerms, network_error
from fimbench.fisher.sub_batch import SubBatchFisher
from fimbench.fisher.subspace import DEFAULT_TOP_K
from fimbench.methods import Command, Method
from fimbench.names import check_dataset, command_methods
from fimbench.preconditioner.blocks import CurvatureBlock, new_block
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
    if settings.top_k < 1:
        raise FimbenchError(f"--top-k must be at least 1, got {settings.top_k}")
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

    ``measure`` = one capture pass (sampled or data targets) and one backward pass of the batch's own loss
    (its gradient ∇), then per layer the exact block's Gram quantities and, per entry, its layer's block
    :meth:`~fimbench.preconditioner.blocks.CurvatureBlock.fit` to the batch (timed; warm-started from its previous
    fit), :meth:`~fimbench.preconditioner.blocks.CurvatureBlock.errors` and
    :meth:`~fimbench.preconditioner.blocks.CurvatureBlock.measures` at the damping λ of the step.
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
        top_k: int = DEFAULT_TOP_K,
    ) -> None:
        modules = kronecker_layers(model)
        self.model = model
        self.layers = layers
        self.modules = [modules[layer - 1] for layer in layers]
        self.entries = entries
        self.device = device
        self.empirical = empirical
        self.generator = generator
        self.top_k = top_k
        options = config.optimizer
        self.blocks: dict[Entry, list[CurvatureBlock]] = {}
        for entry in entries:
            if entry.coarse == CoarseSpace.NONE:
                rank = entry.rank if entry.method.record.adjustable_rank else options.lanczos_rank
                approximation = ApproximationOptions(options.tol, options.max_iterations, rank, options.krylov_dim)
                settings = replace(options.block_settings(), options=approximation)
                self.blocks[entry] = [new_block(entry.method, settings) for _ in layers]

    def gradients(self, x: Tensor) -> list[Tensor]:
        """The batch's loss gradient ``[∇W | ∇b]`` (q, p) of each chosen layer, in float64; the model's gradients
        are cleared again."""
        self.model.zero_grad(set_to_none=True)
        self.model.likelihood.nll(self.model(x), x).mean().backward()
        gradients = [weight_gradient(module).to(METRIC_DTYPE) for module in self.modules]
        self.model.zero_grad(set_to_none=True)
        return gradients

    def measure(self, iteration: int, x: Tensor, damping: float) -> list[ErrorRow]:
        """One row per (layer, entry) and one network row per entry for the mini-batch ``x``, the damped measures
        at λ = ``damping`` (module docstring)."""
        captured = capture_statistics(
            self.model, x, self.model.likelihood, self.modules, targets=x if self.empirical else None, generator=self.generator
        )
        gradients = self.gradients(x)
        sub_batch = SubBatchFisher(captured)
        grams = [sub_batch.layer_gram(index) / sub_batch.m for index in range(sub_batch.layers)]  # K̃_l = J_l J_lᵀ / m
        exact_directions = sub_batch.inverse(damping, per_layer=True).apply(gradients)
        rows: list[ErrorRow] = []
        terms: dict[Entry, list[NetworkTerms]] = {entry: [] for entry in self.entries}
        measures: dict[Entry, list[BlockMeasures | None]] = {entry: [] for entry in self.entries}
        for index, (layer, stats) in enumerate(zip(self.layers, captured)):
            fisher = ExactFisher(stats.a, stats.g)
            for entry, blocks in self.blocks.items():
                seconds, report = timed_call(partial(blocks[index].fit, stats), self.device)
                measured = blocks[index].errors(fisher)
                terms[entry].append(measured.terms)
                errors = measured.errors
                block_measures = blocks[index].measures(fisher, gradients[index], damping, self.top_k)
                measures[entry].append(block_measures)
                rows.append(
                    ErrorRow(
                        iteration,
                        layer,
                        entry.method.value,
                        entry.rank,
                        errors.error1.value,
                        errors.error2.value,
                        *damped_measures([block_measures], grams[index], [exact_directions[index]], damping, self.top_k),
                        iterations=0 if report is None else report.iterations,
                        seconds=seconds,
                        path=errors.path,
                    )
                )
        gram = torch.stack(grams).sum(dim=0)  # K̃ = Σ_l K̃_l: ‖F‖² = ‖K̃‖²
        network = NetworkFisher(float(gram.square().sum()), gram, sub_batch.inverse(damping).apply(gradients), damping)
        for entry in self.entries:
            if entry.coarse != CoarseSpace.NONE:
                one_level = Entry(entry.method, entry.rank)
                whole = sum(terms[one_level][1:], terms[one_level][0])
                terms[entry] = [two_level_network_terms(captured, self.blocks[one_level], entry.coarse, whole)]
        return rows + self.network_rows(iteration, network, terms, measures, rows)

    def network_rows(
        self,
        iteration: int,
        network: NetworkFisher,
        blocks: dict[Entry, list[NetworkTerms]],
        measures: dict[Entry, list[BlockMeasures | None]],
        rows: list[ErrorRow],
    ) -> list[ErrorRow]:
        """Per entry, the network errors of ``blockdiag(F̂_l)`` from its blocks' terms and measures (a method
        that couples the layers, ``exact-ng``: ``F̂ = F``; a two-level entry: Error 1 only)."""
        network_rows = []
        for entry, terms in blocks.items():
            couples = entry.method.record.couples_layers
            whole = NetworkTerms(network.squared_norm, network.squared_norm) if couples else sum(terms[1:], terms[0])
            own = [row for row in rows if row.method == entry.method.value and row.rank == entry.rank]  # the blocks
            if entry.coarse != CoarseSpace.NONE:
                damped = MISSING_MEASURES
            else:
                damped = damped_measures(measures[entry], network.gram, network.direction, network.damping, self.top_k, exact=couples)
            network_rows.append(
                ErrorRow(
                    iteration,
                    NETWORK,
                    entry.name,
                    entry.rank,
                    network_error(network.squared_norm, whole).value,
                    math.nan,
                    *damped,
                    iterations=sum(row.iterations for row in own),
                    seconds=sum(row.seconds for row in own),
                    path="gram",
                )
            )
        return network_rows


@dataclass(frozen=True)
class NetworkFisher:
    """The multi-layer Fisher of one measurement: ``‖F‖²_F``, its Gram ``K̃ = Σ_l J_l J_lᵀ / m``, the damped
    direction ``(F + λI)⁻¹ ∇`` (one (q_l, p_l) piece per layer) and λ."""

    squared_norm: float
    gram: Tensor
    direction: list[Tensor]
    damping: float


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
    configured_damping: float

    @property
    def damping(self) -> float:
        """λ of the damped measures: the preconditioner's current λ (adaptive damping moves it), else the configured λ."""
        return self.configured_damping if self.preconditioner is None else self.preconditioner.damping

    @classmethod
    def of(cls, model: Autoencoder | ConvAutoencoder, method: Method, options: OptimizerConfig, generator: torch.Generator) -> Trainer:
        """``method``'s trainer of ``model`` with ``options``; ``generator`` samples its Fisher's targets."""
        preconditioner = configured_preconditioner(model, model.likelihood, options, generator) if method.is_preconditioned else None
        takes_step = preconditioner is not None and preconditioner.quadratic_rule is not None
        return cls(model, None if takes_step else torch_optimizer(model, method, options), preconditioner, options.damping)

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
        model, layers, entries, config, device, settings.empirical, torch.Generator(device=device).manual_seed(training.seed + 2), settings.top_k
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
        "damping": options.damping,
        "damping_form": options.damping_form,
        "top_k": settings.top_k,
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
                rows = meter.measure(iteration, x, trainer.damping)
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
