"""ONNX export: the graph built from the description matches the torch model of the same
ticket, dense and sparse files give identical outputs, and the files are valid ONNX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from supermask import Architecture, Layer, Preprocess, read_ticket
from supermask.errors import SupermaskError
from supermask.export import IR_VERSION, OPSET, build_model, export_ticket, ticket_model

import supermask.runtime as smr
from deploy_helpers import MODELS, fashion_test, make_ticket, torch_logits

TOL = 1e-5  # max abs difference on logits, the acceptance bound


def _ort_logits(path_or_bytes, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                             providers=["CPUExecutionProvider"])
    return s.run(["logits"], {"input": np.asarray(x, dtype=np.float32)})[0]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("density", [1.0, 0.2])
def test_runtime_and_exports_match_torch_on_fashion_mnist(tmp_path, model, density):
    images, _ = fashion_test()
    x = images[:64]
    path, t = make_ticket(tmp_path / "m.smask", model, (1, 28, 28), density=density, seed=11)
    ref = torch_logits(t, x)
    # a real check needs logits of a real size (masks shrink activations)
    assert np.abs(ref).max() > (0.5 if density == 1.0 else 1e-3)

    runtime = smr.load(path, device="cpu").logits(x)
    dense = export_ticket(path, tmp_path / "dense.onnx", "dense")
    sparse = export_ticket(path, tmp_path / "sparse.onnx", "sparse")
    out_dense = _ort_logits(dense.path, x)
    out_sparse = _ort_logits(sparse.path, x)

    assert np.abs(runtime - ref).max() <= TOL
    assert np.abs(out_dense - ref).max() <= TOL
    assert np.array_equal(out_dense, out_sparse)
    assert np.array_equal(runtime, out_dense)
    if density == 0.2:  # below 1/3 density every weight tensor is stored sparse
        assert set(sparse.sparse_tensors) >= {p.name for p in t.architecture.params() if p.kind == "weight"}
        assert sparse.file_bytes < 0.7 * dense.file_bytes
    else:
        assert not any(n.endswith(".weight") for n in sparse.sparse_tensors)


@pytest.mark.parametrize("model", ["conv2", "conv4", "conv6"])
def test_convnets_match_torch_on_cifar_shaped_inputs(tmp_path, model):
    # CIFAR-10 geometry (3x32x32) with per-channel normalisation in the graph
    pre = Preprocess(1 / 255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    path, t = make_ticket(tmp_path / "c.smask", model, (3, 32, 32), density=1.0, seed=3,
                          classes=[f"c{i}" for i in range(10)], preprocess=pre)
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    ref = torch_logits(t, x)
    assert np.abs(ref).max() > 0.5
    assert np.abs(smr.load(path, device="cpu").logits(x) - ref).max() <= TOL
    r = export_ticket(path, tmp_path / "c.onnx", "sparse")
    assert np.abs(_ort_logits(r.path, x) - ref).max() <= TOL


def test_exported_file_is_valid_self_contained_onnx(tmp_path):
    path, t = make_ticket(tmp_path / "m.smask", "conv2", density=0.1)
    for fmt in ("dense", "sparse"):
        out = tmp_path / f"{fmt}.onnx"
        export_ticket(path, out, fmt)
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        assert m.ir_version == IR_VERSION == 8
        assert [(o.domain, o.version) for o in m.opset_import] == [("", OPSET)]
        props = {p.key: p.value for p in m.metadata_props}
        assert json.loads(props["supermask.classes"]) == list(t.architecture.classes)
        assert props["supermask.ticket_sha256"] == t.sha256
        inp, = m.graph.input
        assert inp.name == "input"
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
        assert [o.name for o in m.graph.output] == ["logits"]
        # self-contained: no external data anywhere
        assert all(i.data_location == onnx.TensorProto.DEFAULT for i in m.graph.initializer)
        if fmt == "sparse":
            assert len(m.graph.sparse_initializer) == 10  # conv1-2, fc1-3: weights and zero biases
            for s in m.graph.sparse_initializer:
                assert s.indices.data_type == onnx.TensorProto.INT64 and len(s.indices.dims) == 1
        # loads in the installed onnxruntime with a dynamic batch
        x = np.zeros((3, 1, 28, 28), np.float32)
        assert _ort_logits(out, x).shape == (3, 10)


def test_sparse_values_and_indices_rebuild_the_masked_weights(tmp_path):
    path, t = make_ticket(tmp_path / "m.smask", density=0.05, seed=5)
    m = ticket_model(t, "sparse")
    w = t.weights()
    for s in m.graph.sparse_initializer:
        name = s.values.name
        vals = onnx.numpy_helper.to_array(s.values)
        idx = onnx.numpy_helper.to_array(s.indices)
        dense = np.zeros(int(np.prod(s.dims)), np.float32)
        dense[idx] = vals
        np.testing.assert_array_equal(dense.reshape(tuple(s.dims)), w[name])
        assert np.all(np.diff(idx) > 0) and vals.size == np.count_nonzero(w[name])


def test_sparse_is_chosen_per_tensor(tmp_path):
    g = np.random.default_rng(1)
    masks = {"fc1.weight": g.random((300, 784)) < 0.05,   # 12 B/kept weight < 4 B/weight: sparse
             "fc2.weight": g.random((100, 300)) < 0.6,    # denser than 1/3: stays dense
             "fc3.weight": g.random((10, 100)) < 0.3}
    path, t = make_ticket(tmp_path / "p.smask", masks=masks)
    m = ticket_model(t, "sparse")
    sparse = {s.values.name for s in m.graph.sparse_initializer}
    dense = {i.name for i in m.graph.initializer}
    assert "fc1.weight" in sparse and "fc3.weight" in sparse
    assert "fc2.weight" in dense and "fc2.weight" not in sparse


def test_preprocessing_is_in_the_graph(tmp_path):
    # raw values in, scaled and normalised per channel inside the graph
    layers = (Layer("flatten"), Layer("linear", "fc1", {"in": 12, "out": 2, "bias": True}))
    arch = Architecture("tiny", (3, 2, 2), layers, ("a", "b"), Preprocess(0.5, (1.0, -2.0, 0.25), (2.0, 4.0, 0.5)))
    w = {"fc1.weight": np.eye(2, 12, dtype=np.float32), "fc1.bias": np.zeros(2, np.float32)}
    m = build_model(arch, w)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    got = _ort_logits(m.SerializeToString(), x)
    pre = (x * 0.5 - np.array([1.0, -2.0, 0.25], np.float32)[None, :, None, None]) \
        / np.array([2.0, 4.0, 0.5], np.float32)[None, :, None, None]
    np.testing.assert_array_equal(got, pre.reshape(2, 12)[:, :2])


def test_build_model_rejects_missing_or_misshapen_weights():
    layers = (Layer("flatten"), Layer("linear", "fc1", {"in": 4, "out": 2, "bias": False}))
    arch = Architecture("tiny", (1, 2, 2), layers, ("a", "b"), Preprocess(1.0, (0.0,), (1.0,)))
    with pytest.raises(SupermaskError, match="no weights given"):
        build_model(arch, {})
    with pytest.raises(SupermaskError, match="shape"):
        build_model(arch, {"fc1.weight": np.zeros((4, 2), np.float32)})
    with pytest.raises(ValueError, match="storage"):
        build_model(arch, {"fc1.weight": np.zeros((2, 4), np.float32)}, storage="zip")


def test_export_errors(tmp_path):
    path, _ = make_ticket(tmp_path / "m.smask")
    with pytest.raises(SupermaskError, match="unknown export format"):
        export_ticket(path, tmp_path / "x.onnx", "bitmap")
    with pytest.raises(SupermaskError, match="does not exist"):
        export_ticket(path, tmp_path / "nowhere" / "x.onnx")
    with pytest.raises(SupermaskError, match="no such file"):
        export_ticket(tmp_path / "missing.smask", tmp_path / "x.onnx")
    assert read_ticket(path).architecture.name == "lenet-300-100"


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_found_supermasks_match_torch_on_fashion_mnist(tmp_path, model):
    # Masks found by training (large_final_same_sign), not random ones: the logits of a real
    # supermask are what a deployment computes. Same 1e-5 bound, dense == sparse exactly.
    pytest.importorskip("torch")
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    from deploy_helpers import run_preprocess
    from helpers import SHARED_DATA

    cfg = FindConfig(model=model, dataset="fashion-mnist", epochs=1, train_limit=3000, test_limit=1000,
                     criteria=("large_final_same_sign",), keeps=(0.2,))
    find(cfg, tmp_path / "run", data_dir=str(SHARED_DATA), progress=False, device="cpu")
    t = pack(tmp_path / "run", tmp_path / "t.smask", criterion="large_final_same_sign", keep=0.2)
    images, labels = fashion_test()
    x = images[:256]
    assert t.version == 3 and t.architecture is None  # the graph travels in the ticket
    ref = torch_logits(t, x, run_preprocess(tmp_path / "run"))  # the built-in nn.Module with the ticket's tensors
    runtime = smr.load(tmp_path / "t.smask", device="cpu").logits(x)
    dense = _ort_logits(export_ticket(t, tmp_path / "d.onnx", "dense").path, x)
    sparse = _ort_logits(export_ticket(t, tmp_path / "s.onnx", "sparse").path, x)
    assert np.abs(runtime - ref).max() <= TOL and np.abs(dense - ref).max() <= TOL
    assert np.array_equal(dense, sparse)
    # and the runtime's accuracy on find's test examples is what find recorded
    acc = smr.load(t, device="cpu").evaluate(images[:1000], labels[:1000]).accuracy
    assert acc == t.metadata["accuracy"]
