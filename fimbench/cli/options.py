"""One option vocabulary for every command: shared option definitions, ``--set``, and run directories.

Nothing here imports torch: ``fimbench --help`` builds every command's options from this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from fimbench.errors import FimbenchError, did_you_mean
from fimbench.methods import Command
from fimbench.names import DATASETS, command_methods

DatasetName = Enum("DatasetName", {name.upper().replace("-", "_"): name for name in DATASETS}, type=str)  # type: ignore[misc]
"""``--dataset`` choices (every dataset fimbench knows)."""
MethodName = Enum("MethodName", {name.upper().replace("-", "_"): name for name in command_methods(Command.TRAIN)}, type=str)  # type: ignore[misc]
"""``--method`` choices (every method ``train`` accepts)."""

SET_HELP = (
    "SECTION.KEY=VALUE, repeatable: set any config key (sections data, model, optimizer, training), e.g. "
    "model.layers=[784,64,784] or optimizer.kl_clip=null. VALUE is read as YAML; it wins over the config file."
)


class Executor(str, Enum):
    """``--executor``: where the runs of a sweep (or of ``reproduce``) go."""

    LOCAL = "local"
    SLURM = "slurm"


def executor_options(unit: str) -> dict[str, Any]:
    """``-j/--jobs``, ``--executor`` and the SLURM options of a command that runs many ``unit``s (points,
    runs), as parameter name -> option: the signature of :func:`fimbench.cli.sweep.make_runner`."""
    return {
        "jobs": typer.Option(
            None, "--jobs", "-j", help=f"{unit.capitalize()} at once (local: worker processes, default 1; slurm: array parallelism)."
        ),
        "executor": typer.Option(Executor.LOCAL, help="local: worker processes here; slurm: jobs through submitit."),
        "partition": typer.Option(None, help="SLURM partition (--executor slurm)."),
        "time_minutes": typer.Option(240, "--time", help=f"SLURM time limit per {unit.rstrip('s')}, minutes."),
        "gpus_per_job": typer.Option(0, help="GPUs per SLURM job (e.g. 1 on GPU partitions)."),
        "cpus_per_job": typer.Option(4, help="CPUs (torch threads) per SLURM job."),
    }


def dataset_option() -> Any:
    """``-d/--dataset``: one of the dataset names, shown as choices."""
    return typer.Option(
        None, "--dataset", "-d", help="Dataset (default: the config's, else curves-synth).", case_sensitive=False
    )


def methods_option(default: str | None, help: str) -> Any:
    """``-m/--methods``: a comma-separated list, wherever a command takes several methods."""
    return typer.Option(default, "--methods", "-m", help=help)


def empirical_fisher_option(default: bool | None) -> Any:
    """``--empirical-fisher/--true-fisher``: statistics from the data's targets or sampled from the model."""
    return typer.Option(
        default,
        "--empirical-fisher/--true-fisher",
        help="Empirical Fisher (targets from the data) or true Fisher (targets sampled from the model).",
    )


def step_rule_option() -> Any:
    """``--step-rule fixed|qmodel`` (``optimizer.step_rule``), for train and sweep."""
    return typer.Option(
        None,
        "--step-rule",
        help="Kronecker methods: fixed (the lr and momentum of the torch optimizer, KL-clipped) or qmodel (step size "
        "and momentum minimise the quadratic model with the exact sub-batch Fisher at every step; lr, momentum and "
        "KL-clip are not used; unless a λ or a damping schedule is given, the damping is configs/<dataset>-qmodel.yaml's: "
        "adaptive from λ₀ = 150).",
    )


def data_dir_option() -> Any:
    """``--data-dir``, also read from ``FIMBENCH_DATA``."""
    return typer.Option(
        None, "--data-dir", envvar="FIMBENCH_DATA", help="Dataset cache directory (default: the per-user cache directory)."
    )


def json_option() -> Any:
    """``--json``: the final summary as one JSON document on stdout (:mod:`fimbench.cli.output`)."""
    return typer.Option(
        False, "--json", help="Print the final summary as one JSON document on stdout; progress and tables go to stderr."
    )


def quiet_option() -> Any:
    """``-q/--quiet``: no progress, the summary table only."""
    return typer.Option(False, "--quiet", "-q", help="No progress and no notes: print the summary table only.")


def seeds_option(help: str) -> Any:
    """``--seeds``: a count (``3``: seeds 0, 1, 2) or a comma-separated list (:func:`fimbench.engines.sweep.parse_seeds`)."""
    return typer.Option(None, "--seeds", metavar="N|S1,S2,...", help=help)


def tensorboard_option() -> Any:
    """``--tensorboard/--no-tensorboard``: ``training.tensorboard`` (:mod:`fimbench.engines.event_log`)."""
    return typer.Option(
        None, "--tensorboard/--no-tensorboard",
        help="Also write each run's metrics as TensorBoard event files beside metrics.jsonl (the tensorboard extra).",
    )


def set_option() -> Any:
    """``--set SECTION.KEY=VALUE``, repeatable (:func:`parse_sets`)."""
    return typer.Option(None, "--set", help=SET_HELP)


def dataset_value(dataset: Enum | None) -> str | None:
    """The name behind a ``--dataset`` choice (``None`` when not given)."""
    return None if dataset is None else str(dataset.value)


# ----------------------------------------------------------------------------------------------- --set


def parse_sets(specs: Sequence[str] | None) -> dict[str, Any]:
    """``["model.layers=[784,64,784]", "optimizer.kl_clip=null"]`` -> dotted overrides for
    :func:`fimbench.engines.config.resolve_config` (``null`` becomes :data:`fimbench.engines.config.NULL`).

    Sections come from :data:`fimbench.engines.config.SECTIONS` and keys are checked, with their types, by the
    config loader itself, so every key of the config dataclasses can be set and nothing else.
    """
    import yaml

    from fimbench.engines.config import NULL, SECTIONS

    values: dict[str, Any] = {}
    for spec in specs or []:
        key, separator, text = spec.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not separator or not dot or not name or not text.strip():
            raise FimbenchError(f"--set takes SECTION.KEY=VALUE, e.g. optimizer.lr=0.01; got '{spec}'")
        if section not in SECTIONS:
            raise FimbenchError(
                f"unknown config section '{section}' in --set {spec}; expected one of {', '.join(SECTIONS)}"
                f"{did_you_mean(section, SECTIONS)}"
            )
        if key in values:
            raise FimbenchError(f"--set {key} is given twice")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise FimbenchError(f"--set {key}: VALUE is not valid YAML ({getattr(error, 'problem', error)})") from None
        values[key] = NULL if value is None else value
    return values


def with_sets(overrides: dict[str, Any], specs: Sequence[str] | None) -> dict[str, Any]:
    """``overrides`` (from named options; ``None`` = not given) plus the ``--set`` values; a key given by
    both is an error."""
    sets = parse_sets(specs)
    both = sorted(key for key in sets if overrides.get(key) is not None)
    if both:
        raise FimbenchError(f"{', '.join(both)} given both by an option and by --set; give it once")
    return {**overrides, **sets}


# ----------------------------------------------------------------------------------------------- run directories


def _first_missing(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first; an existing file on the way
    (or at ``path``) is an error."""
    missing: list[Path] = []
    for candidate in [path, *path.parents]:
        if candidate.is_dir():
            break
        if candidate.exists():
            raise FimbenchError(f"cannot create --out {path}: {candidate} is not a directory")
        missing.append(candidate)
    return list(reversed(missing))


_out: Path | None = None  # the running command's run or output directory, once known


def record_out(path: Path | None) -> None:
    """Record ``path`` as the running command's run (or output) directory, where an internal error leaves its
    ``crash.log`` (:func:`fimbench.errors.report_crash`); ``None``: it has none (yet). :func:`check_out` and
    :func:`run_directory` record theirs."""
    global _out
    _out = None if path is None else Path(path)


def recorded_out() -> Path | None:
    """The directory :func:`record_out` recorded last (``None``: none)."""
    return _out


def check_out(path: Path) -> None:
    """Fail early, with one line, if ``path`` cannot be a directory (a file on its way, say); record it as the
    command's output directory (:func:`record_out`)."""
    _first_missing(Path(path))
    record_out(path)


@contextmanager
def run_directory(path: Path, refuse_existing: bool = False, replace: Sequence[str] = ()) -> Iterator[Path]:
    """Create the run directory ``path``, record it as the command's (:func:`record_out`) and yield it; if the
    command fails before writing anything there, remove the directories this created, so bad input leaves no trace.

    ``refuse_existing``: a directory that already holds files is an error. ``replace``: file names removed
    from it first (the run that ``--overwrite`` replaces).
    """
    path = Path(path)
    if refuse_existing and path.is_dir() and any(path.iterdir()):
        raise FimbenchError(f"{path} already holds a run; pass --overwrite to replace it, --resume {path} to continue it, "
            "or choose another --out")
    created = _first_missing(path)
    try:
        for directory in created:
            directory.mkdir()
    except OSError as error:
        _remove_empty(created)
        raise FimbenchError(f"cannot create --out {path}: {error.strerror or error}") from None
    for name in replace:
        (path / name).unlink(missing_ok=True)
    record_out(path)
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(created: list[Path]) -> None:
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty (or gone): what the command wrote stays


def config_overrides(options: dict[str, Any], sections: Sequence[str], skip: Sequence[str] = ()) -> dict[str, Any]:
    """The dotted config overrides of the command-line options named after a config field.

    ``options`` maps parameter names to values (a command's arguments); each name that is a field of one
    of ``sections`` (a dataclass of :data:`fimbench.engines.config.SECTIONS`), and not in ``skip``, becomes
    ``"section.name"``: ``{"lr": 0.1, "seed": 3}`` -> ``{"optimizer.lr": 0.1, "training.seed": 3}``. The
    option names are the config's own, so a new setting needs no second spelling of its key.
    """
    from dataclasses import fields

    from fimbench.engines.config import SECTIONS

    owner = {field.name: section for section in sections for field in fields(SECTIONS[section])}
    return {f"{owner[name]}.{name}": value for name, value in options.items() if name in owner and name not in skip}


def default_run_dir(*parts: str) -> Path:
    """The one default ``--out`` of a run: ``runs/<part>-…-<YYYYmmdd-HHMMSS>`` (a sweep's is fixed instead, so
    that rerunning it resumes)."""
    return Path("runs") / "-".join([*parts, datetime.now().strftime("%Y%m%d-%H%M%S")])
