"""Inputs for inference: array checks, reading ``.npy`` and image files, and the check of
input values against the range the model was trained on. Torch-free.

Arrays hold raw values (pixels as stored in the data set, usually uint8); the model's graph
does the preprocessing. Images are read with Pillow (the ``[images]`` extra), imported only
when an image is read, so the runtime itself needs no imaging library.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError, RuntimeUnavailableError

IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".pnm", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_NPY_MAGIC = b"\x93NUMPY"


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def to_batch(x: object, input_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as a contiguous float32 batch (N, *input_shape).

    Accepts a batch (N, *input_shape), a single example (input_shape), and for one-channel
    image models also arrays without the channel axis ((N, H, W) or (H, W)). Integer and
    float dtypes are accepted. Anything else raises :class:`InputError`: another shape, another
    dtype, an empty batch, and NaN or infinite values (also finite values beyond float32's range).
    """
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"input is not a numeric array: {str(e)[:200]}") from None
    if a.dtype.kind not in "uif":
        raise InputError(f"input dtype {a.dtype} is not supported; give integer (e.g. uint8 pixels) or float values")
    shape = tuple(input_shape)
    if a.shape == shape:
        a = a[None]
    elif len(shape) == 3 and shape[0] == 1 and a.shape[-2:] == shape[1:] and a.ndim in (2, 3):
        a = a.reshape((-1,) + shape)  # one-channel images given without their channel axis
    elif a.ndim != len(shape) + 1 or a.shape[1:] != shape:
        raise InputError(f"input has shape {_fmt(a.shape)}; this model expects (N, {', '.join(map(str, shape))}) "
                         f"or one example of shape {_fmt(shape)}")
    if a.shape[0] == 0:
        raise InputError(f"input holds no examples (shape {_fmt(a.shape)}); give at least one")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf, reported below
        batch = np.ascontiguousarray(a, dtype=np.float32)
    if a.dtype.kind == "f":  # integers are always finite; floats may also overflow float32 here
        bad = batch.size - int(np.count_nonzero(np.isfinite(batch)))
        if bad:
            raise InputError(f"input holds {bad:,} non-finite value{'s' if bad > 1 else ''} (NaN or "
                             "infinity, or beyond the float32 range); give finite numbers")
    return batch


# ---------------------------------------------------------------------------------- files


def _image_to_chw(img: np.ndarray, input_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 image -> (C, H, W) with the model's channel count."""
    if len(input_shape) != 3:
        raise InputError(f"{path}: this model takes inputs of shape {_fmt(input_shape)}, not images")
    c, h, w = input_shape
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] in (2, 4):  # drop alpha
        img = img[:, :, :-1]
    if img.shape[2] == 3 and c == 1:
        # ITU-R 601 luma, the usual RGB -> grey conversion, computed exactly (Pillow's "L"
        # conversion uses the same weights in fixed point, which can differ by one)
        rgb = img.astype(np.float64)
        img = np.rint(rgb @ np.array([0.299, 0.587, 0.114]))[:, :, None].clip(0, 255).astype(np.uint8)
    elif img.shape[2] == 1 and c == 3:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] != c:
        raise InputError(f"{path}: image has {img.shape[2]} channels; the model expects {c}")
    if img.shape[:2] != (h, w):
        raise InputError(f"{path}: image is {img.shape[1]}x{img.shape[0]} pixels; the model expects {w}x{h} "
                         "(resize it first)")
    return np.ascontiguousarray(img.transpose(2, 0, 1))


#: Pillow modes whose values do not fit 8 bits; converting them would clip, silently.
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
#: Formats Pillow can open that are left out: EPS is rendered by running Ghostscript.
_EXCLUDED_FORMATS = ("EPS",)


def _pillow(path: Path):
    """Pillow's ``Image`` module, or :class:`RuntimeUnavailableError` saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeUnavailableError(f"{path}: reading images needs Pillow: pip install \"supermask[images]\" "
                                      "(or give the input as a .npy array)") from None
    return Image


def _image_suffixes() -> tuple[str, ...]:
    """Suffixes read as images: the usual ones, and every one Pillow knows when it is installed."""
    try:
        from PIL import Image
    except ImportError:
        return IMAGE_SUFFIXES
    known = {s.lower() for s, fmt in Image.registered_extensions().items() if fmt not in _EXCLUDED_FORMATS}
    return IMAGE_SUFFIXES + tuple(sorted(known - set(IMAGE_SUFFIXES)))


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as (H, W) or (H, W, C) uint8 (C: 2 grey+alpha, 3 RGB, 4 RGBA), read with
    Pillow; :class:`RuntimeUnavailableError` when Pillow is not installed.

    Any format Pillow opens is read (except EPS), its first frame for animations. ``size``:
    the (width, height) the caller expects; an image of another size raises
    :class:`InputError` once Pillow has read its header, before any pixel data is decoded.
    16-bit and floating-point images are refused (their values do not fit uint8).
    """
    path = Path(path)
    Image = _pillow(path)
    Image.init()
    formats = [f for f in Image.OPEN if f not in _EXCLUDED_FORMATS]
    try:
        with Image.open(path, formats=formats) as im:  # reads the header only
            if size is not None and tuple(im.size) != tuple(size):
                raise InputError(f"{path}: image is {im.size[0]}x{im.size[1]} pixels; the model expects "
                                 f"{size[0]}x{size[1]} (resize it first)")
            if im.mode in _DEEP_MODES:
                raise InputError(f"{path}: a {im.mode} (16-bit or floating-point) image; only 8-bit images are "
                                 "read: convert it to 8-bit grey or RGB, or give the values as a .npy array")
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                alpha = any(b in ("A", "a") for b in im.getbands()) or "transparency" in im.info
                im = im.convert("RGBA" if alpha else "RGB")
            return np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except Image.DecompressionBombError as e:  # a header declaring a huge image: nothing is decoded
        want = f"; the model expects {size[0]}x{size[1]}" if size is not None else ""
        raise InputError(f"{path}: image refused as far too large ({e}){want}") from None
    except Exception as e:  # Pillow raises many types (OSError, ValueError, SyntaxError, ...) for a bad file
        raise InputError(f"{path}: cannot read image: {str(e)[:200]}") from None


def _npy_error(path: Path, why: str) -> InputError:
    return InputError(f"{path}: not a valid .npy file: {why}")


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of a ``.npy`` file, checked before anything large is allocated.

    The header is parsed first; the data its shape and dtype declare must be in the file (a
    small file claiming a huge shape is refused without allocating it). Pickled (object)
    arrays are never loaded. Every problem raises :class:`InputError` with the reason: empty
    or truncated, not a .npy file, a bad header, object data, or data shorter than declared.
    """
    path = Path(path)
    fmt = np.lib.format
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(_NPY_MAGIC) + 2)  # the signature, then the format version (2 bytes)
        if size == 0:
            raise _npy_error(path, "the file is empty")
        if not head.startswith(_NPY_MAGIC[:min(len(head), len(_NPY_MAGIC))]):
            what = "; a .npz archive? give its arrays as .npy files" if head.startswith(b"PK") else ""
            raise _npy_error(path, f"it does not start with the .npy signature ({size:,} byte"
                                   f"{'s' if size != 1 else ''}{what})")
        if len(head) < len(_NPY_MAGIC) + 2:
            raise _npy_error(path, f"it is truncated ({size} byte{'s' if size != 1 else ''}, ending inside the "
                                   ".npy signature and version)")
        version = (head[6], head[7])
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise _npy_error(path, f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
        try:
            shape, _, dtype = read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            why = "its header is truncated" if str(e).startswith("EOF") else f"bad header ({str(e)[:200]})"
            raise _npy_error(path, why) from None
        if dtype.hasobject:
            raise InputError(f"{path}: the array holds Python objects (pickled data), which are never loaded; "
                             "save numbers (e.g. uint8 pixels or float32)")
        declared = dtype.itemsize * math.prod(shape)
        held = size - f.tell()
        if declared > held:
            raise InputError(f"{path}: the header declares shape {_fmt(shape)} of {dtype} ({declared:,} bytes of "
                             f"data), but the file holds only {held:,} bytes after the header; it is truncated "
                             "or damaged")
        f.seek(0)
        try:
            return fmt.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # e.g. the file changed while it was read
            raise _npy_error(path, str(e)[:200]) from None


def read_input(path: str | os.PathLike, input_shape: tuple[int, ...]) -> np.ndarray:
    """One input file as a raw batch (N, *input_shape): a ``.npy`` array (one example or a
    batch) or an image file (one example, of exactly the model's height and width)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give .npy or image files")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        a = read_npy(path)
        try:
            return to_batch(a, input_shape)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    if suffix in _image_suffixes():
        if len(input_shape) != 3:
            raise InputError(f"{path}: this model takes inputs of shape {_fmt(input_shape)}, not images")
        _, h, w = input_shape
        return _image_to_chw(read_image(path, (w, h)), input_shape, path)[None]
    raise InputError(f"{path}: unknown input type {path.suffix or '(no suffix)'!r}; give .npy arrays or "
                     f"images ({', '.join(IMAGE_SUFFIXES)}, or any format Pillow reads)")


# ------------------------------------------------------------------ training input range


class InputRangeWarning(UserWarning):
    """Inputs lie far outside the range of the inputs the model was trained on (for example
    0-255 pixels given to a model trained on values 0-16): its predictions are likely
    meaningless, however confident they look."""


def training_range(metadata: Mapping) -> tuple[float, float] | None:
    """(min, max) of the raw training inputs, as ``pack`` records them in a ticket's metadata
    (``input_min``, ``input_max``); None for tickets without them or with unusable values."""
    lo, hi = metadata.get("input_min"), metadata.get("input_max")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
        return None
    return (float(lo), float(hi)) if lo <= hi else None


def range_warning(x: np.ndarray, metadata: Mapping, what: str = "input") -> str | None:
    """A one-line warning when raw inputs ``x`` lie far outside the training range recorded in
    ``metadata`` (see :func:`training_range`), else None.

    The rule: with the training range [lo, hi] and its width w = hi - lo (1 when the range is
    a single value), inputs are "far outside" when their minimum is below lo - w or their
    maximum above hi + w. A model trained on 0-16 thus accepts -16 to 32 without a word, and a
    0-255 image is flagged. Nothing is said for tickets without a recorded range.
    """
    rng = training_range(metadata)
    a = np.asarray(x)
    if rng is None or a.size == 0:
        return None
    lo, hi = rng
    width = hi - lo if hi > lo else 1.0
    xmin, xmax = float(a.min()), float(a.max())
    if lo - width <= xmin and xmax <= hi + width:
        return None
    return (f"{what}: values range from {xmin:g} to {xmax:g}, far outside the range the model was trained on "
            f"({lo:g} to {hi:g}); its predictions are likely meaningless (is the input scaled like the "
            "training data?)")


def warn_if_out_of_range(x: np.ndarray, metadata: Mapping, what: str = "input") -> str | None:
    """:func:`range_warning`, also issued as an :class:`InputRangeWarning`; returns the message."""
    msg = range_warning(x, metadata, what)
    if msg is not None:
        warnings.warn(msg, InputRangeWarning, stacklevel=2)
    return msg
