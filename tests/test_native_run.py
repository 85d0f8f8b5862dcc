"""Streaming inference of version-3 tickets in the C reader (`smask-c run`): the graph that
`supermask pack` writes is walked as a chain of layers and run with the weights regenerated one
row or filter at a time. Its predictions must equal onnxruntime's (`supermask.runtime`, whole
weight tensors) and its logits agree within 1e-5 relative.

The binary is built with the system C compiler like tests/test_native.py (skipped without
one unless SUPERMASK_REQUIRE_CC=1). The Fashion-MNIST test reads ../shared/data (skipped where it
is missing unless SUPERMASK_REQUIRE_DATA=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, SHARED_DATA, needs_data
from supermask import InitSpec, ticket, ticket3
from test_native import _build, run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import supermask.runtime as smr  # noqa: E402
from supermask import datasets  # noqa: E402

REL = 1e-5


@pytest.fixture(scope="module")
def smask_c(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("smask-c-run"), "smask-c", ["-O2"])


def make_ticket(tmp: Path, model: str, dataset: str, iterations: int, data_dir: Path | None = None) -> Path:
    """A short edge-popup search and `supermask pack`: the version-3 ticket users get."""
    from click.testing import CliRunner

    from supermask.cli import main

    run_dir, out = tmp / f"run-{model}-{dataset}", tmp / f"{model}-{dataset}.smask"
    args = ["find", "--model", model, "--dataset", dataset, "--method", "edge-popup", "--keep", "0.1",
            "--iterations", str(iterations), "-q", "-o", str(run_dir)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["pack", "--run", str(run_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert ticket.read_ticket(out).version == 3
    return out


def c_logits(exe: Path, path: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """All of x in one `smask-c run` call (raw float32 little-endian inputs)."""
    np.ascontiguousarray(x, dtype="<f4").tofile(tmp / "x.bin")
    out = run(exe, "run", str(path), str(tmp / "x.bin")).stdout
    return np.array([[float.fromhex(v) for v in line.split()] for line in out.splitlines()], dtype=np.float32)


def compare(exe: Path, path: Path, x: np.ndarray, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    t = ticket.read_ticket(path)
    got = c_logits(exe, path, x, tmp)
    ref = smr.load(t, "cpu").logits(x)
    assert got.shape == ref.shape == (len(x), len(t.classes))
    scale = np.maximum(1.0, np.abs(ref).max(axis=1, keepdims=True))
    rel = np.abs(got - ref) / scale
    assert rel.max() <= REL, f"largest relative logit difference {rel.max():.3g}"
    assert np.array_equal(got.argmax(1), ref.argmax(1)), f"{(got.argmax(1) != ref.argmax(1)).sum()} predictions differ"
    return got, ref


@needs_data("fashion-mnist")
def test_lenet_fashion_mnist_whole_test_set(smask_c, tmp_path):
    """lenet-300-100 on Fashion-MNIST: all 10,000 test images through the streaming C reader and
    through onnxruntime give the same predictions."""
    path = make_ticket(tmp_path, "lenet-300-100", "fashion-mnist", 30, SHARED_DATA)
    test = datasets.load("fashion-mnist", "test", data_dir=SHARED_DATA)
    x = test.images.astype(np.float32)
    assert x.shape == (10000, 1, 28, 28)
    got, ref = compare(smask_c, path, x, tmp_path)
    # the search ran: the network is better than chance, so the comparison is not between constants
    assert (ref.argmax(1) == test.labels).mean() > 0.2
    assert len(np.unique(got.argmax(1))) > 2


def test_conv2_digits(smask_c, tmp_path):
    """conv2 (Conv, Relu, MaxPool, Flatten, Gemm) on the bundled digits, 1,000+ real inputs."""
    path = make_ticket(tmp_path, "conv2", "digits", 20)
    g = onnx.load_from_string(ticket.read_ticket(path).graph)
    ops = {n.op_type for n in g.graph.node}
    assert {"Conv", "MaxPool", "Gemm", "Relu", "Flatten"} <= ops
    x = np.concatenate([datasets.load("digits", s).images for s in ("train", "test")]).astype(np.float32)[:1200]
    assert len(x) >= 1000
    got, _ = compare(smask_c, path, x, tmp_path)
    assert len(np.unique(got.argmax(1))) > 1


def test_tiny_v3_fixture_logits(smask_c, tmp_path):
    """The committed fixture (Sub and Div by per-channel constants, Conv without bias,
    BatchNormalization with roles one/zero/stored, masked and regenerated weights): the logits
    its JSON file records, and onnxruntime's."""
    meta = json.loads((FIXTURES / "tiny-v3.json").read_text())
    x = ((3 * np.arange(80)) % 256).astype(np.float32).reshape(5, 1, 4, 4)
    want = np.array([[float.fromhex(v) for v in row] for row in meta["logits"]], dtype=np.float32)
    got = c_logits(smask_c, FIXTURES / "tiny-v3.smask", x, tmp_path)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= REL * max(1.0, float(np.abs(want).max()))
    ref = smr.load(ticket.read_ticket(FIXTURES / "tiny-v3.smask"), "cpu").logits(x)
    assert np.abs(got - ref).max() <= REL * max(1.0, float(np.abs(ref).max()))
    # a zero input and its logits differ from those of x: the input is really read
    zero = c_logits(smask_c, FIXTURES / "tiny-v3.smask", np.zeros_like(x), tmp_path)
    assert not np.allclose(zero, got)


def _graph_ticket(nodes, extra_inits=(), features: int = 4, classes: int = 3) -> bytes:
    from onnx import TensorProto, helper

    inits = []
    for name, dims in [("w", [classes, features]), ("b", [classes]), *extra_inits]:
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
        t.external_data.append(onnx.StringStringEntryProto(key="location", value="supermask:tensor"))
        inits.append(t)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    roles = {"w": "regenerated", "b": "zero", **{n: "one" for n, _ in extra_inits}}
    return ticket3.encode_v3(model.SerializeToString(), seed=5, init=InitSpec("kaiming_uniform"), roles=roles,
                             classes=[f"c{i}" for i in range(classes)])


def test_graph_outside_the_vocabulary_is_refused_clearly(smask_c, tmp_path):
    """Valid tickets whose graphs the streaming reader does not run: a clear message naming the
    operator, exit status 3; the same graph without the foreign operator runs."""
    from onnx import helper

    gemm = helper.make_node("Gemm", ["input", "w", "b"], ["h"], transB=1)
    cases = {
        "Sigmoid": [gemm, helper.make_node("Sigmoid", ["h"], ["logits"])],
        "Gemm (only alpha 1, beta 1, transA 0, transB 1)": [helper.make_node("Gemm", ["input", "w", "b"], ["logits"])],
        # a branch: the input is used twice
        "Add (the second operand must be a Constant)": [gemm, helper.make_node("Add", ["h", "h"], ["logits"])],
    }
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    x.astype("<f4").tofile(tmp_path / "x.bin")
    for op, nodes in cases.items():
        data = _graph_ticket(nodes)
        ticket.decode_ticket(data)  # a valid ticket
        (tmp_path / "t.smask").write_bytes(data)
        assert run(smask_c, "verify", str(tmp_path / "t.smask")).returncode == 0
        p = run(smask_c, "run", str(tmp_path / "t.smask"), str(tmp_path / "x.bin"), check=False)
        assert p.returncode == 3, (op, p.returncode, p.stderr)
        assert f"this graph is outside the streaming vocabulary: {op}; run it with onnxruntime" in p.stderr, p.stderr
        assert p.stdout == ""
    ok = _graph_ticket([gemm, helper.make_node("Relu", ["h"], ["logits"])])
    (tmp_path / "ok.smask").write_bytes(ok)
    got = c_logits(smask_c, tmp_path / "ok.smask", x, tmp_path)
    ref = smr.load(ticket.decode_ticket(ok), "cpu").logits(x)
    assert np.abs(got - ref).max() <= REL * max(1.0, float(np.abs(ref).max()))
