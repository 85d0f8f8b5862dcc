"""Mask codecs. Torch-free.

``bitpack``: one bit per weight, ``np.packbits(bitorder="little")``: exactly ceil(n/8) bytes;
unused bits of the last byte are zero.

``entropy``: range-ANS coding (Duda 2015) of the bits with one fixed probability per tensor,
which reaches the entropy bound H(p) bits per weight up to a few words of overhead. The coder
is constriction's ``AnsCoder`` (64-bit state, 32-bit words, 24-bit probabilities) with a
Bernoulli model; payload layout and the exact arithmetic are in ``docs/format.md``, and
:func:`reference_decode` is a pure-Python implementation of that text, tested against
constriction, for readers without it.

``auto`` picks whichever is smaller for each tensor; the ticket records the choice.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import CodecError

CODECS = ("bitpack", "entropy")
PRECISION = 24
_ONE = 1 << PRECISION
_DECODE_CHUNK = 1 << 20


def bitpack_size(n: int) -> int:
    return (n + 7) // 8


def quantize_probability(num_kept: int, n: int) -> int:
    """The 24-bit probability q of a kept weight: round(num_kept * 2**24 / n) in [1, 2**24 - 1]."""
    if n == 0:
        return _ONE // 2
    q = (2 * num_kept * _ONE + n) // (2 * n)
    return min(max(q, 1), _ONE - 1)


def _model(q: int):
    import constriction

    # perfect=True quantizes the dyadic q / 2**24 to exactly q (tested for every codepath
    # against reference_encode); perfect=False would shift it by one.
    return constriction.stream.model.Bernoulli(q / _ONE, perfect=True)


def encode_bitpack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.reshape(-1).astype(bool, copy=False), bitorder="little").tobytes()


def decode_bitpack(data: bytes | memoryview, n: int) -> np.ndarray:
    if len(data) != bitpack_size(n):
        raise CodecError(f"bitpack payload has {len(data)} bytes; {bitpack_size(n)} expected for {n} weights")
    packed = np.frombuffer(data, dtype=np.uint8)
    if n % 8 and packed[-1] >> (n % 8):
        raise CodecError("bitpack payload has non-zero padding bits")
    return np.unpackbits(packed, count=n, bitorder="little").view(bool)


def encode_entropy(bits: np.ndarray) -> bytes:
    try:
        import constriction
    except ImportError:  # platforms without constriction wheels: same bytes, slower
        return reference_encode(bits)
    flat = bits.reshape(-1).astype(bool, copy=False)
    q = quantize_probability(int(np.count_nonzero(flat)), flat.size)
    coder = constriction.stream.stack.AnsCoder()
    if flat.size:
        coder.encode_reverse(flat.astype(np.int32), _model(q))
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return struct.pack("<I", q) + words.tobytes()


def _split_entropy(data: bytes | memoryview) -> tuple[int, np.ndarray]:
    if len(data) < 4 or len(data) % 4:
        raise CodecError(f"entropy payload of {len(data)} bytes is not a whole number of 32-bit words (at least 1)")
    (q,) = struct.unpack_from("<I", data, 0)
    if not 1 <= q < _ONE:
        raise CodecError(f"entropy payload probability {q} is outside [1, 2**24)")
    words = np.frombuffer(data, dtype="<u4", offset=4)
    if words.size and words[-1] == 0:
        raise CodecError("entropy payload ends in a zero word")
    return q, words


def decode_entropy(data: bytes | memoryview, n: int) -> np.ndarray:
    q, words = _split_entropy(data)
    try:
        import constriction
    except ImportError:  # platforms without constriction wheels: same result, slower
        return reference_decode(data, n)
    coder = constriction.stream.stack.AnsCoder(words.astype(np.uint32))
    model = _model(q)
    out = np.zeros(n, dtype=bool)
    for start in range(0, n, _DECODE_CHUNK):
        if coder.is_empty():
            break  # state 0 with no words left decodes to zeros only: the rest of `out` is done
        stop = min(start + _DECODE_CHUNK, n)
        try:
            out[start:stop] = coder.decode(model, stop - start)
        except Exception as e:  # constriction raises plain errors on exhausted/invalid data
            raise CodecError(f"entropy payload is corrupt: {e}") from None
    if not coder.is_empty():
        raise CodecError("entropy payload has data left after the last weight (corrupt or wrong size)")
    return out


def reference_decode(data: bytes | memoryview, n: int) -> np.ndarray:
    """Pure-Python decoder written from docs/format.md alone (slow; for tests and ports)."""
    q, words_arr = _split_entropy(data)
    words = [int(w) for w in words_arr]
    mask32, zero_start = (1 << 32) - 1, _ONE - q
    state = 0
    if words:
        state = words.pop()
        if words:
            state = (state << 32) | words.pop()
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if state == 0 and not words:
            break  # from here on every bit decodes to 0 and the state stays 0
        quantile = state & (_ONE - 1)
        if quantile >= zero_start:
            out[i] = True
            state = (state >> PRECISION) * q + quantile - zero_start
        else:
            state = (state >> PRECISION) * zero_start + quantile
        if state < (1 << 32) and words:
            state = (state << 32) | words.pop()
        state &= (1 << 64) - 1
    if state != 0 or words:
        raise CodecError("entropy payload has data left after the last weight (corrupt or wrong size)")
    del mask32
    return out


def reference_encode(bits: np.ndarray) -> bytes:
    """Pure-Python encoder written from docs/format.md alone (slow; for tests and ports)."""
    flat = [bool(b) for b in bits.reshape(-1)]
    q = quantize_probability(sum(flat), len(flat))
    zero_start = _ONE - q
    state, words = 0, []
    for bit in reversed(flat):
        c, f = (zero_start, q) if bit else (0, zero_start)
        if (state >> (64 - PRECISION)) >= f:
            words.append(state & 0xFFFFFFFF)
            state >>= 32
        state = ((state // f) << PRECISION) | (state % f + c)
    if state >> 32:
        words += [state & 0xFFFFFFFF, state >> 32]
    elif state:
        words.append(state)
    return struct.pack("<I", q) + struct.pack(f"<{len(words)}I", *words)


def encode(bits: np.ndarray, codec: str) -> tuple[str, bytes]:
    """Encode a boolean mask with ``codec`` (``bitpack``, ``entropy`` or ``auto``)."""
    if codec == "bitpack":
        return codec, encode_bitpack(bits)
    if codec == "entropy":
        return codec, encode_entropy(bits)
    if codec == "auto":
        packed = encode_bitpack(bits)
        coded = encode_entropy(bits)
        return ("entropy", coded) if len(coded) < len(packed) else ("bitpack", packed)
    raise CodecError(f"unknown codec {codec!r}; choose one of auto, {', '.join(CODECS)}")


def decode(data: bytes | memoryview, n: int, codec: str) -> np.ndarray:
    """Decode ``n`` mask bits (flat bool array) stored with ``codec``."""
    if codec == "bitpack":
        return decode_bitpack(data, n)
    if codec == "entropy":
        return decode_entropy(data, n)
    raise CodecError(f"unknown codec {codec!r}; this reader knows {', '.join(CODECS)}")
