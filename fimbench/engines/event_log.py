"""TensorBoard event files beside ``metrics.jsonl``, for watching runs as they go (``training.tensorboard``).

Every row written to ``metrics.jsonl`` is also written as scalars: each numeric field of an epoch row
under its own name (``train_loss``, ``val_loss_per_pixel``, ``alignment``, ...), each of a step row
(``fimbench train --log-every``) as ``step/<name>``, all at the row's optimizer step. The event files
(``events.out.tfevents.*``) go into the run directory itself, so ``tensorboard --logdir runs/`` shows
every run, and a sweep's points side by side. TensorBoard is an optional dependency (the
``tensorboard`` extra); :func:`require_tensorboard` says how to get it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fimbench.errors import FimbenchError

EXTRA_HINT = "pip install 'fimbench[tensorboard]'"


def require_tensorboard() -> None:
    """Raise a one-line :class:`FimbenchError` naming the extra when TensorBoard is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise FimbenchError(f"--tensorboard (training.tensorboard) needs the optional TensorBoard package: {EXTRA_HINT}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class EventLog:
    """Writes the rows of ``metrics.jsonl`` as TensorBoard scalars into ``run_dir`` (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))

    def write(self, row: dict[str, Any]) -> None:
        """The row's numeric fields at its ``step``, flushed so that a watching TensorBoard sees them."""
        prefix = "step/" if row.get("kind") == "step" else ""
        for key, value in row.items():
            if key != "step" and _is_scalar(value):
                self.writer.add_scalar(prefix + key, value, global_step=row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
