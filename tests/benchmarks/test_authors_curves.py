"""benchmarks/authors_curves.py on runs of known losses: the means over seeds at the authors' epochs, the epochs a run
did not reach, the authors' numbers beside, and the one-line error for a folder without runs."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import make_run

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import authors_curves  # noqa: E402


def test_means_at_the_authors_epochs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    losses = {0: [0.5 - 0.01 * epoch for epoch in range(20)], 1: [0.3 - 0.01 * epoch for epoch in range(20)]}
    for seed, train in losses.items():
        make_run(tmp_path / f"kfac-lr_1e-1-seed_{seed}", "kfac", train, seconds_per_epoch=2.0, seed=seed)
    out = tmp_path / "table.md"
    assert authors_curves.main([str(tmp_path), "--markdown", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| kfac"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # epochs 1, 2, 5, 10, 20: the mean of the two seeds (0.4 − 0.01 (e − 1)); 50 and 200: not reached
    assert cells[:9] == ["kfac", "2", "0.4000", "0.3900", "0.3600", "0.3100", "0.2100", "–", "–"]
    assert cells[9:11] == ["0.2100/0.2310", "40"]  # final train / val (1.1 × train) and seconds
    assert cells[11:] == ["0.0752/0.0771", "182"]  # the authors' CURVES run


def test_mnist_adds_the_authors_curve(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    make_run(tmp_path / "sgd-lr_1e-1-seed_0", "sgd", [0.4, 0.3], seconds_per_epoch=1.0, seed=0)
    assert authors_curves.main([str(tmp_path), "--dataset", "mnist"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| sgd"))
    assert "| 0.3460 | 0.2510 | 0.1970 | 0.1430 | 0.1130 | 0.0900 | 0.0770 | 0.0768/0.0791 | 792 |" in row


def test_no_runs_is_one_error_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert authors_curves.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
