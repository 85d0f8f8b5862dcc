"""Image classification data sets as numpy arrays. Torch-free (numpy; Pillow for image folders).

:func:`load` returns a :class:`Dataset`: raw pixel values ``images`` (N, C, H, W) uint8
(user data may also be float32, or feature vectors (N, F)), ``labels`` (N,) int64, the
class names, and the :class:`~supermask.arch.Preprocess` that turns pixels into network
inputs (recorded in every architecture, so the runtime applies exactly what training used).

Where files are looked for, in order: ``data_dir/<name>/``, then ``data_dir/`` itself, then
(when no ``data_dir`` is given) the cache folder (``$SUPERMASK_DATA`` or
``~/.cache/supermask/datasets``)``/<name>/``. MNIST-style sets are the four standard IDX
files, gzipped or not; CIFAR-10 is the *binary* version (``data_batch_1.bin`` ...
``test_batch.bin``, never the pickled Python version). With ``download=True`` a missing set
is fetched from its canonical mirrors into ``data_dir/<name>/`` (the cache's ``<name>/`` when
no ``data_dir`` is given) and checked against a known MD5 before it is used. ``digits`` (the
8x8 UCI handwritten digits) ships with the package.

A name that is a path (see :func:`is_path_dataset`) loads the user's own data: a ``.npz``
file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optionally ``classes``), or an
image folder ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/...`` (needs Pillow: the
``[images]`` extra). ``data_dir`` and ``download`` do not apply to them.
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
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .arch import MAX_CLASSES, Preprocess
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
    """One split of a data set: raw pixels, labels, class names and the preprocessing.

    ``images`` is uint8 or float32 (user data only), (N, C, H, W) or, for feature vectors
    from a ``.npz`` file, (N, F); ``name`` is the registered name or the path as given.
    """

    name: str
    split: str
    images: np.ndarray  # uint8 or float32, (N, C, H, W) or (N, F)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    preprocess: Preprocess

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, ``images.shape[1:]``: (C, H, W) or (F,)."""
        return tuple(self.images.shape[1:])


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


# ------------------------------------------------------------------------------- user data

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".webp")
_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_LAYOUT = ("a .npz file (arrays x_train, y_train, x_test, y_test, optionally classes) or an image folder "
           "(DIR/train/<class>/*.png and DIR/test/<class>/*.png)")
# Pillow maps these to 8 bits by clipping, which would silently ruin the pixels.
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def is_path_dataset(name: str) -> bool:
    """Whether ``name`` is a path to user data rather than a registered name (those win)."""
    if not name or name in SOURCES:
        return False
    return (name.endswith(".npz") or "/" in name or os.sep in name
            or Path(name).expanduser().is_dir())


def _npy_header(z: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` in ``z``, from the .npy header alone (no data read)."""
    member = key + ".npy" if key + ".npy" in z.zip.namelist() else key
    with z.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is not None:
            shape, _, dtype = read(f)
            return tuple(shape), dtype
    a = z[key]
    return a.shape, a.dtype


def _check_x(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Validate the header of images ``key``; return one sample's shape, (C, H, W) or (F,)."""
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise DatasetError(f"{path}: {key} has dtype {dtype}; images must be uint8 (0..255) or float "
                           f"(float16/32/64): convert with {key}.astype(np.uint8) or .astype(np.float32)")
    if len(shape) not in (2, 3, 4):
        raise DatasetError(f"{path}: {key} has shape {shape}; expected images (N, H, W) or (N, C, H, W), "
                           "or feature vectors (N, F)")
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] > 4:
        raise DatasetError(f"{path}: {key} has shape {shape}, which looks channels-last (N, H, W, C); "
                           f"images must be (N, C, H, W): use {key}.transpose(0, 3, 1, 2)")
    if shape[0] == 0:
        raise DatasetError(f"{path}: {key} is empty (0 samples); each split needs at least one")
    if 0 in shape:
        raise DatasetError(f"{path}: {key} has shape {shape}; no dimension may be 0")
    return (1, *shape[1:]) if len(shape) == 3 else tuple(shape[1:])


def _check_y(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, n: int, xkey: str) -> None:
    """Validate the header of labels ``key`` that go with ``n`` samples in ``xkey``."""
    if not np.issubdtype(dtype, np.integer):
        raise DatasetError(f"{path}: {key} has dtype {dtype}; labels must be integer class indices "
                           f"(0..K-1): convert with {key}.astype(np.int64)")
    if len(shape) != 1:
        hint = f" (one-hot? use {key}.argmax(1))" if len(shape) == 2 else ""
        raise DatasetError(f"{path}: {key} has shape {shape}; labels must be 1-D, one per sample{hint}")
    if shape[0] != n:
        raise DatasetError(f"{path}: {xkey} has {n} samples but {key} has {shape[0]} labels; "
                           "they must be the same length")


def _npz_classes(path: Path, z: np.lib.npyio.NpzFile) -> tuple[str, ...]:
    shape, dtype = _npy_header(z, "classes")
    if dtype.kind not in "US" or len(shape) != 1 or not 1 <= shape[0] <= MAX_CLASSES:
        raise DatasetError(f"{path}: classes has dtype {dtype} and shape {shape}; it must be a 1-D array of "
                           f"1 to {MAX_CLASSES} strings, e.g. np.array(['cat', 'dog'])")
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in z["classes"].tolist())
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise DatasetError(f"{path}: classes names {dup!r} more than once; class names must be unique")
    return classes


def _label_classes(path: Path, ys: dict[str, np.ndarray], classes: tuple[str, ...] | None) -> tuple[str, ...]:
    """Check the labels of both splits against ``classes``; without them, name classes "0".."K-1"."""
    for s, y in ys.items():
        lo, hi = int(y.min()), int(y.max())
        if classes is not None and (lo < 0 or hi >= len(classes)):
            raise DatasetError(f"{path}: y_{s} has label {lo if lo < 0 else hi}, outside the {len(classes)} "
                               f"classes: labels must be in 0..{len(classes) - 1}")
        if lo < 0:
            raise DatasetError(f"{path}: y_{s} has label {lo}; labels must be class indices 0..K-1")
    if classes is not None:
        return classes
    k = max(int(y.max()) for y in ys.values()) + 1
    if k > MAX_CLASSES:
        raise DatasetError(f"{path}: the largest label is {k - 1}, so {k} classes, more than {MAX_CLASSES}; "
                           "labels must be class indices 0..K-1")
    return tuple(str(i) for i in range(k))


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One split of a ``.npz`` data set; both splits' headers and labels are checked."""
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is not a .npz file (not a zip archive); give {_LAYOUT}, e.g. saved with "
                           "np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_ARRAYS if k not in z.files]
            if missing:
                raise DatasetError(f"{path} lacks {', '.join(missing)}; it holds {', '.join(z.files) or 'no arrays'}. "
                                   "A .npz data set needs x_train, y_train, x_test and y_test (optionally classes)")
            heads = {k: _npy_header(z, k) for k in (*_NPZ_ARRAYS, *(("classes",) if "classes" in z.files else ()))}
            for k, (_, dtype) in heads.items():
                # Checked before any data is read: np.load would refuse them with a vaguer message.
                if dtype.hasobject:
                    raise DatasetError(f"{path}: {k} is an object array (dtype {dtype}), which would need pickle; "
                                       f"save plain arrays instead, e.g. np.asarray({k}, dtype=...)")
            sample = {s: _check_x(path, f"x_{s}", *heads[f"x_{s}"]) for s in SPLITS}
            for s in SPLITS:
                _check_y(path, f"y_{s}", *heads[f"y_{s}"], heads[f"x_{s}"][0][0], f"x_{s}")
            if sample["train"] != sample["test"]:
                raise DatasetError(f"{path}: train and test samples differ in shape: x_train {heads['x_train'][0]}, "
                                   f"x_test {heads['x_test'][0]}; both splits need the same sample shape")
            if (heads["x_train"][1] == np.uint8) != (heads["x_test"][1] == np.uint8):
                raise DatasetError(f"{path}: x_train is {heads['x_train'][1]} but x_test is {heads['x_test'][1]}; "
                                   "give both splits the same kind (uint8 or float), so they get the same scaling")
            classes = _npz_classes(path, z) if "classes" in heads else None
            ys = {s: z[f"y_{s}"] for s in SPLITS}
            x = z[f"x_{split}"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {path} as a .npz file: {e}") from e
    classes = _label_classes(path, ys, classes)
    return _inputs(x, sample[split], path, f"x_{split}"), ys[split], classes


def _inputs(x: np.ndarray, sample: tuple[int, ...], where: Path, key: str) -> np.ndarray:
    """Checked inputs ``x`` reshaped to (N, *sample): uint8 as it is, any float as finite float32."""
    x = x.reshape(x.shape[0], *sample)
    if x.dtype != np.uint8:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)  # float64 values beyond float32 become inf, caught next
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DatasetError(f"{where}: {key} holds {bad} values that are NaN or infinite (as float32); "
                               "all values must be finite")
    return np.ascontiguousarray(x)


def _user_dataset(name: str, split: str, images: np.ndarray, labels: np.ndarray, classes) -> Dataset:
    """A read-only data set of user data, with the preprocessing its dtype implies: 1/255 for
    uint8, 1 for float; mean 0 and std 1 per channel (channels: dim 1 of images, else 1)."""
    c = images.shape[1] if images.ndim == 4 else 1
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return Dataset(name, split, images, labels, tuple(classes), Preprocess(scale, (0.0,) * c, (1.0,) * c))


def _scan_split(folder: Path) -> list[tuple[str, Path]]:
    """(class, file) for each image in ``folder/<class>/``, classes and files sorted by name."""
    if not folder.is_dir():
        return []
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [(d.name, f) for f in sorted(d.iterdir())
                if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()]
    return out


def _no_images(folder: Path) -> DatasetError:
    if not folder.is_dir():
        where = f"{folder} does not exist"
    else:
        subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        shown = ", ".join(subs[:10]) + (f" and {len(subs) - 10} more" if len(subs) > 10 else "")
        where = f"searched {folder}/<class>/ (class folders: {shown or 'none'})"
    return DatasetError(f"no images found: {where}; files ending in {', '.join(IMAGE_EXTENSIONS)} are read. "
                        f"An image folder needs DIR/train/<class>/*.png and DIR/test/<class>/*.png")


def _load_image_folder(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One split of an image folder; the headers of both splits are checked, one split decoded."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DatasetError(f"reading the image folder {root} needs Pillow: pip install \"supermask[images]\"") from e
    # Pillow's decoders raise all of these for broken files.
    broken = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

    def peek(f: Path) -> tuple[str, tuple[int, int]]:
        try:
            with Image.open(f) as im:
                mode, size = im.mode, im.size
        except broken as e:
            raise DatasetError(f"cannot decode image {f}: {e}; fix or remove the file") from e
        if mode in _DEEP_MODES:
            raise DatasetError(f"{f} is a {mode} (16-bit or floating-point) image; only 8-bit images are "
                               "read: convert it to 8-bit grey or RGB")
        return mode, size

    files = {s: _scan_split(root / s) for s in SPLITS}
    heads = {}
    for s in SPLITS:
        if not files[s]:
            raise _no_images(root / s)
        heads[s] = [peek(f) for _, f in files[s]]
        first, size = files[s][0][1], heads[s][0][1]
        bad = next((i for i, (_, sz) in enumerate(heads[s]) if sz != size), None)
        if bad is not None:
            w, h = heads[s][bad][1]
            raise DatasetError(f"{files[s][bad][1]} is {w}x{h} pixels but {first} is {size[0]}x{size[1]}; all "
                               "images must have the same size: resize them first")
    (tw, th), (vw, vh) = heads["train"][0][1], heads["test"][0][1]
    if (tw, th) != (vw, vh):
        raise DatasetError(f"train images are {tw}x{th} pixels ({files['train'][0][1]}) but test images are "
                           f"{vw}x{vh} ({files['test'][0][1]}); both splits need the same image size")
    # One channel only when every image of both splits is grey, so the splits always agree.
    mode = "L" if all(m == "L" for s in SPLITS for m, _ in heads[s]) else "RGB"
    classes = tuple(sorted({c for s in SPLITS for c, _ in files[s]}))
    index = {c: i for i, c in enumerate(classes)}
    images = np.empty((len(files[split]), 1 if mode == "L" else 3, th, tw), dtype=np.uint8)
    for i, (_, f) in enumerate(files[split]):
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert(mode))
        except broken as e:
            raise DatasetError(f"cannot decode image {f}: {e}; fix or remove the file") from e
        images[i] = a[None] if mode == "L" else a.transpose(2, 0, 1)
    labels = np.array([index[c] for c, _ in files[split]], dtype=np.int64)
    return images, labels, classes


def _load_path(name: str, split: str) -> Dataset:
    path = Path(name).expanduser()
    if path.is_dir():
        images, labels, classes = _load_image_folder(path, split)
    elif path.exists():
        images, labels, classes = _load_npz(path, split)
    else:
        raise DatasetError(f"dataset path {name} does not exist; give {_LAYOUT}")
    return _user_dataset(name, split, images, labels, classes)


def from_arrays(x: np.ndarray, y: np.ndarray, *, split: str = "train", name: str = "arrays",
                classes=None) -> Dataset:
    """One split from in-memory arrays, with the rules of a ``.npz`` data set: images (N, H, W),
    (N, C, H, W) or feature vectors (N, F), uint8 or float; integer labels (N,); ``classes``
    names them (default ``"0".."K-1"`` from the largest label)."""
    x, y = np.asarray(x), np.asarray(y)
    where = Path(f"{split} data")
    sample = _check_x(where, "inputs", x.shape, x.dtype)
    _check_y(where, "labels", y.shape, y.dtype, x.shape[0], "inputs")
    if classes is not None:
        classes = tuple(str(c) for c in classes)
        if not classes or len(set(classes)) != len(classes):
            raise DatasetError(f"{where}: classes must be a non-empty list of unique names")
    classes = _label_classes(where, {split: y}, classes)
    return _user_dataset(name, split, _inputs(x, sample, where, "inputs"), y, classes)


# ------------------------------------------------------------------------------- load


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SOURCES[name]


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load one split (``"train"`` or ``"test"``) of data set ``name``, a registered name or a
    path to a ``.npz`` file or an image folder (see module docstring)."""
    if name not in SOURCES and not is_path_dataset(name):
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or give {_LAYOUT}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name not in SOURCES:
        return _load_path(name, split)
    src = SOURCES[name]
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
