"""Checkpoints: the preconditioner's state_dict round trip, and ``fimbench train --resume`` ending exactly
where an uninterrupted run ends (parameters and metrics.jsonl rows), for Kronecker methods with sampled
Fisher targets and adaptive damping (with the fixed and the qmodel step rule), and for SGD and Adam."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import mlp, one_line_error, runner, tiny_config, train_steps
from torch import nn

from fimbench.cli import app
from fimbench.engines.rundir import continuable_epochs
from fimbench.errors import FimbenchError
from fimbench.fisher.likelihood import Likelihood
from fimbench.optim import KroneckerPreconditioner

TIMING_KEYS = ("wall_time", "time_per_step")  # and every seconds_* key


def make_preconditioner(model: nn.Module, generator_seed: int) -> KroneckerPreconditioner:
    """Deflation (rank 2, sampled targets) with statistics every step and inverses every third (so the
    inverses lag the approximations at a save) and adaptive damping every fourth step."""
    return KroneckerPreconditioner(
        model, Likelihood.BERNOULLI, "deflation", damping=1e-2, stats_every=1, inverse_every=3, fisher_fraction=0.5,
        damping_schedule="adaptive", damping_every=4, generator=torch.Generator().manual_seed(generator_seed),
    )


def test_state_dict_round_trip_reproduces_the_next_steps() -> None:
    """Save after 8 steps (the inverses of step 6 lag the statistics of step 7 and serve step 8), load
    through torch.save/torch.load(weights_only=True) into a fresh preconditioner built with another
    generator seed: the next 4 steps match bit for bit, diagnostics included."""
    batches = [torch.rand(16, 12, generator=torch.Generator().manual_seed(i)).round() for i in range(12)]
    model = mlp(0)
    preconditioner = make_preconditioner(model, generator_seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, preconditioner, optimizer, batches[:8])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "preconditioner": preconditioner.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert saved["preconditioner"]["inverses"][0]["source"] is not None  # inverse from an older approximation
    assert saved["preconditioner"]["damping"] != 1e-2  # λ has adapted

    restored = mlp(5)
    fresh = make_preconditioner(restored, generator_seed=99)
    fresh_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(saved["model"])
    fresh_optimizer.load_state_dict(saved["optimizer"])
    fresh.load_state_dict(saved["preconditioner"])
    assert (fresh.steps, fresh.updates, fresh.damping) == (preconditioner.steps, preconditioner.updates, preconditioner.damping)
    assert not fresh.schedule.refresh_due

    train_steps(model, preconditioner, optimizer, batches[8:])
    train_steps(restored, fresh, fresh_optimizer, batches[8:])
    for ours, theirs in zip(model.parameters(), restored.parameters()):
        assert torch.equal(ours, theirs)
    assert preconditioner.pop_diagnostics() == fresh.pop_diagnostics()


def test_state_dict_keeps_a_pending_damping_trial() -> None:
    """Saved between a T3 step and its adapt_damping call, the fresh preconditioner judges that step the same."""
    model, x = mlp(0), torch.rand(16, 12, generator=torch.Generator().manual_seed(0)).round()
    preconditioner = make_preconditioner(model, generator_seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = Likelihood.BERNOULLI.nll(model(x), x).mean()
    loss.backward()
    preconditioner.step(x)
    optimizer.step()
    assert preconditioner.awaiting_loss
    after = Likelihood.BERNOULLI.nll(model(x), x).mean().detach()
    restored = mlp(5)
    restored.load_state_dict(model.state_dict())
    fresh = make_preconditioner(restored, generator_seed=2)
    fresh.load_state_dict(preconditioner.state_dict())
    assert fresh.awaiting_loss
    assert fresh.adapt_damping(loss.detach(), after) == preconditioner.adapt_damping(loss.detach(), after)
    assert fresh.damping == preconditioner.damping != 1e-2


def test_load_state_dict_refuses_another_layout() -> None:
    state = make_preconditioner(mlp(0), 1).state_dict()
    other = KroneckerPreconditioner(nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 12)), "bernoulli", "deflation")
    with pytest.raises(FimbenchError, match=r"layer '0' has shape \[5, 13\] here, \[6, 13\] in the state"):
        other.load_state_dict(state)
    with pytest.raises(FimbenchError, match="method"):
        KroneckerPreconditioner(mlp(0), "bernoulli", "kfac").load_state_dict(state)


def three_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))


def test_strict_load_refuses_other_layer_names_and_settings_naming_them() -> None:
    """Same-shaped layers of other names, a fixed schedule receiving a pending trial, another initial λ,
    another δ or π: each refused with the layer or setting named; strict=False matches by position and
    keeps this preconditioner's settings (its λ, no trial, refactorised next step)."""
    model, x = three_layers(), torch.rand(8, 6, generator=torch.Generator().manual_seed(0))
    settings = dict(stats_every=1, damping_schedule="adaptive", damping_every=1, damping=1e-2)
    with pytest.warns(UserWarning, match=r": 4 \(Linear\)$"):
        saved = KroneckerPreconditioner(model, "gaussian", "deflation", layers=["0", "2"], **settings)
    Likelihood.GAUSSIAN.nll(model(x), x).mean().backward()
    saved.step(x)
    assert saved.awaiting_loss
    state = saved.state_dict()

    def fresh(**changes: Any) -> KroneckerPreconditioner:
        with pytest.warns(UserWarning):
            return KroneckerPreconditioner(model, "gaussian", "deflation", **{"layers": ["0", "2"], **settings, **changes})

    with pytest.raises(FimbenchError, match=r"layer 0 of the state is '0', of this preconditioner '2'"):
        fresh(layers=["2", "4"]).load_state_dict(state)
    for changes, named in (
        ({"damping_schedule": "fixed"}, "damping_schedule='adaptive'"),
        ({"damping": 1e-3}, "damping=0.01"),
        ({"min_curvature_ratio": 0.5}, "min_curvature_ratio="),
        ({"pi": 1.0}, "pi='trace'"),
    ):
        with pytest.raises(FimbenchError, match=f"the state was saved with {named}"):
            fresh(**changes).load_state_dict(state)
    loose = fresh(layers=["2", "4"], damping_schedule="fixed", damping=1e-3)
    loose.load_state_dict(state, strict=False)
    assert loose.damping == 1e-3 and not loose.awaiting_loss and loose.schedule.refresh_due
    assert torch.equal(loose.approximations[0].terms[0][0], saved.approximations[0].terms[0][0])
    exact = fresh()
    exact.load_state_dict(state)
    assert exact.awaiting_loss and exact.damping == saved.damping
    assert state["layers"] == ["0", "2"] and state["settings"]["damping_schedule"] == "adaptive"


def test_missing_and_unknown_state_keys_are_one_error() -> None:
    model = mlp(0)
    state = make_preconditioner(model, 1).state_dict()
    for broken in ({key: value for key, value in state.items() if key != "steps"}, {**state, "momentum": 0.9}):
        with pytest.raises(FimbenchError, match=r"lacks keys \[(.steps.)?\] and has unknown keys \[(.momentum.)?\]"):
            make_preconditioner(mlp(0), 2).load_state_dict(broken)


def test_float32_state_continues_a_float64_model() -> None:
    """A state saved on a float32 model loads after ``model.double()``: the blocks, inverses and trial are
    float64, and the next step runs (with the float64 blocks it would compute from the state itself)."""
    batches = [torch.rand(16, 12, generator=torch.Generator().manual_seed(i)).round() for i in range(5)]
    model = mlp(0)
    preconditioner = make_preconditioner(model, generator_seed=1)
    train_steps(model, preconditioner, torch.optim.SGD(model.parameters(), lr=0.1), batches[:4])
    state = preconditioner.state_dict()
    model.double()
    widened = make_preconditioner(model, generator_seed=1)
    widened.load_state_dict(state)
    assert widened.approximations[0].terms[0][0].dtype == torch.float64
    assert widened.inverses[0].operator.terms[0][0].dtype == torch.float64
    train_steps(model, widened, torch.optim.SGD(model.parameters(), lr=0.1), [batch.double() for batch in batches[4:]])
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


# ------------------------------------------------------------------------------------------- train --resume


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS and not key.startswith("seconds_")}
            for row in rows]


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def interrupt_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, after: int) -> None:
    """Ctrl-C at the progress update of the ``after``-th step of ``epoch`` (the run is stopped mid-epoch)."""
    from fimbench.cli.train import RichTrainProgress

    seen: list[int] = []

    def step(self, step: int, current: int, loss: float, steps_per_second: float) -> None:  # type: ignore[no-untyped-def]
        if current == epoch:
            seen.append(step)
            if len(seen) == after:
                raise KeyboardInterrupt

    monkeypatch.setattr(RichTrainProgress, "step", step)


@pytest.mark.parametrize(
    "method, optimizer",
    [
        ("deflation", {"stats_every": 2, "inverse_every": 3, "damping_schedule": "adaptive", "damping_every": 2,
                       "damping": 1e-2}),
        ("kfac", {"stats_every": 1, "inverse_every": 2}),
        ("kpsvd", {"step_rule": "qmodel", "damping_schedule": "adaptive", "damping_every": 2, "damping": 150.0,
                   "stats_every": 2, "inverse_every": 3}),
        ("sgd", {}),
        ("adam", {"lr": 0.003}),
    ],
)
def test_resumed_run_ends_like_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, optimizer: dict[str, Any]
) -> None:
    """Interrupted in epoch 2 of 3 (step rows of epoch 2 already logged, a half-written row after them),
    then resumed: same parameters (≤ 1e-6) and same metrics.jsonl rows as a run never stopped."""
    config = str(tiny_config(tmp_path, method=method, **optimizer))
    common = ["train", "--config", config, "--epochs", "3", "--log-every", "3"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert runner.invoke(app, [*common, "--out", str(whole)]).exit_code == 0

    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 2, after=5)
        assert runner.invoke(app, [*common, "--out", str(stopped)]).exit_code == 130
    logged = metrics(stopped)
    assert [row["epoch"] for row in logged if row["kind"] == "epoch"] == [1] and logged[-1]["epoch"] == 2
    with open(stopped / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "epoch": 2, "train_lo')  # a write cut short by a kill

    resumed = runner.invoke(app, ["train", "--resume", str(stopped), "--quiet", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert comparable(metrics(stopped)) == comparable(metrics(whole))
    ours, theirs = final_parameters(stopped), final_parameters(whole)
    assert max(float((ours[key] - theirs[key]).abs().max()) for key in ours) <= 1e-6
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["steps"] == json.loads((whole / "summary.json").read_text())["steps"]


def test_killed_process_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """A ``fimbench train`` process SIGKILLed after its second epoch, then resumed: the same parameters and
    rows as a run never stopped (this test process and the killed one each on one thread)."""
    from helpers import FIMBENCH, QUIET_ENV, wait_for

    config = str(tiny_config(tmp_path, method="kfac", stats_every=2, inverse_every=3))
    common = ["train", "--config", config, "--epochs", "6", "--log-every", "2", "--quiet"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert runner.invoke(app, [*common, "--out", str(whole)]).exit_code == 0
    process = subprocess.Popen([str(FIMBENCH), *common, "--out", str(killed)], env=QUIET_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logged = killed / "metrics.jsonl"
    wait_for(lambda: logged.is_file() and logged.read_text().count('"kind": "epoch"') >= 2, process)  # type: ignore[arg-type]
    process.kill()
    process.wait(timeout=60)
    assert not (killed / "summary.json").exists()  # it was killed mid-run
    resumed = runner.invoke(app, ["train", "--resume", str(killed), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert comparable(metrics(killed)) == comparable(metrics(whole))
    ours, theirs = final_parameters(killed), final_parameters(whole)
    assert max(float((ours[key] - theirs[key]).abs().max()) for key in ours) <= 1e-6


def test_checkpoint_is_tensors_and_plain_data(tmp_path: Path) -> None:
    """checkpoint.pt loads with weights_only=True; resuming a finished run trains nothing and keeps its rows."""
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path, method="deflation", stats_every=2, inverse_every=2))
    assert runner.invoke(app, ["train", "--config", config, "--epochs", "1", "--out", str(out)]).exit_code == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["counters"]["epoch"] == 1 and checkpoint["preconditioner"]["steps"] == checkpoint["counters"]["step"] == 8
    assert not list(out.glob(".checkpoint.pt.*"))  # the temporary file was renamed into place
    rows = (out / "metrics.jsonl").read_text()
    again = runner.invoke(app, ["train", "--resume", str(out), "--json"])  # nothing left to train
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "completed"
    assert (out / "metrics.jsonl").read_text() == rows


def test_resume_refuses_code_corruption_and_changes(tmp_path: Path) -> None:
    """A checkpoint that would run code when unpickled is refused (and does not run); a truncated one, a
    missing one and options that would change the run each get one error line and exit status 2."""
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path))
    assert runner.invoke(app, ["train", "--config", config, "--epochs", "1", "--out", str(out)]).exit_code == 0
    good = (out / "checkpoint.pt").read_bytes()

    line = one_line_error(runner.invoke(app, ["train", "--resume", str(out), "--lr", "0.5", "--set", "training.seed=3"]))
    assert "--lr" in line and "--set" in line
    assert "--overwrite" in one_line_error(runner.invoke(app, ["train", "--resume", str(out), "--overwrite"]))
    on_gpu = torch.load(io.BytesIO(good), weights_only=True)
    on_gpu["device_type"] = "cuda"
    torch.save(on_gpu, out / "checkpoint.pt")
    assert "written on cuda, this run is on cpu" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))

    marker = tmp_path / "ran"
    torch.save({"format": "fimbench-checkpoint-1", "payload": Payload(marker)}, out / "checkpoint.pt")
    assert "not loaded" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))
    assert not marker.exists()

    tampered = torch.load(io.BytesIO(good), weights_only=True)
    tampered["counters"]["metrics_bytes"] = "all"
    torch.save(tampered, out / "checkpoint.pt")
    assert "counters are not integers" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))

    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    assert "corrupt" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))
    (out / "checkpoint.pt").unlink()
    assert "no checkpoint.pt" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))
    assert "no config.yaml" in one_line_error(runner.invoke(app, ["train", "--resume", str(tmp_path / "none")]))
    assert (out / "metrics.jsonl").read_text().count("\n") == 1  # nothing was cut


def test_resume_refuses_metrics_that_do_not_match(tmp_path: Path) -> None:
    out, copy = tmp_path / "run", tmp_path / "copy"
    config = str(tiny_config(tmp_path))
    assert runner.invoke(app, ["train", "--config", config, "--epochs", "1", "--out", str(out)]).exit_code == 0
    shutil.copytree(out, copy)
    (copy / "metrics.jsonl").write_text("")
    assert "does not match" in one_line_error(runner.invoke(app, ["train", "--resume", str(copy)]))
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    resolved["model"]["layers"] = [784, 16, 784]
    (out / "config.yaml").write_text(yaml.safe_dump(resolved))
    assert "does not fit" in one_line_error(runner.invoke(app, ["train", "--resume", str(out)]))


def test_continuable_epochs_only_for_a_checkpoint_a_run_here_can_continue(tmp_path: Path) -> None:
    """What a sweep's worker checks before it continues a point: the epochs at a CPU checkpoint that matches its
    metrics.jsonl; None for another device type, for rows that do not match, for a damaged or absent file."""
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path))
    assert runner.invoke(app, ["train", "--config", config, "--epochs", "2", "--out", str(out)]).exit_code == 0
    assert continuable_epochs(out, "cpu") == 2
    assert continuable_epochs(out, "cuda") is None
    rows = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(rows.split("\n", 1)[0] + "\n")  # one row, the checkpoint follows two
    assert continuable_epochs(out, "cpu") is None
    (out / "metrics.jsonl").write_text(rows + '{"kind": "epoch", "ep')  # half a row after it: cut when continuing
    assert continuable_epochs(out, "cpu") == 2
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert continuable_epochs(out, "cpu") is None
    (out / "checkpoint.pt").unlink()
    assert continuable_epochs(out, "cpu") is None


def test_fresh_train_into_a_run_names_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path))
    assert runner.invoke(app, ["train", "--config", config, "--epochs", "1", "--out", str(out)]).exit_code == 0
    assert f"--resume {out}" in one_line_error(runner.invoke(app, ["train", "--config", config, "--out", str(out)]))


class Payload:
    """Unpickling it would create ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("unnamed", [True, False])
def test_atomic_write_leaves_only_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool) -> None:
    """The unnamed-file write (Linux) and the temporary-file fallback both replace the file whole, with the
    mode open() would give, and leave nothing beside it."""
    import os

    from fimbench.files import atomic_write_bytes

    if not unnamed:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"new" * 1000 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
