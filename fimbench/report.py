"""Rich tables for the engines' results (the engines never print)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def training_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per epoch: losses (objective and the paper's per-pixel loss), reconstruction error,
    time, and for Kronecker methods the solver iterations, KL-clip factor and per-phase seconds."""
    kronecker = any("seconds_refresh" in row for row in rows)
    table = Table(title=title, header_style="bold")
    columns = [
        ("epoch", "epoch"),
        ("train loss", "train_loss"),
        ("val loss", "val_loss"),
        ("val loss/pixel", "val_loss_per_pixel"),
        ("val recon. error", "val_reconstruction_error"),
        ("wall time (s)", "wall_time"),
        ("time/step (ms)", "time_per_step"),
    ]
    if kronecker:
        columns += [
            ("iters mean/max", "iterations"),
            ("KL clip ν", "kl_clip_factor"),
            ("stats (s)", "seconds_statistics"),
            ("refresh (s)", "seconds_refresh"),
            ("precond (s)", "seconds_precondition"),
        ]
    for header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        cells = []
        for _, key in columns:
            if key == "time_per_step":
                value = row.get(key)
                cells.append(_fmt(value * 1000.0 if value is not None else None, ".2f"))
            elif key == "iterations":
                mean, peak = row.get("iterations_mean"), row.get("iterations_max")
                cells.append("–" if mean is None else f"{mean:.1f}/{peak}")
            elif key in ("wall_time", "seconds_statistics", "seconds_refresh", "seconds_precondition"):
                cells.append(_fmt(row.get(key), ".2f"))
            else:
                cells.append(_fmt(row.get(key)))
        table.add_row(*cells)
    return table
