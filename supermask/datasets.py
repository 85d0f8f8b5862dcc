"""Image classification data sets as uint8 arrays. Torch-free (numpy only).

:func:`load` returns a :class:`Dataset`: raw pixel values ``images`` (N, C, H, W) uint8,
``labels`` (N,) int64, the class names, and the :class:`~supermask.arch.Preprocess` that
turns pixels into network inputs (recorded in every architecture, so the runtime applies
exactly what training used).

Where files are looked for, in order: ``data_dir/<name>/``, then ``data_dir/`` itself, then
(when no ``data_dir`` is given) the cache folder (``$SUPERMASK_DATA`` or
``~/.cache/supermask/datasets``)``/<name>/``. MNIST-style sets are the four standard IDX
files, gzipped or not; CIFAR-10 is the *binary* version (``data_batch_1.bin`` ...
``test_batch.bin``, never the pickled Python version). With ``download=True`` a missing set
is fetched from its canonical mirrors into ``data_dir/<name>/`` (the cache's ``<name>/`` when
no ``data_dir`` is given) and checked against a known MD5 before it is used. ``digits`` (the
8x8 UCI handwritten digits) ships with the package.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .arch import Preprocess
from .atomic import atomic_open
from .errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
            "ankle boot")
_CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Source:
    """Where a data set comes from: its format, mirrors and the MD5 of each downloaded file."""

    format: str  # "idx", "cifar-binary" or "bundled"
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    preprocess: Preprocess
    mirrors: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (file name, md5 of the file as downloaded)


#: The data sets :func:`load` knows. Preprocessing: grey-scale sets are scaled to [0, 1]
#: only, as in the supermask papers (with mean subtraction, large_final_same_sign barely
#: beat large_final at keep 0.05 for lenet-300-100 on Fashion-MNIST: see docs/results.md);
#: CIFAR-10 also subtracts the usual per-channel mean and divides by the std.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        "idx", (1, 28, 28), _DIGITS, Preprocess(1.0 / 255.0, (0.0,), (1.0,)),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
         ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
         ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
         ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
    ),
    "fashion-mnist": Source(
        "idx", (1, 28, 28), _FASHION, Preprocess(1.0 / 255.0, (0.0,), (1.0,)),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
         ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
         ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
    ),
    "cifar10": Source(
        "cifar-binary", (3, 32, 32), _CIFAR,
        Preprocess(1.0 / 255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ("https://www.cs.toronto.edu/~kriz/",),
        (("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
    ),
    # Pixel values are 0..16 (counts of set pixels in 4x4 blocks).
    "digits": Source("bundled", (1, 8, 8), _DIGITS, Preprocess(1.0 / 16.0, (0.0,), (1.0,))),
}
DATASETS: tuple[str, ...] = tuple(SOURCES)


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set: raw pixels, labels, class names and the preprocessing."""

    name: str
    split: str
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    preprocess: Preprocess

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def cache_dir() -> Path:
    """The download cache: ``$SUPERMASK_DATA`` or ``~/.cache/supermask/datasets``."""
    env = os.environ.get("SUPERMASK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "supermask" / "datasets"


def _candidates(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        d = Path(data_dir)
        return [d / name, d]
    return [cache_dir() / name]


def download_folder(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where ``--download`` puts data set ``name``: ``data_dir/<name>/``, else the cache."""
    return Path(data_dir) / name if data_dir is not None else cache_dir() / name


def _help(name: str, searched: list[Path], data_dir: str | os.PathLike | None) -> str:
    src = SOURCES[name]
    where = ", ".join(str(p) for p in searched)
    if src.format == "idx":
        files = "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], " \
                "t10k-labels-idx1-ubyte[.gz]"
    else:
        files = "cifar-10-batches-bin/data_batch_{1..5}.bin and test_batch.bin (the binary version)"
    target = download_folder(name, data_dir)
    cache = " (set SUPERMASK_DATA to move the cache)" if data_dir is None else ""
    return (f"looked in: {where}. Put the standard files ({files}) in --data-dir DIR or DIR/{name}/, "
            f"or pass --download to fetch them into {target}{cache}")


# ------------------------------------------------------------------------------- IDX


def _open_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e


def parse_idx(data: bytes, where: str = "IDX file") -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic 0x00000801 / 0x00000803 ...)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{where} is not an IDX file (bad magic)")
    if data[2] != 0x08:
        raise DatasetError(f"{where} holds IDX type 0x{data[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{where} has a malformed IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n = int(np.prod(dims, dtype=np.int64))
    body = data[4 + 4 * ndim:]
    if len(body) != n:
        raise DatasetError(f"{where}: header says {dims} ({n} bytes) but {len(body)} bytes follow (truncated?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def _load_idx(name: str, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    src = SOURCES[name]
    img_stem, lab_stem = _IDX_FILES[split]
    img_path, lab_path = _find_file(folder, img_stem), _find_file(folder, lab_stem)
    assert img_path is not None and lab_path is not None
    images = parse_idx(_open_maybe_gz(img_path), str(img_path))
    labels = parse_idx(_open_maybe_gz(lab_path), str(lab_path))
    c, h, w = src.shape
    if images.ndim != 3 or images.shape[1:] != (h, w):
        raise DatasetError(f"{img_path}: expected images of {h}x{w}, found shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{lab_path}: {labels.shape[0] if labels.ndim == 1 else labels.shape} labels "
                           f"for {images.shape[0]} images")
    return images.reshape(-1, c, h, w), labels


def _has_idx(folder: Path, split: str) -> bool:
    return all(_find_file(folder, s) is not None for s in _IDX_FILES[split])


# ------------------------------------------------------------------------------- CIFAR-10 binary

_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _cifar_folder(folder: Path) -> Path:
    sub = folder / "cifar-10-batches-bin"
    return sub if sub.is_dir() else folder


def _has_cifar(folder: Path, split: str) -> bool:
    f = _cifar_folder(folder)
    return all((f / b).is_file() for b in _CIFAR_BATCHES[split])


def _load_cifar(split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    f = _cifar_folder(folder)
    images, labels = [], []
    for b in _CIFAR_BATCHES[split]:
        try:
            raw = np.fromfile(f / b, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {f / b}: {e}") from e
        if raw.size == 0 or raw.size % _CIFAR_RECORD:
            raise DatasetError(f"{f / b} is not a CIFAR-10 binary batch ({raw.size} bytes is not a multiple of "
                               f"{_CIFAR_RECORD})")
        rec = raw.reshape(-1, _CIFAR_RECORD)
        if rec[:, 0].max() > 9:
            raise DatasetError(f"{f / b} has labels outside 0..9")
        labels.append(rec[:, 0])
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


# ------------------------------------------------------------------------------- bundled


def _load_bundled(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    ref = resources.files("supermask") / "_bundled" / f"{name}.npz"
    with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    # A fixed, class-balanced split: within each class, every fifth image in file order
    # (its 1st, 6th, 11th, ...) is in the test set.
    rank = np.zeros(labels.shape[0], dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(idx.size)
    test = rank % 5 == 0
    sel = test if split == "test" else ~test
    return np.ascontiguousarray(images[sel]), labels[sel]


# ------------------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Download ``url`` to ``dest``; the file appears only complete and with the right MD5."""
    log.info("downloading %s", url)
    h = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as r, atomic_open(dest, "wb") as out:
        for block in iter(lambda: r.read(1 << 20), b""):
            h.update(block)
            out.write(block)
        if h.hexdigest() != md5:  # raising here discards the temporary file
            raise DatasetError(f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5} "
                               "(a cut or corrupted download)")


def _extract_cifar(archive: Path, out_dir: Path) -> None:
    # Only the batch files are taken, by base name, so no archive path can escape out_dir.
    out_dir.mkdir(exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            base = Path(m.name).name
            if m.isfile() and Path(m.name).parent.name == "cifar-10-batches-bin" and base.endswith(".bin"):
                f = tar.extractfile(m)
                if f is None:
                    continue
                with f, atomic_open(out_dir / base, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)


def download_dataset(name: str, folder: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Fetch data set ``name`` into ``folder`` (default: the cache) and verify every file.

    Files already present with the right MD5 are kept. Each file is tried on every mirror
    in turn; all failing raises :class:`DatasetError` listing the errors.
    """
    src = _source(name)
    if not src.files:
        raise DatasetError(f"{name} ships with the package and needs no download")
    dest = Path(folder) if folder is not None else download_folder(name)
    dest.mkdir(parents=True, exist_ok=True)
    for fname, md5 in src.files:
        target = dest / fname
        if not (target.is_file() and _md5(target) == md5):
            _fetch_from_mirrors(name, src, fname, md5, target, dest, timeout)
        # Extracted again whenever a batch is missing, so an extraction that was cut short
        # (the archive complete, the batches not) recovers on the next try.
        if src.format == "cifar-binary" and not all(_has_cifar(dest, s) for s in SPLITS):
            _extract_cifar(target, dest / "cifar-10-batches-bin")
    return dest


def _fetch_from_mirrors(name: str, src: Source, fname: str, md5: str, target: Path, dest: Path,
                        timeout: float) -> None:
    """Fetch ``fname`` to ``target`` from the first mirror that serves it complete."""
    errors = []
    for mirror in src.mirrors:
        try:
            _fetch(mirror + fname, target, md5, timeout)
            break
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError, DatasetError) as e:
            errors.append(f"{mirror + fname}: {e}")
    else:
        raise DatasetError(f"could not download {fname} for {name}: " + "; ".join(errors)
                           + f". Download it yourself and put it in {dest}")


# ------------------------------------------------------------------------------- load


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SOURCES[name]


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load one split (``"train"`` or ``"test"``) of data set ``name`` (see module docstring)."""
    src = _source(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if src.format == "bundled":
        images, labels = _load_bundled(name, split)
    else:
        has = _has_idx if src.format == "idx" else _has_cifar
        searched = _candidates(name, data_dir)
        folder = next((p for p in searched if has(p, split)), None)
        if folder is None and download:
            folder = download_dataset(name, download_folder(name, data_dir))
            if not has(folder, split):
                raise DatasetError(f"the download of {name} into {folder} is incomplete")
        if folder is None:
            raise DatasetError(f"dataset {name!r} ({split}) not found; " + _help(name, searched, data_dir))
        if src.format == "idx":
            images, labels = _load_idx(name, split, folder)
        else:
            images, labels = _load_cifar(split, folder)
    labels = labels.astype(np.int64)
    if labels.size and labels.max() >= len(src.classes):
        raise DatasetError(f"{name} ({split}) has label {int(labels.max())} but only {len(src.classes)} classes")
    images.setflags(write=False)
    labels.setflags(write=False)
    return Dataset(name, split, images, labels, src.classes, src.preprocess)
