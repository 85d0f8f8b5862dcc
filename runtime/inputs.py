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
    float dtypes are accepted; anything else raises :class:`InputError`.
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
    return np.ascontiguousarray(a, dtype=np.float32)


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


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def decode_png(data: bytes) -> np.ndarray:
    """A PNG (8-bit grey, grey+alpha, RGB, RGBA or palette; not interlaced) as (H, W[, C]) uint8."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, ihdr, palette = 8, [], None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG chunk")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
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
    if width * height * channels > _MAX_INPUT_BYTES:
        raise ValueError("PNG too large")
    stride = width * channels
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG image data has the wrong length")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    bpp = channels
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:].astype(np.int64)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f in (1, 3, 4):
            cur = line.copy()
            for i in range(stride):
                a = int(cur[i - bpp]) if i >= bpp else 0
                b = int(prev[i])
                if f == 1:
                    cur[i] = (cur[i] + a) & 0xFF
                elif f == 3:
                    cur[i] = (cur[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = int(prev[i - bpp]) if i >= bpp else 0
                    cur[i] = (cur[i] + _paeth(a, b, c)) & 0xFF
        else:
            raise ValueError(f"PNG row filter {f} is unknown")
        out[y] = cur
        prev = cur
    img = out.reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG without a palette")
        img = palette[np.minimum(img[:, :, 0], len(palette) - 1)]
    return img if channels > 1 or color == 3 else img[:, :, 0]


def decode_pnm(data: bytes) -> np.ndarray:
    """A binary PGM (P5) or PPM (P6) with maxval 255 as (H, W[, 3]) uint8."""
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
    if maxval != 255:
        raise ValueError("only 8-bit PGM/PPM (maxval 255) is supported")
    c = 1 if kind == b"P5" else 3
    body = data[pos + 1: pos + 1 + w * h * c]
    if len(body) != w * h * c:
        raise ValueError("truncated PGM/PPM data")
    img = np.frombuffer(body, np.uint8).reshape(h, w, c)
    return img[:, :, 0] if c == 1 else img


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W[, C]) uint8, with Pillow when installed."""
    data = path.read_bytes()
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        import io

        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("L", "RGB", "RGBA", "LA"):
                    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                return np.asarray(im, dtype=np.uint8)
        except Exception as e:  # Pillow raises many types for a bad file
            raise InputError(f"{path}: cannot read image: {str(e)[:200]}") from None
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return decode_png(data)
        if data[:2] in (b"P5", b"P6"):
            return decode_pnm(data)
    except (ValueError, zlib.error, struct.error) as e:
        raise InputError(f"{path}: cannot read image: {e}") from None
    raise InputError(f"{path}: cannot read this image format without Pillow (PNG and PGM/PPM are "
                     "built in); install Pillow or save the input as .npy")


def read_input(path: str | os.PathLike, input_shape: tuple[int, ...]) -> np.ndarray:
    """One input file as a raw batch (N, *input_shape): a ``.npy`` array (one example or a
    batch) or an image file (one example)."""
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
        return _image_to_chw(read_image(path), input_shape, path)[None]
    raise InputError(f"{path}: unknown input type {path.suffix or '(no suffix)'!r}; give .npy arrays or "
                     f"images ({', '.join(IMAGE_SUFFIXES)})")
