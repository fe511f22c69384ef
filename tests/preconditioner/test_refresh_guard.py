"""The refresh guard (fimbench/preconditioner/guard.py): a failed factorisation or a non-finite approximation
never reaches an update, for every preconditioned method. The layer keeps its previous inverse (or estimate),
an event names the layer, method, step and reason, and a part with nothing to keep ends the run as diverged
(exit status 3) with one ``error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import mlp, one_line_error, runner, tiny_config

from fimbench.cli import app
from fimbench.curvature import KroneckerSum
from fimbench.errors import CurvatureFailedError, DivergedError
from fimbench.fisher.capture import weight_gradient
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

METHODS = [
    ("kfac", {}),
    ("kpsvd", {}),
    ("deflation", {}),
    ("lanczos", {}),
    ("kfac-corrected", {}),
    ("exact-ng", {}),
    ("exact-ng-block", {}),
    ("kfac", {"coarse": "nicolaides"}),
    ("deflation", {"damping_form": "exact"}),
]
FACTORISATIONS = ("cholesky", "cholesky_ex", "eigh")


def fail_factorisations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Cholesky and symmetric eigendecomposition from now on raises LAPACK's error."""

    def failing(*args: object, **kwargs: object) -> None:
        raise torch.linalg.LinAlgError("injected: the algorithm failed to converge")

    for name in FACTORISATIONS:
        monkeypatch.setattr(torch.linalg, name, failing)


def preconditioned(method: str, extra: dict[str, object], steps: int = 1) -> tuple[KroneckerPreconditioner, torch.Tensor]:
    """A preconditioner on the helpers' MLP after ``steps`` steps (one update and refresh at the first), and a batch."""
    model = mlp(0).double()
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    preconditioner = KroneckerPreconditioner(model, "bernoulli", method, stats_every=1000, inverse_every=1000, kl_clip=None, damping=0.1, **extra)
    for _ in range(steps):
        model.zero_grad()
        Likelihood.BERNOULLI.nll(model(x), x).mean().backward()
        preconditioner.step(x)
    return preconditioner, x


def gradients_of(preconditioner: KroneckerPreconditioner) -> list[torch.Tensor]:
    return [torch.randn_like(weight_gradient(layer), generator=torch.Generator().manual_seed(1)) for layer in preconditioner.layers]


@pytest.mark.parametrize(("method", "extra"), METHODS, ids=lambda value: value if isinstance(value, str) else ",".join(value))
def test_a_failed_refresh_keeps_the_previous_inverse(method: str, extra: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    preconditioner, _ = preconditioned(method, extra)
    gradients = gradients_of(preconditioner)
    before = preconditioner.damped_fisher.apply(gradients)
    fail_factorisations(monkeypatch)
    preconditioner.damping = 0.05  # λ moved: the two-level coarse matrix is re-factorised too
    preconditioner.refresh_inverses()
    after = preconditioner.damped_fisher.apply(gradients)
    for old, new in zip(before, after):
        assert torch.equal(old, new)
    events = preconditioner.guard_events
    assert events and all(event.phase == "refresh" and event.method == method and event.step == 2 for event in events)
    assert all("injected" in event.reason for event in events)
    parts = {event.layer for event in events}
    expected = {"network"} if method.startswith("exact-ng") else set(preconditioner.layer_names)
    if extra.get("coarse"):
        expected.add("coarse")
    assert parts == expected
    summary = preconditioner.pop_diagnostics()
    assert summary["guard_activations"] == len(events)
    assert summary["guard_events"][0] == events[0].as_dict()


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"])
def test_a_non_finite_approximation_keeps_the_previous_estimate(method: str) -> None:
    preconditioner, x = preconditioned(method, {})
    kept = list(preconditioner.approximations)

    def poisoned(a: torch.Tensor, g: torch.Tensor, *_: object) -> KroneckerSum:
        nan = torch.full((a.shape[-1], a.shape[-1]), float("nan"), dtype=a.dtype)
        return KroneckerSum([(nan, torch.eye(g.shape[-1], dtype=g.dtype))], method=method)

    preconditioner.kronecker_blocks[1].approximator = poisoned
    preconditioner.update_statistics(x)
    assert preconditioner.approximations[0] is not kept[0]  # the healthy layer moved on
    assert preconditioner.approximations[1] is kept[1]
    [event] = preconditioner.guard_events
    assert (event.layer, event.phase, event.reason) == (preconditioner.layer_names[1], "update", "non-finite result")
    preconditioner.refresh_inverses()
    assert all(bool(torch.isfinite(direction).all()) for direction in preconditioner.damped_fisher.apply(gradients_of(preconditioner)))


def test_a_failed_ekfac_basis_keeps_the_previous_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    preconditioner, x = preconditioned("ekfac", {})
    kept = [block.approximation for block in preconditioner.blocks]
    fail_factorisations(monkeypatch)
    preconditioner.update_statistics(x)
    assert [block.approximation for block in preconditioner.blocks] == kept
    assert {event.phase for event in preconditioner.guard_events} == {"update"}
    assert len(preconditioner.guard_events) == len(kept)


@pytest.mark.parametrize(("method", "extra"), METHODS[:1] + METHODS[5:6] + METHODS[7:8])
def test_a_first_refresh_that_fails_ends_the_run_as_diverged(method: str, extra: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    fail_factorisations(monkeypatch)
    with pytest.raises(CurvatureFailedError, match=rf"the {method} refresh of layer (0|network) failed at step 1 .* no earlier inverse") as failure:
        preconditioned(method, extra)
    assert isinstance(failure.value, DivergedError) and failure.value.exit_code == 3


def test_cli_first_refresh_failure_is_one_error_line_and_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_factorisations(monkeypatch)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path)), "--method", "deflation", "--out", str(out)])
    line = one_line_error(result, status=3)
    assert "deflation refresh of layer net.0 failed at step 1" in line
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_cli_records_guard_events_in_metrics_summary_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every factorisation after the first refresh fails: the run completes on the first inverses, and each
    epoch's row, the summary and the curvature table say which layers kept them."""
    original = torch.linalg.cholesky_ex
    calls = {"count": 0}

    def fails_after_first_refresh(matrix: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls["count"] += 1
        if calls["count"] > 8:  # 4 layers × (A, G)
            raise torch.linalg.LinAlgError("injected")
        return original(matrix, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fails_after_first_refresh)
    out = tmp_path / "run"
    config = tiny_config(tmp_path, stats_every=3, inverse_every=3)
    result = runner.invoke(app, ["train", "--config", str(config), "--method", "kfac", "--out", str(out)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    assert all(row["guard_activations"] > 0 for row in epochs)
    assert {event["layer"] for event in epochs[0]["guard_events"]} == {"net.0", "net.2", "net.4", "net.6"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guard_activations"] == sum(row["guard_activations"] for row in epochs)
    assert len(summary["guard_events"]) == summary["guard_activations"]
    assert "guard" in result.stdout and "net.0 refresh" in result.stdout
