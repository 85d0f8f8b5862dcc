"""The .smask format: round trips, the committed fixture, bad files, the torch-free reader."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supermask import Architecture, InitSpec, Layer, Preprocess, models, rng, ticket
from supermask.errors import ChecksumError, TicketFormatError, UnsupportedVersionError

from helpers import FIXTURES, run_python


def mlp(dims, classes=None, bias=True) -> Architecture:
    layers = [Layer("flatten")]
    for i in range(len(dims) - 1):
        layers.append(Layer("linear", f"fc{i + 1}", {"in": dims[i], "out": dims[i + 1], "bias": bias}))
        if i < len(dims) - 2:
            layers.append(Layer("relu"))
    n = dims[-1]
    return Architecture("mlp", (1, 1, dims[0]), tuple(layers), tuple(classes or [f"c{i}" for i in range(n)]),
                        Preprocess(1.0, (0.0,), (1.0,)))


def _masks(arch, density, seed=0):
    g = np.random.default_rng(seed)
    return {p.name: g.random(p.shape) < density for p in arch.params() if p.kind == "weight"}


def _resign(data: bytes) -> bytes:
    """Recompute the checksum, so a test reaches the checks behind it."""
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def _with_header(data: bytes, edit) -> bytes:
    (hlen,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16:16 + hlen])
    edit(header)
    raw = json.dumps(header).encode()
    body = data[:12] + struct.pack("<I", len(raw)) + raw + data[16 + hlen:-32]
    return body + hashlib.sha256(body).digest()


# ------------------------------------------------------------------------- round trips

@given(
    dims=st.lists(st.integers(1, 40), min_size=2, max_size=4),
    density=st.sampled_from([0.0, 1.0, 0.5, 0.1, 0.013]),
    codec=st.sampled_from(["auto", "bitpack", "entropy"]),
    scheme=st.sampled_from(sorted(rng.SCHEMES)),
    seed=st.integers(0, 2**64 - 1),
    drop=st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_write_read_round_trip(dims, density, codec, scheme, seed, drop):
    """Random shapes (odd bit counts included), all-kept and all-pruned masks, every codec."""
    arch = mlp(dims)
    masks = _masks(arch, density, seed % 1000)
    if drop:  # one weight tensor stored as 'regenerated' (no mask)
        masks.pop("fc1.weight")
    init = InitSpec(scheme)
    data = ticket.encode_ticket(arch, seed, init, masks, codec=codec, criterion="movement", keep=0.5)
    t = ticket.decode_ticket(data)
    assert t.architecture == arch and t.seed == seed and t.init == init
    assert t.criterion == "movement" and t.keep == 0.5 and t.file_bytes == len(data)
    assert set(t.masks) == set(masks)
    for name, m in masks.items():
        assert t.masks[name].dtype == bool and np.array_equal(t.masks[name], m)
        e = t.tensor(name)
        assert e.num_kept == int(m.sum())
        if codec != "auto":
            assert e.codec == codec
    weights = t.weights()
    for p in arch.params():
        w = weights[p.name]
        assert w.dtype == np.float32 and w.shape == p.shape
        if p.kind == "bias":
            assert not w.any()
            continue
        w0 = rng.generate(seed, p.name, p.shape, init.distribution, init.scale(p.fan_in, p.fan_out))
        keep = masks.get(p.name, np.ones(p.shape, bool))
        assert np.array_equal(w[keep], w0[keep]) and not w[~keep].any()
        assert not np.signbit(w[~keep]).any()  # pruned weights are +0.0, never -0.0


def test_empty_and_tiny_masks_through_codecs():
    # A tensor cannot have zero elements in an architecture; the codecs handle n = 0.
    from supermask import codecs

    for codec in ("bitpack", "entropy"):
        used, blob = codecs.encode(np.zeros(0, bool), codec)
        assert codecs.decode(blob, 0, used).size == 0
    arch = mlp([1, 1])
    for m in (np.zeros((1, 1), bool), np.ones((1, 1), bool)):
        t = ticket.decode_ticket(ticket.encode_ticket(arch, 0, InitSpec(), {"fc1.weight": m}))
        assert np.array_equal(t.masks["fc1.weight"], m)


def test_writer_is_deterministic_and_atomic(tmp_path):
    arch = models.build("lenet-300-100", (1, 28, 28), [str(i) for i in range(10)])
    masks = _masks(arch, 0.1)
    a = ticket.encode_ticket(arch, 3, InitSpec(), masks)
    b = ticket.encode_ticket(arch, 3, InitSpec(), masks)
    assert a == b
    path = tmp_path / "m.smask"
    t = ticket.write_ticket(path, arch, 3, InitSpec(), masks)
    assert path.read_bytes() == a and t.sha256 == hashlib.sha256(a).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["m.smask"]  # no temporary left behind


def test_entropy_ticket_is_small():
    """lenet-300-100 at 10 % density: about 16-17 KB, against 1.07 MB of float32."""
    arch = models.build("lenet-300-100", (1, 28, 28), [str(i) for i in range(10)])
    t = ticket.decode_ticket(ticket.encode_ticket(arch, 0, InitSpec(), _masks(arch, 0.1)))
    assert t.file_bytes < 18_500
    assert all(e.codec == "entropy" for e in t.tensors if e.role == "masked")
    assert t.summary()["compression_ratio"] > 55


def test_masks_are_matched_by_name_not_position():
    arch = mlp([6, 5, 4])
    m1 = np.random.default_rng(0).random((5, 6)) < 0.5
    m2 = np.random.default_rng(1).random((4, 5)) < 0.5
    t1 = ticket.decode_ticket(ticket.encode_ticket(arch, 0, InitSpec(), {"fc1.weight": m1, "fc2.weight": m2}))
    t2 = ticket.decode_ticket(ticket.encode_ticket(arch, 0, InitSpec(), {"fc2.weight": m2, "fc1.weight": m1}))
    assert np.array_equal(t1.masks["fc1.weight"], t2.masks["fc1.weight"])
    with pytest.raises(TicketFormatError, match="shape"):
        ticket.encode_ticket(arch, 0, InitSpec(), {"fc1.weight": m2})
    with pytest.raises(TicketFormatError, match="no weight"):
        ticket.encode_ticket(arch, 0, InitSpec(), {"fc9.weight": m2})


# ------------------------------------------------------------------------ the fixture

def test_committed_fixture_still_reads():
    """tiny-v1.smask was written by format version 1; every later version must read it."""
    expected = json.loads((FIXTURES / "tiny-v1.json").read_text())
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["sha256"]
    t = ticket.read_ticket(FIXTURES / "tiny-v1.smask")
    assert t.file_bytes == expected["file_bytes"]
    assert t.architecture.name == "tiny-mlp" and t.seed == 42 and t.init == InitSpec("kaiming_uniform")
    assert t.criterion == "large_final_same_sign" and t.keep == 0.3
    assert {e.name: e.codec for e in t.tensors if e.role == "masked"} == expected["codecs"]
    assert t.tensor("fc2.weight").role == "regenerated"
    for name, hexbits in expected["masks"].items():
        assert np.packbits(t.masks[name].reshape(-1), bitorder="little").tobytes().hex() == hexbits
    for name, w in t.weights().items():
        assert hashlib.sha256(w.astype("<f4").tobytes()).hexdigest() == expected["weights_sha256"][name]


def test_every_truncation_of_the_fixture_is_rejected():
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    for cut in range(len(data)):
        with pytest.raises(TicketFormatError):
            ticket.decode_ticket(data[:cut])


def test_flipped_bits_are_detected():
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    for pos in range(0, len(data), 5):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(TicketFormatError):
            ticket.decode_ticket(bytes(bad))


# ------------------------------------------------------------------------ bad files

def test_not_a_ticket():
    with pytest.raises(TicketFormatError, match="not a supermask ticket"):
        ticket.decode_ticket(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(TicketFormatError, match="not a supermask ticket"):
        ticket.decode_ticket(b"")


def test_newer_format_version_is_refused():
    data = bytearray((FIXTURES / "tiny-v1.smask").read_bytes())
    data[8:10] = struct.pack("<H", 4)  # version 3 (ticket3: the graph travels inside) is current now
    with pytest.raises(UnsupportedVersionError, match="version 4"):
        ticket.decode_ticket(_resign(bytes(data)))


def test_checksum_mismatch_has_its_own_error():
    data = bytearray((FIXTURES / "tiny-v1.smask").read_bytes())
    data[-40] ^= 0xFF
    with pytest.raises(ChecksumError, match="checksum"):
        ticket.decode_ticket(bytes(data))


BAD_EDITS = {
    "unknown generator": lambda h: h["generator"].update(name="mt19937"),
    "generator version": lambda h: h["generator"].update(version=2),
    "unknown codec": lambda h: h["tensors"][0].update(codec="zstd"),
    "huge tensor": lambda h: (h["architecture"]["layers"][1].update({"in": 10**6, "out": 10**6})),
    "negative dim": lambda h: h["architecture"]["layers"][1].update({"out": -3}),
    "float dim": lambda h: h["architecture"]["layers"][1].update({"out": 12.0}),
    "unknown layer": lambda h: h["architecture"]["layers"].insert(0, {"type": "lambda", "code": "print(1)"}),
    "shape mismatch": lambda h: h["tensors"][0].update(shape=[16, 12]),
    "wrong scale": lambda h: h["tensors"][0]["init"].update(scale="0x1p-3"),
    "num_kept": lambda h: h["tensors"][0].update(num_kept=h["tensors"][0]["num_kept"] + 1),
    "offset": lambda h: h["tensors"][0].update(offset=1),
    "length": lambda h: h["tensors"][0].update(length=h["tensors"][0]["length"] + 4),
    "seed type": lambda h: h.update(seed="42"),
    "extra field": lambda h: h.update(pickle="gASV"),
    "missing field": lambda h: h.pop("init"),
    "bias role": lambda h: h["tensors"][1].update(role="masked"),
    "keep range": lambda h: h.update(keep=1.5),
    "tensor order": lambda h: h["tensors"].reverse(),
}


@pytest.mark.parametrize("what", sorted(BAD_EDITS))
def test_bad_header_fields_are_rejected(what):
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    with pytest.raises(TicketFormatError):
        ticket.decode_ticket(_with_header(data, BAD_EDITS[what]))


def test_parameter_limit_is_enforced_before_decoding():
    arch = mlp([2000, 1000, 10])
    data = ticket.encode_ticket(arch, 0, InitSpec(), _masks(arch, 0.1))
    with pytest.raises(TicketFormatError, match="limit"):
        ticket.decode_ticket(data, max_weights=100_000)


def test_deep_or_invalid_json_is_a_format_error():
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"{\"a\": NaN}", b"\xff\xfe", b"{\"a\":1,\"a\":2}"):
        body = data[:12] + struct.pack("<I", len(raw)) + raw
        with pytest.raises(TicketFormatError):
            ticket.decode_ticket(body + hashlib.sha256(body).digest())


def test_read_ticket_missing_file(tmp_path):
    from supermask.errors import SupermaskError

    with pytest.raises(SupermaskError, match="no such file"):
        ticket.read_ticket(tmp_path / "absent.smask")
    with pytest.raises(SupermaskError, match="folder"):
        ticket.read_ticket(tmp_path)


# ------------------------------------------------------------------------ torch-free

def test_core_reads_a_ticket_without_torch():
    code = (
        "import sys, numpy as np\n"
        "import supermask\n"
        f"t = supermask.read_ticket({str(FIXTURES / 'tiny-v1.smask')!r})\n"
        "w = t.weights()\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    import torch\n"
        "except ImportError:\n"
        "    print('OK', sorted(w), t.num_kept)\n"
    )
    r = run_python(code, block_torch=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK ['fc1.bias', 'fc1.weight'")


def test_inspect_cli_without_torch():
    code = (
        "import sys\n"
        "from supermask.cli import main\n"
        f"sys.argv = ['supermask', 'inspect', '--verify', {str(FIXTURES / 'tiny-v1.smask')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert 'torch' not in sys.modules\n"
        "    raise\n"
    )
    r = run_python(code, block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "tiny-mlp" in r.stdout and "verified" in r.stdout
