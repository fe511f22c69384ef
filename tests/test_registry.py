"""The method registry (fimbench/methods.py): every record is complete and consistent, and every method goes
through every command its record claims (docs/adding-a-method.md)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config
from typer.testing import CliRunner

from fimbench.cli import app
from fimbench.cost_orders import PHASES
from fimbench.engines.authors_scale import authors_damping, from_authors_scale
from fimbench.engines.figure2 import plan_figure2
from fimbench.engines.sweep.plan import plan_sweep
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import LayerStatistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.methods import (
    EIGENBASIS_BLOCK,
    KRONECKER_BLOCK,
    NO_DAMPING,
    RECORDS,
    SCALAR_DAMPING,
    AuthorsDamping,
    Command,
    Method,
    implementation,
    methods_of,
)
from fimbench.names import command_methods
from fimbench.preconditioner.blocks import CurvatureBlock, new_block

runner = CliRunner()
CURVATURE = [method for method in Method if method.record.block is not None]
FISHER_APPROXIMATIONS = [method for method in Method if Command.FISHER_ERROR in method.record.commands]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def claiming(command: Command) -> list[str]:
    return [method.value for method in Method if command in RECORDS[method].commands]


def test_every_method_has_one_complete_record() -> None:
    assert list(RECORDS) == list(Method)
    for method, record in RECORDS.items():
        assert record.method is method
        assert record.commands, method
        measured = bool({Command.FISHER_ERROR, Command.COST_PROFILE} & record.commands)
        assert (record.block is not None) == (record.orders is not None) == measured, method
        assert (record.block == KRONECKER_BLOCK) == (record.rank > 0), method
        assert (record.approximation is not None) == (record.block in (KRONECKER_BLOCK, EIGENBASIS_BLOCK)), method
        assert (record.authors_damping == NO_DAMPING) == (not method.is_preconditioned), method
        assert isinstance(record.authors_damping, AuthorsDamping) or record.authors_damping in (SCALAR_DAMPING, NO_DAMPING)
        assert record.optimizer.startswith("fimbench.engines.optimizers:") and callable(implementation(record.optimizer))


def test_labels_colours_and_markers_tell_the_methods_apart() -> None:
    records = list(RECORDS.values())
    assert len({record.label for record in records}) == len(records)
    assert len({record.colour for record in records}) == len(records)
    figure1 = [record.marker for record in records if Command.FISHER_ERROR in record.commands]
    assert len(set(figure1)) == len(figure1)


@pytest.mark.parametrize("method", CURVATURE, ids=lambda method: method.value)
def test_the_implementations_a_record_names_exist_in_their_layer(method: Method) -> None:
    record = method.record
    assert record.block is not None and record.block.startswith("fimbench.preconditioner.")
    block_class = implementation(record.block)
    for name, member in inspect.getmembers(CurvatureBlock):
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
            assert hasattr(block_class, name), f"{block_class.__name__} lacks {name}"
    if record.approximation is not None:
        assert record.approximation.startswith("fimbench.curvature.")
        assert callable(implementation(record.approximation))


@pytest.mark.parametrize("method", FISHER_APPROXIMATIONS, ids=lambda method: method.value)
def test_a_new_block_updates_refreshes_applies_and_fits(method: Method) -> None:
    """The block interface on random float64 statistics: finite direction, ``δᵀ F̃ δ > 0``, errors in [0, ∞)."""
    from fimbench.fisher.block_errors import ExactFisher

    generator = torch.Generator().manual_seed(0)
    stats = LayerStatistics(torch.randn(12, 5, generator=generator, dtype=torch.float64), torch.randn(12, 4, generator=generator, dtype=torch.float64))
    block = new_block(method)
    block.update(stats, 0.0)
    block.refresh(0.1)
    gradient = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    direction = block.apply(gradient)
    assert direction.shape == gradient.shape and torch.isfinite(direction).all()
    assert float(block.quadratic(direction)) > 0
    assert float((direction * gradient).sum()) > 0  # a descent direction: F̃⁻¹ is positive definite
    block.fit(stats)
    errors = block.errors(ExactFisher(stats.a, stats.g)).errors
    assert 0.0 <= errors.error1.value < 1.5 and 0.0 <= errors.error2.value < 1.5
    assert block.rank == method.rank


def test_muons_block_orthogonalises_and_has_no_curvature_model() -> None:
    """Muon's block (cost-profile only): apply is the bfloat16 Newton–Schulz iteration — singular values
    pushed into about [0.5, 1.5] whatever the gradient's scale — and the Fisher-approximation calls refuse."""
    from fimbench.fisher.block_errors import ExactFisher

    generator = torch.Generator().manual_seed(0)
    gradient = 1e3 * torch.randn(6, 9, generator=generator) @ torch.diag(torch.logspace(0, -3, 9))
    block = new_block(Method.MUON)
    singular_values = torch.linalg.svdvals(block.apply(gradient))
    assert float(singular_values.min()) > 0.3 and float(singular_values.max()) < 1.6
    stats = LayerStatistics(torch.randn(4, 9, generator=generator), torch.randn(4, 6, generator=generator))
    with pytest.raises(FimbenchError, match="no curvature model"):
        block.fit(stats)
    with pytest.raises(FimbenchError, match="no curvature model"):
        block.errors(ExactFisher(stats.a, stats.g))


def test_first_order_methods_have_no_block() -> None:
    with pytest.raises(FimbenchError, match="no curvature block"):
        new_block(Method.SGD)


@pytest.mark.parametrize("method", CURVATURE, ids=lambda method: method.value)
def test_cost_orders_cover_every_phase(method: Method) -> None:
    orders = method.record.orders
    assert orders is not None
    for phase in PHASES:
        formula, d_exponent, m_exponent = orders.paper(phase, method.rank)
        assert formula and d_exponent >= 0 and m_exponent >= 0
        assert orders.model(phase, method.rank)
        assert orders.count(phase, p=33, q=32, m=16, rank=max(method.rank, 1), iterations=3) > 0


@pytest.mark.parametrize("method", list(Method), ids=lambda method: method.value)
def test_the_authors_scale_converts_every_method(method: Method) -> None:
    converted = from_authors_scale(method, Likelihood.BERNOULLI, 784, lr=0.1, damping=1e-2 if method.is_preconditioned else None)
    assert converted["lr"] == pytest.approx(0.1 * (1 / 784) ** method.record.authors_lr_exponent)
    assert converted["lr"] > 0
    if method.is_preconditioned:
        assert converted["damping"] > 0 and converted["pi"] > 0
    else:
        with pytest.raises(FimbenchError, match="not damped"):
            authors_damping(method, 1e-2, 1 / 784)


@pytest.mark.parametrize("command", list(Command), ids=lambda command: command.value)
def test_each_command_offers_the_methods_that_claim_it(command: Command) -> None:
    assert list(command_methods(command)) == claiming(command)
    assert [method.value for method in methods_of(command=command)] == claiming(command)


def test_the_presets_name_only_registered_methods() -> None:
    """A ``methods.<name>`` section of a preset for a name that is no method would be silently unused."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        sections = (yaml.safe_load(path.read_text()) or {}).get("methods") or {}
        assert set(sections) <= {method.value for method in Method}, path.name


def test_every_method_goes_through_every_command_it_claims(tmp_path: Path) -> None:
    """train (2 steps) and report for every trainable method; fisher-error and cost-profile for every
    curvature method at once; sweep and reproduce figure2 plan every method they claim."""
    config = tiny_config(tmp_path)
    runs = tmp_path / "runs"
    for method in claiming(Command.TRAIN):
        result = runner.invoke(app, ["train", "--config", str(config), "--method", method, "--max-steps", "2", "--quiet",
                                     "--out", str(runs / method)])
        assert result.exit_code == 0, (method, result.output)
    report = runner.invoke(app, ["report", str(runs), "--json", "--quiet"])
    assert report.exit_code == 0, report.output
    reported = {group["method"] for dataset in json.loads(report.stdout)["datasets"] for group in dataset["groups"]}
    assert reported == set(claiming(Command.REPORT))
    result = runner.invoke(app, ["fisher-error", "--config", str(config), "--methods", ",".join(claiming(Command.FISHER_ERROR)),
                                 "--iterations", "0", "--layer", "2", "--quiet", "--out", str(tmp_path / "errors")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["cost-profile", "--widths", "6", "--batches", "4", "--repeats", "1", "--device", "cpu",
                                 "--methods", ",".join(claiming(Command.COST_PROFILE)), "--quiet", "--out", str(tmp_path / "cost")])
    assert result.exit_code == 0, result.output
    sweep = plan_sweep(tmp_path / "sweep", claiming(Command.SWEEP), config_path=config)
    assert {point.method for point in sweep.points} == set(claiming(Command.SWEEP))
    figure2 = plan_figure2(tmp_path / "figure2", claiming(Command.REPRODUCE), config_path=config)
    assert {point.method for point in figure2.sweep.points} == set(claiming(Command.REPRODUCE))
