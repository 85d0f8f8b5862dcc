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
