"""Rich tables for the engines' results (the engines never print)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

from fimbench.engines.plots import METHOD_LABELS

if TYPE_CHECKING:
    from fimbench.engines.comparison import DatasetComparison
    from fimbench.engines.cost import AxisFit, DatasetCost, MethodCost, ModelProfile, SweepCost, Timing
    from fimbench.engines.significance import Spread
    from fimbench.engines.sweep import PointState


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
    statistics (extra pass), refresh (power SVD / Lanczos + inversion) and preconditioning during each epoch.
    Under the qmodel step rule, the epoch's mean step size α, momentum μ and predicted decrease ``−M(δ)``
    instead of ν, and the seconds of the step rule (the Jacobian products and the 2 × 2 model). When the refresh
    guard dropped an update or a refresh in some epoch, a ``guard`` column counts them and names the layers."""
    quadratic = any(row.get("step_size") is not None for row in rows)
    guarded = any(row.get("guard_activations") for row in rows)
    table = Table(title=title, header_style="bold")
    step_headers = ("α", "μ", "−M(δ)") if quadratic else ("KL clip ν",)
    headers = ("epoch", "iters mean/max", "resid. max", *step_headers, "λ", "alignment", "τ", "stats s", "refresh s", "precond s",
               *(("step rule s",) if quadratic else ()), *(("guard",) if guarded else ()))
    for header in headers:
        table.add_column(header, justify="right")
    for row in rows:
        mean, peak = row.get("iterations_mean"), row.get("iterations_max")
        if quadratic:
            step_cells = [_fmt(row.get(key), ".3g") for key in ("step_size", "momentum", "predicted_decrease")]
        else:
            step_cells = [_fmt(row.get("kl_clip_factor"), ".3f")]
        table.add_row(
            str(row["epoch"]),
            "–" if mean is None else f"{mean:.1f}/{peak}",
            _fmt(row.get("residual_max"), ".1e"),
            *step_cells,
            _fmt(row.get("damping"), ".3g"),
            _fmt(row.get("alignment"), ".3f"),
            _fmt(row.get("correction_scale"), ".3g"),
            _fmt(row.get("seconds_statistics"), ".2f"),
            _fmt(row.get("seconds_refresh"), ".2f"),
            _fmt(row.get("seconds_precondition"), ".2f"),
            *((_fmt(row.get("seconds_step_rule"), ".2f"),) if quadratic else ()),
            *((_guard_cell(row),) if guarded else ()),
        )
    return table


def _guard_cell(row: dict[str, Any]) -> str:
    """``"2: decoder.3 refresh, …"``: the epoch's guard activations and where they were, or ``–``."""
    events = row.get("guard_events") or []
    if not events:
        return "–"
    places = sorted({f"{event['layer']} {event['phase']}" for event in events})
    return f"{len(events)}: {', '.join(places)}"


def _mean_sd(stat: Spread | None, spec: str = ".4g") -> str:
    """``mean ± sd`` over seeds (the value alone for one seed)."""
    if stat is None:
        return "–"
    if len(stat.values) == 1:
        return format(stat.mean, spec)
    return f"{stat.mean:{spec}} ± {stat.sd:.2g}"


def _range(stat: Spread | None, spec: str = ".4g") -> str:
    """``min–max`` over seeds ("" for one seed)."""
    if stat is None or len(stat.values) == 1:
        return ""
    return f"{stat.low:{spec}}–{stat.high:{spec}}"


def comparison_table(comparison: DatasetComparison) -> Table:
    """One row per group of seeds (paper §4.2): mean ± standard deviation and min–max over the seeds that
    completed ("2 of 3" when one did not; every seed when none did) of the
    final and best train loss per pixel, the final validation loss, time per epoch, epochs and seconds to the
    target loss (how many seeds reached it), speed-ups of the mean seconds-to-target vs KFAC and Adam, and the
    alignment cos(F̃⁻¹∇, ∇) and safeguard τ at the last refresh (Kronecker methods). The
    device is in the caption, or a column when the runs come from different devices."""
    target = "–" if comparison.target is None else f"{comparison.target:.4g}"
    devices = sorted({result.device for result in comparison.results})
    table = Table(
        title=f"{comparison.dataset}: target train loss/pixel {target} ({comparison.target_source})",
        caption=("mean ± sd (min–max) over seeds" + (f"; device: {devices[0]}" if len(devices) == 1 else "")),
        header_style="bold",
    )
    headers = ["method", "run", "seeds", "final train/px", "min–max", "best train/px", "final val/px", "s/epoch",
               "to target: epochs", "to target: s", "× KFAC", "× Adam", "alignment", "τ"] + (["device"] if len(devices) > 1 else [])
    for header in headers:
        left = header in ("method", "run", "device")
        table.add_column(
            header,
            justify="left" if left else "right",
            overflow="fold" if left else "ellipsis",
            min_width=max(map(len, METHOD_LABELS.values())) if header == "method" else None,
        )
    for group in comparison.groups:
        method = METHOD_LABELS.get(group.method, group.method)
        statuses = sorted({run.status for run in group.runs} - {"completed"})
        stats = group.stats
        reached = stats["epochs_to_target"]
        count = f" ({len(reached.values) if reached else 0}/{len(group.counted)})" if len(group.counted) > 1 else ""
        cells = [
            method + (f" ({', '.join(statuses)})" if statuses else ""),
            group.name,
            str(len(group.runs)) if len(group.counted) == len(group.runs) else f"{len(group.counted)} of {len(group.runs)}",
            _mean_sd(stats["final_train_loss"]),
            _range(stats["final_train_loss"]),
            _mean_sd(stats["best_train_loss"]),
            _mean_sd(stats["final_val_loss"]),
            _mean_sd(stats["time_per_epoch"], ".3g"),
            _mean_sd(reached, ".3g") + count,
            _mean_sd(stats["seconds_to_target"], ".3g"),
            _fmt(group.speedup_vs_kfac, ".2f"),
            _fmt(group.speedup_vs_adam, ".2f"),
            _mean_sd(stats["alignment"], ".3f"),
            _mean_sd(stats["correction_scale"], ".3g"),
        ]
        table.add_row(*cells, *([", ".join(sorted({run.device for run in group.runs}))] if len(devices) > 1 else []))
    return table


def differences_table(comparison: DatasetComparison) -> Table:
    """Each group against K-FAC and against Adam: the difference of the mean final train loss per pixel
    (method − baseline; negative = lower loss), its 95 % Welch t interval and the verdict at 5 %."""
    from fimbench.engines.significance import CONFIDENCE, TEST_NAME

    table = Table(
        title=f"{comparison.dataset}: final train loss/pixel, method − baseline ({CONFIDENCE:.0%} interval, {TEST_NAME})",
        caption="negative: lower loss than the baseline; significant at 5 % when the interval excludes 0",
        header_style="bold",
    )
    for header in ("method", "baseline", "seeds", "difference", f"{CONFIDENCE:.0%} interval", "verdict"):
        table.add_column(header, justify="left" if header in ("method", "baseline", "verdict") else "right")
    for item in comparison.differences:
        if item.significant is None:
            verdict = "untested: a single seed"
        else:
            verdict = ("lower" if item.difference < 0 else "higher") if item.significant else "no significant difference"
        interval = "–" if item.interval is None else f"[{item.interval[0]:+.3g}, {item.interval[1]:+.3g}]"
        table.add_row(
            f"{METHOD_LABELS.get(item.method, item.method)} ({item.group})",
            f"{METHOD_LABELS.get(item.baseline, item.baseline)} ({item.baseline_group})",
            f"{item.seeds} vs {item.baseline_seeds}",
            f"{item.difference:+.3g}",
            interval,
            verdict,
        )
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


# ----------------------------------------------------------------------------------------------- cost profile

PHASE_HEADERS: dict[str, str] = {
    "build_cold": "F̂ build, cold",
    "build_warm": "F̂ build, warm",
    "inverse": "F̂⁻¹ inverse",
    "apply": "F̂⁻¹∇h apply",
}
LEGEND = (
    "median seconds; ×KFAC: ratio to KFAC's same phase; ×SGD: ratio to one SGD step (forward, backward, "
    "momentum step) of the same model and batch. Build and inverse run every T1 / T2 steps, apply every step."
)


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _spread(timing: Timing) -> str:
    return f"{format_seconds(timing.median)} ({format_seconds(timing.low)}–{format_seconds(timing.high)})"


def _ratio_cell(seconds: float, kfac: float | None, sgd: float) -> str:
    """Seconds, then the ratios to KFAC (when profiled) and to the SGD step, one per line."""
    versus_kfac = [f"×{seconds / kfac:.3g} KFAC"] if kfac else []
    return "\n".join([format_seconds(seconds), *versus_kfac, f"×{seconds / sgd:.2g} SGD"])


def _iterations(cost: MethodCost) -> str:
    """Mean k over layers, cold → warm (power-SVD iterations, or Lanczos products, in pairs)."""
    if cost.layers[0].iterations_cold is None:
        return "–"
    cold = sum(layer.iterations_cold or 0 for layer in cost.layers) / len(cost.layers)
    warm = sum(layer.iterations_warm or 0 for layer in cost.layers) / len(cost.layers)
    return f"{cold:.3g} → {warm:.3g}"


def _method_rows(profile: ModelProfile, phases: dict[str, str]) -> list[list[str]]:
    """One row per method: k, each phase summed over layers and the precondition step, with ratios."""
    from fimbench.methods import REFERENCE_METHOD

    kfac = profile.method(REFERENCE_METHOD.value)
    sgd = profile.yardsticks["sgd_step"].median
    rows: list[list[str]] = []
    for cost in profile.methods:
        cells = [_ratio_cell(cost.total(phase), kfac.total(phase) if kfac else None, sgd) for phase in phases]
        step = _ratio_cell(cost.precondition.median, kfac.precondition.median if kfac else None, sgd)
        rows.append([METHOD_LABELS[cost.method], _iterations(cost), *cells, step])
    return rows


def _yardstick_line(profile: ModelProfile) -> str:
    y = profile.yardsticks
    return (
        f"yardsticks: forward+backward {_spread(y['forward_backward'])}, SGD step {_spread(y['sgd_step'])}, "
        f"capture (ā, g) on the Fisher batch {_spread(y['capture'])}"
    )


def dataset_tables(result: DatasetCost) -> list[Table]:
    """Table 1's layout for the whole model (Σ over layers) and a per-layer table with spreads."""
    profile, env = result.profile, result.environment
    layers = len(result.layers) - 1
    summary = Table(
        title=f"Table 1, measured — {result.dataset} autoencoder ({layers} layers), batch {profile.batch_size}, "
        f"Fisher batch {profile.fisher_batch_size} — {env['device']}, {env['repeats']} repeats",
        caption=f"{_yardstick_line(profile)}\nΣ over layers of per-layer medians; {LEGEND}",
        header_style="bold",
    )
    for header in ["method", "k cold → warm", *PHASE_HEADERS.values(), "precondition step"]:
        summary.add_column(header, justify="right" if header != "method" else "left")
    for row in _method_rows(profile, PHASE_HEADERS):
        summary.add_row(*row)

    per_layer = Table(title="per layer: median (min–max)", header_style="bold")
    for header in ["layer", "method", "k cold → warm", *PHASE_HEADERS.values()]:
        per_layer.add_column(header, justify="right" if header not in ("layer", "method") else "left")
    for index in range(layers):
        for position, cost in enumerate(profile.methods):
            layer = cost.layers[index]
            name = f"{index + 1}: {layer.q}×{layer.p}" if position == 0 else ""
            k = "–" if layer.iterations_cold is None else f"{layer.iterations_cold} → {layer.iterations_warm}"
            per_layer.add_row(
                name, METHOD_LABELS[cost.method], k, *(_spread(layer.times[phase]) for phase in PHASE_HEADERS),
                end_section=position == len(profile.methods) - 1,
            )
    return [summary, per_layer]


def _axis_cells(axis: AxisFit | None) -> list[str]:
    """Fitted exponent of one variable, the range of its per-value slopes, the paper's and the model's."""
    if axis is None:
        return ["–"] * 4
    slopes = axis.per_other.values()
    spread = f"{min(slopes):.2f}…{max(slopes):.2f}" if len(slopes) > 1 else ""
    return [f"{axis.fitted:.2f}", spread, f"{axis.paper:g}", f"{axis.model:.2f}"]


def sweep_tables(result: SweepCost) -> list[Table]:
    """A compact per-(d, m) view in Table 1's layout, and the fitted exponents beside the predictions."""
    from fimbench.engines.cost import EXPONENT_TOLERANCE, PHASES, STEADY_PHASES


    steady_phases = {phase: PHASE_HEADERS[phase] for phase in STEADY_PHASES}  # cold builds: in cost.json
    env = result.environment
    sample = result.points[0].profile
    points = Table(
        title=f"Table 1, measured — one layer Linear(d, d), Fisher batch m (batch "
        f"{sample.batch_size / sample.fisher_batch_size:g}m) — {env['device']}, "
        f"{env['repeats']} repeats",
        caption=LEGEND,
        header_style="bold",
    )
    for header in ["d", "m", "method", "k cold → warm", *steady_phases.values(), "precondition step", "SGD step"]:
        points.add_column(header, justify="left" if header == "method" else "right")
    for point in result.points:
        rows = _method_rows(point.profile, steady_phases)
        sgd = format_seconds(point.profile.yardsticks["sgd_step"].median)
        for position, row in enumerate(rows):
            first = position == 0
            key = [str(point.width), str(point.fisher_batch)] if first else ["", ""]
            points.add_row(*key, *row, sgd if first else "", end_section=position == len(rows) - 1)

    exponents = Table(
        title=f"fitted exponents of cost (fastest repeat) vs d and vs m; ★ = the method's dominant phase, "
        f"✓ = within ±{EXPONENT_TOLERANCE} of fimbench's modelled exponent",
        caption="fitted: mean slope over the other variable (range: its per-value slopes); paper: Table 1; "
        "model: effective exponent of fimbench's multiply-add count on the same grid (orders below)",
        header_style="bold",
    )
    exponents.add_column("method")
    exponents.add_column("phase")
    for header in ["d: fitted", "range", "paper", "model", "m: fitted", "range", "paper", "model", "check"]:
        exponents.add_column(header, justify="right")
    for fit in result.exponents:
        check = "–" if fit.within_tolerance is None else ("✓" if fit.within_tolerance else "✗")
        exponents.add_row(
            METHOD_LABELS[fit.method] if fit.phase == PHASES[0] else "",
            ("★ " if fit.dominant else "") + fit.phase.replace("_", " "),
            *_axis_cells(fit.d),
            *_axis_cells(fit.m),
            check,
            end_section=fit.phase == PHASES[-1],
        )

    orders = Table(
        title="predicted orders per layer (d = width, m = Fisher batch, k = iterations)",
        caption="inverse ∝ d³ (model p³ + q³) and apply ∝ d³ (model r·pq(p+q)) for every method; fimbench's "
        "power SVD / Lanczos run in Gram coordinates (O(m²d + md²) build); p = d + 1, q = d, r₀ = prior rank, "
        "n = m + r₀",
        header_style="bold",
    )
    for header in ["method", "build: paper (Table 1)", "build: fimbench model"]:
        orders.add_column(header)
    for fit in result.exponents:
        if fit.phase == "build_warm":
            orders.add_row(METHOD_LABELS[fit.method], fit.paper_order, fit.model_order)
    return [points, exponents, orders]
