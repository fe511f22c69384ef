"""Cost profile engine: the paper's Table 1 (App. C), measured on the code paths ``train`` runs.

Per method and per layer it times the method's own block (:mod:`fimbench.preconditioner.blocks`, the one
training uses), built with a :class:`KroneckerPreconditioner`'s settings (:class:`LayerTimer`):

* ``build_cold`` / ``build_warm`` — the block's ``update`` from the statistics ``(ā, g)`` of the Fisher
  sub-batch, incl. the power-SVD / Lanczos iterations (count k₁ / k₂): cold = the first update (no prior),
  warm = the steady state of training (EMA prior = the previous solution on another sub-batch,
  ρ = ``ema_decay``, warm-started from it), as in ``update_statistics``;
* ``inverse`` — the block's ``refresh``: the damped factorisation of ``refresh_inverses`` (§2.2, §3.4);
* ``apply`` — the block's ``apply`` on the layer's gradient, ``F̂⁻¹ ∇h``;

The exact references (``exact-ng``, ``exact-ng-block``) build no approximation: per layer, ``build`` is its
Gram term ``K_l = (Ā_l Ā_lᵀ) ∘ (G_l G_lᵀ)`` (the EMA does not apply, so cold = warm), ``inverse`` the
Cholesky factor of its damped Gram ``mλI + K_l`` and ``apply`` its Woodbury apply ``(v − J_lᵀ (mλI + K_l)⁻¹ J_l v) / λ``
— the per-block quantities, for both; what ``exact-ng`` couples (one m × m Cholesky factor of ``Σ_l K_l``,
the same m³ as one block's, and ``J v`` over all layers) shows in its precondition step.

EKFAC: ``build`` is :func:`~fimbench.curvature.ekfac.approximate_ekfac` (warm: the EMA with a new basis),
``inverse`` the refresh's ``S + λ`` and ``apply`` the four products with the eigenbases. With a two-level
correction (``optimizer.coarse``) the per-layer phases are the blocks' and the precondition step includes
the coarse correction; the coarse rebuild that follows each statistics update (one Jacobian product per
layer and an L × L factorisation) is left out of it: a warm-up call makes it first.

Shampoo, SOAP and Muon precondition by themselves (their step: :func:`_optimizer_step_time`). Muon's block has
no build and no factorisation; its apply is the Newton–Schulz orthogonalisation. Per layer, Shampoo's and SOAP's Fisher blocks — Shampoo's the Kronecker block of
``c · R ⊗ L`` (build: the two factor Grams and c; inverse: the factorisation of both factors, as the optimizer's
inverse roots by ``eigh``; apply: the two products ``L^(-1/4) V R^(-1/4)`` have the shape of ``G⁻¹ V A⁻¹``),
SOAP's the eigenbasis block with Shampoo's factors — and, as their step, their torch optimizer's whole step.

Per model, the whole :meth:`KroneckerPreconditioner.precondition` step (every layer + KL clip), and the
yardsticks: forward + backward of the batch, one SGD step (forward, backward, momentum step) and the
capture pass of the true Fisher (targets sampled from the model). Each figure is the median and spread of
``repeats`` device-synchronised calls after a warm-up (:func:`fimbench.timing.measure`).

Predicted orders per layer of width d with Fisher batch m (Table 1, ℓ = 1): build ``2md²`` (KFAC),
``4k₁md²`` (KPSVD; + ``2md²`` for Deflation / KFAC-corrected; Lanczos ``4k₂md² + K³ + 2Kd²``); inverse and
apply ``d³``. fimbench runs power SVD and Lanczos in Gram coordinates (curvature/rearranged.py): the
Gram matrices cost ``m²(p + q)``, ‖Z‖_F ``2n³`` and an iteration ``O(n²)`` with ``n = m + r₀`` (r₀ = prior
rank), and every Kronecker factor ``MAT(Φx)`` or prior quadratic form one ``O(m d²)`` weighted Gram — a
build of ``O(m²d + md²)``, not ``O(k m d²)``. :func:`modelled_cost` counts these multiply-adds; the sweep's
fitted exponents are printed beside the paper's and beside the effective exponents of that count on the
same grid, which is the prediction they are checked against. Exponents are fitted to the fastest repeat
(:data:`FIT_STATISTIC`): contention on a shared host only ever adds time; tables report the median.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fimbench.engines.config import OptimizerConfig, resolve_config
from fimbench.engines.cost.model import PHASES, sweep_exponents
from fimbench.engines.cost.results import CostPoint, DatasetCost, LayerCost, MethodCost, ModelProfile, SweepCost, Timing
from fimbench.engines.device import environment
from fimbench.engines.models import ARCHITECTURES, Architecture, Autoencoder, ConvAutoencoder, build_model, resolve_architecture
from fimbench.engines.optimizers import configured_preconditioner, torch_optimizer
from fimbench.errors import FimbenchError, NothingToOptimizeError
from fimbench.fisher.capture import (
    KroneckerLayer,
    LayerStatistics,
    capture_statistics,
    kronecker_layers,
    set_weight_gradient,
    weight_gradient,
)
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import Method
from fimbench.names import DATASETS, check_dataset
from fimbench.preconditioner.blocks import BlockSettings, CurvatureBlock, new_block
from fimbench.preconditioner.kronecker_preconditioner import KroneckerPreconditioner
from fimbench.timing import measure

COST_DATASETS: tuple[str, ...] = DATASETS  # every dataset: a profile needs only its architecture
YARDSTICKS: tuple[str, ...] = ("forward_backward", "sgd_step", "capture")
SWEEP_LIKELIHOOD = Likelihood.GAUSSIAN  # synthetic layers: g = ∂ℓ/∂s of N(s, I) with sampled targets

Progress = Callable[[str], None]


def _environment(device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """The environment stamp with the profile's repeats, warm-up calls, torch threads and start time."""
    return {
        **environment(device),
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_common(methods: Sequence[Method], repeats: int) -> None:
    if not methods:
        raise FimbenchError("no method to profile; pass --methods all or a list such as kfac,deflation")
    if repeats < 1:
        raise FimbenchError(f"repeats must be at least 1, got {repeats}")


def _restore_gradients(layers: list[KroneckerLayer], gradients: list[Tensor]) -> None:
    for layer, gradient in zip(layers, gradients):
        set_weight_gradient(layer, gradient)


def _yardsticks(
    model: Autoencoder | ConvAutoencoder, inputs: Tensor, sgd: OptimizerConfig, fisher_batch: int, seed: int, repeats: int, warmup: int
) -> dict[str, Timing]:
    """Forward + backward (leaves the batch's gradient in ``model``), an SGD step on a copy, and capture."""
    device, likelihood = inputs.device, model.likelihood

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        likelihood.nll(model(inputs), inputs).mean().backward()

    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)

    def sgd_step() -> None:
        optimizer.zero_grad(set_to_none=False)
        likelihood.nll(twin(inputs), inputs).mean().backward()
        optimizer.step()

    generator = torch.Generator(device=device).manual_seed(seed)
    layers = kronecker_layers(model)
    capture = partial(capture_statistics, model, inputs[:fisher_batch], likelihood, layers, None, generator)
    times = {
        "sgd_step": Timing.of(measure(sgd_step, device, repeats, warmup)),
        "capture": Timing.of(measure(capture, device, repeats, warmup)),
        "forward_backward": Timing.of(measure(forward_backward, device, repeats, warmup)),  # last: leaves ∇h
    }
    return {name: times[name] for name in YARDSTICKS}


def profile_model(
    model: Autoencoder | ConvAutoencoder,
    inputs: Tensor,
    configs: dict[Method, OptimizerConfig],
    sgd: OptimizerConfig,
    repeats: int,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> ModelProfile:
    """Time every phase of every method on ``model`` with the batch ``inputs`` (module docstring).

    Statistics are captured on the Fisher sub-batch ``inputs[:m]`` (as ``update_statistics`` does) and,
    for the warm prior, on ``inputs[-m:]``; each method sees the same ones (same seed).
    """
    device = inputs.device
    layers = kronecker_layers(model)
    batch = inputs.shape[0]
    fractions = {config.fisher_fraction for config in configs.values()}
    if len(fractions) != 1:
        raise FimbenchError("every profiled method must use the same optimizer.fisher_fraction")
    fisher_batch = max(1, round(batch * fractions.pop()))
    yardsticks = _yardsticks(model, inputs, sgd, fisher_batch, seed, repeats, warmup)
    gradients = [weight_gradient(layer).clone() for layer in layers]
    costs: list[MethodCost] = []
    for method, config in configs.items():
        if progress is not None:
            progress(method.value)
        generator = torch.Generator(device=device).manual_seed(seed)
        preconditioner = configured_preconditioner(model, model.likelihood, config, generator) if method.is_preconditioned else None
        current = capture_statistics(model, inputs[:fisher_batch], model.likelihood, layers, None, generator)
        previous = capture_statistics(model, inputs[-fisher_batch:], model.likelihood, layers, None, generator)
        timer = LayerTimer(method, config.block_settings(), config.damping, config.ema_decay, repeats, warmup)
        layer_costs = [timer.layer_cost(index, now, before, gradient)
                       for index, (now, before, gradient) in enumerate(zip(current, previous, gradients))]
        if preconditioner is not None:
            step = _step_time(preconditioner, current, gradients, repeats, warmup)
        else:
            step = _optimizer_step_time(model, method, config, gradients, repeats, warmup)
        costs.append(MethodCost(method.value, asdict(config), layer_costs, step))
    return ModelProfile(batch, fisher_batch, yardsticks, costs)


def _step_time(
    preconditioner: KroneckerPreconditioner, statistics: list[LayerStatistics], gradients: list[Tensor], repeats: int, warmup: int
) -> Timing:
    """The precondition step (every layer, the coarse correction if any, KL clip) on ``gradients``, after
    an update from ``statistics`` and one untimed step."""
    layers = preconditioner.layers
    preconditioner.damped_fisher.update(statistics, 0.0)
    preconditioner.refresh_inverses()
    restore = partial(_restore_gradients, layers, gradients)
    restore()
    preconditioner.precondition()
    step = Timing.of(measure(preconditioner.precondition, gradients[0].device, repeats, warmup, setup=restore))
    restore()
    return step


def _optimizer_step_time(
    model: torch.nn.Module, method: Method, config: OptimizerConfig, gradients: list[Tensor], repeats: int, warmup: int
) -> Timing:
    """A method that preconditions by itself (Shampoo, SOAP, Muon): its torch optimizer's whole step on a copy of
    ``model`` holding the batch's gradients (its roots or eigenbases every T2 steps fall among the repeats as
    they fall in training). Where the optimizer refuses the model (Muon on the sweep's single layer, which is
    its first and last, so AdamW's), the step is its blocks' apply on every layer's gradient."""
    device = gradients[0].device
    twin = copy.deepcopy(model)  # parameters only: the batch's gradients are copied over
    for copied, parameter in zip(twin.parameters(), model.parameters()):
        copied.grad = None if parameter.grad is None else parameter.grad.clone()
    try:
        optimizer = torch_optimizer(twin, method, config)
    except NothingToOptimizeError:
        blocks = [new_block(method, config.block_settings()) for _ in gradients]
        return Timing.of(measure(lambda: [block.apply(gradient) for block, gradient in zip(blocks, gradients)], device, repeats, warmup))
    optimizer.step()
    return Timing.of(measure(optimizer.step, device, repeats, warmup))


@dataclass(frozen=True)
class LayerTimer:
    """Times one layer's phases through its method's block (:class:`~fimbench.preconditioner.blocks.CurvatureBlock`):

    * ``build_cold``: :meth:`update` of a fresh block, ρ = 0;
    * ``build_warm``: :meth:`update` with ρ = ``decay`` of a block whose estimate is the previous
      sub-batch's (and refreshed once, so that EKFAC takes a new basis as in training);
    * ``inverse``: :meth:`refresh` with λ = ``damping``; ``apply``: :meth:`apply` on the layer's gradient.

    Each timed update starts from the same state (restored untimed before every call).
    """

    method: Method
    settings: BlockSettings
    damping: float
    decay: float
    repeats: int
    warmup: int

    def layer_cost(self, index: int, now: LayerStatistics, before: LayerStatistics, gradient: Tensor) -> LayerCost:
        """The phases of layer ``index``: statistics ``now`` (the prior's: ``before``), its gradient ``gradient``."""
        device = gradient.device
        block = new_block(self.method, self.settings)
        empty = dict(vars(block))
        cold_report = block.update(now, 0.0)
        cold = partial(block.update, now, 0.0)
        cold_time = Timing.of(measure(cold, device, self.repeats, self.warmup, setup=partial(_restore, block, empty)))
        _restore(block, empty)
        block.update(before, 0.0)
        block.refresh(self.damping)
        prior = dict(vars(block))
        warm = partial(block.update, now, self.decay)
        warm_time = Timing.of(measure(warm, device, self.repeats, self.warmup, setup=partial(_restore, block, prior)))
        _restore(block, prior)
        warm_report = warm()
        invert = partial(block.refresh, self.damping)
        invert()
        times = {
            "build_cold": cold_time,
            "build_warm": warm_time,
            "inverse": Timing.of(measure(invert, device, self.repeats, self.warmup)),
            "apply": Timing.of(measure(partial(block.apply, gradient), device, self.repeats, self.warmup)),
        }
        return LayerCost(
            index=index,
            p=now.a.shape[-1],
            q=now.g.shape[-1],
            rank=block.rank,
            iterations_cold=None if cold_report is None else cold_report.iterations,
            iterations_warm=None if warm_report is None else warm_report.iterations,
            times={phase: times[phase] for phase in PHASES},
        )


def _restore(block: CurvatureBlock, state: dict[str, Any]) -> None:
    """Put back the attributes ``dict(vars(block))`` gave (every update replaces them, never mutates them)."""
    vars(block).clear()
    vars(block).update(state)


def _random_inputs(batch: int, width: int, device: torch.device, seed: int) -> Tensor:
    """Pixels in [0, 1] of the benchmark's shape (valid Bernoulli targets; timing needs no real data)."""
    return torch.rand(batch, width, generator=torch.Generator().manual_seed(seed)).to(device)


def profile_dataset(
    dataset: str,
    methods: Sequence[Method],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    config: Path | None = None,
) -> DatasetCost:
    """Profile the App. D autoencoder of ``dataset`` at the benchmark's batch size with its preset settings.

    ``config`` (a YAML file, e.g. configs/curves-conv.yaml) overrides the preset: its model (such as
    ``model.architecture: conv``), batch size and per-method settings.
    """
    check_dataset(dataset, COST_DATASETS)
    _check_common(methods, repeats)
    configs = {
        method: resolve_config(config, {"data.dataset": dataset, "optimizer.method": method.value}) for method in methods
    }
    sgd = resolve_config(config, {"data.dataset": dataset, "optimizer.method": Method.SGD.value})
    architecture = resolve_architecture(sgd, ARCHITECTURES[dataset].layers[0])
    model = build_model(architecture, seed).to(device)
    inputs = _random_inputs(sgd.training.batch_size, architecture.layers[0], device, seed)
    profile = profile_model(
        model,
        inputs,
        {method: config.optimizer for method, config in configs.items()},
        sgd.optimizer,
        repeats,
        warmup,
        seed,
        progress,
    )
    return DatasetCost(dataset, architecture.layers, _environment(device, repeats, warmup), profile)


def _labelled(progress: Progress | None, width: int, fisher_batch: int) -> Progress | None:
    """``progress`` with the sweep point prefixed to every message."""
    if progress is None:
        return None
    return lambda message: progress(f"d={width} m={fisher_batch} {message}")


def profile_sweep(
    widths: Sequence[int],
    batches: Sequence[int],
    methods: Sequence[Method],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> SweepCost:
    """Profile one square layer ``Linear(d, d)`` (p = d + 1, q = d) per width d and Fisher batch m.

    The layer is a one-layer :class:`Autoencoder` with a Gaussian likelihood; its training batch is
    ``m / fisher_fraction`` (4m by default), so the yardsticks are the SGD step whose Fisher sub-batch is m.
    Settings are :class:`OptimizerConfig`'s defaults. Fits: :func:`sweep_exponents`.
    """
    _check_common(methods, repeats)
    if not widths or not batches:
        raise FimbenchError("the sweep needs at least one width and one Fisher batch size")
    for name, values in (("width", widths), ("batch", batches)):
        bad = [value for value in values if value < 1]
        if bad:
            raise FimbenchError(f"every {name} must be a positive integer, got {bad[0]}")
    widths, batches = sorted(set(widths)), sorted(set(batches))
    configs = {method: OptimizerConfig(method=method.value) for method in methods}
    sgd = OptimizerConfig(method=Method.SGD.value)
    points: list[CostPoint] = []
    for d in widths:
        for m in batches:
            model = build_model(Architecture((d, d), SWEEP_LIKELIHOOD), seed).to(device)
            inputs = _random_inputs(round(m / sgd.fisher_fraction), d, device, seed)
            profile = profile_model(model, inputs, configs, sgd, repeats, warmup, seed, _labelled(progress, d, m))
            points.append(CostPoint(d, m, profile))
    exponents = sweep_exponents(widths, batches, points)
    return SweepCost(list(widths), list(batches), _environment(device, repeats, warmup), points, exponents)


