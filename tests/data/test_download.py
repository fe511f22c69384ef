"""Downloads against a loopback HTTP server, and offline imports from local files and folders."""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.io
import torch

from fimbench import data
from fimbench.data import download, parse
from fimbench.errors import FimbenchError

SMALL_ROWS = {
    "curves": {"bdata": 50, "bdatatest": 20},
    "faces": {"newfaces_single": 40},
    "mnist": {"train": 60, "test": 12},
}


@dataclass
class FakeServer:
    """Files served by path; paths in ``truncate`` send half the announced bytes and hang up."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    hits: collections.Counter[str] = field(default_factory=collections.Counter)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """A loopback HTTP server in a thread; the canonical base URLs point at it, proxies are off."""
    state = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            state.hits[path] += 1
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if path in state.truncate else body)

        def log_message(self, *args: object) -> None:
            """Keep the test output clean."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "MARTENS_URL", state.url + "/jmartens/")
    monkeypatch.setattr(download, "RETRY_BACKOFF", 0.0)
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept tiny fake raw files; never reach torchvision's real mirrors."""
    monkeypatch.setattr(parse, "EXPECTED_ROWS", SMALL_ROWS)
    monkeypatch.setattr(download, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    monkeypatch.setattr(download, "MNIST_MD5", {})


def _mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    return buffer.getvalue()


def _curves_mat(**override: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    return _mat_bytes({"bdata": rng.random((50, 784)), "bdatatest": rng.random((20, 784)), **override})


def _faces_mat() -> bytes:
    return _mat_bytes({"newfaces_single": np.random.default_rng(1).random((625, 40), dtype=np.float32)})


def _mnist_idx() -> dict[str, bytes]:
    """Gzipped idx files of 60 train and 12 test images (with labels), under their canonical names."""
    rng = np.random.default_rng(2)

    def images(n: int) -> bytes:
        return gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes(), mtime=0)

    def labels(n: int) -> bytes:
        return gzip.compress(struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes(), mtime=0)

    return dict(zip(data.MNIST_IDX_FILES, (images(60), labels(60), images(12), labels(12))))


def _md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


class Recorder:
    """A :class:`fimbench.data.DownloadProgress` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def start(self, name: str, total: int | None) -> None:
        self.calls.append(("start", (name, total)))

    def advance(self, n: int) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "raw").iterdir()) if (root / "raw").exists() else []


def test_curves_from_canonical_url(server: FakeServer, tmp_path: Path) -> None:
    body = _curves_mat()
    server.files["/jmartens/digs3pts_1.mat"] = body
    progress = Recorder()
    path = data.download_dataset("curves", tmp_path, progress=progress)
    assert path == tmp_path / "curves.pt" and path.is_file()
    assert _leftovers(tmp_path) == ["digs3pts_1.mat"]
    manifest = json.loads((tmp_path / "curves.json").read_text())
    assert manifest["raw_files"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["raw_files"][0]["origin"] == server.url + "/jmartens/digs3pts_1.mat"
    assert manifest["splits"] == {"train": 40, "val": 10, "test": 20, "input_dim": 784}
    assert manifest["processed"]["pool_shape"] == [50, 784] and manifest["fimbench_version"]
    assert progress.calls[0] == ("start", ("digs3pts_1.mat", len(body))) and progress.calls[-1] == ("finish", None)
    assert sum(n for kind, n in progress.calls if kind == "advance") == len(body)
    assert data.load_dataset("curves", tmp_path).test.shape == (20, 784)


def test_faces_from_file_url(server: FakeServer, tmp_path: Path) -> None:
    server.files["/mirror/faces.mat"] = _faces_mat()
    data.download_dataset("faces", tmp_path, source=server.url + "/mirror/faces.mat")
    splits = data.load_dataset("faces", tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.input_dim) == (20, 5, 10, 625)


def test_mnist_idx_with_mirror_fallback(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mnist_idx()
    server.files.update({f"/good/{name}": body for name, body in files.items()})
    monkeypatch.setattr(download, "MNIST_MIRRORS", (server.url + "/missing/", server.url + "/good/"))
    monkeypatch.setattr(download, "MNIST_MD5", _md5s(files))
    data.download_dataset("mnist", tmp_path)
    assert _leftovers(tmp_path) == sorted(files)
    assert server.hits[f"/missing/{data.MNIST_IDX_FILES[0]}"] == 1  # a 404 is not retried
    splits = data.load_dataset("mnist", tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 12)
    first = np.frombuffer(gzip.decompress(files[data.MNIST_IDX_FILES[0]])[16:], dtype=np.uint8).reshape(60, 784)
    assert torch.equal(torch.load(tmp_path / "mnist.pt", weights_only=True)["train"], torch.from_numpy(first.copy()))


def test_mnist_from_base_url(server: FakeServer, tmp_path: Path) -> None:
    server.files.update({f"/m/{name}": body for name, body in _mnist_idx().items()})
    data.download_dataset("mnist", tmp_path, source=server.url + "/m")
    assert data.load_dataset("mnist", tmp_path).test.shape == (12, 784)


def test_md5_mismatch_leaves_nothing(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mnist_idx()
    server.files.update({f"/m/{name}": body for name, body in files.items()})
    wrong = dict(_md5s(files), **{data.MNIST_IDX_FILES[0]: "0" * 32})
    monkeypatch.setattr(download, "MNIST_MIRRORS", (server.url + "/m/",))
    monkeypatch.setattr(download, "MNIST_MD5", wrong)
    with pytest.raises(FimbenchError) as info:
        data.download_dataset("mnist", tmp_path)
    message = str(info.value)
    assert data.MNIST_IDX_FILES[0] in message and "0" * 32 in message and _md5s(files)[data.MNIST_IDX_FILES[0]] in message
    assert "\n" not in message and _leftovers(tmp_path) == [] and not (tmp_path / "mnist.pt").exists()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_curves_mat(bdata=np.random.default_rng(0).random((50, 700))), "variable 'bdata' has shape 50×700, expected 50×784"),
        (_mat_bytes({"bdata": np.zeros((50, 784))}), "missing variable 'bdatatest'"),
        (_curves_mat(bdatatest=np.full((20, 784), np.nan)), "variable 'bdatatest' has non-finite values"),
        (_curves_mat(bdata=np.zeros((49, 784))), "variable 'bdata' has shape 49×784, expected 50×784"),
        (b"<html>not found</html>", "cannot read it as a MATLAB v5 file"),
    ],
)
def test_invalid_curves_file_is_deleted(server: FakeServer, tmp_path: Path, body: bytes, why: str) -> None:
    server.files["/jmartens/digs3pts_1.mat"] = body
    with pytest.raises(FimbenchError, match="digs3pts_1.mat is not a valid CURVES file: ") as info:
        data.download_dataset("curves", tmp_path)
    assert why in str(info.value)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "curves.pt").exists()


def test_interrupted_transfer_is_retried_then_fails(server: FakeServer, tmp_path: Path) -> None:
    server.files["/jmartens/digs3pts_1.mat"] = _curves_mat()
    server.truncate.add("/jmartens/digs3pts_1.mat")
    progress = Recorder()
    with pytest.raises(FimbenchError, match=r"could not download digs3pts_1.mat: .*transfer cut short: got \d+ of \d+ bytes \(tried 3 times\)"):
        data.download_dataset("curves", tmp_path, retries=2, progress=progress)
    assert server.hits["/jmartens/digs3pts_1.mat"] == 3
    assert [kind for kind, _ in progress.calls].count("finish") == 3
    assert _leftovers(tmp_path) == [] and not data.is_present("curves", tmp_path)


def test_retry_recovers_from_one_cut(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "/jmartens/digs3pts_1.mat"
    server.files[path] = _curves_mat()
    server.truncate.add(path)
    original = download._fetch_once

    def heal_after_first(*args: object, **kwargs: object) -> str:
        try:
            return original(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            server.truncate.discard(path)

    monkeypatch.setattr(download, "_fetch_once", heal_after_first)
    data.download_dataset("curves", tmp_path)
    assert server.hits[path] == 2 and data.is_present("curves", tmp_path)


def test_connection_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_BACKOFF", 0.0)
    monkeypatch.setattr(download, "MARTENS_URL", "http://127.0.0.1:9/")
    with pytest.raises(FimbenchError, match=r"could not download newfaces_rot_single.mat: http://127.0.0.1:9/newfaces_rot_single.mat: .*\(tried 2 times\)"):
        data.download_dataset("faces", tmp_path, retries=1, timeout=5)
    assert _leftovers(tmp_path) == []


def test_present_data_is_not_fetched_again(server: FakeServer, tmp_path: Path) -> None:
    server.files["/jmartens/digs3pts_1.mat"] = _curves_mat()
    data.download_dataset("curves", tmp_path)
    stamp = (tmp_path / "curves.pt").stat().st_mtime_ns
    assert data.download_dataset("curves", tmp_path) == tmp_path / "curves.pt"
    assert server.hits["/jmartens/digs3pts_1.mat"] == 1 and (tmp_path / "curves.pt").stat().st_mtime_ns == stamp
    data.download_dataset("curves", tmp_path, force=True)
    assert server.hits["/jmartens/digs3pts_1.mat"] == 2


def test_processed_file_without_matching_manifest_is_not_present(tmp_path: Path) -> None:
    (tmp_path / "curves.mat").write_bytes(_curves_mat())
    data.download_dataset("curves", tmp_path, source=str(tmp_path / "curves.mat"))
    with open(tmp_path / "curves.pt", "ab") as handle:
        handle.write(b"junk")
    assert not data.is_present("curves", tmp_path)
    (tmp_path / "curves.json").unlink()
    with pytest.raises(FimbenchError, match="fetch it with: fimbench download-data curves"):
        data.load_dataset("curves", tmp_path)


def test_import_from_single_files(tmp_path: Path) -> None:
    (tmp_path / "c.mat").write_bytes(_curves_mat())
    (tmp_path / "f.mat").write_bytes(_faces_mat())
    rng = np.random.default_rng(3)
    scipy.io.savemat(tmp_path / "mnist_all.mat", {f"{part}{d}": rng.integers(0, 256, (n, 784), dtype=np.uint8)
                                                   for part, n in (("train", 6), ("test", 1)) for d in range(10)})
    root = tmp_path / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SMALL_ROWS, "mnist", {"train": 60, "test": 10})
        for name, file in (("curves", "c.mat"), ("faces", "f.mat"), ("mnist", "mnist_all.mat")):
            data.download_dataset(name, root, source=str(tmp_path / file))
            manifest = data.read_manifest(name, root)
            assert manifest is not None and manifest["raw_files"][0]["origin"] == str(tmp_path / file)
            assert manifest["raw_files"][0]["sha256"] == hashlib.sha256((tmp_path / file).read_bytes()).hexdigest()
    assert not (root / "raw").exists()  # local sources are read in place, never copied or modified
    assert (tmp_path / "c.mat").is_file()


def test_import_from_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = _mnist_idx()
    for name, body in {**files, "digs3pts_1.mat": _curves_mat(), "newfaces_rot_single.mat": _faces_mat()}.items():
        (mirror / name).write_bytes(body)
    monkeypatch.setattr(download, "MNIST_MD5", _md5s(files))
    for name in data.DOWNLOADABLE:
        data.download_dataset(name, tmp_path, source=str(mirror))
        assert data.is_present(name, tmp_path)
    assert data.load_dataset("mnist", tmp_path).train.shape == (50, 784)

    monkeypatch.setattr(download, "MNIST_MD5", {data.MNIST_IDX_FILES[2]: "f" * 32})
    with pytest.raises(FimbenchError, match=f"t10k-images-idx3-ubyte.gz: MD5 mismatch \\(expected {'f' * 32}, got "):
        data.download_dataset("mnist", tmp_path, source=str(mirror), force=True)
    assert all((mirror / name).is_file() for name in files)  # user files are never deleted


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("curves", lambda p: p / "nowhere", r"source '.*nowhere' does not exist"),
        ("faces", lambda p: p, r"folder '.*' has no newfaces_rot_single.mat"),
        ("mnist", lambda p: p, r"holds neither the four MNIST idx files .* nor mnist_all.mat"),
        ("mnist", lambda p: p / "x.gz", r"a single-file MNIST source must be mnist_all.mat"),
        ("curves-synth", lambda p: p, r"curves-synth is generated locally"),
        ("svhn", lambda p: p, r"unknown dataset 'svhn'"),
    ],
)
def test_bad_sources(tmp_path: Path, name: str, make: object, message: str) -> None:
    (tmp_path / "x.gz").write_bytes(b"x")
    with pytest.raises(FimbenchError, match=message):
        data.download_dataset(name, tmp_path / "data", source=str(make(tmp_path)))  # type: ignore[operator]


def test_corrupt_idx_file(tmp_path: Path) -> None:
    files = _mnist_idx()
    files[data.MNIST_IDX_FILES[1]] = gzip.compress(struct.pack(">II", 2049, 59) + bytes(59))
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(FimbenchError, match="train-labels-idx1-ubyte.gz is not a valid MNIST file: 59 labels, expected 60"):
        data.download_dataset("mnist", tmp_path / "data", source=str(tmp_path))
    (tmp_path / data.MNIST_IDX_FILES[0]).write_bytes(b"plain")
    with pytest.raises(FimbenchError, match="train-images-idx3-ubyte.gz is not a valid MNIST file: not gzip data"):
        data.download_dataset("mnist", tmp_path / "data", source=str(tmp_path))


def test_mnist_defaults_come_from_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "MNIST_MIRRORS", None)
    monkeypatch.setattr(download, "MNIST_MD5", None)
    mirrors, md5 = download._mnist_sources()
    assert mirrors and all(m.startswith("http") and m.endswith("/") for m in mirrors)
    assert set(md5) == set(data.MNIST_IDX_FILES) and all(len(v) == 32 for v in md5.values())
