"""Mask codecs: exact sizes, round trips, the reference coder, corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supermask import codecs
from supermask.errors import CodecError


def _bits(n: int, p: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < p


def _entropy_bits(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@given(n=st.integers(0, 3000), p=st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_round_trip_every_codec(n, p, seed):
    bits = _bits(n, p, seed)
    packed = codecs.encode_bitpack(bits)
    assert len(packed) == (n + 7) // 8
    assert np.array_equal(codecs.decode_bitpack(packed, n), bits)
    coded = codecs.encode_entropy(bits)
    assert np.array_equal(codecs.decode_entropy(coded, n), bits)
    used, blob = codecs.encode(bits, "auto")
    assert len(blob) == min(len(packed), len(coded))
    assert np.array_equal(codecs.decode(blob, n, used), bits)


@given(n=st.integers(0, 400), p=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=80, deadline=None)
def test_reference_coder_is_byte_identical_to_constriction(n, p, seed):
    """The pure-Python coder follows docs/format.md; constriction must produce the same bytes."""
    bits = _bits(n, p, seed)
    data = codecs.encode_entropy(bits)
    assert codecs.reference_encode(bits) == data
    assert np.array_equal(codecs.reference_decode(data, n), bits)


def test_reference_coder_on_a_large_mask():
    bits = _bits(20_000, 0.07, 3)
    data = codecs.encode_entropy(bits)
    assert codecs.reference_encode(bits) == data
    assert np.array_equal(codecs.reference_decode(data, bits.size), bits)


@pytest.mark.parametrize("p", [0.5, 0.2, 0.1, 0.05, 0.01])
def test_entropy_codec_is_near_the_bound(p):
    n = 200_000
    bits = _bits(n, p, 1)
    phat = bits.mean()
    size_bits = 8 * len(codecs.encode_entropy(bits))
    bound = n * _entropy_bits(phat)
    # 32 bits of probability plus at most two words of final state above the bound.
    assert size_bits <= bound * 1.002 + 32 + 64


def test_quantized_probability():
    assert codecs.quantize_probability(0, 10) == 1
    assert codecs.quantize_probability(10, 10) == 2**24 - 1
    assert codecs.quantize_probability(1, 2) == 2**23
    assert codecs.quantize_probability(1, 3) == round(2**24 / 3)
    assert codecs.quantize_probability(0, 0) == 2**23


def test_bitpack_bit_order_is_little_endian_within_bytes():
    bits = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert codecs.encode_bitpack(bits) == bytes([0b00000001, 0b00000010])


def test_bitpack_rejects_wrong_length_and_padding():
    with pytest.raises(CodecError, match="expected"):
        codecs.decode_bitpack(b"\x00", 9)
    with pytest.raises(CodecError, match="padding"):
        codecs.decode_bitpack(b"\x00\x02", 9)


@pytest.mark.parametrize("payload,match", [
    (b"", "whole number"),
    (b"\x00\x00\x00", "whole number"),
    (b"\x00\x00\x00\x00", "outside"),
    (b"\x00\x00\x00\x01", "outside"),
    (b"\x01\x00\x00\x00\x00\x00\x00\x00", "zero word"),
])
def test_entropy_rejects_malformed_payloads(payload, match):
    with pytest.raises(CodecError, match=match):
        codecs.decode_entropy(payload, 10)


def test_entropy_detects_flipped_payload_bits():
    bits = _bits(5000, 0.1, 2)
    data = bytearray(codecs.encode_entropy(bits))
    detected = 0
    for byte in range(4, len(data) - 4, 7):
        bad = bytearray(data)
        bad[byte] ^= 0x10
        try:
            out = codecs.decode_entropy(bytes(bad), bits.size)
        except CodecError:
            detected += 1
            continue
        assert not np.array_equal(out, bits)  # never silently the same mask
    assert detected > 0


def test_unknown_codec():
    with pytest.raises(CodecError, match="unknown codec"):
        codecs.encode(np.zeros(3, bool), "zstd")
    with pytest.raises(CodecError, match="unknown codec"):
        codecs.decode(b"", 3, "zstd")


def test_without_constriction_the_same_bytes_are_written_and_read():
    """Linux ARM has no constriction wheels; the pure-Python coder takes over there."""
    from helpers import run_python

    bits = _bits(3000, 0.2, 9)
    data = codecs.encode_entropy(bits)
    code = (
        "import sys, numpy as np\n"
        "class _No:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'constriction':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, _No())\n"
        "from supermask import codecs\n"
        "bits = np.random.default_rng(9).random(3000) < 0.2\n"
        "data = codecs.encode_entropy(bits)\n"
        "assert np.array_equal(codecs.decode_entropy(data, bits.size), bits)\n"
        "assert 'constriction' not in sys.modules\n"
        "print(data.hex())\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == data.hex()
