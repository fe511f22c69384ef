"""The sweep itself: run a plan's unfinished points on a runner, keep ``sweep.json`` current, and write
``<out>/best/<method>.yaml``, the best point's configuration (lowest final train loss, as §4.2 selects)
ready for ``fimbench train --config``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fimbench.engines.event_log import require_tensorboard
from fimbench.engines.rundir import CONFIG, best_group, read_run, read_summary, write_config, write_sweep_manifest
from fimbench.engines.sweep.plan import SweepPlan, SweepPoint, format_value
from fimbench.engines.sweep.runners import Runner
from fimbench.engines.sweep.state import (
    ACTIVE,
    FINISHED,
    PointState,
    existing_manifest,
    fill_state,
    inspect_points,
    manifest_document,
    observe,
    prepare_data,
    prepare_run_dir,
    settle,
)


class SweepProgress(Protocol):
    def update(self, states: Sequence[PointState]) -> None: ...


@dataclass
class SweepResult:
    plan: SweepPlan
    states: list[PointState]
    best: dict[str, Path]  # method -> best/<method>.yaml
    best_points: dict[str, SweepPoint]  # method -> its best point (with seeds: the first seed's)

    @property
    def failed(self) -> list[PointState]:
        return [state for state in self.states if state.status == "failed"]


def _best_header(plan: SweepPlan, group: Sequence[PointState], method_states: Sequence[PointState], train_loss: float, path: Path) -> str:
    state = group[0]
    settings = len({other.point.setting for other in method_states})
    completed = len({other.point.setting for other in method_states if other.status == "completed"})
    seeds = f", mean over seeds {', '.join(str(s.point.seed) for s in group)}" if state.point.seed is not None else ""
    lines = [
        f"Best {state.point.method} point of the sweep in {plan.out} on {plan.dataset}: {state.point.setting}",
        f"lowest final train loss ({train_loss:.6g}{seeds}) among {completed} completed of {settings} settings "
        "(paper §4.2 selects by training loss).",
        "Grid values (fimbench's scale): " + ", ".join(f"{k} {format_value(v)}" for k, v in state.point.values.items()),
    ]
    if state.point.authors_values:
        authors = ", ".join(f"{k} {format_value(v)}" for k, v in state.point.authors_values.items())
        lines.append(f"In the authors' scale: {authors} (converted by fimbench.engines.authors_scale.from_authors_scale).")
    lines.append(f"Reproduce: fimbench train --config {path}")
    return "".join(f"# {line}\n" for line in lines)


def _write_best(plan: SweepPlan, states: Sequence[PointState]) -> dict[str, PointState]:
    """``best/<method>.yaml``: the config of the setting whose seeds all completed with the lowest mean
    final train loss (:func:`fimbench.engines.rundir.best_group`); returns each method's best point (first seed)."""
    written: dict[str, PointState] = {}
    for method in plan.grids:
        method_states = [state for state in states if state.point.method == method]
        path = plan.out / "best" / f"{method}.yaml"
        by_dir = {state.run_dir: state for state in method_states}
        finished = [read_run(state.run_dir) for state in method_states if state.status in FINISHED]
        best = best_group([record for record in finished if record.rows])
        if best is None:
            path.unlink(missing_ok=True)  # a best file from an earlier grid of this method is stale
            continue
        group = [by_dir[record.path] for record in best]
        mean = sum(record.final_train_loss or 0.0 for record in best) / len(best)
        header = _best_header(plan, group, method_states, mean, path)
        write_config(path.parent, (best[0].path / CONFIG).read_text(encoding="utf-8"), header, name=path.name)
        written[method] = group[0]
    return written


def write_manifest(plan: SweepPlan, states: Sequence[PointState]) -> None:
    """Rewrite ``<out>/sweep.json`` with the plan's methods (their grids, points and tuning records) and ``states``.

    Args:
        plan: The plan (other methods of the manifest on disk stay).
        states: Its points' states.
    """
    write_sweep_manifest(plan.out, manifest_document(plan, existing_manifest(plan), states))


def run_sweep(
    plan: SweepPlan,
    runner: Runner,
    progress: SweepProgress | None = None,
    poll_seconds: float = 1.0,
    earlier: Sequence[PointState] = (),
) -> SweepResult:
    """Run the plan's unfinished points on ``runner`` and write the manifest and best configs.

    Ctrl-C stops the workers (they record ``interrupted``), saves the manifest and re-raises; running the
    same plan again resumes (:mod:`~fimbench.engines.sweep.state`). ``earlier``: the states of an earlier run of this
    invocation (a tuned sweep's previous round, :mod:`~fimbench.engines.sweep.tuning`): a point that ran there keeps
    that state, so it counts as this invocation's work, and one that failed or was interrupted there does not run
    again at once (the next invocation retries it).
    """
    ran = {state.point.name: state for state in earlier if not state.resumed and state.status not in ACTIVE}
    states = [ran.get(state.point.name, state) for state in inspect_points(plan)]
    previous = existing_manifest(plan)
    todo = [state for state in states if state.status == "pending"]
    if todo:
        if todo[0].point.config.training.tensorboard:
            require_tensorboard()  # once, here, rather than in every worker
        prepare_data(todo[0].point.config)
        for state in todo:
            prepare_run_dir(state)

    def save() -> None:
        write_sweep_manifest(plan.out, manifest_document(plan, previous, states))

    plan.out.mkdir(parents=True, exist_ok=True)
    save()
    try:
        runner.submit(todo)
        while True:
            ended = runner.poll()
            for state, error in ended:
                settle(state, error)
            for state in todo:
                if state.status in ACTIVE:
                    observe(state)
            if ended:
                save()
            if progress is not None:
                progress.update(states)
            if not any(state.status in ACTIVE for state in todo):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        runner.close()
        for state in todo:
            summary = read_summary(state.run_dir) if state.status in ACTIVE else {}
            if summary or state.status == "running":  # a point may finish between two polls
                state.status = summary.get("status", "interrupted")
                fill_state(state, summary.get("final") or {})
        save()
        raise
    best = _write_best(plan, states)
    paths = {method: plan.out / "best" / f"{method}.yaml" for method in best}
    return SweepResult(plan, states, paths, {method: state.point for method, state in best.items()})
