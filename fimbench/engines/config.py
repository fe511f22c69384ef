"""Run configuration: frozen dataclasses, loaded from YAML with strict key and type checking.

Resolution order (later wins), all in :func:`resolve_config`:

1. the dataset's preset ``configs/<dataset>.yaml``, then its ``methods.<method>`` section;
2. with step rule qmodel and a preconditioned method, the rule's defaults: the ``optimizer`` section of
   ``configs/<dataset>-qmodel.yaml`` less its ``method`` (adaptive damping from λ₀ = 150, floor 0.01);
3. the user's ``--config`` file, then that file's ``methods.<method>`` section;
4. the command line: named options and ``--set`` (``overrides``).

What "the user set" is the keys of layers 3 and 4, each of which wins over layer 2. The presets (1) are not
the user's choice: their λ, chosen for the fixed step rule, makes the qmodel rule diverge. One exception: a
λ the user gives without a damping schedule is a fixed λ, as under the fixed rule, so layer 2 then leaves
the schedule to the presets (fixed), and the run warns (:func:`fimbench.engines.train.step_rule_warning`).
So ``--damping 0.01`` trains at a fixed λ = 0.01, ``--damping-schedule fixed`` at the rule's λ = 150, and
``--damping-schedule adaptive --damping 10`` adapts λ from 10 with the floor 0.01. A run directory's
``config.yaml`` sets every key, so a resumed run or a sweep's best config resolves as written.

A run is configured by :func:`load_config`: the resolution, then the one check of its settings (the method
parsed, the training and optimizer settings in range), so that the command line and the engines read
:attr:`RunConfig.method` and trust the rest. The preconditioner still checks its own settings when it is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fimbench.engines.event_log import require_tensorboard
from fimbench.errors import FimbenchError, did_you_mean
from fimbench.methods import PRECONDITIONED_METHODS, Command, Method, methods_of, parse_method
from fimbench.names import STEP_RULES, StepRule
from fimbench.preconditioner.settings import FirstOrderSettings, PreconditionerSettings


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "curves-synth"
    data_dir: str | None = None  # default: $FIMBENCH_DATA or the per-user cache
    split_seed: int = 0  # fixes the train/validation split (independent of the training seed)
    synth_train: int = 20000  # curves-synth sizes
    synth_test: int = 10000


@dataclass(frozen=True)
class ModelConfig:
    layers: list[int] | None = None  # default: the paper's architecture for the dataset (App. D)
    activation: str = "relu"
    likelihood: str | None = None  # bernoulli | gaussian; default: the dataset's
    architecture: str = "mlp"  # mlp (App. D) | conv (models.ConvAutoencoder; configs/curves-conv.yaml)


@dataclass(frozen=True)
class OptimizerConfig(PreconditionerSettings, FirstOrderSettings):
    """The ``optimizer`` section: :class:`FirstOrderSettings`' fields, then :class:`PreconditionerSettings`'."""


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 256
    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (smoke runs)
    seed: int = 0  # data order, initialisation and Fisher sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 0  # also log a metrics row every N steps (0: epochs only)
    tensorboard: bool = False  # also write metrics.jsonl's rows as TensorBoard event files (fimbench.engines.event_log)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def method(self) -> Method:
        """The configured method, ``optimizer.method`` (:func:`load_config` has checked the name)."""
        return Method(self.optimizer.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
}


class _Null:
    """Type of :data:`NULL`."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()
"""An override value that sets a key to ``null`` (a plain ``None`` override means "not given")."""


PRESET_ALIASES = {"curves-synth": "curves"}  # the synthetic set trains the CURVES autoencoder


def preset_path(dataset: str, variant: str = "") -> Path | None:
    """``configs/<dataset>.yaml`` shipped with fimbench, if any; with ``variant``, ``configs/<dataset>-<variant>.yaml``
    (``qmodel``: the step rule's defaults)."""
    name = PRESET_ALIASES.get(dataset, dataset) + (f"-{variant}" if variant else "")
    candidate = resources.files("fimbench.configs") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping; one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise FimbenchError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise FimbenchError(f"malformed YAML in {path}{where}: {getattr(error, 'problem', error)}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise FimbenchError(f"{path} must hold a mapping of sections (data, model, optimizer, training)")
    return content


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _coerce(value: Any, annotation: Any, key: str, origin: str) -> Any:
    """Check ``value`` against the field's type (ints are accepted for floats; a union takes the first
    member that accepts the value)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        for member in inner[:-1]:
            try:
                return _coerce(value, member, key, origin)
            except FimbenchError:
                continue
        return _coerce(value, inner[-1], key, origin)
    base = typing.get_origin(annotation) or annotation
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise FimbenchError(f"config key '{key}' in {origin} must be a list, got {value!r}")
        return [_coerce(item, args[0], key, origin) for item in value]
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise FimbenchError(
            f"config key '{key}' in {origin} must be of type {_type_name(base)}, got {value!r}"
        )
    return value


def _merge(config: RunConfig, mapping: dict[str, Any], origin: str) -> RunConfig:
    """Apply ``{section: {key: value}}`` (and dotted ``section.key``) onto ``config``."""
    updated = {name: getattr(config, name) for name in SECTIONS}
    for section, values in mapping.items():
        if section == "methods":
            continue
        if section not in SECTIONS:
            raise FimbenchError(
                f"unknown config section '{section}' in {origin}; expected one of {', '.join(SECTIONS)}, methods"
                f"{did_you_mean(section, [*SECTIONS, 'methods'])}"
            )
        if not isinstance(values, dict):
            raise FimbenchError(f"config section '{section}' in {origin} must be a mapping")
        known = {f.name: f for f in fields(SECTIONS[section])}
        hints = typing.get_type_hints(SECTIONS[section])
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise FimbenchError(
                    f"unknown config key '{section}.{key}' in {origin}; known keys: {', '.join(known)}"
                    f"{did_you_mean(f'{section}.{key}', [f'{section}.{name}' for name in known])}"
                )
            changes[key] = _coerce(value, hints[key], f"{section}.{key}", origin)
        updated[section] = dataclasses.replace(updated[section], **changes)
    return RunConfig(**updated)


def _method_section(mapping: dict[str, Any], method: str, origin: str) -> dict[str, Any]:
    methods = mapping.get("methods") or {}
    if not isinstance(methods, dict):
        raise FimbenchError(f"'methods' in {origin} must map method names to optimizer settings")
    names = [known.value for known in Method]
    for name in methods:
        if name not in names:
            raise FimbenchError(f"unknown method 'methods.{name}' in {origin}{did_you_mean(str(name), names)}; the methods are {', '.join(names)}")
    overrides = methods.get(method) or {}
    if not isinstance(overrides, dict):
        raise FimbenchError(f"'methods.{method}' in {origin} must be a mapping of optimizer keys")
    return {"optimizer": overrides}


Layer = tuple[dict[str, Any], str]
"""A mapping of config sections and where it comes from (for error messages)."""


def _merge_all(config: RunConfig, layers: list[Layer]) -> RunConfig:
    for mapping, origin in layers:
        config = _merge(config, mapping, origin)
    return config


def _with_step_rule_defaults(config: RunConfig, resolved: RunConfig, chosen: set[str]) -> RunConfig:
    """``config`` (the presets merged) with the qmodel defaults on top where they apply (module docstring):
    ``resolved`` is the run's config without them, ``chosen`` the optimizer keys the user set."""
    optimizer = resolved.optimizer
    if optimizer.step_rule != StepRule.QMODEL or optimizer.method not in {method.value for method in PRECONDITIONED_METHODS}:
        return config
    path = preset_path(resolved.data.dataset, StepRule.QMODEL)
    if path is None:
        return config
    fixed_damping = "damping" in chosen and "damping_schedule" not in chosen  # a λ given alone is a fixed λ
    left_out = {"method", "damping_schedule"} if fixed_damping else {"method"}
    defaults = {key: value for key, value in (read_yaml(path).get("optimizer") or {}).items() if key not in left_out}
    return _merge(config, {"optimizer": defaults}, f"{path} (the {StepRule.QMODEL} step rule's defaults)")


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The configuration of a run: resolved (:func:`resolve_config`), then checked once (:func:`_check_run`).

    Args:
        path: the user's ``--config`` file, if any.
        overrides: the command line's values by dotted key (``optimizer.lr``); ``None`` means not given and
            :data:`NULL` sets a key to ``null``.

    Returns:
        The resolved configuration, whose :attr:`RunConfig.method` is a method that trains.

    Raises:
        FimbenchError: what :func:`resolve_config` raises, an unknown method, or a training or optimizer
            setting out of range.
    """
    config = resolve_config(path, overrides)
    _check_run(config)
    return config


def resolve_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve a configuration: the one place every command's configurations are resolved (module docstring).

    Only keys and types are checked: a run is loaded with :func:`load_config`, which checks its values; a
    command that reads only part of a configuration (its dataset), or checks what it uses itself
    (``fisher-error``), or plans runs that are checked when they run (a sweep), resolves it here.

    Args:
        path: the user's ``--config`` file, if any.
        overrides: the command line's values by dotted key (``optimizer.lr``); ``None`` means not given and
            :data:`NULL` sets a key to ``null``.

    Returns:
        The resolved configuration.

    Raises:
        FimbenchError: a missing or malformed file, an unknown section or key, or a value of the wrong type.
    """
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    user = read_yaml(path) if path is not None else {}
    nested_overrides: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        nested_overrides.setdefault(section, {})[key] = None if value is NULL else value

    dataset = nested_overrides.get("data", {}).get("dataset") or (user.get("data") or {}).get("dataset")
    dataset = dataset or DataConfig.dataset
    preset_file = preset_path(str(dataset))
    preset = read_yaml(preset_file) if preset_file is not None else {}

    def method_of(*mappings: dict[str, Any]) -> str:
        method = OptimizerConfig.method
        for mapping in mappings:
            method = (mapping.get("optimizer") or {}).get("method", method)
        return str(method)

    method = method_of(preset, user, nested_overrides)
    origin = str(path) if path is not None else "the config"
    presets: list[Layer] = [
        (preset, str(preset_file)),
        (_method_section(preset, method, str(preset_file)), f"{preset_file} (methods.{method})"),
    ]
    users: list[Layer] = [
        (user, origin),
        (_method_section(user, method, origin), f"{origin} (methods.{method})"),
        (nested_overrides, "the command line"),
    ]
    config = _merge_all(RunConfig(), presets)
    resolved = _merge_all(config, users)
    chosen = {key for mapping, _ in users for key in mapping.get("optimizer") or {}}
    return _merge_all(_with_step_rule_defaults(config, resolved, chosen), users)


def dump_config(config: RunConfig) -> str:
    """The fully resolved configuration as YAML (written to every run directory)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _check_run(config: RunConfig) -> None:
    """One error for an unknown method or a training or optimizer setting out of range (the preconditioner
    checks its own settings when it is built)."""
    parse_method(config.optimizer.method, choices=methods_of(command=Command.TRAIN))
    training, optimizer = config.training, config.optimizer
    if training.batch_size < 1 or training.epochs < 1:
        raise FimbenchError("training.batch_size and training.epochs must be at least 1")
    if training.max_steps is not None and training.max_steps < 1:
        raise FimbenchError("training.max_steps must be at least 1")
    if not optimizer.lr > 0:
        raise FimbenchError(f"optimizer.lr must be positive, got {optimizer.lr}")
    if optimizer.weight_decay < 0 or not 0 <= optimizer.momentum < 1:
        raise FimbenchError("optimizer.weight_decay must be ≥ 0 and optimizer.momentum in [0, 1)")
    if optimizer.nesterov and optimizer.momentum == 0:
        raise FimbenchError("optimizer.nesterov needs a positive optimizer.momentum")
    if training.tensorboard:
        require_tensorboard()
    if optimizer.step_rule not in STEP_RULES:
        raise FimbenchError(f"optimizer.step_rule must be one of {', '.join(STEP_RULES)}, got '{optimizer.step_rule}'")
