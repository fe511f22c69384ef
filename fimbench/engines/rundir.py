"""Run and sweep directories on disk: the one module that reads and writes their files.

A run directory (what :func:`fimbench.engines.train.run_training` writes) holds ``config.yaml`` (the fully
resolved config), ``metrics.jsonl`` (one JSON row per epoch, and per ``log_every`` steps if asked),
``checkpoint.pt`` (the state after the latest epoch, :mod:`fimbench.engines.checkpoint`), ``summary.json`` and, after
an internal error (a bug), ``crash.log`` (:func:`fimbench.errors.report_crash`); a sweep directory (what :mod:`fimbench.engines.sweep` writes) holds ``sweep.json`` naming each
method's grid points, each an ordinary run directory.

Reading is forgiving: an unparsable line of ``metrics.jsonl`` (a write cut short by a kill) becomes a
warning and the valid rows are kept; a run without ``summary.json`` (still running, or killed) has status
``incomplete``. Every write is atomic (``metrics.jsonl``: whole lines appended). A checkpoint is read with
``torch.load(weights_only=True)``: tensors and plain data only, so a run directory cannot run code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import yaml

from fimbench.errors import CRASH_LOG, FimbenchError
from fimbench.files import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fimbench-checkpoint-1"
RUN_FILES = (SUMMARY, CHECKPOINT, METRICS, CONFIG, CRASH_LOG)
"""What a run writes into its directory; ``fimbench train --overwrite`` removes them first (summary first)."""
SWEEP_MANIFEST = "sweep.json"
"""File naming a sweep directory's methods and points (schema: :mod:`fimbench.engines.sweep`)."""

_EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "wall_time")  # an epoch row lacking one is garbled


@dataclass
class RunRecord:
    """One run directory as read from disk."""

    path: Path
    dataset: str
    method: str
    status: str  # completed | interrupted | diverged | crashed | incomplete (no summary.json)
    device: str
    rows: list[dict[str, Any]]  # the valid epoch rows of metrics.jsonl
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as read ({} when absent)

    @property
    def seed(self) -> int | None:
        """``training.seed`` of the run's config, if recorded."""
        seed = (self.config.get("training") or {}).get("seed")
        return int(seed) if is_number(seed) else None

    @property
    def final_train_loss(self) -> float | None:
        """The last epoch's train loss (fimbench's objective), the quantity §4.2 tunes on."""
        return self.rows[-1]["train_loss"] if self.rows else None


def is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The epoch rows of a ``metrics.jsonl`` and warnings for the lines that are not valid rows."""
    if not path.is_file():
        return [], []
    return _parse_metrics(path.read_text(encoding="utf-8", errors="replace"), path)


def _parse_metrics(text: str, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`read_metrics` of the content ``text`` of ``path``."""
    lines = text.splitlines()
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = "its last line" if number == len(lines) else f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{path}: {where} is not valid JSON (a write cut short?); skipped it")
            continue
        if not isinstance(row, dict):
            warnings.append(f"{path}: {where} is not a JSON object; skipped it")
        elif row.get("kind", "epoch") == "epoch":
            if all(is_number(row.get(key)) for key in _EPOCH_KEYS):
                rows.append(row)
            else:
                warnings.append(f"{path}: {where} lacks one of {', '.join(_EPOCH_KEYS)}; skipped it")
    return rows, warnings


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` of a run directory, or ``{}`` when it is absent or unreadable."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """``config.yaml`` of a run directory as a mapping, or ``None`` when it is absent or unreadable."""
    try:
        config = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def write_config(folder: Path, text: str, header: str = "", name: str = CONFIG) -> Path:
    """Write a config file (``config.yaml`` of a run directory unless ``name`` says otherwise): the
    resolved config's YAML ``text`` after an optional comment ``header``."""
    path = folder / name
    atomic_write_text(path, header + text)
    return path


def start_metrics(run_dir: Path) -> Path:
    """An empty ``metrics.jsonl`` for a run that starts; returns its path for :func:`append_metrics`."""
    path = run_dir / METRICS
    path.write_text("", encoding="utf-8")
    return path


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    """One row of ``metrics.jsonl``, written whole (a reader never sees half a line but at a kill)."""
    append_jsonl(path, row)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json``, atomically."""
    atomic_write_json(run_dir / SUMMARY, summary)


def write_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """``checkpoint.pt`` (tensors and plain data), atomically: a kill during the write keeps the previous one."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(run_dir / CHECKPOINT, buffer.getvalue())


def read_checkpoint(run_dir: Path, map_location: torch.device) -> dict[str, Any]:
    """``checkpoint.pt`` of a run directory, its tensors on ``map_location``; loaded with
    ``weights_only=True``, so a file holding anything but tensors and plain data is refused, never run."""
    import torch

    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FimbenchError(
            f"{run_dir} has no {CHECKPOINT} (one is written after each epoch), so there is nothing to resume; "
            "start the run again with --overwrite"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # a damaged or foreign file makes torch.load raise pickle, zip, runtime errors, ...
        raise FimbenchError(f"{path} is corrupt, truncated, or holds more than tensors and plain data; not loaded") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FimbenchError(f"{path} is not a fimbench checkpoint ({CHECKPOINT_FORMAT})")
    return state


def reopen_run(run_dir: Path, metrics_bytes: int, epochs: int) -> list[dict[str, Any]]:
    """Make a run directory continue from its checkpoint, taken when ``metrics.jsonl`` was ``metrics_bytes``
    long and held ``epochs`` epoch rows: cut what was logged after it (rows, or half a row, of a killed run),
    remove ``summary.json`` (the run is incomplete again) and return the kept epoch rows."""
    kept, rows = _metrics_at_checkpoint(run_dir, metrics_bytes, epochs)
    atomic_write_bytes(run_dir / METRICS, kept)
    (run_dir / SUMMARY).unlink(missing_ok=True)
    return rows


def _metrics_at_checkpoint(run_dir: Path, metrics_bytes: int, epochs: int) -> tuple[bytes, list[dict[str, Any]]]:
    """The first ``metrics_bytes`` of ``metrics.jsonl`` and their rows, which must be ``epochs`` whole epoch rows."""
    path = run_dir / METRICS
    try:
        content = path.read_bytes()
    except OSError:
        content = b""
    kept = content[:metrics_bytes]
    rows, warnings = _parse_metrics(kept.decode("utf-8", errors="replace"), path)
    if len(content) < metrics_bytes or warnings or len(rows) != epochs or (rows and kept[-1:] != b"\n"):
        raise FimbenchError(f"{path} does not match {CHECKPOINT} (which follows {epochs} logged epoch(s)); not resumed")
    return kept, rows


def continuable_epochs(run_dir: Path, device_type: str) -> int | None:
    """The epochs completed at ``run_dir``'s checkpoint when a run on a ``device_type`` device can continue from
    it: ``checkpoint.pt`` loads, was written on that device type, and ``metrics.jsonl`` holds the rows it follows
    (:func:`reopen_run` would accept it). ``None`` otherwise: no checkpoint, or one the run must not continue from."""
    import torch

    try:
        state = read_checkpoint(run_dir, torch.device("cpu"))
        counters = state["counters"]
        epochs = int(counters["epoch"])
        _metrics_at_checkpoint(run_dir, int(counters["metrics_bytes"]), epochs)
    except (FimbenchError, KeyError, TypeError, ValueError):
        return None
    return epochs if state.get("device_type") == device_type else None


def clear_results(run_dir: Path) -> None:
    """Remove ``summary.json``, ``checkpoint.pt``, ``metrics.jsonl`` and ``crash.log`` (a run about to start again from
    scratch)."""
    for name in (SUMMARY, CHECKPOINT, METRICS, CRASH_LOG):
        (run_dir / name).unlink(missing_ok=True)


def read_sweep_manifest(sweep_dir: Path) -> Any:
    """The parsed ``sweep.json`` of a sweep directory; raises ``OSError`` or ``ValueError`` as reading does."""
    return json.loads((sweep_dir / SWEEP_MANIFEST).read_text(encoding="utf-8"))


def write_sweep_manifest(sweep_dir: Path, manifest: dict[str, Any]) -> None:
    """``sweep.json``, atomically."""
    atomic_write_json(sweep_dir / SWEEP_MANIFEST, manifest)


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in ("summary.json", "metrics.jsonl"))


def read_run(run_dir: Path) -> RunRecord:
    """Read a run directory; a missing ``summary.json`` or garbled metrics lines become warnings."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise FimbenchError(f"{run_dir} is not a run directory (no metrics.jsonl or summary.json)")
    rows, warnings = read_metrics(run_dir / METRICS)
    summary = read_summary(run_dir)
    config = read_config(run_dir) or {}
    if not summary:
        warnings.append(f"{run_dir}: no summary.json (still running, or killed); showing its {len(rows)} logged epoch(s)")
    dataset = summary.get("dataset") or (config.get("data") or {}).get("dataset") or "unknown"
    method = summary.get("variant") or summary.get("method") or (config.get("optimizer") or {}).get("method") or "unknown"
    return RunRecord(
        path=run_dir,
        dataset=str(dataset),
        method=str(method),
        status=str(summary.get("status", "incomplete")),
        device=str(summary.get("device", "unknown")),
        rows=rows,
        summary=summary,
        warnings=warnings,
        config=config,
    )


SEED_INDEPENDENT: frozenset[tuple[str, str]] = frozenset(
    {("training", "seed"), ("data", "data_dir"), ("training", "device"), ("training", "tensorboard")}
)
"""Config keys in which the runs of one group may differ: the seed, and where or how a run is watched."""


def group_key(record: RunRecord) -> str:
    """What a run computes apart from its seed: its resolved config without :data:`SEED_INDEPENDENT`
    keys, as canonical JSON. Runs with equal keys differ only in the seed: they form one group."""
    kept = {
        section: {key: value for key, value in values.items() if (section, key) not in SEED_INDEPENDENT}
        if isinstance(values, dict) else values
        for section, values in record.config.items()
    }
    return json.dumps({"method": record.method, "dataset": record.dataset, "config": kept}, sort_keys=True, default=str)


def group_runs(records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """``records`` split into groups (:func:`group_key`), in order of first appearance, each sorted by seed."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return [sorted(group, key=lambda record: (record.seed is None, record.seed or 0)) for group in groups.values()]


def best_group(records: Sequence[RunRecord]) -> list[RunRecord] | None:
    """The group (:func:`group_runs`) whose runs all completed with the lowest mean final train loss
    (§4.2 selects by training loss; with one seed per setting, the best run), if any."""
    eligible = [
        group for group in group_runs(records)
        if all(record.status == "completed" and record.rows for record in group)
    ]
    return min(
        eligible,
        key=lambda group: sum(record.final_train_loss or 0.0 for record in group) / len(group),
        default=None,
    )


def sweep_points(sweep_dir: Path) -> dict[str, list[Path]]:
    """``{method: [run_dir, ...]}`` of the points listed in a sweep directory's manifest."""
    manifest_path = sweep_dir / SWEEP_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return {
            method: [sweep_dir / name for name in entry["points"]]
            for method, entry in manifest["methods"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise FimbenchError(f"{manifest_path} is unreadable or not a fimbench sweep manifest") from None
