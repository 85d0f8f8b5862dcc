"""Data set loading: IDX parsing, the bundled digits, clear errors, and downloads from a local
HTTP server (never the internet)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from supermask import datasets
from supermask.errors import DatasetError, SupermaskError

from helpers import SHARED_DATA, needs_data


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.tobytes()


def write_idx_set(folder: Path, n_train=12, n_test=5, gz=True, seed=0) -> dict:
    r = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (r.integers(0, 256, (n_train, 28, 28)), r.integers(0, 10, n_train)),
        "test": (r.integers(0, 256, (n_test, 28, 28)), r.integers(0, 10, n_test)),
    }
    for split, (x, y) in data.items():
        stem = "train" if split == "train" else "t10k"
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            raw = idx_bytes(arr)
            name = f"{stem}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
            else:
                (folder / name).write_bytes(raw)
    return data


def test_registry_and_interface():
    assert set(datasets.DATASETS) >= {"mnist", "fashion-mnist", "cifar10", "digits"}
    with pytest.raises(DatasetError, match="choose one of .*fashion-mnist"):
        datasets.load("imagenet", "train")
    with pytest.raises(DatasetError, match="train, test"):
        datasets.load("digits", "validation")


def test_bundled_digits_loads_offline_with_a_fixed_balanced_split():
    tr, te = datasets.load("digits", "train"), datasets.load("digits", "test")
    assert tr.images.shape == (1433, 1, 8, 8) and te.images.shape == (364, 1, 8, 8)
    assert tr.images.dtype == np.uint8 and tr.labels.dtype == np.int64
    assert tr.images.max() == 16 and tr.classes == tuple("0123456789")
    counts = np.bincount(te.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # the split is fixed: reloading gives the same arrays
    np.testing.assert_array_equal(datasets.load("digits", "test").images, te.images)
    assert tr.preprocess.scale == 1 / 16
    assert not tr.images.flags.writeable
    bundled = Path(datasets.__file__).parent / "_bundled" / "digits.npz"
    assert bundled.stat().st_size < 100_000


def test_idx_gz_and_plain_load_in_dir_or_subdir(tmp_path):
    data = write_idx_set(tmp_path / "mnist", gz=True)
    ds = datasets.load("mnist", "train", tmp_path)
    np.testing.assert_array_equal(ds.images[:, 0], data["train"][0])
    np.testing.assert_array_equal(ds.labels, data["train"][1])
    assert ds.images.shape == (12, 1, 28, 28) and ds.preprocess == datasets.SOURCES["mnist"].preprocess
    plain = write_idx_set(tmp_path / "flat", gz=False, seed=1)
    ds = datasets.load("mnist", "test", tmp_path / "flat")
    np.testing.assert_array_equal(ds.images[:, 0], plain["test"][0])


def test_missing_dataset_error_names_the_paths_and_the_fix(tmp_path):
    with pytest.raises(DatasetError) as e:
        datasets.load("fashion-mnist", "train", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "fashion-mnist") in msg and "--download" in msg and "t10k-images-idx3-ubyte" in msg
    assert isinstance(e.value, SupermaskError)
    # --download with --data-dir fetches into DIR/<name>/, not into the cache
    assert f"--download to fetch them into {tmp_path / 'fashion-mnist'}" in msg
    assert str(datasets.cache_dir()) not in msg and "SUPERMASK_DATA" not in msg
    with pytest.raises(DatasetError, match="cifar-10-batches-bin"):
        datasets.load("cifar10", "test", tmp_path)


@pytest.mark.parametrize("damage, match", [
    (lambda raw: raw[:-10], "truncated"),
    (lambda raw: b"\x01\x02" + raw[2:], "bad magic"),
    (lambda raw: raw[:2] + b"\x0d" + raw[3:], "only unsigned bytes"),
])
def test_malformed_idx_is_a_clear_error(tmp_path, damage, match):
    write_idx_set(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DatasetError, match=match) as e:
        datasets.load("mnist", "test", tmp_path)
    assert str(p) in str(e.value)


def test_bad_gzip_and_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot read"):
        datasets.load("mnist", "test", tmp_path)
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3))))
    with pytest.raises(DatasetError, match="3 labels for 5 images"):
        datasets.load("mnist", "test", tmp_path)


def test_cifar_binary_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    r = np.random.default_rng(0)
    recs = {}
    for b in ["data_batch_%d.bin" % i for i in range(1, 6)] + ["test_batch.bin"]:
        rec = r.integers(0, 256, (3, 3073)).astype(np.uint8)
        rec[:, 0] = r.integers(0, 10, 3)
        rec.tofile(folder / b)
        recs[b] = rec
    te = datasets.load("cifar10", "test", tmp_path)
    assert te.images.shape == (3, 3, 32, 32) and len(te.preprocess.mean) == 3
    np.testing.assert_array_equal(te.labels, recs["test_batch.bin"][:, 0])
    np.testing.assert_array_equal(te.images.reshape(3, -1), recs["test_batch.bin"][:, 1:])
    assert len(datasets.load("cifar10", "train", tmp_path)) == 15
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="not a CIFAR-10 binary batch"):
        datasets.load("cifar10", "test", tmp_path)


def test_unreadable_cifar_batch_is_a_dataset_error(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for b in ["data_batch_%d.bin" % i for i in range(1, 6)] + ["test_batch.bin"]:
        np.zeros((1, 3073), np.uint8).tofile(folder / b)

    def unreadable(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(datasets.np, "fromfile", unreadable)
    with pytest.raises(DatasetError, match="cannot read .*test_batch.bin: .*Permission denied"):
        datasets.load("cifar10", "test", tmp_path)


@needs_data("fashion-mnist")
def test_real_fashion_mnist_test_split():
    ds = datasets.load("fashion-mnist", "test", SHARED_DATA)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.classes[9] == "ankle boot"
    h = hashlib.sha256(ds.labels.astype(np.uint8).tobytes()).hexdigest()
    # the labels' bytes are the IDX body of t10k-labels (sha256 of the whole file is in data/README)
    header = bytes([0, 0, 8, 1]) + (10000).to_bytes(4, "big")
    assert hashlib.sha256(header + ds.labels.astype(np.uint8).tobytes()).hexdigest() == \
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", h


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _serve_mnist(root: Path, monkeypatch, url: str, corrupt: str | None = None):
    write_idx_set(root)
    files = []
    for f in sorted(root.iterdir()):
        md5 = hashlib.md5(f.read_bytes()).hexdigest()
        files.append((f.name, "0" * 32 if f.name == corrupt else md5))
    src = dataclasses.replace(datasets.SOURCES["mnist"], mirrors=("http://127.0.0.1:9/nothing/", url),
                              files=tuple(files))
    monkeypatch.setitem(datasets.SOURCES, "mnist", src)


def test_download_from_mirror_verifies_and_caches(tmp_path, http_server, monkeypatch):
    root, url = http_server
    _serve_mnist(root, monkeypatch, url)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SUPERMASK_DATA", str(cache))
    with pytest.raises(DatasetError, match=f"--download to fetch them into {cache / 'mnist'} .*SUPERMASK_DATA"):
        datasets.load("mnist", "train")
    ds = datasets.load("mnist", "train", download=True)  # first mirror is dead, second works
    assert len(ds) == 12 and (cache / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    # a second load reads the cache even after the server is gone
    for f in root.iterdir():
        f.unlink()
    assert len(datasets.load("mnist", "test")) == 5


def test_download_checksum_mismatch_is_rejected(tmp_path, http_server, monkeypatch):
    root, url = http_server
    _serve_mnist(root, monkeypatch, url, corrupt="t10k-images-idx3-ubyte.gz")
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        datasets.load("mnist", "test", dest, download=True)
    assert "t10k-images-idx3-ubyte.gz" in str(e.value)
    assert not (dest / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in (dest / "mnist").iterdir() if p.name.endswith(".tmp")]


def _serve_cifar(root: Path, url: str, monkeypatch) -> None:
    import io
    import tarfile

    archive = root / "cifar-10-binary.tar.gz"
    rec = np.zeros((2, 3073), dtype=np.uint8)
    rec[:, 0] = [3, 7]
    with tarfile.open(archive, "w:gz") as tar:
        names = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
        for name in names + ["cifar-10-batches-bin/test_batch.bin", "cifar-10-batches-bin/readme.html",
                             "../escape.bin"]:
            data = rec.tobytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    src = dataclasses.replace(datasets.SOURCES["cifar10"], mirrors=(url,), files=(("cifar-10-binary.tar.gz", md5),))
    monkeypatch.setitem(datasets.SOURCES, "cifar10", src)


def test_cifar_download_extracts_only_the_batch_files(tmp_path, http_server, monkeypatch):
    root, url = http_server
    _serve_cifar(root, url, monkeypatch)
    ds = datasets.load("cifar10", "test", tmp_path / "d", download=True)
    assert ds.labels.tolist() == [3, 7] and ds.images.shape == (2, 3, 32, 32)
    extracted = sorted(p.name for p in (tmp_path / "d" / "cifar10" / "cifar-10-batches-bin").iterdir())
    assert extracted == sorted([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"])
    assert not (tmp_path / "d" / "escape.bin").exists() and not (tmp_path / "escape.bin").exists()


def test_cut_cifar_extraction_recovers_from_the_verified_archive(tmp_path, http_server, monkeypatch):
    root, url = http_server
    _serve_cifar(root, url, monkeypatch)
    datasets.download_dataset("cifar10", tmp_path / "cifar10")
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    (batches / "test_batch.bin").unlink()  # as if killed while extracting
    (batches / "data_batch_5.bin").unlink()
    (root / "cifar-10-binary.tar.gz").unlink()  # nothing more to download: the archive must do
    ds = datasets.load("cifar10", "test", tmp_path, download=True)
    assert ds.labels.tolist() == [3, 7]
    assert len(datasets.load("cifar10", "train", tmp_path)) == 10


class _CutHandler(http.server.BaseHTTPRequestHandler):
    """Sends half of a file, then drops the connection (with or without a Content-Length)."""

    payload = b""
    with_length = True

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        if self.with_length:
            self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("with_length", [True, False])
def test_download_cut_midway_leaves_nothing_and_says_so(tmp_path, monkeypatch, with_length):
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    handler = type("H", (_CutHandler,), {"payload": payload, "with_length": with_length})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        md5 = hashlib.md5(payload).hexdigest()
        files = tuple((n, md5) for n in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
        monkeypatch.setitem(datasets.SOURCES, "mnist",
                            dataclasses.replace(datasets.SOURCES["mnist"], mirrors=(url,), files=files))
        dest = tmp_path / "cache"
        with pytest.raises(DatasetError, match="could not download") as e:
            datasets.download_dataset("mnist", dest)
        assert "train-images-idx3-ubyte.gz" in str(e.value)
        assert list(dest.iterdir()) == []  # no partial file, no temporary file
    finally:
        server.shutdown()
        server.server_close()
