"""supermask.onnxcheck: the stdlib-only vetting of untrusted ONNX graphs.

onnx and onnx.helper only BUILD the test graphs here (and cross-check what the validator
accepts); the module under test never imports them.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from supermask import onnxcheck
from supermask.errors import TicketFormatError
from supermask.onnxcheck import GraphError, inspect_graph

FLOAT = TensorProto.FLOAT


def placeholder(name: str, dims: list[int]) -> TensorProto:
    """The project's external-data placeholder initializer."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "supermask:tensor"
    return t


def make_model(nodes, inits=(), opsets=(("", 17),), inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", FLOAT, ["N", 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", FLOAT, ["N", 2, 2, 2])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def good_model(external: bool = True) -> onnx.ModelProto:
    """x[N,3] -> Gemm -> Relu -> Reshape -> Conv -> y[N,2,2,2]; fc1.weight external or embedded."""
    rng = np.random.default_rng(0)
    weight = (placeholder("fc1.weight", [4, 3]) if external else
              numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc1.weight"))
    inits = [weight,
             numpy_helper.from_array(np.zeros(4, np.float32), "fc1.bias"),
             numpy_helper.from_array(np.array([-1, 1, 2, 2], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((2, 1, 1, 1)).astype(np.float32), "conv.weight")]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["s"]),
             helper.make_node("Conv", ["s", "conv.weight"], ["y"], kernel_shape=[1, 1])]
    return make_model(nodes, inits)


def raises(model_or_bytes, match: str) -> str:
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    with pytest.raises(GraphError, match=match) as info:
        inspect_graph(data)
    return str(info.value)


def count_nodes(graph: onnx.GraphProto) -> int:
    n = len(graph.node)
    for node in graph.node:
        for a in node.attribute:
            n += sum(count_nodes(g) for g in ([a.g] if a.HasField("g") else []) + list(a.graphs))
    return n


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# --- accepted graphs ------------------------------------------------------------------


def test_valid_graph_is_summarised():
    info = inspect_graph(good_model().SerializeToString())
    assert info.ir_version == onnx.IR_VERSION
    assert info.opsets == {"": 17}
    assert info.inputs == (onnxcheck.ValueInfo("x", FLOAT, ("N", 3)),)
    assert info.outputs == (onnxcheck.ValueInfo("y", FLOAT, ("N", 2, 2, 2)),)
    assert info.op_types == frozenset({"Gemm", "Relu", "Reshape", "Conv"})
    assert info.num_nodes == 4
    assert info.initializers == (
        onnxcheck.TensorInfo("fc1.weight", FLOAT, (4, 3), "supermask:tensor", 0),
        onnxcheck.TensorInfo("fc1.bias", FLOAT, (4,), None, 16),
        onnxcheck.TensorInfo("shape", TensorProto.INT64, (4,), None, 32),
        onnxcheck.TensorInfo("conv.weight", FLOAT, (2, 1, 1, 1), None, 8),
    )


def test_embedded_graph_loads_in_onnxruntime_and_is_accepted():
    ort = pytest.importorskip("onnxruntime")
    data = good_model(external=False).SerializeToString()
    onnx.checker.check_model(onnx.ModelProto.FromString(data))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((5, 3), np.float32)})
    assert y.shape == (5, 2, 2, 2)
    info = inspect_graph(bytearray(data))  # any bytes-like object
    assert info.initializers[0] == onnxcheck.TensorInfo("fc1.weight", FLOAT, (4, 3), None, 48)


def test_typed_data_fields_count_as_embedded_bytes():
    t = helper.make_tensor("t", TensorProto.INT64, [3], [1, 2, 3])  # int64_data, not raw_data
    f = helper.make_tensor("f", FLOAT, [2], [1.0, 2.0])  # float_data
    model = make_model([helper.make_node("Identity", ["t"], ["y"])], [t, f])
    inits = inspect_graph(model.SerializeToString()).initializers
    assert [(i.name, i.dims, i.embedded_bytes) for i in inits] == [("t", (3,), 3), ("f", (2,), 8)]


def test_packed_dims_are_read_like_protobuf_reads_them():
    # onnx writes dims unpacked; a packed run is legal protobuf and must be read the same.
    tensor = field(1, varint(300) + varint(2)) + b"\x10\x01" + field(8, b"w") + field(9, bytes(2400))
    graph = field(5, tensor) + field(1, field(4, b"Relu"))
    data = b"\x08\x08" + field(7, graph) + field(8, b"\x10\x11")
    info = inspect_graph(data)
    assert info.initializers == (onnxcheck.TensorInfo("w", FLOAT, (300, 2), None, 2400),)
    assert list(onnx.ModelProto.FromString(data).graph.initializer[0].dims) == [300, 2]


def test_standard_domain_spelled_ai_onnx_and_subgraphs_are_accepted():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "b", [],
                               [helper.make_tensor_value_info("b", FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"], domain="ai.onnx"),
             helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    info = inspect_graph(make_model(nodes, [zero], opsets=[("", 17), ("ai.onnx", 17)]).SerializeToString())
    assert info.num_nodes == 6  # 4 in the main graph, 1 in each branch
    assert info.op_types == frozenset({"Relu", "ReduceSum", "Greater", "If"})
    assert info.opsets == {"": 17, "ai.onnx": 17}


def test_graph_error_is_a_ticket_format_error():
    assert issubclass(GraphError, TicketFormatError)
    with pytest.raises(TypeError):
        inspect_graph("not bytes")  # type: ignore[arg-type]


# --- rejected graphs --------------------------------------------------------------------


def test_custom_domain_node_is_rejected():
    model = good_model()
    model.graph.node.append(helper.make_node("Conv", ["y"], ["z"], domain="com.evil"))
    msg = raises(model, "domain 'com.evil'")
    assert "node[4] (Conv)" in msg and "only the standard ONNX domain" in msg


def test_custom_domain_node_inside_a_subgraph_is_rejected():
    branch = helper.make_graph([helper.make_node("Evil", ["x"], ["b"], domain="com.evil")], "b", [],
                               [helper.make_tensor_value_info("b", FLOAT, None)])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)])
    assert "attribute[0].g.node[0] (Evil)" in raises(model, "com.evil")


def test_custom_domain_opset_import_is_rejected():
    model = good_model()
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    assert "opset_import[1]" in raises(model, "operator set domain 'com.evil'")


def test_duplicate_opset_import_is_rejected():
    model = good_model()
    model.opset_import.append(helper.make_opsetid("", 13))
    raises(model, "more than once")


def test_model_local_function_is_rejected():
    func = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                [helper.make_opsetid("", 17)])
    model = good_model()
    model.functions.append(func)
    raises(model, "model-local functions are not allowed")


def test_training_info_is_rejected():
    model = good_model()
    model.training_info.add()
    raises(model, "training info")


@pytest.mark.parametrize("how", ["data_location", "external_data"])
def test_external_data_in_a_node_attribute_is_rejected(how):
    tensor = placeholder("c", [1])
    if how == "external_data":
        tensor.data_location = TensorProto.DEFAULT  # external_data alone is refused too
    model = good_model()
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=tensor))
    assert "node[4].attribute[0].t ('c')" in raises(model, "uses external data")


def test_external_data_in_an_attribute_tensor_list_is_rejected():
    model = good_model()
    attr = helper.make_attribute("tensors", [numpy_helper.from_array(np.ones(1, np.float32)), placeholder("c", [1])])
    model.graph.node[1].attribute.append(attr)
    assert "tensors[1]" in raises(model, "uses external data")


def test_external_data_in_a_subgraph_initializer_is_rejected():
    out = [helper.make_tensor_value_info("w", FLOAT, [4, 3])]
    then = helper.make_graph([], "then", [], out, [placeholder("w", [4, 3])])
    other = helper.make_graph([], "else", [], out, [numpy_helper.from_array(np.zeros((4, 3), np.float32), "w")])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)])
    assert inspect_graph(make_model([helper.make_node("If", ["c"], ["y"], then_branch=other, else_branch=other)])
                         .SerializeToString()).num_nodes == 1
    msg = raises(model, "uses external data")
    assert "node[0].attribute[1].g.initializer[0] ('w')" in msg and "only initializers of the main graph" in msg


def test_sparse_initializer_is_rejected():
    values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sp_idx")
    model = good_model()
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    raises(model, "sparse_initializer: sparse tensors are not allowed")


def test_sparse_attribute_is_rejected():
    values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sp_idx")
    model = good_model()
    sparse = helper.make_sparse_tensor(values, indices, [4])
    model.graph.node.append(helper.make_node("Constant", [], ["c"], sparse_value=sparse))
    raises(model, "sparse_tensor: sparse tensors are not allowed")


def test_tensor_segment_is_rejected():
    model = good_model()
    model.graph.initializer[1].segment.begin = 0
    raises(model, "initializer\\[1\\].segment: tensor segments are not allowed")


@pytest.mark.parametrize("change, match", [
    (lambda t: t.external_data.pop(), "no 'location'"),
    (lambda t: t.external_data.add(key="path", value="/etc/passwd"), "external_data key 'path'"),
    (lambda t: t.external_data.add(key="location", value="again"), "external_data key 'location'"),
    (lambda t: setattr(t, "raw_data", b"\0" * 48), "also embedded data"),
    (lambda t: setattr(t, "data_location", TensorProto.DEFAULT), "data_location is not EXTERNAL"),
    (lambda t: t.dims.append(-1), "negative dimension"),
])
def test_bad_main_graph_external_initializers_are_rejected(change, match):
    model = good_model()
    change(model.graph.initializer[0])
    assert "initializer[0] ('fc1.weight')" in raises(model, match)


def test_unknown_field_number_is_rejected():
    data = good_model().SerializeToString()
    assert "unknown field number 99" in raises(data + varint(99 << 3) + b"\x01", "unknown field")
    assert "model:" in raises(data + field(1000, b"file:///etc/passwd"), "unknown field number 1000")


def test_unknown_field_inside_a_node_is_rejected():
    model = good_model()
    node = model.graph.node[1]
    node.ParseFromString(node.SerializeToString() + field(11, b"x"))  # protobuf keeps unknown fields
    assert "node[1]: unknown field number 11" in raises(model, "unknown field")


def test_reserved_graph_field_is_rejected():
    model = good_model()
    graph = model.graph.SerializeToString() + field(3, b"x")  # GraphProto reserves 3 (old ir_version)
    data = model.SerializeToString().replace(field(7, model.graph.SerializeToString()), field(7, graph))
    assert "model.graph: unknown field number 3" in raises(data, "unknown field")


@pytest.mark.parametrize("data, match", [
    (b"\x0b", "wire type 3"),  # field 1, start group
    (b"\x0c", "wire type 4"),  # field 1, end group
    (b"\x0e\x00", "wire type 6"),
    (b"\x02\x00", "field number 0"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x08" + b"\xff" * 9 + b"\x02", "overflows 64 bits"),
    (b"\x08\x80", "truncated varint"),
    (b"\x3a\x05\x00", "runs past the end"),
    (b"\x3a", "truncated varint"),
    (field(7, b"\x2d\x00\x00"), "truncated fixed-width"),  # graph: field 5 as fixed32
    (b"\x0a\x00", "wire type 2 does not match"),  # ir_version sent as bytes
    (field(7, b"") + field(7, b""), "singular field appears more than once"),
    (b"\x08\x08", "model has no graph"),
    (field(7, field(1, field(3, b"n") + field(7, b"\xff"))), "not valid UTF-8"),
    (field(7, field(5, field(1, b"\x80"))), "malformed packed varints"),  # initializer dims
    (field(7, field(5, field(4, b"\0\0\0"))), "partial element"),  # float_data
    (field(7, field(11, field(2, field(1, b"") + field(4, b"")))), "more than one member of a oneof"),
])
def test_malformed_wire_format_is_rejected(data, match):
    raises(data, match)


def test_every_truncation_raises_only_graph_error():
    data = good_model().SerializeToString()
    rejected = 0
    for n in range(len(data)):
        try:
            info = inspect_graph(data[:n])
        except GraphError:
            rejected += 1
        else:  # a prefix that ends on a field boundary is a valid, smaller model
            assert count_nodes(onnx.ModelProto.FromString(data[:n]).graph) == info.num_nodes
    assert rejected > 0.9 * len(data)
    raises(data[:-1], "past the end")


def test_random_mutations_raise_only_graph_error_and_accepted_ones_parse():
    seeded = random.Random(20240521)
    model = good_model()
    model.graph.node.append(helper.make_node("If", ["c"], ["z"],
                                             then_branch=helper.make_graph([], "t", [], []),
                                             else_branch=helper.make_graph([], "e", [], [])))
    data = model.SerializeToString()
    outcomes = {"rejected": 0, "accepted": 0}
    for _ in range(3000):
        buf = bytearray(data)
        for _ in range(seeded.randint(1, 4)):
            i = seeded.randrange(len(buf))
            kind = seeded.randrange(4)
            if kind == 0:
                buf[i] = seeded.randrange(256)
            elif kind == 1:
                buf.insert(i, seeded.randrange(256))
            elif kind == 2 and len(buf) > 1:
                del buf[i]
            else:
                buf[i] ^= 1 << seeded.randrange(8)
        try:
            info = inspect_graph(bytes(buf))
        except GraphError:
            outcomes["rejected"] += 1
            continue
        outcomes["accepted"] += 1
        # Whatever the validator accepts must be valid protobuf with the same content.
        parsed = onnx.ModelProto.FromString(bytes(buf))
        assert count_nodes(parsed.graph) == info.num_nodes
        assert [t.name for t in parsed.graph.initializer] == [t.name for t in info.initializers]
        assert [tuple(t.dims) for t in parsed.graph.initializer] == [t.dims for t in info.initializers]
    assert outcomes["rejected"] > 1000 and outcomes["accepted"] > 0, outcomes


def test_oversize_input_is_rejected():
    data = good_model().SerializeToString()
    assert inspect_graph(data, max_bytes=len(data)).num_nodes == 4
    raises_msg = pytest.raises(GraphError, match=f"{len(data)} bytes; at most {len(data) - 1}")
    with raises_msg:
        inspect_graph(data, max_bytes=len(data) - 1)
    with pytest.raises(GraphError, match="at most 16777216"):
        inspect_graph(bytes(onnxcheck.MAX_GRAPH_BYTES + 1))


def nested_if_model(depth: int) -> onnx.ModelProto:
    """A main graph whose If bodies nest ``depth`` levels deep."""
    out = [helper.make_tensor_value_info("y", FLOAT, [3])]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], out)
    for level in range(depth):
        graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=graph)],
                                  f"level{level}", [], out)
    graph.input.extend([helper.make_tensor_value_info("x", FLOAT, [3]),
                        helper.make_tensor_value_info("c", TensorProto.BOOL, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraph_nesting_is_capped():
    deepest = nested_if_model(onnxcheck.MAX_DEPTH)
    onnx.checker.check_model(deepest)
    assert inspect_graph(deepest.SerializeToString()).num_nodes == 2 ** (onnxcheck.MAX_DEPTH + 1) - 1
    raises(nested_if_model(onnxcheck.MAX_DEPTH + 1), f"nested more than {onnxcheck.MAX_DEPTH} levels deep")


def test_type_nesting_is_capped():
    def model(wrappers: int) -> onnx.ModelProto:
        tp = helper.make_tensor_type_proto(FLOAT, [2])
        for _ in range(wrappers):
            tp = helper.make_sequence_type_proto(tp)
        return make_model([helper.make_node("Identity", ["x"], ["y"])], inputs=[helper.make_value_info("x", tp)])

    info = inspect_graph(model(onnxcheck.MAX_DEPTH - 1).SerializeToString())
    assert info.inputs == (onnxcheck.ValueInfo("x", 0, ()),)  # not a tensor: no elem_type or dims
    raises(model(onnxcheck.MAX_DEPTH), "nested more than")


def test_node_count_is_capped(monkeypatch):
    data = good_model().SerializeToString()
    monkeypatch.setattr(onnxcheck, "MAX_NODES", 4)
    assert inspect_graph(data).num_nodes == 4
    monkeypatch.setattr(onnxcheck, "MAX_NODES", 3)
    raises(data, "more than 3 nodes")


def test_field_count_is_capped(monkeypatch):
    data = b"\x72\x00" * 1000 + good_model().SerializeToString()  # 1000 empty metadata_props
    assert inspect_graph(data).num_nodes == 4
    monkeypatch.setattr(onnxcheck, "_MAX_ITEMS", 999)
    raises(data, "more than 999 fields")


# --- the module itself ------------------------------------------------------------------


def test_module_imports_only_the_standard_library():
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(onnxcheck.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names - {"supermask.errors"} <= set(sys.stdlib_module_names), names


SCHEMA_MESSAGES = {  # the validator's message kinds -> the onnx.proto messages they stand for
    "Model": "ModelProto", "MainGraph": "GraphProto", "Graph": "GraphProto", "Node": "NodeProto",
    "Attribute": "AttributeProto", "Tensor": "TensorProto", "Init": "TensorProto", "ValueInfo": "ValueInfoProto",
    "Type": "TypeProto", "TensorType": "TypeProto.Tensor", "ElemType": "TypeProto.Sequence",
    "MapType": "TypeProto.Map", "OpaqueType": "TypeProto.Opaque", "Shape": "TensorShapeProto",
    "Dim": "TensorShapeProto.Dimension", "Opset": "OperatorSetIdProto", "Entry": "StringStringEntryProto",
    "Annotation": "TensorAnnotation", "DeviceConfig": "DeviceConfigurationProto",
    "NodeDeviceConfig": "NodeDeviceConfigurationProto", "ShardingSpec": "ShardingSpecProto",
    "IntIntList": "IntIntListEntryProto", "ShardedDim": "ShardedDimProto", "SimpleShardedDim": "SimpleShardedDimProto",
}


@pytest.mark.parametrize("kind", sorted(onnxcheck._SCHEMA))
def test_schema_matches_the_installed_onnx_proto(kind):
    """Every field of the installed onnx.proto is listed (allowed or refused) with its number, type
    and repeatedness: a field added by a newer onnx fails here until someone reviews it."""
    from google.protobuf.descriptor import FieldDescriptor as F

    scalar = {F.TYPE_INT64: "i", F.TYPE_INT32: "i", F.TYPE_UINT64: "i", F.TYPE_ENUM: "i", F.TYPE_FLOAT: "f",
              F.TYPE_DOUBLE: "d", F.TYPE_STRING: "s", F.TYPE_BYTES: "s"}
    desc = onnx.onnx_ml_pb2.DESCRIPTOR.message_types_by_name[SCHEMA_MESSAGES[kind].split(".")[0]]
    for part in SCHEMA_MESSAGES[kind].split(".")[1:]:
        desc = desc.nested_types_by_name[part]
    schema = onnxcheck._SCHEMA[kind]
    assert {f.number: f.name for f in desc.fields} == {n: name for n, (name, _) in schema.items()}
    for f in desc.fields:
        code = schema[f.number][1]
        if code.startswith("-"):
            continue  # refused: never read
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == F.LABEL_REPEATED
        assert code.startswith("*") == repeated, f.name
        base = code.strip("*!")
        if f.message_type is None:
            assert base == scalar[f.type], f.name
        else:
            target = SCHEMA_MESSAGES[base if base != "MainGraph" else "Graph"]
            same_shape = {"onnx.TypeProto.Optional"} if base == "ElemType" else set()  # Sequence and Optional
            assert f.message_type.full_name in {f"onnx.{target}"} | same_shape, f.name
    oneof = {f.number for o in desc.oneofs for f in o.fields}
    assert oneof == onnxcheck._ONEOF.get(kind, set())
