"""Inputs for inference: array checks and reading ``.npy`` and image files. Torch-free.

Arrays hold raw values (pixels as stored in the data set, usually uint8); the model's graph
does the preprocessing. Images are read with Pillow when it is installed; without it, PNG
(8-bit, non-interlaced) and binary PGM/PPM are decoded here, so the edge install needs no
imaging library for those.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".pnm", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MAX_INPUT_BYTES = 1 << 31


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
        # ITU-R 601 luma, the usual RGB -> grey conversion (Pillow's "L" mode uses it too)
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


class ImageSizeError(ValueError):
    """An image file declares another size than the caller expects. Raised from the header,
    before any pixel data is decompressed or decoded."""

    def __init__(self, width: int, height: int, expected: tuple[int, int]):
        self.width, self.height, self.expected = width, height, tuple(expected)
        super().__init__(f"image is {width}x{height} pixels; expected {expected[0]}x{expected[1]}")


def _check_size(width: int, height: int, size: tuple[int, int] | None) -> None:
    if size is not None and (width, height) != tuple(size):
        raise ImageSizeError(width, height, size)


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the PNG row filters of ``rows`` (H, 1 + stride): filter byte, then filtered bytes.

    None, Sub and Up are numpy operations on whole rows (Sub is a running sum mod 256 per
    channel); Average and Paeth depend on the byte just decoded to their left, so they run a
    Python loop over the row's bytes (on bytes objects, not numpy scalars). The caller bounds
    the image size, so that loop stays short.
    """
    height, stride = rows.shape[0], rows.shape[1] - 1
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        f, line = int(rows[y, 0]), rows[y, 1:]
        if f == 0:
            cur = line
        elif f == 1:  # Sub: x + left
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif f == 2:  # Up: x + above
            cur = line + prev
        elif f in (3, 4):
            row, up = bytearray(line.tobytes()), prev.tobytes()
            first = min(bpp, stride)
            if f == 3:  # Average: x + floor((left + above) / 2)
                for i in range(first):
                    row[i] = (row[i] + (up[i] >> 1)) & 0xFF
                for i in range(bpp, stride):
                    row[i] = (row[i] + ((row[i - bpp] + up[i]) >> 1)) & 0xFF
            else:  # Paeth: x + whichever of left, above, upper-left is nearest left + above - upper-left
                for i in range(first):  # no left pixel: the predictor is the byte above
                    row[i] = (row[i] + up[i]) & 0xFF
                for i in range(bpp, stride):
                    a, b, c = row[i - bpp], up[i], up[i - bpp]
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    row[i] = (row[i] + (a if pa <= pb and pa <= pc else (b if pb <= pc else c))) & 0xFF
            cur = np.frombuffer(bytes(row), np.uint8)
        else:
            raise ValueError(f"PNG row filter {f} is unknown")
        out[y] = cur
        prev = out[y]
    return out


def decode_png(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG (8-bit grey, grey+alpha, RGB, RGBA or palette; not interlaced) as (H, W[, C]) uint8.

    ``size`` is the (width, height) the caller expects: a PNG whose header declares another
    size raises :class:`ImageSizeError` before anything is decompressed. The image data is
    decompressed to at most the size its header declares; a stream that holds more is an error,
    so a small file cannot expand into a huge buffer (a "zlib bomb").
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, ihdr, palette = 8, [], None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG chunk")
        if kind == b"IHDR":
            if len(body) != 13:
                raise ValueError("bad PNG header (IHDR)")
            ihdr = struct.unpack(">IIBBBBB", body)
            _check_size(ihdr[0], ihdr[1], size)  # before reading further, let alone decompressing
        elif kind == b"PLTE":
            if length % 3 or not length:
                raise ValueError("bad PNG palette")
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    width, height, depth, color, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"PNG with bit depth {depth}, colour type {color}, interlace {interlace} "
                         "is not supported without Pillow (8-bit, non-interlaced only)")
    if width == 0 or height == 0:
        raise ValueError(f"PNG declares an empty image ({width}x{height} pixels)")
    if width * height * channels > _MAX_INPUT_BYTES:
        raise ValueError("PNG too large")
    stride = width * channels
    expected = height * (stride + 1)  # each row: a filter byte, then the pixels
    inflater = zlib.decompressobj()
    raw = inflater.decompress(b"".join(idat), expected)
    if len(raw) < expected:
        raise ValueError(f"PNG image data is shorter than its {width}x{height} header says")
    if inflater.decompress(inflater.unconsumed_tail, 1):
        raise ValueError(f"PNG image data is longer than its {width}x{height} header says")
    img = _unfilter(np.frombuffer(raw, np.uint8).reshape(height, stride + 1), channels)
    img = img.reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG without a palette")
        img = palette[np.minimum(img[:, :, 0], len(palette) - 1)]
    return img if channels > 1 or color == 3 else img[:, :, 0]


def _pnm_header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """(kind, width, height, maxval, offset of the last header byte) of a binary PGM/PPM."""
    fields, pos = [], 2
    kind = data[:2]
    if kind not in (b"P5", b"P6"):
        raise ValueError("not a binary PGM/PPM file")
    while len(fields) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(data) and data[end:end + 1].isdigit():
            end += 1
        if end == pos:
            raise ValueError("bad PGM/PPM header")
        fields.append(int(data[pos:end]))
        pos = end
    w, h, maxval = fields
    return kind, w, h, maxval, pos


def decode_pnm(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A binary PGM (P5) or PPM (P6) with maxval 255 as (H, W[, 3]) uint8.

    ``size``: the (width, height) expected, checked against the header as in :func:`decode_png`.
    """
    kind, w, h, maxval, pos = _pnm_header(data)
    _check_size(w, h, size)
    if maxval != 255:
        raise ValueError("only 8-bit PGM/PPM (maxval 255) is supported")
    if w == 0 or h == 0:
        raise ValueError(f"PGM/PPM declares an empty image ({w}x{h} pixels)")
    c = 1 if kind == b"P5" else 3
    body = data[pos + 1: pos + 1 + w * h * c]
    if len(body) != w * h * c:
        raise ValueError("truncated PGM/PPM data")
    img = np.frombuffer(body, np.uint8).reshape(h, w, c)
    return img[:, :, 0] if c == 1 else img


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG or binary PGM/PPM; None for other data or a
    header too damaged to say (the decoder then reports it)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if data[:2] in (b"P5", b"P6"):
            return _pnm_header(data)[1:3]
    except ValueError:
        pass
    return None


def _wrong_size(path: Path, width: int, height: int, size: tuple[int, int]) -> InputError:
    return InputError(f"{path}: image is {width}x{height} pixels; the model expects {size[0]}x{size[1]} "
                      "(resize it first)")


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as (H, W[, C]) uint8, with Pillow when installed.

    ``size``: the (width, height) the caller expects; an image of another size raises
    :class:`InputError` as soon as its header is read, before its pixels are decoded.
    """
    data = path.read_bytes()
    declared = _declared_size(data)  # PNG and PGM/PPM: refuse a wrong size before any decoder runs
    if size is not None and declared is not None and tuple(declared) != tuple(size):
        raise _wrong_size(path, declared[0], declared[1], size)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        import io

        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                if size is not None and tuple(im.size) != tuple(size):
                    raise ImageSizeError(im.size[0], im.size[1], size)
                if im.mode not in ("L", "RGB", "RGBA", "LA"):
                    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                return np.asarray(im, dtype=np.uint8)
        except ImageSizeError as e:
            raise _wrong_size(path, e.width, e.height, e.expected) from None
        except Exception as e:  # Pillow raises many types for a bad file
            raise InputError(f"{path}: cannot read image: {str(e)[:200]}") from None
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return decode_png(data, size)
        if data[:2] in (b"P5", b"P6"):
            return decode_pnm(data, size)
    except ImageSizeError as e:
        raise _wrong_size(path, e.width, e.height, e.expected) from None
    except (ValueError, zlib.error, struct.error) as e:
        raise InputError(f"{path}: cannot read image: {e}") from None
    raise InputError(f"{path}: cannot read this image format without Pillow (PNG and PGM/PPM are "
                     "built in); install Pillow or save the input as .npy")


def read_input(path: str | os.PathLike, input_shape: tuple[int, ...]) -> np.ndarray:
    """One input file as a raw batch (N, *input_shape): a ``.npy`` array (one example or a
    batch) or an image file (one example, of exactly the model's height and width)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give .npy or image files")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy array ({str(e)[:200]})") from None
        try:
            return to_batch(a, input_shape)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if len(input_shape) != 3:
            raise InputError(f"{path}: this model takes inputs of shape {_fmt(input_shape)}, not images")
        _, h, w = input_shape
        return _image_to_chw(read_image(path, (w, h)), input_shape, path)[None]
    raise InputError(f"{path}: unknown input type {path.suffix or '(no suffix)'!r}; give .npy arrays or "
                     f"images ({', '.join(IMAGE_SUFFIXES)})")
