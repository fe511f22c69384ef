"""Which modules :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` preconditions.

The model is first unwrapped: ``DistributedDataParallel`` keeps the user's model in ``.module`` and
``torch.compile`` in ``._orig_mod``; the statistics pass hooks and runs the unwrapped modules eagerly,
while the training forward may stay compiled or wrapped (the parameters, and so their ``.grad``, are
shared).

The blocks are the trainable ``nn.Linear`` / ``nn.Conv2d`` layers of
:func:`~fimbench.fisher.capture.candidate_layers`, narrowed by ``layers=`` (keep only these) and widened out by
``skip_layers=`` (leave these out), each given as module objects or qualified names
(``model.named_modules()``); a container stands for every layer inside it. Only the chosen layers must be
supported, so an unsupported one (a depthwise convolution, ``padding="same"``) is simply left out. Any other module owning a trainable parameter keeps its raw gradient; the
preconditioner names them, with their types, in one warning at construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from torch import nn

from fimbench.errors import FimbenchError
from fimbench.fisher.capture import KroneckerLayer, candidate_layers, check_supported

LayerSpec = nn.Module | str


def without_wrappers(model: nn.Module) -> nn.Module:
    """The user's model inside any ``DistributedDataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, in any nesting."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _resolve(model: nn.Module, specs: Iterable[LayerSpec], argument: str) -> list[nn.Module]:
    """The modules named or given in ``specs``; raises for a name or object that is not in ``model``."""
    named = dict(model.named_modules())
    present = {id(module) for module in named.values()}
    modules = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in named:
                choices = ", ".join(repr(name) for name, module in named.items() if isinstance(module, (nn.Linear, nn.Conv2d)))
                raise FimbenchError(f"{argument}: no module named {spec!r} in the model; its layers are {choices}")
            modules.append(named[spec])
        elif isinstance(spec, nn.Module):
            if id(without_wrappers(spec)) not in present:
                raise FimbenchError(f"{argument}: {spec} is not a module of the model")
            modules.append(without_wrappers(spec))
        else:
            raise FimbenchError(f"{argument} takes modules or qualified module names, got {spec!r}")
    return modules


def select_layers(
    model: nn.Module, layers: Iterable[LayerSpec] | None = None, skip_layers: Iterable[LayerSpec] | None = None
) -> list[KroneckerLayer]:
    """The blocks to precondition, in module order: the trainable Linear/Conv2d layers of ``model``, only
    those of ``layers`` when given, less those of ``skip_layers``. A container (say ``"encoder"``) stands
    for every such layer inside it, in both lists. Only the layers chosen must be supported
    (:func:`~fimbench.fisher.capture.check_supported`): an unsupported one left out is no obstacle."""
    candidates = candidate_layers(model)
    names = {id(module): name for name, module in model.named_modules()}
    chosen = {id(layer) for layer in candidates}
    if layers is not None:
        wanted: set[int] = set()
        for module in _resolve(model, layers, "layers"):
            inside = _layers_inside(module, candidates)
            if not inside:
                raise FimbenchError(
                    f"layers: {names[id(module)]!r} ({type(module).__name__}) is not a trainable nn.Linear or nn.Conv2d layer, "
                    "nor a module holding one"
                )
            wanted |= inside
        chosen = wanted
    if skip_layers is not None:
        for module in _resolve(model, skip_layers, "skip_layers"):
            chosen -= _layers_inside(module, candidates) | {id(module)}
    return [check_supported(layer, names[id(layer)]) for layer in candidates if id(layer) in chosen]


def _layers_inside(module: nn.Module, candidates: list[KroneckerLayer]) -> set[int]:
    """The ids of the ``candidates`` that are ``module`` or lie inside it."""
    inside = {id(child) for child in module.modules()}
    return {id(layer) for layer in candidates if id(layer) in inside}


def raw_gradient_modules(model: nn.Module, layers: list[KroneckerLayer]) -> list[str]:
    """The names of the modules that own a trainable parameter but are not blocks (their gradient stays
    the raw one)."""
    blocks = {id(layer) for layer in layers}
    return [
        f"{name} ({type(module).__name__})" if name else type(module).__name__
        for name, module in model.named_modules()
        if id(module) not in blocks and any(parameter.requires_grad for parameter in module.parameters(recurse=False))
    ]


def warn_raw_gradients(model: nn.Module, layers: list[KroneckerLayer]) -> list[str]:
    """Warn once, naming every module of :func:`raw_gradient_modules`; returns those names."""
    raw = raw_gradient_modules(model, layers)
    if raw:
        warnings.warn(
            f"KroneckerPreconditioner leaves the raw gradient of {len(raw)} module(s) with trainable parameters: "
            + ", ".join(raw),
            stacklevel=3,
        )
    return raw


def check_gradients(names: Sequence[str], layers: Sequence[KroneckerLayer]) -> None:
    """One error for a selected layer frozen since the preconditioner was built, or without a gradient
    (``loss.backward()`` not called, or on a loss that does not depend on it)."""
    for name, layer in zip(names, layers):
        parameters = [layer.weight] if layer.bias is None else [layer.weight, layer.bias]
        label = f"layer {name!r} ({type(layer).__name__})"
        if not all(parameter.requires_grad for parameter in parameters):
            raise FimbenchError(f"{label} was frozen after the preconditioner was built; build a new preconditioner")
        if any(parameter.grad is None for parameter in parameters):
            raise FimbenchError(f"{label} has no gradient: call loss.backward() on a loss that depends on it before step()")
