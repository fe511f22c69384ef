"""The arguments of ``fimbench train`` as one typed value, :class:`TrainOptions`, and the run configuration they
resolve to: the quick start when they say nothing about what to train, the run ``--resume`` continues, and the
options that step rule qmodel refuses.

Nothing here imports torch: ``fimbench --help`` builds every command's options without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fimbench.cli.options import DatasetName, MethodName, config_overrides, dataset_value, with_sets
from fimbench.errors import FimbenchError

if TYPE_CHECKING:
    from fimbench.engines.config import RunConfig


@dataclass(frozen=True)
class TrainOptions:
    """The arguments of ``fimbench train``, ``None`` where not given. Each one that sets a config field carries
    the field's name (``lr`` is ``optimizer.lr``, ``seed`` is ``training.seed``, ``dataset`` is ``data.dataset``);
    the others say where and how the run goes (``out``, ``resume``, ``seeds``, ``nproc``, the output flags)."""

    method: MethodName | None
    dataset: DatasetName | None
    config: Path | None
    lr: float | None
    batch_size: int | None
    epochs: int | None
    max_steps: int | None
    momentum: float | None
    nesterov: bool | None
    weight_decay: float | None
    damping: float | None
    pi: str | None
    damping_form: str | None
    coarse: str | None
    damping_schedule: str | None
    kl_clip: float | None
    step_rule: str | None
    stats_every: int | None
    inverse_every: int | None
    ema_decay: float | None
    fisher_fraction: float | None
    empirical_fisher: bool | None
    tol: float | None
    max_iterations: int | None
    lanczos_rank: int | None
    krylov_dim: int | None
    min_curvature_ratio: float | None
    seed: int | None
    seeds: str | None
    device: str | None
    data_dir: Path | None
    log_every: int | None
    tensorboard: bool | None
    out: Path | None
    overwrite: bool
    resume: Path | None
    sets: list[str] | None
    full_table: bool
    nproc: int | None
    json_output: bool
    quiet: bool

    def config_overrides(self) -> dict[str, Any]:
        """The dotted config overrides of the options (``None``: not given), ``--set`` left out."""
        return {
            "optimizer.method": self.method.value if self.method is not None else None,
            "data.dataset": dataset_value(self.dataset),
            "data.data_dir": str(self.data_dir) if self.data_dir is not None else None,
            "optimizer.pi": _damping_split(self.pi),
            **config_overrides(vars(self), ("optimizer", "training"), skip=("method", "pi")),
        }


def _damping_split(text: str | None) -> float | str | None:
    """``--pi``: ``trace`` or a number (validated with the other optimizer settings)."""
    if text is None or text == "trace":
        return text
    try:
        return float(text)
    except ValueError:
        raise FimbenchError(f"--pi must be 'trace' or a positive number, got '{text}'") from None


def run_config(options: TrainOptions) -> RunConfig:
    """The run's config: ``--config`` (or the preset; bare: the quick start), then the options, then ``--set``;
    loaded, so checked once (:func:`fimbench.engines.config.load_config`)."""
    from fimbench.engines.config import load_config

    resolved = load_config(options.config or _quick_start(options), with_sets(options.config_overrides(), options.sets))
    _check_step_rule(resolved, options)
    return resolved


QUICK_START = "quickstart.yaml"
"""What bare ``fimbench train`` runs: the shipped ``configs/quickstart.yaml``, as if given as ``--config``."""

QUICK_START_OPTIONS = ("out", "overwrite", "device", "data_dir", "nproc", "log_every", "tensorboard", "full_table", "json_output", "quiet")
"""What bare ``fimbench train`` may be given and still run the quick start: where and how it runs and is watched.
Any other option (``--method``, ``--epochs``, ``--lr``, ``--seed``, ``--set``, ...) says what to train, and the run is
resolved as always: the dataset's preset, then the options."""


def _quick_start(options: TrainOptions) -> Path | None:
    """The quick start's config when ``options`` say nothing about what to train, else ``None``."""
    from importlib import resources

    if any(value is not None and value != [] for name, value in vars(options).items() if name not in QUICK_START_OPTIONS):
        return None
    return Path(str(resources.files("fimbench.configs") / QUICK_START))


def _check_step_rule(resolved: RunConfig, options: TrainOptions) -> None:
    """With ``step_rule: qmodel`` the step's length and momentum come from the quadratic model: an explicit
    --lr, --momentum, --nesterov or --kl-clip (option or --set) would not be applied, and is refused; so is
    an explicit qmodel for SGD or Adam. (Values from config files are not used.)"""
    from fimbench.names import StepRule

    if resolved.optimizer.step_rule != StepRule.QMODEL:
        return
    given_sets = {spec.partition("=")[0].strip() for spec in options.sets or []}
    replaced = {"lr": options.lr, "momentum": options.momentum, "nesterov": options.nesterov, "kl_clip": options.kl_clip}
    given = [name for name, value in replaced.items() if value is not None or f"optimizer.{name}" in given_sets]
    if given:
        spelled = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FimbenchError(
            f"{spelled} cannot be given with step rule qmodel: the quadratic model chooses the step size and the "
            "momentum, and there is no KL-clip on top; drop it, or use --step-rule fixed"
        )
    explicit = options.step_rule is not None or "optimizer.step_rule" in given_sets
    if explicit and not resolved.method.is_preconditioned:
        raise FimbenchError(f"step rule qmodel is for the preconditioned methods; {resolved.optimizer.method} has lr and momentum of its own")


RESUME_OPTIONS = ("resume", "device", "data_dir", "tensorboard", "full_table", "json_output", "quiet")
"""What may be given with ``--resume``: where and how it runs and is watched, and where the data is — not what it computes."""


def resume_config(options: TrainOptions, run_dir: Path) -> RunConfig:
    """The config of the run ``--resume`` continues in ``run_dir``: its ``config.yaml``, with ``--device`` and
    ``--data-dir`` on top; any other option would change the run (or its directory) and is refused."""
    from fimbench.engines.config import load_config
    from fimbench.engines.rundir import CONFIG

    given = [
        name for name, value in vars(options).items()
        if name not in RESUME_OPTIONS and value is not None and value is not False  # --no-nesterov is given as False
    ]
    if given:
        spelled = sorted({"--set" if name == "sets" else "--" + name.replace("_", "-") for name in given})
        raise FimbenchError(
            f"{', '.join(spelled)} cannot be given with --resume: it continues {run_dir} as its config.yaml says "
            "(with it only --device, --data-dir, --tensorboard, --quiet, --json and --full-table may be given)"
        )
    if not (run_dir / CONFIG).is_file():
        raise FimbenchError(f"--resume {run_dir}: no config.yaml there, so it is not a run directory")
    overrides = {
        "training.device": options.device,
        "training.tensorboard": options.tensorboard,
        "data.data_dir": str(options.data_dir) if options.data_dir is not None else None,
    }
    return load_config(run_dir / CONFIG, overrides)
