"""Architecture description + weights -> ONNX model, built with ``onnx.helper``. Torch-free.

The graph follows the description layer by layer and starts with the description's
preprocessing, so it takes raw pixel values::

    input  float32 [N, *input_shape]   (N is dynamic)
    x = (input * scale - mean[c]) / std[c]
    layers: flatten -> Flatten(axis=1), linear -> Gemm(transB=1), conv2d -> Conv,
            relu -> Relu, maxpool2d -> MaxPool
    logits float32 [N, num_classes]

Weights are stored in one of three ways (see :data:`STORAGE`):

``dense``
    ordinary initializers (raw float32 bytes);
``sparse``
    per tensor, whichever is smaller: a dense initializer or an ONNX ``sparse_initializer``
    holding the kept values and their flat int64 indices (the only index layout that both
    ``onnx.checker`` and onnxruntime accept);
``external``
    initializers that name their data but do not hold it; the runtime hands the arrays to
    onnxruntime directly (``SessionOptions.add_external_initializers``), which skips
    serialising and parsing every weight. Such a model is not self-contained and is never
    written to a file.

The model is written with IR version :data:`IR_VERSION` and opset :data:`OPSET`, old enough
for every onnxruntime release the package supports (>= 1.17) and for ONNX tooling in general.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..arch import Architecture
from ..errors import SupermaskError

#: IR version of every model built here. onnx 1.23 would write 14, which onnxruntime releases
#: before 1.32 refuse; IR 8 (ONNX 1.10) is read by every onnxruntime >= 1.10.
IR_VERSION = 8
#: Default-domain opset; every op used here is unchanged since opset 13 (Flatten, Gemm,
#: Conv, Relu, MaxPool, Mul, Sub, Div).
OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
STORAGE = ("dense", "sparse", "external")
#: The largest protobuf message: a self-contained model must stay below it.
MAX_PROTO_BYTES = (1 << 31) - 1
_BATCH = "N"


def _initializer_name(param: str) -> str:
    return param  # tensor names in the graph equal the ticket's tensor names


def sparse_bytes(nnz: int) -> int:
    """Payload bytes of a float32 sparse initializer with ``nnz`` values and int64 indices."""
    return 12 * nnz


def dense_initializer(name: str, w: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(w, dtype=np.float32, order="C"), name)  # 0-d stays 0-d


def sparse_initializer(name: str, w: np.ndarray) -> onnx.SparseTensorProto:
    """``w`` as a sparse tensor: its non-zero values and their flat (row-major) int64 indices."""
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[idx], name)
    indices = numpy_helper.from_array(idx, name + "_indices")
    return helper.make_sparse_tensor(values, indices, list(w.shape))


def external_initializer(name: str, shape: tuple[int, ...]) -> TensorProto:
    """A float32 initializer whose bytes are supplied at session creation."""
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "supermask-memory"), ("offset", "0"),
                       ("length", str(4 * int(np.prod(shape, dtype=np.int64))))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _preprocess_nodes(arch: Architecture, inits: list[TensorProto]) -> tuple[list, str]:
    p = arch.preprocess
    bshape = (1, len(p.mean)) + (1,) * (len(arch.input_shape) - 1)
    nodes, x = [], INPUT_NAME
    # Each step is one IEEE float32 operation, exactly what the torch reference does; steps
    # that cannot change a value (subtracting 0, dividing by 1) are left out.
    inits.append(numpy_helper.from_array(np.array(p.scale, dtype=np.float32), "preprocess_scale"))
    nodes.append(helper.make_node("Mul", [x, "preprocess_scale"], ["preprocess_scaled"], name="preprocess_mul"))
    x = "preprocess_scaled"
    if any(m != 0.0 for m in p.mean):
        inits.append(numpy_helper.from_array(np.array(p.mean, dtype=np.float32).reshape(bshape), "preprocess_mean"))
        nodes.append(helper.make_node("Sub", [x, "preprocess_mean"], ["preprocess_centred"], name="preprocess_sub"))
        x = "preprocess_centred"
    if any(s != 1.0 for s in p.std):
        inits.append(numpy_helper.from_array(np.array(p.std, dtype=np.float32).reshape(bshape), "preprocess_std"))
        nodes.append(helper.make_node("Div", [x, "preprocess_std"], ["preprocess_out"], name="preprocess_div"))
        x = "preprocess_out"
    return nodes, x


def build_model(
    arch: Architecture,
    weights: Mapping[str, np.ndarray] | None = None,
    *,
    storage: str = "dense",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The ONNX model of ``arch`` with ``weights`` (name -> float32 array, matched by name).

    ``storage`` is one of :data:`STORAGE`; ``weights`` may be omitted only for ``external``.
    ``metadata`` becomes the model's ``metadata_props``.
    """
    if storage not in STORAGE:
        raise ValueError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGE)}")
    params = {p.name: p for p in arch.params()}
    if weights is None and storage != "external":
        raise ValueError("weights are needed unless storage='external'")
    if weights is not None:
        missing = set(params) - set(weights)
        if missing:
            raise SupermaskError(f"no weights given for {sorted(missing)}")
        for name, p in params.items():
            if tuple(np.shape(weights[name])) != p.shape:
                raise SupermaskError(f"weight {name!r} has shape {np.shape(weights[name])}; "
                                     f"the architecture says {p.shape}")

    inits: list[TensorProto] = []
    sparse: list[onnx.SparseTensorProto] = []
    nodes, x = _preprocess_nodes(arch, inits)

    def add_param(name: str) -> str:
        p = params[name]
        if storage == "external":
            inits.append(external_initializer(name, p.shape))
        else:
            w = np.asarray(weights[name], dtype=np.float32)
            if storage == "sparse" and sparse_bytes(int(np.count_nonzero(w))) < 4 * w.size:
                sparse.append(sparse_initializer(name, w))
            else:
                inits.append(dense_initializer(name, w))
        return name

    n_layers = len(arch.layers)
    for i, layer in enumerate(arch.layers):
        a = layer.attrs
        y = OUTPUT_NAME if i == n_layers - 1 else f"{layer.name or layer.type}_{i}_out"
        node_name = layer.name or f"{layer.type}_{i}"
        if layer.type == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], name=node_name, axis=1))
        elif layer.type == "relu":
            nodes.append(helper.make_node("Relu", [x], [y], name=node_name))
        elif layer.type == "maxpool2d":
            k, s = a["kernel"], a["stride"]
            nodes.append(helper.make_node("MaxPool", [x], [y], name=node_name,
                                          kernel_shape=[k, k], strides=[s, s], pads=[0, 0, 0, 0]))
        elif layer.type == "linear":
            ins = [x, add_param(f"{layer.name}.weight")]
            if a["bias"]:
                ins.append(add_param(f"{layer.name}.bias"))
            nodes.append(helper.make_node("Gemm", ins, [y], name=node_name, transB=1))
        elif layer.type == "conv2d":
            k, pad, s = a["kernel"], a["padding"], a["stride"]
            ins = [x, add_param(f"{layer.name}.weight")]
            if a["bias"]:
                ins.append(add_param(f"{layer.name}.bias"))
            nodes.append(helper.make_node("Conv", ins, [y], name=node_name, kernel_shape=[k, k],
                                          pads=[pad, pad, pad, pad], strides=[s, s], dilations=[1, 1], group=1))
        else:  # Architecture.from_dict allows nothing else
            raise SupermaskError(f"layer type {layer.type!r} has no ONNX translation")
        x = y
    if x != OUTPUT_NAME:  # cannot happen for a valid architecture (it has at least one layer)
        raise SupermaskError("the graph has no output")

    graph = helper.make_graph(
        nodes,
        arch.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [_BATCH, *arch.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [_BATCH, arch.num_classes])],
        initializer=inits,
        sparse_initializer=sparse,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="supermask",
        producer_version=__version__,
        doc_string=f"{arch.name}: raw input -> preprocessing -> logits over {arch.num_classes} classes",
    )
    props = {"supermask.classes": json.dumps(list(arch.classes)),
             "supermask.architecture": json.dumps(arch.to_dict(), sort_keys=True)}
    props.update(metadata or {})
    helper.set_model_props(model, props)
    return model
