"""Format version 3: the committed fixture, the size budget, the reader's checks on the graph
section, and fuzzing of that section (with valid checksums, so the parser itself is exercised)."""

from __future__ import annotations

import hashlib
import json
import random
import struct

import numpy as np
import pytest

from supermask import InitSpec, ticket
from supermask.errors import SupermaskError, TicketFormatError, UnsupportedVersionError
from supermask.ticket3 import DICTIONARY, PLACEHOLDER, deflate, encode_v3, inflate

from helpers import BLOCK_TORCH_AND_ONNX, FIXTURES, run_python

FASHION = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


def split_v3(data: bytes) -> tuple[dict, bytes, bytes]:
    """(header, graph, payloads) of a version-3 ticket."""
    (slen,) = struct.unpack_from("<I", data, 12)
    raw = inflate(data[16:16 + slen], 1 << 26)
    (hlen,) = struct.unpack_from("<I", raw, 0)
    return json.loads(raw[4:4 + hlen]), raw[4 + hlen:], data[16 + slen:-32]


def join_v3(header: dict | bytes, graph: bytes, payloads: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    section = deflate(struct.pack("<I", len(h)) + h + graph)
    body = struct.pack("<8sHHI", b"\x89SMASK\r\n", 3, 0, len(section)) + section + payloads
    return body + hashlib.sha256(body).digest()


def outcome(data: bytes) -> str:
    """'ok' or the SupermaskError class name; anything else propagates (a bug)."""
    try:
        ticket.decode_ticket(data).weights(verify=True)
    except SupermaskError as e:
        return type(e).__name__
    return "ok"


@pytest.fixture(scope="module")
def fixture_bytes() -> bytes:
    return (FIXTURES / "tiny-v3.smask").read_bytes()


# ------------------------------------------------------------------------------- the fixture


def test_the_committed_fixture_still_reads_with_the_same_tensors(fixture_bytes):
    want = json.loads((FIXTURES / "tiny-v3.json").read_text())
    t = ticket.decode_ticket(fixture_bytes)
    assert t.version == 3 and t.architecture is None and t.graph is not None
    assert t.sha256 == want["sha256"] and t.file_bytes == want["file_bytes"]
    assert {e.name: e.role for e in t.tensors} == want["roles"]
    assert {e.name: e.codec for e in t.tensors if e.role == "masked"} == want["codecs"]
    for name, hexbits in want["masks"].items():
        assert np.packbits(t.masks[name].reshape(-1), bitorder="little").tobytes().hex() == hexbits
    got = {k: hashlib.sha256(v.astype("<f4").tobytes()).hexdigest() for k, v in t.weights(verify=True).items()}
    assert got == want["weights_sha256"]
    assert set(want["roles"].values()) == {"masked", "regenerated", "zero", "one", "stored"}  # every role covered
    assert t.classes == ("zero", "one", "two") and t.input_shape == (1, 4, 4)


def test_the_fixture_runs_with_numpy_and_onnxruntime_only():
    """torch and onnx cannot be imported: the graph in the ticket is all the device needs."""
    code = BLOCK_TORCH_AND_ONNX + (
        "import json, sys, numpy as np\n"
        "import supermask.runtime as smr\n"
        f"want = json.load(open({str(FIXTURES / 'tiny-v3.json')!r}))\n"
        "x = (np.arange(80, dtype=np.float32).reshape(5, 1, 4, 4) * 3.0) % 256\n"
        f"z = smr.load({str(FIXTURES / 'tiny-v3.smask')!r}, 'cpu').logits(x)\n"
        "ref = np.array([[float.fromhex(v) for v in r] for r in want['logits']], np.float32)\n"
        "np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules\n"
        "print('OK')\n")
    r = run_python(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_dictionary_is_pinned():
    # Part of the format (docs/format.md): changing it makes every version-3 ticket unreadable.
    assert hashlib.sha256(DICTIONARY).hexdigest() == (
        "3b1b0da472f763f3405e3d2b4ad832ef5094cfa25f57a8a0bcfc7a36272cc6d1")
    assert len(DICTIONARY) == 565


# ------------------------------------------------------------------------------- size


@pytest.fixture(scope="module")
def lenet_graph() -> bytes:
    pytest.importorskip("torch")
    from supermask import models
    from supermask.arch import Preprocess
    from supermask.export.torch_graph import export_graph
    from supermask.train.subject import Subject

    s = Subject.from_module(models.create("lenet-300-100", (1, 28, 28), 10))
    tensors = {n: np.zeros(p.shape, np.float32) for n, p in s.plans.items()}
    return export_graph(s.module, tensors, (1, 28, 28), Preprocess(1 / 255, (0.0,), (1.0,)))


@pytest.mark.parametrize("keep,method", [(0.1, "edge-popup"), (0.2, "large_final_same_sign")])
def test_lenet_ticket_overhead_is_at_most_700_bytes(lenet_graph, keep, method):
    """Everything beyond the mask payloads (frame, header, graph, checksum) fits in 700 bytes,
    with Fashion-MNIST's class names and the metadata pack writes."""
    g = np.random.default_rng(0)
    masks = {"fc1.weight": g.random((300, 784)) < keep, "fc2.weight": g.random((100, 300)) < keep,
             "fc3.weight": g.random((10, 100)) < (1 + keep) / 2}
    roles = {"fc1.weight": "masked", "fc2.weight": "masked", "fc3.weight": "masked", "fc1.bias": "zero",
             "fc2.bias": "zero", "fc3.bias": "zero"}
    meta = {"method": method, "dataset": "fashion-mnist", "model": "lenet-300-100", "accuracy": 0.8842,
            "test_examples": 10000}
    data = encode_v3(lenet_graph, seed=2**32 + 12345, init=InitSpec("signed_kaiming_constant", 2 / keep),
                     roles=roles, classes=FASHION, masks=masks, criterion=method, keep=keep, metadata=meta)
    t = ticket.decode_ticket(data)
    s = t.summary()
    assert s["mask_bytes"] == sum(e.length for e in t.tensors if e.role == "masked")
    assert s["overhead_bytes"] == len(data) - s["mask_bytes"] <= 700, s["overhead_bytes"]


# ------------------------------------------------------------------------------- reader checks


def _graph_with(graph: bytes, edit) -> bytes:
    onnx = pytest.importorskip("onnx")
    m = onnx.load_from_string(graph)
    edit(m, onnx)
    return m.SerializeToString()


def test_round_trip_and_role_rules(fixture_bytes):
    header, graph, payloads = split_v3(fixture_bytes)
    assert ticket.decode_ticket(join_v3(header, graph, payloads)).sha256  # re-encoding is accepted
    bad = json.loads(json.dumps(header))
    bad["tensors"][0]["role"] = "stored"  # bn.weight: "one" -> "stored" but no payload added
    with pytest.raises(TicketFormatError, match="payload section"):
        ticket.decode_ticket(join_v3(bad, graph, payloads))
    bad = json.loads(json.dumps(header))
    bad["tensors"][0]["codec"] = "bitpack"
    with pytest.raises(TicketFormatError, match="exactly the fields"):
        ticket.decode_ticket(join_v3(bad, graph, payloads))
    bad = json.loads(json.dumps(header))
    bad["tensors"] = bad["tensors"][1:]
    with pytest.raises(TicketFormatError, match="placeholders"):
        ticket.decode_ticket(join_v3(bad, graph, payloads))
    bad = json.loads(json.dumps(header))
    bad["init"]["scheme"] = "kaiming_normal"
    with pytest.raises(TicketFormatError, match="bit-exact"):
        ticket.decode_ticket(join_v3(bad, graph, payloads))
    bad = json.loads(json.dumps(header))
    bad["fingerprint"] = "0" * 16
    with pytest.raises(SupermaskError, match="fingerprint"):
        ticket.decode_ticket(join_v3(bad, graph, payloads)).weights(verify=True)


def test_stored_values_must_be_finite(fixture_bytes):
    header, graph, payloads = split_v3(fixture_bytes)
    t = ticket.decode_ticket(fixture_bytes)
    first = next(e for e in t.tensors if e.role == "stored")
    broken = payloads[:first.offset] + struct.pack("<f", float("nan")) + payloads[first.offset + 4:]
    with pytest.raises(TicketFormatError, match="NaN"):
        ticket.decode_ticket(join_v3(header, graph, broken))


def test_graph_may_not_reference_files_or_foreign_domains(fixture_bytes):
    header, graph, payloads = split_v3(fixture_bytes)

    def to_file(m, onnx):
        m.graph.initializer[0].external_data[0].value = "/etc/passwd"

    with pytest.raises(TicketFormatError, match="external data '/etc/passwd'"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, to_file), payloads))

    def foreign(m, onnx):
        m.graph.node[0].domain = "com.microsoft"

    with pytest.raises(TicketFormatError, match="domain"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, foreign), payloads))

    def attribute_file(m, onnx):
        t = onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [1], [0.0])
        t.data_location = onnx.TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", PLACEHOLDER
        m.graph.node.append(onnx.helper.make_node("Constant", [], ["c_out"], value=t))

    with pytest.raises(TicketFormatError, match="external"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, attribute_file), payloads))

    def second_input(m, onnx):
        m.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))

    with pytest.raises(TicketFormatError, match="inputs must be exactly"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, second_input), payloads))


def test_section_caps_truncation_and_trailing_data(fixture_bytes, monkeypatch):
    header, graph, payloads = split_v3(fixture_bytes)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw = struct.pack("<I", len(h)) + h + graph
    section = deflate(raw)
    for cut in (section[:-3], section + b"junk"):
        body = struct.pack("<8sHHI", b"\x89SMASK\r\n", 3, 0, len(cut)) + cut + payloads
        with pytest.raises(TicketFormatError, match="DEFLATE|truncated|after its"):
            ticket.decode_ticket(body + hashlib.sha256(body).digest())
    import supermask.ticket3 as t3

    monkeypatch.setattr(t3, "MAX_GRAPH_BYTES", 100)  # a decompression bomb, in miniature
    monkeypatch.setattr(t3, "MAX_HEADER_BYTES", 100)
    with pytest.raises(TicketFormatError, match="decompresses to more than"):
        ticket.decode_ticket(fixture_bytes)


def test_a_version_4_ticket_is_refused_by_number(fixture_bytes):
    data = bytearray(fixture_bytes[:-32])
    data[8:10] = (4).to_bytes(2, "little")
    with pytest.raises(UnsupportedVersionError, match="supports versions 1, 2, 3"):
        ticket.decode_ticket(bytes(data) + hashlib.sha256(bytes(data)).digest())


# ------------------------------------------------------------------------------- fuzzing


def test_every_single_bit_flip_of_the_v3_fixture_is_detected(fixture_bytes):
    for i in range(len(fixture_bytes) * 8):
        data = bytearray(fixture_bytes)
        data[i // 8] ^= 1 << (i % 8)
        assert outcome(bytes(data)) != "ok"


def test_every_truncation_of_the_v3_fixture_is_rejected(fixture_bytes):
    assert all(outcome(fixture_bytes[:n]) != "ok" for n in range(len(fixture_bytes)))


def _mutations(fixture: bytes, r: random.Random) -> bytes:
    header, graph, payloads = split_v3(fixture)
    kind = r.randrange(4)
    if kind == 0:  # flip bytes of the graph, then re-sign: the vetting and onnxruntime-facing checks run
        g = bytearray(graph)
        for _ in range(r.randint(1, 4)):
            g[r.randrange(len(g))] = r.randrange(256)
        return join_v3(header, bytes(g), payloads)
    if kind == 1:  # cut or extend the graph
        g = graph[:r.randrange(len(graph))] if r.random() < 0.5 else graph + bytes(r.randrange(256) for _ in range(9))
        return join_v3(header, g, payloads)
    if kind == 2:  # replace a header value by something nasty
        h = json.loads(json.dumps(header))
        nasty = [None, -1, 0, 2**64, 1e308, "", "x" * 300, [], {}, True, "0x1p-3", [[[]]]]
        row = r.choice(h["tensors"])
        key = r.choice(sorted(row) + ["seed", "keep", "classes", "fingerprint", "init"])
        target = row if key in row else h
        target[key] = r.choice(nasty)
        return join_v3(h, graph, payloads)
    h = json.dumps(header).encode()  # flip bytes of the header text
    hb = bytearray(h)
    for _ in range(r.randint(1, 3)):
        hb[r.randrange(len(hb))] = r.randrange(32, 127)
    return join_v3(bytes(hb), graph, payloads)


def test_mutations_of_the_graph_section_raise_only_typed_errors(fixture_bytes):
    r = random.Random(12)
    seen = {}
    for _ in range(1500):
        name = outcome(_mutations(fixture_bytes, r))  # anything but a SupermaskError propagates
        seen[name] = seen.get(name, 0) + 1
    assert sum(v for k, v in seen.items() if k != "ok") > 1000, seen


def test_graph_ops_names_and_output_width_are_checked(fixture_bytes, tmp_path):
    header, graph, payloads = split_v3(fixture_bytes)

    def bomb(m, onnx):  # a tensor whose size the graph writes itself
        shape = onnx.helper.make_tensor("shape", onnx.TensorProto.INT64, [1], [1 << 28])
        m.graph.initializer.append(shape)
        m.graph.node.append(onnx.helper.make_node("ConstantOfShape", ["shape"], ["big"]))

    with pytest.raises(TicketFormatError, match="'ConstantOfShape' is not allowed"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, bomb), payloads))

    def named_input(m, onnx):
        m.graph.initializer.append(onnx.helper.make_tensor("input", onnx.TensorProto.FLOAT, [1], [0.0]))

    with pytest.raises(TicketFormatError, match="graph's input or output"):
        ticket.decode_ticket(join_v3(header, _graph_with(graph, named_input), payloads))

    def wider(m, onnx):  # declares 3 classes, computes 6
        last = m.graph.node[-1]
        old = last.output[0]
        last.output[0] = "narrow"
        m.graph.node.append(onnx.helper.make_node("Concat", ["narrow", "narrow"], [old], axis=1))

    t = ticket.decode_ticket(join_v3(header, _graph_with(graph, wider), payloads))
    import supermask.runtime as smr

    with pytest.raises(SupermaskError, match=r"logits of shape \(2, 6\)"):
        smr.load(t, "cpu").predict(np.zeros((2, 1, 4, 4), np.float32))


def test_scalar_tensors_can_be_stored(lenet_graph):
    onnx = pytest.importorskip("onnx")
    m = onnx.load_from_string(lenet_graph)
    t = onnx.TensorProto()
    t.name, t.data_type = "temperature", onnx.TensorProto.FLOAT
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", PLACEHOLDER
    m.graph.initializer.append(t)
    last = m.graph.node[-1]
    last.output[0] = "raw"
    m.graph.node.append(onnx.helper.make_node("Mul", ["raw", "temperature"], ["logits"]))
    roles = {"fc1.weight": "regenerated", "fc2.weight": "regenerated", "fc3.weight": "regenerated",
             "fc1.bias": "zero", "fc2.bias": "zero", "fc3.bias": "zero", "temperature": "stored"}
    data = encode_v3(m.SerializeToString(), seed=1, init=InitSpec("kaiming_uniform"), roles=roles,
                     classes=FASHION, stored={"temperature": np.array(2.0, np.float32)})
    t3 = ticket.decode_ticket(data)
    assert t3.stored["temperature"].shape == () and t3.weights()["temperature"] == 2.0
    import supermask.runtime as smr

    z = smr.load(t3, "cpu").logits(np.full((1, 1, 28, 28), 7, np.float32))
    assert z.shape == (1, 10)


def test_format_md_lists_exactly_the_allowed_operators():
    """Another reader is written from docs/format.md alone: its operator list is the code's."""
    from supermask.ticket3 import ALLOWED_OPS

    from helpers import REPO

    text = (REPO / "docs" / "format.md").read_text()
    block = text[text.index("only these operators"):].split("```")[1]
    assert set(block.split()) == set(ALLOWED_OPS)
