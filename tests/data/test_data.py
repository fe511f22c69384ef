"""Splits, caches, the curves-synth generator and minibatch indices of :mod:`fimbench.data`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from fimbench import data
from fimbench.data import parse
from fimbench.errors import FimbenchError

SMALL_ROWS = {
    "curves": {"bdata": 50, "bdatatest": 20},
    "faces": {"newfaces_single": 40},
    "mnist": {"train": 60, "test": 10},
}


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept the tiny fake raw files these tests build instead of full-size ones."""
    monkeypatch.setattr(parse, "EXPECTED_ROWS", SMALL_ROWS)


def _tagged(n: int, width: int, offset: int = 0) -> np.ndarray:
    """``n`` rows in [0, 1) whose first pixel holds ``(offset + row) / 1000``, so rows can be traced."""
    rows = np.random.default_rng(offset).random((n, width)) * 0.5
    rows[:, 0] = (offset + np.arange(n)) / 1000
    return rows


def _row_ids(x: torch.Tensor) -> list[int]:
    return [round(v * 1000) for v in x[:, 0].tolist()]


def _import_curves(tmp_path: Path) -> Path:
    mat = tmp_path / "digs3pts_1.mat"
    scipy.io.savemat(mat, {"bdata": _tagged(50, 784), "bdatatest": _tagged(20, 784, offset=500)})
    root = tmp_path / "data"
    data.download_dataset("curves", root, source=str(mat))
    return root


def test_curves_splits_sizes_disjoint_and_seeded(tmp_path: Path) -> None:
    root = _import_curves(tmp_path)
    splits = data.load_dataset("curves", root, split_seed=0)
    assert (splits.train.shape, splits.val.shape, splits.test.shape) == ((40, 784), (10, 784), (20, 784))
    assert splits.train.dtype == torch.float32 and splits.input_dim == 784 and splits.image_shape == (28, 28)
    assert not splits.synthetic
    train_ids, val_ids = _row_ids(splits.train), _row_ids(splits.val)
    assert sorted(train_ids + val_ids) == list(range(50))
    assert _row_ids(splits.test) == list(range(500, 520))

    again = data.load_dataset("curves", root, split_seed=0)
    assert torch.equal(again.train, splits.train) and torch.equal(again.val, splits.val)
    other = data.load_dataset("curves", root, split_seed=1)
    assert _row_ids(other.val) != val_ids
    assert torch.equal(other.test, splits.test)


def test_split_matches_random_split() -> None:
    train, val = data.split_indices(20000, 0.2, seed=3)
    subsets = torch.utils.data.random_split(range(20000), [16000, 4000], generator=torch.Generator().manual_seed(3))
    assert train.tolist() == subsets[0].indices and val.tolist() == subsets[1].indices


def test_full_size_split_counts() -> None:
    sizes = {name: [len(part) for part in data.split_indices(n, data.VAL_FRACTION[name], 0)]
             for name, n in (("curves", 20000), ("faces", 103500), ("mnist", 60000), ("curves-synth", 20000))}
    assert sizes == {"curves": [16000, 4000], "faces": [82800, 20700], "mnist": [50000, 10000], "curves-synth": [16000, 4000]}


def test_faces_pool_and_test_rows(tmp_path: Path) -> None:
    mat = tmp_path / "newfaces_rot_single.mat"
    scipy.io.savemat(mat, {"newfaces_single": _tagged(40, 625).T.astype(np.float32)})
    data.download_dataset("faces", tmp_path, source=str(mat))
    splits = data.load_dataset("faces", tmp_path)
    assert sorted(_row_ids(splits.train) + _row_ids(splits.val)) == list(range(25))  # first 103500/165600
    assert _row_ids(splits.test) == list(range(30, 40))  # last 41400/165600
    assert splits.image_shape == (25, 25) and splits.input_dim == 625


def test_mnist_pixels_scaled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    digits = {f"{part}{d}": rng.integers(0, 256, (n, 784), dtype=np.uint8) for part, n in (("train", 6), ("test", 1)) for d in range(10)}
    digits["train0"][0, :] = 255
    scipy.io.savemat(tmp_path / "mnist_all.mat", digits)
    data.download_dataset("mnist", tmp_path, source=str(tmp_path / "mnist_all.mat"))
    assert torch.load(tmp_path / "mnist.pt", weights_only=True)["train"].dtype == torch.uint8
    splits = data.load_dataset("mnist", tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 10)
    assert splits.train.dtype == torch.float32
    everything = torch.cat([splits.train, splits.val])
    assert 0 <= everything.min() and everything.max() == 1.0
    loaded = {row.tobytes() for row in everything.mul(255).round().to(torch.uint8).numpy()}
    assert loaded == {row.tobytes() for d in range(10) for row in digits[f"train{d}"]}


def test_missing_dataset_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FimbenchError, match=r"'faces' is not in .*; fetch it with: fimbench download-data faces --data-dir "):
        data.load_dataset("faces", data_dir=tmp_path)
    monkeypatch.setenv("FIMBENCH_DATA", str(tmp_path))
    with pytest.raises(FimbenchError) as info:
        data.load_dataset("faces")
    assert str(info.value) == f"dataset 'faces' is not in {tmp_path}; fetch it with: fimbench download-data faces"


def test_unknown_dataset() -> None:
    with pytest.raises(FimbenchError, match="unknown dataset 'cifar'; choose from curves, mnist, faces, curves-synth"):
        data.load_dataset("cifar")


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FIMBENCH_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("FIMBENCH_DATA")
    assert data.default_data_dir().name == "fimbench"


def test_curves_synth_generator() -> None:
    images = data.generate_curves_synth(600, seed=0)
    assert images.shape == (600, 784) and images.dtype == torch.float32
    assert torch.equal(images, data.generate_curves_synth(600, seed=0))
    assert not torch.equal(images, data.generate_curves_synth(600, seed=1))
    assert images.min() >= 0 and images.max() <= 1
    per_image = images.mean(1)
    assert 0.02 < per_image.mean() < 0.3 and (per_image > 0.005).all()  # every image has a visible stroke
    assert ((images > 0) & (images < 1)).any(1).all()  # anti-aliased edges
    assert torch.cdist(images, images).add(torch.eye(600) * 1e9).min() > 1.0  # no two images alike


def test_curves_synth_load_and_cache(tmp_path: Path) -> None:
    splits = data.load_dataset("curves-synth", tmp_path, synth_train=300, synth_test=100)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (240, 60, 100)
    assert splits.synthetic and splits.image_shape == (28, 28)
    cached = list(tmp_path.glob("curves-synth-*-300-100.pt"))
    assert len(cached) == 1
    assert torch.equal(splits.test, data.generate_curves_synth(100, data.SYNTH_SEED + 1))
    again = data.load_dataset("curves-synth", tmp_path, synth_train=300, synth_test=100)
    assert torch.equal(again.train, splits.train) and torch.equal(again.test, splits.test)


def test_curves_synth_without_writable_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    splits = data.load_dataset("curves-synth", blocker / "data", synth_train=20, synth_test=10)
    assert len(splits.train) == 16 and len(splits.test) == 10


def test_batch_indices_cover_one_epoch() -> None:
    batches = list(data.batch_indices(12, 4, torch.Generator().manual_seed(5), "cpu"))
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    again = list(data.batch_indices(12, 4, torch.Generator().manual_seed(5), "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(list(data.batch_indices(12, 4, torch.Generator().manual_seed(6), "cpu")))
    assert not torch.equal(other, torch.cat(batches))


def test_batch_indices_drop_last_partial_batch() -> None:
    batches = list(data.batch_indices(10, 3, torch.Generator().manual_seed(0), torch.device("cpu")))
    flat = torch.cat(batches)
    assert [len(b) for b in batches] == [3, 3, 3] and len(set(flat.tolist())) == 9
    with pytest.raises(FimbenchError, match="batch size 11"):
        next(data.batch_indices(10, 11, torch.Generator(), "cpu"))
