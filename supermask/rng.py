"""Portable, seeded weight generation. Torch-free (numpy only).

The seed *is* the model, so regeneration must give the same float32 bits on every IEEE-754
machine. Contract (written out in full in ``docs/format.md``):

* Random words come from Philox4x64-10 (Salmon et al. 2011, Random123), keyed by
  ``(seed, tensor_key(name))``. Word ``i`` of a tensor's stream is word ``i % 4`` of the
  Philox block computed with counter ``i // 4 + 1`` (numpy's ``np.random.Philox`` with
  counter 0 produces exactly this stream).
* Element ``j`` of a tensor (C order) is made from the 32-bit value ``h_j``: the low half
  of word ``j // 2`` for even ``j``, the high half for odd ``j``. The sign of every initial
  weight is the top bit of ``h_j``, whatever the distribution, which makes the
  signed-constant variant of any init exact and cheap.
* ``uniform`` and ``signed_constant`` use integer arithmetic and one float32 multiply, so
  they are bit-exact everywhere. ``normal`` needs ``log`` and ``cos``; those may differ in
  the last bit between math libraries, so normal tensors are checked with a tolerance
  (see :func:`fingerprint` and :func:`verify`).
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import InitSpecError, VerificationError

GENERATOR_NAME = "philox4x64-10"
GENERATOR_VERSION = 1

#: Init schemes: name -> (distribution, fan rule).
SCHEMES: dict[str, tuple[str, str]] = {
    "kaiming_uniform": ("uniform", "kaiming"),
    "glorot_uniform": ("uniform", "glorot"),
    "kaiming_normal": ("normal", "kaiming"),
    "glorot_normal": ("normal", "glorot"),
    "signed_kaiming_constant": ("signed_constant", "kaiming"),
    "signed_glorot_constant": ("signed_constant", "glorot"),
}
DISTRIBUTIONS = ("uniform", "normal", "signed_constant")
EXACT_DISTRIBUTIONS = ("uniform", "signed_constant")

_U64 = (1 << 64) - 1
_CHUNK = 1 << 16  # elements per chunk: keeps every pass inside the L2 cache
_PARALLEL_MIN = 1 << 21
_NORMAL_ULP_TOLERANCE = 2
_NUM_PROBES = 8


def tensor_key(name: str) -> int:
    """The second Philox key word for a tensor: the first 8 bytes of SHA-256 of its name."""
    digest = hashlib.sha256(b"supermask:" + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InitSpecError(f"seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= _U64:
        raise InitSpecError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def philox_stream(seed: int, name: str) -> np.random.Philox:
    """The bit generator whose raw words feed tensor ``name`` for ``seed``."""
    key = np.array([_check_seed(seed), tensor_key(name)], dtype=np.uint64)
    return np.random.Philox(key=key)


def raw_words(seed: int, name: str, n: int) -> np.ndarray:
    """The first ``n`` 64-bit words of a tensor's stream (uint64)."""
    return philox_stream(seed, name).random_raw(int(n)).astype(np.uint64, copy=False)


@dataclass(frozen=True)
class InitSpec:
    """How a network's initial weights are drawn.

    ``scheme`` is one of :data:`SCHEMES`. ``gain_sq`` is the square of the gain
    (2.0 for ReLU networks, 1.0 for linear ones); it multiplies the variance.
    """

    scheme: str = "kaiming_uniform"
    gain_sq: float = 2.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise InitSpecError(
                f"unknown init scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}"
            )
        g = self.gain_sq
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not (0 < g < 1e6) or math.isnan(g):
            raise InitSpecError(f"gain_sq must be a positive number below 1e6, got {g!r}")
        object.__setattr__(self, "gain_sq", float(g))

    @property
    def distribution(self) -> str:
        return SCHEMES[self.scheme][0]

    @property
    def rule(self) -> str:
        return SCHEMES[self.scheme][1]

    @property
    def exact(self) -> bool:
        """True when regeneration is bit-exact on every IEEE machine."""
        return self.distribution in EXACT_DISTRIBUTIONS

    def signed_constant(self) -> "InitSpec":
        """The signed-constant init with the same fan rule and gain.

        Its weights are ``sign(w_init) * std`` for the weights of this init at the same
        seed, because every distribution takes its sign from the same bit.
        """
        return InitSpec(f"signed_{self.rule}_constant", self.gain_sq)

    def scale(self, fan_in: int, fan_out: int) -> float:
        """The per-tensor float32 scale: uniform bound, normal std or signed constant."""
        return tensor_scale(self.distribution, self.rule, self.gain_sq, fan_in, fan_out)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "gain_sq": self.gain_sq}

    @classmethod
    def from_dict(cls, d: object) -> "InitSpec":
        if not isinstance(d, dict) or set(d) != {"scheme", "gain_sq"}:
            raise InitSpecError(f"init spec must be an object with 'scheme' and 'gain_sq', got {d!r:.200}")
        if not isinstance(d["scheme"], str):
            raise InitSpecError("init scheme must be a string")
        return cls(d["scheme"], d["gain_sq"])


def tensor_scale(distribution: str, rule: str, gain_sq: float, fan_in: int, fan_out: int) -> float:
    """float32 scale of one tensor, computed with IEEE double operations in a fixed order.

    kaiming: variance = gain_sq / fan_in; glorot: variance = 2 gain_sq / (fan_in + fan_out).
    uniform draws from (-bound, bound) with bound = sqrt(3 variance); normal and signed
    constant use std = sqrt(variance).
    """
    if distribution not in DISTRIBUTIONS:
        raise InitSpecError(f"unknown distribution {distribution!r}")
    if fan_in < 1 or fan_out < 1:
        raise InitSpecError(f"fans must be positive, got fan_in={fan_in}, fan_out={fan_out}")
    if rule == "kaiming":
        num, den = (3.0 if distribution == "uniform" else 1.0), float(fan_in)
    elif rule == "glorot":
        num, den = (6.0 if distribution == "uniform" else 2.0), float(fan_in + fan_out)
    else:
        raise InitSpecError(f"unknown fan rule {rule!r}")
    return float(np.float32(math.sqrt((float(gain_sq) * num) / den)))


def _uniform_chunk(h: np.ndarray, step: np.float32, out: np.ndarray) -> None:
    # s = signed top 24 bits of h; (h >> 7) | 1 == 2s + 1, an odd integer below 2**24 in
    # magnitude, so the float32 conversion is exact and the multiply rounds once.
    t = h >> 7
    t |= 1
    np.copyto(out, t, casting="unsafe")
    out *= step


def _signed_chunk(h: np.ndarray, scale: np.float32, out: np.ndarray) -> None:
    t = h >> 31  # -1 where the top bit is set, else 0
    t |= 1
    np.copyto(out, t, casting="unsafe")
    out *= scale


def _normal_chunk(h: np.ndarray, aux: np.ndarray, scale: np.float32, out: np.ndarray) -> None:
    u1 = ((h & 0x7FFFFFFF).astype(np.float64) + 1.0) * 2.0**-31  # (0, 1]
    u2 = aux.view(np.uint32).astype(np.float64) * 2.0**-32  # [0, 1)
    mag = np.sqrt(-2.0 * np.log(u1)) * np.cos((math.pi / 2.0) * u2)
    mag *= float(scale)
    np.negative(mag, out=mag, where=h < 0)
    out[...] = mag  # one rounding to float32


def _halves(gen: np.random.Philox, m: int) -> np.ndarray:
    """The next ``m`` 32-bit values of a stream, as little-endian int32 (low half first)."""
    words = gen.random_raw((m + 1) // 2).astype("<u8", copy=False)
    return words.view("<i4")[:m]


def _stream_at(seed: int, key1: int, element: int) -> np.random.Philox:
    # numpy's Philox increments its counter before each block; block b (elements 8b..8b+7)
    # is computed with counter b + 1, so starting at counter b yields block b first.
    return np.random.Philox(
        key=np.array([seed, key1], dtype=np.uint64),
        counter=np.array([element // 8, 0, 0, 0], dtype=np.uint64),
    )


def _fill(seed: int, key1: int, aux_key1: int, distribution: str, arg: np.float32,
          out: np.ndarray, start: int, stop: int) -> None:
    """Write elements ``[start, stop)`` of a tensor into ``out`` (of length ``stop - start``);
    ``start`` is a multiple of 8 (one Philox block)."""
    gen = _stream_at(seed, key1, start)
    aux = _stream_at(seed, aux_key1, start) if distribution == "normal" else None
    for a in range(start, stop, _CHUNK):
        b = min(a + _CHUNK, stop)
        h = _halves(gen, b - a)
        o = out[a - start:b - start]
        if distribution == "uniform":
            _uniform_chunk(h, arg, o)
        elif distribution == "signed_constant":
            _signed_chunk(h, arg, o)
        else:
            _normal_chunk(h, _halves(aux, b - a), arg, o)


def generate_range(seed: int, name: str, start: int, stop: int, distribution: str, scale: float,
                   threads: int | None = None) -> np.ndarray:
    """Elements ``[start, stop)`` (C order) of a tensor's initial weights, flat float32.

    The generator is counter-based, so any range can be made without the elements before it:
    ``generate`` is ``generate_range(0, n)`` reshaped, and a tensor can be fingerprinted one
    range at a time (:func:`stream_fingerprint`) in memory bounded by the range.
    """
    if distribution not in DISTRIBUTIONS:
        raise InitSpecError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    scale32 = np.float32(scale)
    if not (np.isfinite(scale32) and 2.0**-60 < scale32 < 2.0**60):
        raise InitSpecError(f"scale {scale!r} is outside (2**-60, 2**60)")
    seed = _check_seed(seed)
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop:
        raise ValueError(f"bad element range [{start}, {stop})")
    first = start - start % 8  # streams start on a block boundary (8 elements)
    n = stop - first
    out = np.empty(n, dtype=np.float32)
    arg = np.float32(scale32 * np.float32(2.0**-24)) if distribution == "uniform" else scale32
    key1, aux_key1 = tensor_key(name), tensor_key(name + "\x00normal")
    workers = min(threads or os.cpu_count() or 1, 8)
    if workers <= 1 or n < _PARALLEL_MIN:
        _fill(seed, key1, aux_key1, distribution, arg, out, first, stop)
    else:
        # Split points are multiples of _CHUNK (itself a multiple of 8 elements = 1 block).
        per = -(-n // workers // _CHUNK) * _CHUNK
        bounds = [(a, min(a + per, n)) for a in range(0, n, per)]
        with ThreadPoolExecutor(len(bounds)) as pool:
            list(pool.map(lambda ab: _fill(seed, key1, aux_key1, distribution, arg, out[ab[0]:ab[1]],
                                           first + ab[0], first + ab[1]), bounds))
    return out[start - first:]


def generate(seed: int, name: str, shape: tuple[int, ...], distribution: str, scale: float,
             threads: int | None = None) -> np.ndarray:
    """Regenerate one tensor's initial weights as a float32 array of ``shape``.

    Large tensors are split over ``threads`` threads (default: the CPU count, at most 8);
    numpy releases the GIL in the generator and the array operations, and every thread
    starts its own stream at the right counter, so the result does not depend on it.
    """
    return generate_range(seed, name, 0, math.prod(shape), distribution, scale, threads).reshape(shape)


def signs(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Signs (+1/-1 as float32) of a tensor's initial weights; the same for every distribution."""
    return generate(seed, name, shape, "signed_constant", 1.0)


# ---------------------------------------------------------------------------------------
# Fingerprints: let a device check that it regenerated the weights the ticket was made from.


def _sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def probe_positions(n: int) -> list[int]:
    """Fixed element positions sampled by the normal-init fingerprint."""
    if n <= _NUM_PROBES:
        return list(range(n))
    return [(i * n) // _NUM_PROBES for i in range(_NUM_PROBES)]


#: Elements per piece when a tensor is fingerprinted range by range (16 MiB of float32).
STREAM_CHUNK = 1 << 22


class FingerprintStream:
    """The fingerprint of a tensor fed in consecutive flat pieces (see :func:`fingerprint`).

    Every piece but the last must hold a multiple of 8 elements (the sign bits are packed
    by bytes). Memory is that of one piece.
    """

    def __init__(self, distribution: str, n: int):
        if distribution not in DISTRIBUTIONS:
            raise InitSpecError(f"unknown distribution {distribution!r}")
        self.distribution, self.n = distribution, int(n)
        self._hash = hashlib.sha256()
        self._pos = 0
        self._want = [] if distribution in EXACT_DISTRIBUTIONS else probe_positions(self.n)
        self._probes: dict[int, float] = {}

    def update(self, piece: np.ndarray) -> None:
        flat = np.ascontiguousarray(piece, dtype="<f4").reshape(-1)
        if self._pos % 8:
            raise ValueError("only the last piece of a tensor may hold a number of elements not divisible by 8")
        if self.distribution in EXACT_DISTRIBUTIONS:
            self._hash.update(flat.view(np.uint8))  # the array's own bytes: no copy
        else:
            self._hash.update(np.packbits(np.signbit(flat), bitorder="little"))
            end = self._pos + flat.size
            for i in self._want:
                if self._pos <= i < end:
                    self._probes[i] = float(flat[i - self._pos])
        self._pos += flat.size

    def result(self) -> dict:
        if self._pos != self.n:
            raise ValueError(f"fingerprint fed {self._pos} of {self.n} elements")
        if self.distribution in EXACT_DISTRIBUTIONS:
            return {"sha256": self._hash.hexdigest()[:16]}
        return {"sign_sha256": self._hash.hexdigest()[:16],
                "probes": [[i, self._probes[i].hex()] for i in self._want]}


def fingerprint(weights: np.ndarray, distribution: str) -> dict:
    """A compact fingerprint of an unmasked init tensor, stored in the ticket.

    Exact distributions: the first 16 hex digits of SHA-256 of the float32 little-endian
    bytes. Normal: SHA-256 of the packed sign bits (exact) plus float32 values at a few
    fixed positions (checked within a few units in the last place).
    """
    flat = np.ascontiguousarray(weights, dtype="<f4").reshape(-1)
    fp = FingerprintStream(distribution, flat.size)
    for a in range(0, flat.size, STREAM_CHUNK):
        fp.update(flat[a:a + STREAM_CHUNK])
    return fp.result()


def stream_fingerprint(seed: int, name: str, shape: tuple[int, ...], distribution: str, scale: float,
                       chunk: int = STREAM_CHUNK) -> dict:
    """``fingerprint(generate(...))`` computed one range of ``chunk`` elements at a time, so a
    tensor of any size is checked in about ``4 * chunk`` bytes."""
    n = math.prod(shape)
    chunk = max(8, chunk - chunk % 8)
    fp = FingerprintStream(distribution, n)
    for a in range(0, n, chunk):
        fp.update(generate_range(seed, name, a, min(a + chunk, n), distribution, scale))
    return fp.result()


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (monotone integer mapping of floats)."""

    def ordered(x: np.ndarray) -> np.ndarray:
        i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(a) - ordered(b))


def verify(weights: np.ndarray, distribution: str, expected: dict, name: str = "tensor") -> None:
    """Raise :class:`VerificationError` unless ``weights`` match a stored fingerprint
    (see :func:`check_fingerprint`)."""
    check_fingerprint(fingerprint(weights, distribution), distribution, expected, name)


def check_fingerprint(got: dict, distribution: str, expected: dict, name: str = "tensor") -> None:
    """Raise :class:`VerificationError` unless fingerprint ``got`` (of regenerated weights)
    matches ``expected`` (from the ticket).

    The rule for normal inits: every sign bit must match exactly, and every probed value
    must be within 2 float32 ulps (:func:`_ulp_distance`). Math-library differences move a
    value by at most one ulp after rounding to float32; a wrong seed or name changes about
    half of all signs.
    """
    if distribution in EXACT_DISTRIBUTIONS:
        if got != expected:
            raise VerificationError(
                f"regenerated weights of {name!r} do not match the ticket "
                f"(sha256 {got['sha256']} != {expected.get('sha256')}): wrong seed, name or generator"
            )
        return
    if got["sign_sha256"] != expected.get("sign_sha256"):
        raise VerificationError(f"signs of regenerated {name!r} do not match the ticket: wrong seed or name")
    exp = expected.get("probes") or []
    if [p[0] for p in exp] != [p[0] for p in got["probes"]]:
        raise VerificationError(f"probe positions of {name!r} do not match its size")
    ref = np.array([float.fromhex(p[1]) for p in exp], dtype=np.float32)
    have = np.array([float.fromhex(p[1]) for p in got["probes"]], dtype=np.float32)
    dist = _ulp_distance(have, ref)
    if dist.size and dist.max() > _NORMAL_ULP_TOLERANCE:
        raise VerificationError(
            f"regenerated {name!r} differs from the ticket by {int(dist.max())} ulps "
            f"(tolerance {_NORMAL_ULP_TOLERANCE})"
        )
