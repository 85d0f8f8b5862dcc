"""The test vectors printed in docs/format.md, checked against the implementation."""

from __future__ import annotations

import numpy as np

from supermask import InitSpec, codecs, rng


def test_stream_and_uniform_vectors():
    assert rng.tensor_key("fc1.weight") == 0x73B3804B904CCC6D
    words = [int(w) for w in rng.raw_words(0, "fc1.weight", 4)]
    assert words == [0x17BC4A55150A4601, 0xB436BBB1ECC74DCE, 0xEE70791949F3A10E, 0xEFEB42FB675689BB]
    bound = InitSpec("kaiming_uniform").scale(784, 300)
    assert bound == float.fromhex("0x1.66534ap-4")
    w = rng.generate(0, "fc1.weight", (300, 784), "uniform", bound).reshape(-1)[:8]
    expected = ["0x1.d73370p-7", "0x1.09c848p-6", "-0x1.ae78a8p-7", "-0x1.a85078p-5",
                "0x1.9e0b0cp-5", "-0x1.8946ccp-7", "0x1.214946p-4", "-0x1.6823c6p-7"]
    assert w.tolist() == [float.fromhex(x) for x in expected]


def test_signed_constant_and_normal_vectors():
    c = InitSpec("signed_kaiming_constant").scale(784, 300)
    assert c == float.fromhex("0x1.9dc22cp-5")
    sc = rng.generate(0, "fc1.weight", (300, 784), "signed_constant", c).reshape(-1)[:8]
    assert "".join("+" if v > 0 else "-" for v in sc) == "++--+-+-"
    assert [int(x) for x in rng.raw_words(0, "fc1.weight\x00normal", 2)] == [0x0BEB6C42F7634846, 0x9E68D926F3D27D9D]
    n = rng.generate(0, "fc1.weight", (300, 784), "normal", c).reshape(-1)[:4]
    ref = np.array([float.fromhex(x) for x in ["0x1.4c3db6p-8", "0x1.7ac562p-4", "-0x1.19ee04p-9", "-0x1.385168p-5"]],
                   dtype=np.float32)
    assert rng._ulp_distance(n, ref).max() <= 1


def test_codec_vectors():
    bits = np.zeros(20, bool)
    bits[[0, 10, 15]] = True
    assert codecs.quantize_probability(3, 20) == 2516582
    assert codecs.encode_entropy(bits).hex(" ") == "66 66 26 00 84 66 e6 10 01 00 00 00"
    assert codecs.encode_bitpack(bits).hex(" ") == "01 84 00"


def test_key_word_above_2_63_needs_a_uint64_array():
    # docs/format.md 3.1 and 3.4: conv1.weight's key word is >= 2**63; numpy turns a plain list
    # into float64 and loses its low bits, so the spec says np.array([k0, k1], dtype=np.uint64).
    k1 = rng.tensor_key("conv1.weight")
    assert k1 == 0xD9FD1B7557B662D1 and k1 >= 1 << 63
    expected = [0x2EE19E81AD4F059E, 0x5105D076FEA92979, 0xFE79783F5A0CE195, 0xC9289634F8276FF0]
    assert [int(w) for w in rng.raw_words(0, "conv1.weight", 4)] == expected
    spec = np.random.Philox(key=np.array([0, k1], dtype=np.uint64))
    assert [int(w) for w in spec.random_raw(4)] == expected
    assert int(np.random.Philox(key=[0, k1]).random_raw(1)[0]) != expected[0]  # the trap the spec warns about
    bound = InitSpec("kaiming_uniform").scale(27, 576)
    assert bound == float.fromhex("0x1.e2b7dep-2")
    w = rng.generate(0, "conv1.weight", (64, 3, 3, 3), "uniform", bound).reshape(-1)[:4]
    assert w.tolist() == [float.fromhex(x) for x in ["-0x1.37d938p-2", "0x1.6199e2p-3", "-0x1.433b0cp-8",
                                                     "0x1.318e48p-2"]]


def test_golden_init_file_is_what_the_spec_says():
    import json

    from helpers import FIXTURES

    golden = json.loads((FIXTURES / "golden_init.json").read_text())
    schemes = ("kaiming_uniform", "glorot_uniform", "kaiming_normal", "glorot_normal", "signed_kaiming_constant",
               "signed_glorot_constant")
    keys = {f"{s}/{seed}/{name}" for s in schemes for seed in (0, 1, 123456789, 2**64 - 1)
            for name in ("fc1.weight", "conv1.weight")}
    assert set(golden) == keys
    entry = golden["kaiming_uniform/0/conv1.weight"]
    w = rng.generate(0, "conv1.weight", (64, 3, 3, 3), "uniform", InitSpec("kaiming_uniform").scale(27, 576))
    import hashlib

    assert entry["sha256"] == hashlib.sha256(w.astype("<f4").tobytes()).hexdigest()
    assert entry["first"] == [float(v).hex() for v in w.reshape(-1)[:16]]


def test_metadata_limits_are_the_spec_s():
    import pytest

    from supermask.errors import TicketFormatError
    from supermask.ticket import _check_metadata

    _check_metadata({"k" * 64: "v" * 1024, "i": 10**30, "f": 0.5, "b": True, "n": None})
    for bad in ({"k" * 65: 1}, {"k": "v" * 1025}, {"k": [1]}, {"k": {}}, {"k": float("inf")},
                {f"k{i}": 1 for i in range(65)}):
        with pytest.raises(TicketFormatError):
            _check_metadata(bad)


def test_entropy_q_is_not_tied_to_the_number_of_ones():
    # docs/format.md 4.2: readers take q as stored; a valid payload with another q decodes.
    import struct

    bits = codecs.reference_decode(struct.pack("<I", 1), 1000)  # q = 1, no words: all zeros
    assert not bits.any() and codecs.quantize_probability(0, 1000) == 1
    assert not codecs.decode_entropy(struct.pack("<I", 1 << 23), 1000).any()  # q = 2^23, still all zeros
