"""Exact 4-bit weights (``weights="lowbit"``, ``--weights``, ``export --format lowbit``): the
packing is bit-exact, onnxruntime's MatMulNBits dequantizes to the very float32 weights, the
4-bit path predicts what the float path predicts on the whole Fashion-MNIST test set, and
bad requests get one-line typed errors (``auto`` falls back to float32 quietly)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import supermask.runtime as smr
from supermask import InitSpec, models, write_ticket
from supermask.cli import main
from supermask.errors import RuntimeUnavailableError, SupermaskError
from supermask.runtime import lowbit

from deploy_helpers import FASHION_CLASSES, fashion_test, make_ticket, random_masks
from helpers import SHARED_DATA, needs_data, run_python

SIGNED = InitSpec("signed_kaiming_constant")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
#: The stated contract (docs/deploy.md): logits of the two paths differ by float32 summation
#: order only: |lowbit - float| <= LOGIT_RTOL * max(1, largest |float logit| of the row).
LOGIT_RTOL = 1e-5


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(r, *fragments):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in r.output


def assert_logits_close(zf: np.ndarray, zl: np.ndarray) -> None:
    bound = LOGIT_RTOL * np.maximum(1.0, np.abs(zf).max(axis=1, keepdims=True))
    assert (np.abs(zl - zf) <= bound).all(), float(np.abs(zl - zf).max())


# ------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("k", [16, 64, 100, 300, 784, 1000])
def test_pack_unpack_is_bit_exact(k):
    g = np.random.default_rng(k)
    c = np.float32(0.0123) * np.float32(1.7)  # a scale times a Bernoulli-style multiplier
    w = (g.integers(-1, 2, (5, k)).astype(np.float32) * c) + np.float32(0.0)
    assert lowbit.ternary_scale(w) == c
    p = lowbit.pack(w, c)
    assert p.codes.dtype == np.uint8 and p.codes.shape[0] == 5 and p.scales.dtype == np.float32
    np.testing.assert_array_equal(lowbit.unpack(p).view(np.uint32), w.view(np.uint32))


def test_ternary_scale_recognises_only_ternary_float32():
    c = np.float32(0.5)
    assert lowbit.ternary_scale(np.array([[0.5, -0.5, 0.0, -0.0]], np.float32)) == c
    assert lowbit.ternary_scale(np.zeros((3, 4), np.float32)) == 1.0  # a fully pruned layer
    assert lowbit.ternary_scale(np.array([[0.5, 0.25]], np.float32)) is None
    assert lowbit.ternary_scale(np.array([[0.5, np.nextafter(np.float32(0.5), 1, dtype=np.float32)]])) is None
    assert lowbit.ternary_scale(np.array([[0.5, -0.5]], np.float64)) is None
    assert lowbit.ternary_scale(np.array([[np.inf, -np.inf]], np.float32)) is None


def test_block_size_stores_fewest_bytes_and_meets_4_5_bits_when_k_allows():
    assert lowbit.block_size_for(4096) == 256 and lowbit.block_size_for(12544) == 256
    assert lowbit.block_size_for(784) == 64  # 13 blocks of 64: the least padding plus scales
    for k in (256, 2304, 3072, 4096, 6272):
        w = np.ones((3, k), np.float32)
        assert lowbit.pack(w, np.float32(1)).bits_per_weight <= 4.25
    # widths that leave padding are split into whole blocks and a tail where that saves bytes
    assert (lowbit.split_for(784), lowbit.split_for(300), lowbit.split_for(100), lowbit.split_for(4096)) == \
        (768, 256, 0, 0)


def test_lenet_layers_split_to_at_most_4_5_bits_and_stay_exact(signed_tickets):
    q = smr.load(signed_tickets["lenet-300-100"], device="cpu", weights="lowbit")
    fc1, fc2, fc3 = (q.lowbit[f"fc{i}.weight"] for i in (1, 2, 3))
    assert (fc1.split, fc2.split, fc3.split) == (768, 256, 0)
    assert fc1.bits_per_weight < 4.2 and fc2.bits_per_weight < 4.5 and fc3.bits_per_weight < 5.5
    # 768 inputs as three blocks of 256 (128 code bytes and a scale each), the 16 left as one block of 16
    assert (fc1.block_size, fc1.nbytes) == (256, 300 * (3 * (128 + 4) + (8 + 4)))
    x = np.random.default_rng(4).integers(0, 256, (300, 1, 28, 28)).astype(np.uint8)
    f = smr.load(signed_tickets["lenet-300-100"], device="cpu", weights="float")
    assert_logits_close(f.logits(x), q.logits(x))
    np.testing.assert_array_equal(f.predict(x), q.predict(x))


def test_matmulnbits_dequantizes_to_the_float_weights_exactly():
    # One-hot inputs make each output a single product 1 * w[n, k] (plus exact zeros): any
    # difference from the float weights would show, with no summation order to blame.
    from onnx import TensorProto, helper, numpy_helper

    k, n = 300, 7
    g = np.random.default_rng(3)
    c = np.float32(0.0421)
    w = g.integers(-1, 2, (n, k)).astype(np.float32) * c
    p = lowbit.pack(w, c)
    node = helper.make_node(lowbit.OP, ["x", "q", "s"], ["y"], domain=lowbit.DOMAIN, K=k, N=n, bits=4,
                            block_size=p.block_size, accuracy_level=lowbit.ACCURACY_LEVEL)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
                              initializer=[numpy_helper.from_array(p.codes, "q"),
                                           numpy_helper.from_array(p.scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid(lowbit.DOMAIN, 1)], ir_version=8)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, k):  # the batch-1 kernel and the batched one
        eye = np.eye(k, dtype=np.float32)[:batch]
        y = s.run(None, {"x": eye})[0]
        np.testing.assert_array_equal(y.view(np.uint32), (w.T[:batch] + np.float32(0)).view(np.uint32))


# ------------------------------------------------------------------------------- the runtime


@pytest.fixture(scope="module")
def signed_tickets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lowbit")
    return {m: make_ticket(folder / f"{m}.smask", model=m, density=0.5, seed=5, init=SIGNED)[0]
            for m in ("lenet-300-100", "conv2")}


@needs_data("fashion-mnist")
@pytest.mark.parametrize("name", ["lenet-300-100", "conv2"])
def test_lowbit_predicts_what_float_predicts_on_all_of_fashion_mnist(signed_tickets, name):
    images, labels = fashion_test()
    f = smr.load(signed_tickets[name], device="cpu", weights="float")
    q = smr.load(signed_tickets[name], device="cpu", weights="lowbit")
    assert f.weights == "float" and not f.lowbit
    assert q.weights == "lowbit" and set(q.lowbit) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert "4-bit ternary (MatMulNBits) for 3 of 3 linear layers" in q.weights_summary
    zf, zq = f.logits(images), q.logits(images)
    np.testing.assert_array_equal(zf.argmax(axis=1), zq.argmax(axis=1))
    assert f.evaluate(images, labels).correct == q.evaluate(images, labels).correct
    assert_logits_close(zf, zq)


def test_the_codes_live_only_in_onnxruntime(signed_tickets):
    q = smr.load(signed_tickets["conv2"], device="cpu", weights="lowbit")
    held, _ = q._buffers
    # Python keeps the float32 tensors the session reads in place, nothing of the 4-bit layers:
    # neither their float32 weights, nor codes, nor the serialized graph that embeds the codes.
    assert not {"fc1.weight", "fc2.weight", "fc3.weight"} & set(held)
    assert {a.dtype for a in held.values()} == {np.dtype(np.float32)} and "conv1.weight" in held
    assert getattr(q.session, "_model_bytes", None) is None
    for layer in q.lowbit.values():
        assert layer.bits_per_weight <= 4.5  # K = 12544 and 256: whole 256-blocks, 4.125 bits
    f = smr.load(signed_tickets["conv2"], device="cpu", weights="float")
    assert f._buffers[0]["fc1.weight"].dtype == np.float32


_RSS = """
import ctypes, gc, sys
import numpy as np
import supermask.runtime as smr
from supermask import read_ticket
trim = ctypes.CDLL(None).malloc_trim
def rss():
    gc.collect(); trim(0)
    return int(open("/proc/self/statm").read().split()[1]) * 4096
t = read_ticket(sys.argv[1])
smr.load(t, device="cpu", weights="lowbit", threads=1)  # imports, probe
before = rss()
m = smr.load(t, device="cpu", weights="lowbit", threads=1)
m.logits(np.zeros((1, *m.input_shape), np.float32))
print(rss() - before, sum(layer.k * layer.n for layer in m.lowbit.values()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm and glibc's malloc_trim")
def test_the_process_holds_a_4_bit_layer_in_about_4_bits_per_weight(tmp_path):
    # 2048-2048-2048-10 at 4.125 bits per weight: 4.4 MB of codes (33.6 MB as float32). Held
    # twice (codes beside onnxruntime's prepacked copy, or the session's copy of the graph
    # bytes) the process would grow by 8.8 MB.
    from supermask.arch import Architecture, Layer, Preprocess

    dims, layers = (2048, 2048, 2048, 10), [Layer("flatten")]
    for i in range(3):
        layers.append(Layer("linear", f"fc{i + 1}", {"in": dims[i], "out": dims[i + 1], "bias": True}))
        layers += [Layer("relu")] if i < 2 else []
    arch = Architecture("mlp", (1, 32, 64), tuple(layers), tuple(f"c{i}" for i in range(10)),
                        Preprocess(1 / 255, (0.0,), (1.0,)))
    path = tmp_path / "mlp.smask"
    write_ticket(path, arch, 3, SIGNED, masks=random_masks(arch, 0.5, 3), keep=0.5)
    r = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew, weights = map(int, r.stdout.split())
    assert weights == 2048 * 2048 * 2 + 2048 * 10
    # 4.5 bits per weight, plus 1.5 MB for the session itself (its arena, graph and kernels)
    assert grew <= 4.5 * weights / 8 + 1.5e6, f"grew by {grew / 1e6:.1f} MB"


def test_bernoulli_multipliers_stay_exact(tmp_path):
    # weight = (w * mask) * multiplier: still ternary, with c = scale * multiplier in float32
    arch = models.build("lenet-300-100", (1, 28, 28), list(FASHION_CLASSES))
    masks = random_masks(arch, 0.4, seed=2)
    path = tmp_path / "bern.smask"
    t = write_ticket(path, arch, 3, SIGNED, masks=masks, multipliers={"fc1.weight": 2.5, "fc2.weight": float(np.float32(1.37))})
    w = t.weights()
    q = smr.load(path, device="cpu", weights="lowbit")
    assert set(q.lowbit) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    c = lowbit.ternary_scale(w["fc2.weight"])
    assert c == np.float32(np.float32(t.tensor("fc2.weight").scale) * np.float32(1.37))
    np.testing.assert_array_equal(lowbit.unpack(lowbit.pack(w["fc2.weight"], c)), w["fc2.weight"])
    x = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28)).astype(np.uint8)
    f = smr.load(path, device="cpu", weights="float")
    assert_logits_close(f.logits(x), q.logits(x))
    np.testing.assert_array_equal(f.predict(x), q.predict(x))


def test_lowbit_on_a_ticket_without_ternary_layers_is_a_typed_error(tmp_path):
    path, _ = make_ticket(tmp_path / "uniform.smask")  # kaiming_uniform
    with pytest.raises(lowbit.LowBitError, match="no.*ternary|has none") as e:
        smr.load(path, device="cpu", weights="lowbit")
    assert isinstance(e.value, SupermaskError) and "\n" not in str(e.value)
    assert "kaiming_uniform" in str(e.value) and "--weights float" in str(e.value)
    with pytest.raises(SupermaskError, match="unknown weights"):
        smr.load(path, device="cpu", weights="int4")


def test_auto_falls_back_to_float_quietly_and_says_so_once(tmp_path, caplog, capsys):
    path, _ = make_ticket(tmp_path / "uniform.smask")
    with caplog.at_level(logging.DEBUG, logger="supermask.runtime"):
        m = smr.load(path, device="cpu")  # weights="auto" is the default
    assert m.weights == "float" and m.weights_summary == "float32"
    assert "not signed-constant" in m.weights_note
    notes = [r for r in caplog.records if r.getMessage() == m.weights_note]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG
    assert capsys.readouterr().err == ""


def test_auto_uses_4_bits_only_from_the_size_where_it_pays(signed_tickets, monkeypatch):
    m = smr.load(signed_tickets["lenet-300-100"], device="cpu")
    assert m.weights == "float" and "under 8,388,608 weights, where float32 is faster" in m.weights_note
    monkeypatch.setattr(lowbit, "AUTO_MIN_WEIGHTS", 30_000)  # fc1 (235,200) and fc2 (30,000)
    m = smr.load(signed_tickets["lenet-300-100"], device="cpu")
    assert m.weights == "lowbit" and set(m.lowbit) == {"fc1.weight", "fc2.weight"}
    assert "1 ternary linear layer under 30,000 weights kept float32" in m.weights_note


def test_a_build_without_matmulnbits(signed_tickets, monkeypatch):
    why = "onnxruntime 1.0 cannot run com.microsoft.MatMulNBits (4-bit, with bias) on CPUExecutionProvider: test"
    monkeypatch.setattr(lowbit, "unsupported", lambda ort, provider: why)
    with pytest.raises(RuntimeUnavailableError, match="cannot run com.microsoft.MatMulNBits") as e:
        smr.load(signed_tickets["lenet-300-100"], device="cpu", weights="lowbit")
    assert "--weights float" in str(e.value)
    monkeypatch.setattr(lowbit, "AUTO_MIN_WEIGHTS", 1)
    m = smr.load(signed_tickets["lenet-300-100"], device="cpu")
    assert m.weights == "float" and m.weights_note == f"float32 weights: {why}"


def test_the_probe_finds_matmulnbits_in_this_build():
    assert lowbit.unsupported(ort, "CPUExecutionProvider") is None
    assert lowbit.provider_in_use(ort, ["CPUExecutionProvider"]) == "CPUExecutionProvider"


def test_lowbit_runtime_needs_no_torch(signed_tickets):
    code = (f"import numpy as np, supermask.runtime as smr\n"
            f"m = smr.load({str(signed_tickets['lenet-300-100'])!r}, device='cpu', weights='lowbit')\n"
            f"print(m.weights, m.predict(np.zeros((2, 1, 28, 28), np.uint8)).shape)")
    r = run_python(code, block_torch=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lowbit", "(2,)"]


@pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDA provider here")
def test_lowbit_on_cuda(signed_tickets):
    x = np.random.default_rng(0).integers(0, 256, (32, 1, 28, 28)).astype(np.uint8)
    f = smr.load(signed_tickets["lenet-300-100"], device="cpu", weights="float")
    try:
        q = smr.load(signed_tickets["lenet-300-100"], device="cuda", weights="lowbit")
    except RuntimeUnavailableError as e:
        pytest.skip(f"CUDA not usable: {e}")
    assert q.provider == "CUDAExecutionProvider" and q.weights == "lowbit"
    np.testing.assert_array_equal(f.predict(x), q.predict(x))


# ------------------------------------------------------------------------------- a trained ticket


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short edge-popup run (signed-constant, version-3 ticket with its ONNX graph) and a
    Bernoulli one (per-tensor multipliers), both packed."""
    pytest.importorskip("torch")
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    out = tmp_path_factory.mktemp("trained")
    tickets = {}
    for method, extra in (("edge-popup", {"keeps": (0.5,)}), ("bernoulli", {})):
        find(FindConfig(model="lenet-300-100", dataset="digits", method=method, epochs=3, **extra),
             out / method, progress=False)
        t = pack(out / method, out / f"{method}.smask")
        assert t.version == 3 and t.init.scheme == "signed_kaiming_constant"
        tickets[method] = out / f"{method}.smask"
    return tickets


@pytest.mark.parametrize("method", ["edge-popup", "bernoulli"])
def test_eval_lowbit_gives_the_float_count_on_a_trained_ticket(trained, method):
    runs = {}
    for w in ("float", "lowbit"):
        r = invoke("eval", trained[method], "--dataset", "digits", "--device", "cpu", "--weights", w, "--json")
        assert r.exit_code == 0, r.output
        runs[w] = json.loads(r.stdout)
    assert runs["float"]["weights"] == "float" and runs["lowbit"]["weights"] == "lowbit"
    assert runs["lowbit"]["correct"] == runs["float"]["correct"]
    assert runs["lowbit"]["correct"] > 0.5 * runs["lowbit"]["num_examples"]  # a trained mask, not chance
    r = invoke("eval", trained[method], "--dataset", "digits", "--device", "cpu", "--weights", "lowbit")
    assert "weights     4-bit ternary (MatMulNBits) for 3 of 3 linear layers" in r.stdout


def test_predict_weights_option(trained, tmp_path):
    from supermask import datasets

    x = datasets.load("digits", "test").images[:20]
    np.save(tmp_path / "x.npy", x)
    out = {}
    for w in ("float", "lowbit", "auto"):
        r = invoke("predict", trained["edge-popup"], tmp_path / "x.npy", "--weights", w, "--json")
        assert r.exit_code == 0, r.output
        out[w] = json.loads(r.stdout)
    assert [p["class"] for p in out["float"]["predictions"]] == [p["class"] for p in out["lowbit"]["predictions"]]
    assert out["lowbit"]["weights"] == "lowbit" and out["auto"]["weights"] == "float"
    assert "under 8,388,608 weights" in out["auto"]["weights_note"]


# ------------------------------------------------------------------------------- export


def test_export_lowbit_runs_in_onnxruntime_like_dense(trained, signed_tickets, tmp_path):
    import onnx

    images, _ = (fashion_test() if (SHARED_DATA / "fashion-mnist").is_dir()
                 else (np.random.default_rng(0).integers(0, 256, (500, 1, 28, 28)).astype(np.uint8), None))
    cases = [(signed_tickets["conv2"], images[:500].astype(np.float32))]
    from supermask import datasets

    cases.append((trained["edge-popup"], datasets.load("digits", "test").images.astype(np.float32)))
    for ticket, x in cases:
        outs = {}
        for fmt in ("dense", "lowbit"):
            path = tmp_path / f"{ticket.stem}-{fmt}.onnx"
            r = invoke("export", ticket, "-o", path, "--format", fmt, "--json")
            assert r.exit_code == 0, r.output
            info = json.loads(r.stdout)
            outs[fmt] = (info, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                         .run(None, {"input": x})[0])
        info = outs["lowbit"][0]
        assert set(info["lowbit_tensors"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        assert info["file_bytes"] < outs["dense"][0]["file_bytes"] / 3
        m = onnx.load(info["path"])
        # one node a layer, two for a layer split into whole blocks and a tail (digits' fc2: 300 = 256 + 44)
        want = 3 if ticket == signed_tickets["conv2"] else 4
        assert sum(n.op_type == "MatMulNBits" and n.domain == "com.microsoft" for n in m.graph.node) == want
        props = {p.key: p.value for p in m.metadata_props}
        assert props["supermask.weights"] == "lowbit" and json.loads(props["supermask.classes"])
        np.testing.assert_array_equal(outs["dense"][1].argmax(1), outs["lowbit"][1].argmax(1))
        assert_logits_close(outs["dense"][1], outs["lowbit"][1])


def test_export_lowbit_refuses_a_ticket_without_ternary_layers(tmp_path):
    path, _ = make_ticket(tmp_path / "uniform.smask")
    r = invoke("export", path, "-o", tmp_path / "u.onnx", "--format", "lowbit")
    assert_one_line_error(r, "--format lowbit needs ternary linear layers", "kaiming_uniform")
    assert not (tmp_path / "u.onnx").exists()
    r = invoke("eval", path, "--dataset", "digits", "--weights", "lowbit")
    assert r.exit_code == 1 and "Traceback" not in r.output and "Error: 4-bit weights need ternary" in r.stderr
