"""What a training run's ``summary.json`` says (written by :func:`fimbench.engines.rundir.write_summary`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import torch

from fimbench.engines.config import RunConfig
from fimbench.engines.device import environment
from fimbench.names import variant_name
from fimbench.preconditioner.distributed import world_size


def training_summary(
    config: RunConfig,
    device: torch.device,
    status: str,
    rows: list[dict[str, Any]],
    alignment_first_refresh: float | None,
    started: datetime,
    train_seconds: float,
    steps: int,
    diverged_at: int | None,
) -> dict[str, Any]:
    """``summary.json`` of a training run: its status, what it trained, its final epoch row, the best validation
    loss, the alignment after the first refresh, the refresh guard's activations and events (every epoch's), the training seconds per step and the environment."""
    last = rows[-1] if rows else {}
    best_val = min((row["val_loss"] for row in rows), default=None)
    return {
        "status": status,
        "dataset": config.data.dataset,
        "method": config.optimizer.method,
        "variant": variant_name(config.optimizer.method, config.optimizer.damping_form, config.optimizer.coarse),
        "seed": config.training.seed,
        "epochs": len(rows),
        "steps": steps,
        "diverged_at_step": diverged_at,
        "final": {key: value for key, value in last.items() if key != "kind"},
        "best_val_loss": best_val,
        "alignment_first_refresh": alignment_first_refresh,
        "guard_activations": sum(row.get("guard_activations", 0) for row in rows),
        "guard_events": [event for row in rows for event in row.get("guard_events", [])],
        "train_seconds": train_seconds,
        "time_per_step": train_seconds / steps if steps else None,
        "processes": world_size(),  # data-parallel ranks (fimbench.preconditioner.distributed)
        **environment(device),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "loss_convention": "train_loss/val_loss: per-example negative log-likelihood summed over pixels "
        "(mean over examples); *_loss_per_pixel: the paper's mean BCE / MSE",
    }
