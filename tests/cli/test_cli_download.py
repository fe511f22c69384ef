"""``fimbench download-data`` through Typer's test runner (offline: local sources only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from fimbench import data
from fimbench.cli import app
from fimbench.data import parse

runner = CliRunner()


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept the tiny fake raw files these tests build."""
    monkeypatch.setattr(
        parse,
        "EXPECTED_ROWS",
        {"curves": {"bdata": 30, "bdatatest": 10}, "faces": {"newfaces_single": 16}, "mnist": {"train": 20, "test": 10}},
    )


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A folder holding tiny digs3pts_1.mat, newfaces_rot_single.mat and mnist_all.mat."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    rng = np.random.default_rng(0)
    scipy.io.savemat(folder / "digs3pts_1.mat", {"bdata": rng.random((30, 784)), "bdatatest": rng.random((10, 784))})
    scipy.io.savemat(folder / "newfaces_rot_single.mat", {"newfaces_single": rng.random((625, 16), dtype=np.float32)})
    scipy.io.savemat(folder / "mnist_all.mat", {f"{part}{d}": rng.integers(0, 256, (n, 784), dtype=np.uint8)
                                                for part, n in (("train", 2), ("test", 1)) for d in range(10)})
    return folder


def test_curves_from_file(mirror: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = ["download-data", "curves", "--source", str(mirror / "digs3pts_1.mat"), "--data-dir", str(store)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"curves: {store / 'curves.pt'}") and "train 24 / val 6 / test 10 × 784" in lines[0]
    assert "digs3pts_1.mat sha256 " in lines[0]
    assert data.load_dataset("curves", store).train.shape == (24, 784)

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already present" in again.stdout


def test_all_from_folder_and_env_data_dir(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIMBENCH_DATA", str(tmp_path / "env-store"))
    result = runner.invoke(app, ["download-data", "all", "--source", str(mirror)])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.strip().splitlines()] == list(data.DOWNLOADABLE)
    assert all(data.is_present(name, tmp_path / "env-store") for name in data.DOWNLOADABLE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["curves", "--source", "/nonexistent/digs3pts_1.mat"], "error: source '/nonexistent/digs3pts_1.mat' does not exist"),
        (["all", "--source", "MIRROR/digs3pts_1.mat"], "error: with 'all', --source must be a folder or a mirror's base URL"),
        (["faces", "--source", "MIRROR/digs3pts_1.mat"], "error: digs3pts_1.mat is not a valid FACES file: missing variable 'newfaces_single'"),
    ],
)
def test_bad_source_is_one_error_line(mirror: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [arg.replace("MIRROR", str(mirror)) for arg in args]
    result = runner.invoke(app, ["download-data", *args, "--data-dir", str(tmp_path / "store")])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_unknown_name_and_help() -> None:
    result = runner.invoke(app, ["download-data", "cifar"])
    assert result.exit_code != 0 and "cifar" in result.output
    usage = runner.invoke(app, ["download-data", "--help"])
    assert usage.exit_code == 0
    assert all(choice in usage.stdout for choice in ("mnist", "curves", "faces", "all", "Example:"))


def test_through_fimbench_app(mirror: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download-data", "faces", "--source", str(mirror), "--data-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "train 8 / val 2 / test 4 × 625" in result.stdout
