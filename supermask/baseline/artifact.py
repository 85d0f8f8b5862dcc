"""The baseline file: what a device loads to run a baseline network. Torch-free (numpy + stdlib).

Layout (all integers little-endian)::

    b"SMBL"  format byte (1)  flag byte (0: payload stored, 1: payload LZMA2-compressed)
    u32 header length, header (compact UTF-8 JSON)
    payload (stored or compressed)
    u32 CRC-32 of every byte before it

The header holds the method, the input shape, the preprocessing, the class names and one
entry per layer: its shape, the coding of its weight and the sizes of its variable-length
sections. The payload holds, layer after layer, the weight sections and the float32 bias:

* ``float32``: the weight matrix, row-major.
* ``int8``: one float32 scale per output row, then one int8 code per weight.
* ``int4``: one float32 scale per row, then the codes (-8..7) packed two per byte, low nibble first.
* ``ternary``: one float32 scale per row, then codes 2 bits each (0: 0, 1: +1, 2: -1), four
  per byte, lowest bits first.
* ``dc`` (deep compression): the positions of the kept weights as a bit mask coded with
  :func:`supermask.codecs.encode_entropy`, the float32 codebook, then one 4-bit codebook index
  per kept weight (row-major), packed two per byte.

A weight is ``code * scale[row]`` (float32), or ``codebook[index]`` at a kept position and 0
elsewhere.
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..codecs import decode_entropy, encode_entropy
from ..errors import SupermaskError

MAGIC = b"SMBL"
FORMAT = 1
_STORED, _LZMA = 0, 1
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
CODINGS = ("float32", "int8", "int4", "ternary", "dc")


class BaselineError(SupermaskError):
    """A baseline file is not valid: wrong magic, truncated, damaged or inconsistent."""


def pack_nibbles(values: np.ndarray) -> bytes:
    """4-bit values (signed -8..7 or unsigned 0..15), two per byte, low nibble first."""
    v = (np.asarray(values).reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).tobytes()


def unpack_nibbles(data: bytes, n: int, signed: bool) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    v = np.empty(b.size * 2, dtype=np.int8 if signed else np.uint8)
    v[0::2], v[1::2] = b & 0xF, b >> 4
    v = v[:n]
    if signed:
        v[v > 7] -= 16
    return v


def pack_ternary(codes: np.ndarray) -> bytes:
    c = np.asarray(codes).reshape(-1)
    v = np.where(c < 0, 2, c).astype(np.uint8)
    v = np.append(v, np.zeros(-v.size % 4, dtype=np.uint8))
    return (v[0::4] | (v[1::4] << 2) | (v[2::4] << 4) | (v[3::4] << 6)).tobytes()


def unpack_ternary(data: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    v = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)[:n].astype(np.int8)
    if np.any(v == 3):
        raise BaselineError("bad ternary code 3 in the payload")
    v[v == 2] = -1
    return v


def _f32(a) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


def _encode_layer(t: dict) -> tuple[dict, bytes]:
    """(header entry, payload bytes) of one layer given as a dict of numpy arrays."""
    coding, bias = t["coding"], np.asarray(t["bias"], dtype=np.float32)
    if coding == "float32":
        shape = t["weight"].shape
        entry, parts = {}, [_f32(t["weight"])]
    elif coding in ("int8", "int4", "ternary"):
        codes = np.asarray(t["codes"])
        shape = codes.shape
        lo, hi = {"int8": (-128, 127), "int4": (-8, 7), "ternary": (-1, 1)}[coding]
        if codes.size and (codes.min() < lo or codes.max() > hi):
            raise BaselineError(f"{coding} codes must lie in {lo}..{hi}")
        packed = {"int8": lambda c: c.astype(np.int8).tobytes(), "int4": pack_nibbles,
                  "ternary": pack_ternary}[coding](codes)
        entry, parts = {}, [_f32(t["scale"]), packed]
    elif coding == "dc":
        mask = np.asarray(t["mask"], dtype=bool)
        shape, codebook = mask.shape, np.asarray(t["codebook"], dtype=np.float32)
        coded = encode_entropy(mask)
        if len(t["indices"]) != mask.sum() or (len(t["indices"]) and t["indices"].max() >= codebook.size):
            raise BaselineError("deep-compression indices must be one per kept weight and within the codebook")
        entry = {"mask_bytes": len(coded), "clusters": int(codebook.size), "kept": int(mask.sum())}
        parts = [coded, _f32(codebook), pack_nibbles(t["indices"])]
    else:
        raise BaselineError(f"unknown weight coding {coding!r}; known: {', '.join(CODINGS)}")
    if bias.shape != (shape[0],):
        raise BaselineError(f"bias of shape {bias.shape} does not match a weight of shape {tuple(shape)}")
    return {"shape": [int(s) for s in shape], "weight": coding, **entry}, b"".join(parts) + _f32(bias)


def encode(header: dict, tensors: list[dict]) -> bytes:
    """The file's bytes. ``header`` holds method, input_shape, preprocess and classes;
    ``tensors`` one dict per layer: ``coding``, ``bias`` and the coding's arrays (``weight``;
    ``codes`` and ``scale``; or ``mask``, ``indices`` and ``codebook``)."""
    entries, payload = zip(*(_encode_layer(t) for t in tensors))
    payload = b"".join(payload)
    packed = lzma.compress(payload, format=lzma.FORMAT_RAW, filters=_FILTERS)
    flag, body = (_LZMA, packed) if len(packed) < len(payload) else (_STORED, payload)
    head = json.dumps({**header, "layers": list(entries), "payload_bytes": len(payload)},
                      separators=(",", ":")).encode()
    data = MAGIC + bytes([FORMAT, flag]) + struct.pack("<I", len(head)) + head + body
    return data + struct.pack("<I", zlib.crc32(data))


def write(path, header: dict, tensors: list[dict]) -> int:
    """Write the file atomically; return its size in bytes."""
    data = encode(header, tensors)
    atomic_write(path, data)
    return len(data)


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BaselineError("the payload is shorter than its header says (truncated or damaged file)")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def floats(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * n), dtype="<f4").astype(np.float32)


def _decode_layer(entry: dict, cur: _Cursor) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = entry["shape"]
    n, coding = rows * cols, entry["weight"]
    if coding == "float32":
        w = cur.floats(n)
    elif coding == "int8":
        scale = cur.floats(rows)
        w = np.frombuffer(cur.take(n), dtype=np.int8).reshape(rows, cols) * scale[:, None]
    elif coding == "int4":
        scale = cur.floats(rows)
        w = unpack_nibbles(cur.take((n + 1) // 2), n, signed=True).reshape(rows, cols) * scale[:, None]
    elif coding == "ternary":
        scale = cur.floats(rows)
        w = unpack_ternary(cur.take((n + 3) // 4), n).reshape(rows, cols) * scale[:, None]
    elif coding == "dc":
        mask = decode_entropy(cur.take(entry["mask_bytes"]), n)
        if mask.sum() != entry["kept"]:
            raise BaselineError("the deep-compression mask does not hold as many weights as its header says")
        codebook = cur.floats(entry["clusters"])
        idx = unpack_nibbles(cur.take((entry["kept"] + 1) // 2), entry["kept"], signed=False)
        if idx.size and idx.max() >= codebook.size:
            raise BaselineError("a deep-compression index points past the codebook")
        w = np.zeros(n, dtype=np.float32)
        w[mask] = codebook[idx]
    else:
        raise BaselineError(f"unknown weight coding {coding!r} in the header")
    return np.asarray(w, dtype=np.float32).reshape(rows, cols), cur.floats(rows)


def read(source) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """(header, [(W, b) per layer]) with float32 weights, from a path or the file's bytes."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    name = "the data" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    if data[:4] != MAGIC:
        raise BaselineError(f"{name} is not a baseline file (it does not start with {MAGIC!r})")
    if len(data) < 14 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise BaselineError(f"{name} is truncated or damaged (its CRC-32 does not match)")
    if data[4] != FORMAT or data[5] not in (_STORED, _LZMA):
        raise BaselineError(f"{name} has format {data[4]}.{data[5]}; this reader knows format {FORMAT}")
    try:
        (hlen,) = struct.unpack("<I", data[6:10])
        header = json.loads(data[10:10 + hlen])
        body = data[10 + hlen:-4]
        if data[5] == _LZMA:
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
            body = dec.decompress(body)
            if not dec.eof:
                raise BaselineError("the compressed payload ends early")
        if len(body) != header["payload_bytes"]:
            raise BaselineError("the payload has not the size its header says")
        cur = _Cursor(body)
        layers = [_decode_layer(e, cur) for e in header["layers"]]
        if cur.pos != len(body):
            raise BaselineError("bytes left over after the last layer")
        _check_shapes(header, layers)
    except BaselineError as e:
        raise BaselineError(f"{name}: {e}") from None
    except (ValueError, KeyError, TypeError, IndexError, lzma.LZMAError, SupermaskError) as e:
        raise BaselineError(f"{name} has an invalid header or payload: {e}") from None
    return header, layers


def _check_shapes(header: dict, layers) -> None:
    inputs = int(np.prod(header["input_shape"]))
    for w, _ in layers:
        if w.shape[1] != inputs:
            raise BaselineError(f"a layer expects {w.shape[1]} inputs but gets {inputs}")
        inputs = w.shape[0]
    if inputs != len(header["classes"]):
        raise BaselineError(f"the last layer has {inputs} outputs for {len(header['classes'])} classes")


def logits(model, images: np.ndarray) -> np.ndarray:
    """Float32 logits of ``model`` = (header, layers) on raw images (N, *input_shape), after the
    stored preprocessing ``(x * scale - mean[c]) / std[c]``; ReLU between layers."""
    header, layers = model
    p = header["preprocess"]
    x = np.asarray(images, dtype=np.float32) * np.float32(p["scale"])
    shape = (1, len(p["mean"])) + (1,) * (x.ndim - 2)
    x = (x - np.asarray(p["mean"], np.float32).reshape(shape)) / np.asarray(p["std"], np.float32).reshape(shape)
    x = x.reshape(len(x), -1)
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def predict(model, images: np.ndarray) -> np.ndarray:
    """Predicted class indices of ``model`` = (header, layers) on raw images."""
    return np.argmax(logits(model, images), axis=1)


def evaluate(path, dataset, batch: int = 4096) -> tuple[int, int]:
    """(correct, total) of the file at ``path`` on a :class:`supermask.datasets.Dataset`."""
    model = read(path)
    correct = sum(int(np.sum(predict(model, dataset.images[i:i + batch]) == dataset.labels[i:i + batch]))
                  for i in range(0, len(dataset), batch))
    return correct, len(dataset)
