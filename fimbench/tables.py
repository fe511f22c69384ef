"""Rich tables for the engines' results (the engines never print)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rich.table import Table

from fimbench.plots import METHOD_LABELS

if TYPE_CHECKING:
    from fimbench.comparison import DatasetComparison
    from fimbench.sweep import PointState


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def training_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per epoch: the objective, the paper's per-pixel loss, reconstruction error and time."""
    table = Table(title=title, header_style="bold")
    for header in ("epoch", "train loss", "val loss", "val loss/px", "val recon.", "wall s", "ms/step"):
        table.add_column(header, justify="right")
    for row in rows:
        per_step = row.get("time_per_step")
        table.add_row(
            str(row["epoch"]),
            _fmt(row.get("train_loss")),
            _fmt(row.get("val_loss")),
            _fmt(row.get("val_loss_per_pixel")),
            _fmt(row.get("val_reconstruction_error")),
            _fmt(row.get("wall_time"), ".2f"),
            _fmt(per_step * 1000.0 if per_step is not None else None, ".2f"),
        )
    return table


def curvature_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Kronecker methods: solver iterations and residuals (over layers and updates), KL-clip factor ν,
    damping λ, alignment ``cos(F̃⁻¹∇, ∇)`` and safeguard τ at the latest refresh, and seconds spent in
    statistics (extra pass), refresh (power SVD / Lanczos + inversion) and preconditioning during each epoch."""
    table = Table(title=title, header_style="bold")
    headers = ("epoch", "iters mean/max", "resid. max", "KL clip ν", "λ", "alignment", "τ", "stats s", "refresh s", "precond s")
    for header in headers:
        table.add_column(header, justify="right")
    for row in rows:
        mean, peak = row.get("iterations_mean"), row.get("iterations_max")
        table.add_row(
            str(row["epoch"]),
            "–" if mean is None else f"{mean:.1f}/{peak}",
            _fmt(row.get("residual_max"), ".1e"),
            _fmt(row.get("kl_clip_factor"), ".3f"),
            _fmt(row.get("damping"), ".3g"),
            _fmt(row.get("alignment"), ".3f"),
            _fmt(row.get("correction_scale"), ".3g"),
            _fmt(row.get("seconds_statistics"), ".2f"),
            _fmt(row.get("seconds_refresh"), ".2f"),
            _fmt(row.get("seconds_precondition"), ".2f"),
        )
    return table


def comparison_table(comparison: DatasetComparison) -> Table:
    """One row per compared run (paper §4.2): final (best) train and validation loss per pixel,
    reconstruction error, times, epochs / seconds to the target loss, speed-ups vs KFAC and Adam, and the
    alignment and safeguard τ at the last refresh (Kronecker methods). The device
    is in the caption, or a column when the runs come from different devices."""
    target = "–" if comparison.target is None else f"{comparison.target:.4g}"
    devices = sorted({result.device for result in comparison.results})
    table = Table(
        title=f"{comparison.dataset}: target train loss/pixel {target} ({comparison.target_source})",
        caption=f"device: {devices[0]}" if len(devices) == 1 else None,
        header_style="bold",
    )
    headers = ["method", "run", "epochs", "train/px (best)", "val/px (best)", "val recon.", "time (s)", "s/epoch",
               "to target (epochs / s)", "× KFAC", "× Adam", "alignment", "τ"] + (["device"] if len(devices) > 1 else [])
    for header in headers:
        left = header in ("method", "run", "device")
        table.add_column(
            header,
            justify="left" if left else "right",
            overflow="fold" if left else "ellipsis",
            min_width=max(map(len, METHOD_LABELS.values())) if header == "method" else None,
        )
    for result in comparison.results:
        method = METHOD_LABELS.get(result.method, result.method)
        reached = "–" if result.epochs_to_target is None else f"{result.epochs_to_target} / {result.seconds_to_target:.1f}"
        cells = [
            method if result.status == "completed" else f"{method} ({result.status})",
            result.run,
            str(result.epochs),
            f"{_fmt(result.final_train_loss)} ({_fmt(result.best_train_loss)})",
            f"{_fmt(result.final_val_loss)} ({_fmt(result.best_val_loss)})",
            _fmt(result.final_val_reconstruction_error),
            _fmt(result.wall_time, ".1f"),
            _fmt(result.time_per_epoch, ".2f"),
            reached,
            _fmt(result.speedup_vs_kfac, ".2f"),
            _fmt(result.speedup_vs_adam, ".2f"),
            _fmt(result.alignment, ".3f"),
            _fmt(result.correction_scale, ".3g"),
        ]
        table.add_row(*cells, *([result.device] if len(devices) > 1 else []))
    return table


_STATUS_STYLE = {"running": "cyan", "completed": "green", "diverged": "yellow", "interrupted": "yellow", "failed": "red"}
_STATUS_ORDER = ("running", "failed", "diverged", "interrupted", "completed", "pending")


def sweep_table(states: Sequence[PointState], limit: int | None = None) -> Table:
    """The points of a sweep: status, latest epoch, losses, alignment and safeguard τ at the latest refresh,
    ★ on each method's best completed point.

    With more points than ``limit``, running and unsuccessful points are shown first; the caption counts
    every status and names each method's best point so far.
    """
    best: dict[str, PointState] = {}
    for state in states:
        if state.status == "completed" and state.train_loss is not None:
            current = best.get(state.point.method)
            if current is None or state.train_loss < current.train_loss:  # type: ignore[operator]
                best[state.point.method] = state
    shown = list(states)
    if limit is not None and len(shown) > limit:
        order = {id(state): index for index, state in enumerate(states)}
        shown = sorted(shown, key=lambda state: _STATUS_ORDER.index(state.status))[:limit]
        shown.sort(key=lambda state: order[id(state)])
    counts = " · ".join(f"{status} {n}" for status in _STATUS_ORDER if (n := sum(s.status == status for s in states)))
    leaders = "; ".join(f"{method} {_fmt(state.train_loss)} ({state.point.name})" for method, state in best.items())
    caption = counts + (f"\nbest so far: {leaders}" if leaders else "")
    if len(shown) < len(states):
        caption += f"\nshowing {len(shown)} of {len(states)} points"
    table = Table(title="sweep", caption=caption, caption_justify="left", header_style="bold")
    for header in ("point", "status", "epoch", "train loss", "val loss", "alignment", "τ", "best"):
        left = header in ("point", "status")
        table.add_column(header, justify="left" if left else "right", overflow="fold" if left else "ellipsis")
    for state in shown:
        style = _STATUS_STYLE.get(state.status, "")
        status = f"[{style}]{state.status}[/{style}]" if style else state.status
        if state.resumed:
            status += " (earlier)"
        if state.message and state.status in ("failed", "diverged"):
            status += f": {state.message}"
        table.add_row(
            state.point.name,
            status,
            _fmt(state.epoch),
            _fmt(state.train_loss),
            _fmt(state.val_loss),
            _fmt(state.alignment, ".3f"),
            _fmt(state.correction_scale, ".3g"),
            "★" if best.get(state.point.method) is state else "",
        )
    return table
