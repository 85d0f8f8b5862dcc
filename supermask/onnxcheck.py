"""Vet an untrusted serialized ONNX ``ModelProto`` before onnxruntime sees it. Stdlib only.

:func:`inspect_graph` walks the protobuf wire format by hand (this module never imports onnx,
protobuf, numpy or torch) and returns a :class:`GraphInfo` summary, or raises
:class:`GraphError` saying what is wrong and where. It accepts a model only if:

* it is at most ``max_bytes`` long and well-formed everywhere: wire types 0, 1, 2 and 5 only
  (no groups), no truncated varints or varints over 10 bytes or 64 bits, no lengths past the
  end, no field number 0;
* every message reachable from the model uses only field numbers that the current
  ``onnx.proto`` defines for it, each with its declared wire type, singular fields at most
  once and at most one member of a oneof (a future field could carry a file reference);
* it has exactly one graph, no model-local functions and no training info;
* every opset import and every node, in subgraphs too, uses the standard domain
  (:data:`ALLOWED_DOMAINS`; a missing domain is the default one);
* only initializers of the main graph use external data, naming a ``location`` (plus optional
  ``offset``, ``length``, ``checksum``) and carrying no embedded data; no sparse tensors
  (initializers, attributes or types) and no tensor segments anywhere;
* it has at most :data:`MAX_NODES` nodes (subgraphs included); subgraphs, and types within
  types, nest at most :data:`MAX_DEPTH` deep; it has at most ``_MAX_ITEMS`` fields and
  initializer dimensions in all, which bounds time and memory on hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from supermask.errors import TicketFormatError

ALLOWED_DOMAINS = ("", "ai.onnx")
MAX_GRAPH_BYTES = 16 << 20  # serialized model size cap
MAX_NODES = 100_000
MAX_DEPTH = 8  # nesting of subgraphs (If/Loop/Scan bodies) and of types (sequence of ...)
_MAX_ITEMS = 1_000_000  # fields read plus dimensions decoded: bounds time and memory


class GraphError(TicketFormatError):
    """The ONNX graph is malformed or uses something the vetting rules do not allow."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One initializer of the main graph."""

    name: str
    data_type: int  # TensorProto.DataType value (1 = FLOAT)
    dims: tuple[int, ...]
    external_location: str | None  # "location" of external data, None when embedded
    embedded_bytes: int  # bytes of raw_data plus typed data fields; 0 for external data


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """A graph input or output; elem_type 0 and dims () when it is not a tensor or has no shape."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]  # dim_value, dim_param, or None when neither is set


@dataclass(frozen=True, slots=True)
class GraphInfo:
    """Summary of a vetted model; op_types and num_nodes include nested subgraphs."""

    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    initializers: tuple[TensorInfo, ...]
    op_types: frozenset[str]
    num_nodes: int


# Per message kind: field number -> (onnx.proto field name, code). Codes: "i" varint, "f"
# fixed32, "d" fixed64, "s" length-delimited bytes, a capitalised word a message of that
# kind. A leading "*" marks a repeated field (numeric ones may come packed), a trailing "!"
# a repeated field whose values the summary keeps, and "-reason" a field that is refused.
_SPARSE = "-sparse tensors are not allowed"
_TENSOR = {1: ("dims", "*i"), 2: ("data_type", "i"), 3: ("segment", "-tensor segments are not allowed"),
           4: ("float_data", "*f"), 5: ("int32_data", "*i"), 6: ("string_data", "*s"), 7: ("int64_data", "*i"),
           8: ("name", "s"), 9: ("raw_data", "s"), 10: ("double_data", "*d"), 11: ("uint64_data", "*i"),
           12: ("doc_string", "s"), 13: ("external_data", "*Entry"), 14: ("data_location", "i"),
           16: ("metadata_props", "*Entry")}
_GRAPH = {1: ("node", "*Node"), 2: ("name", "s"), 5: ("initializer", "*Tensor"), 10: ("doc_string", "s"),
          11: ("input", "*ValueInfo"), 12: ("output", "*ValueInfo"), 13: ("value_info", "*ValueInfo"),
          14: ("quantization_annotation", "*Annotation"), 15: ("sparse_initializer", _SPARSE),
          16: ("metadata_props", "*Entry")}
_SCHEMA = {
    "Model": {1: ("ir_version", "i"), 2: ("producer_name", "s"), 3: ("producer_version", "s"), 4: ("domain", "s"),
              5: ("model_version", "i"), 6: ("doc_string", "s"), 7: ("graph", "MainGraph"),
              8: ("opset_import", "*Opset!"), 14: ("metadata_props", "*Entry"),
              20: ("training_info", "-training info is not allowed"),
              25: ("functions", "-model-local functions are not allowed"), 26: ("configuration", "*DeviceConfig")},
    "MainGraph": {**_GRAPH, 5: ("initializer", "*Init!"), 11: ("input", "*ValueInfo!"),
                  12: ("output", "*ValueInfo!")},
    "Graph": _GRAPH,
    "Node": {1: ("input", "*s"), 2: ("output", "*s"), 3: ("name", "s"), 4: ("op_type", "s"),
             5: ("attribute", "*Attribute"), 6: ("doc_string", "s"), 7: ("domain", "s"), 8: ("overload", "s"),
             9: ("metadata_props", "*Entry"), 10: ("device_configurations", "*NodeDeviceConfig")},
    "Attribute": {1: ("name", "s"), 2: ("f", "f"), 3: ("i", "i"), 4: ("s", "s"), 5: ("t", "Tensor"),
                  6: ("g", "Graph"), 7: ("floats", "*f"), 8: ("ints", "*i"), 9: ("strings", "*s"),
                  10: ("tensors", "*Tensor"), 11: ("graphs", "*Graph"), 13: ("doc_string", "s"), 14: ("tp", "Type"),
                  15: ("type_protos", "*Type"), 20: ("type", "i"), 21: ("ref_attr_name", "s"),
                  22: ("sparse_tensor", _SPARSE), 23: ("sparse_tensors", _SPARSE)},
    "Tensor": _TENSOR,
    "Init": {**_TENSOR, 1: ("dims", "*i!"), 13: ("external_data", "*Entry!")},
    "ValueInfo": {1: ("name", "s"), 2: ("type", "Type"), 3: ("doc_string", "s"), 4: ("metadata_props", "*Entry")},
    "Type": {1: ("tensor_type", "TensorType"), 4: ("sequence_type", "ElemType"), 5: ("map_type", "MapType"),
             6: ("denotation", "s"), 7: ("opaque_type", "OpaqueType"), 8: ("sparse_tensor_type", _SPARSE),
             9: ("optional_type", "ElemType")},
    "TensorType": {1: ("elem_type", "i"), 2: ("shape", "Shape")},
    "ElemType": {1: ("elem_type", "Type")},
    "MapType": {1: ("key_type", "i"), 2: ("value_type", "Type")},
    "OpaqueType": {1: ("domain", "s"), 2: ("name", "s")},
    "Shape": {1: ("dim", "*Dim!")},
    "Dim": {1: ("dim_value", "i"), 2: ("dim_param", "s"), 3: ("denotation", "s")},
    "Opset": {1: ("domain", "s"), 2: ("version", "i")},
    "Entry": {1: ("key", "s"), 2: ("value", "s")},
    "Annotation": {1: ("tensor_name", "s"), 2: ("quant_parameter_tensor_names", "*Entry")},
    "DeviceConfig": {1: ("name", "s"), 2: ("num_devices", "i"), 3: ("device", "*s")},
    "NodeDeviceConfig": {1: ("configuration_id", "s"), 2: ("sharding_spec", "*ShardingSpec"),
                         3: ("pipeline_stage", "i")},
    "ShardingSpec": {1: ("tensor_name", "s"), 2: ("device", "*i"), 3: ("index_to_device_group_map", "*IntIntList"),
                     4: ("sharded_dim", "*ShardedDim")},
    "IntIntList": {1: ("key", "i"), 2: ("value", "*i")},
    "ShardedDim": {1: ("axis", "i"), 2: ("simple_sharding", "*SimpleShardedDim")},
    "SimpleShardedDim": {1: ("dim_value", "i"), 2: ("dim_param", "s"), 3: ("num_shards", "i")},
}
_WIRE = {"i": 0, "d": 1, "f": 5}  # numeric codes -> wire type; everything else is 2
# The schema unpacked: (name, repeated, kept, base code, expected wire type, refusal or None).
_SPECS = {kind: {field: (name, code[0] == "*", code[-1] == "!", code.strip("*!"),
                         _WIRE.get(code.strip("*!"), 2), code[1:] if code[0] == "-" else None)
                 for field, (name, code) in fields.items()}
          for kind, fields in _SCHEMA.items()}
_ONEOF = {"Type": {1, 4, 5, 7, 8, 9}, "Dim": {1, 2}, "SimpleShardedDim": {1, 2}}
_DATA_FIELDS = (4, 5, 6, 7, 9, 10, 11)  # raw_data and the typed *_data fields
_EXTERNAL_KEYS = ("location", "offset", "length", "checksum")
# A packed varint run is malformed if some varint is over 10 bytes or its 10th byte overflows.
_BAD_PACKED = re.compile(rb"[\x80-\xff]{10}|[\x80-\xff]{9}[\x02-\x7f]")
_HIGH_BYTES = bytes(range(0x80, 0x100))


class _Walk:
    """State of one inspect_graph call."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.nodes, self.items, self.op_types = buf, 0, 0, set()

    def varint(self, pos: int, end: int, where: str) -> tuple[int, int]:
        """Decode the varint at ``pos``; return (value, position after it)."""
        buf, value, shift = self.buf, 0, 0
        while pos < end:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value >> 64:
                    raise GraphError(f"{where}: varint overflows 64 bits")
                return value, pos
            shift += 7
            if shift == 70:
                raise GraphError(f"{where}: varint longer than 10 bytes")
        raise GraphError(f"{where}: truncated varint")

    def text(self, span: tuple[int, int] | None, where: str) -> str:
        if span is None:
            return ""
        try:
            return self.buf[span[0]:span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise GraphError(f"{where}: string is not valid UTF-8") from None

    def count(self, n: int, where: str) -> None:
        # Bounds time and memory: 16 MiB could hold 8 million two-byte fields.
        self.items += n
        if self.items > _MAX_ITEMS:
            raise GraphError(f"{where}: the model has more than {_MAX_ITEMS} fields and dimensions")

    def message(self, kind: str, start: int, end: int, where: str, gdepth: int = 0, tdepth: int = 0):
        """Check one message of ``kind`` in buf[start:end]; return its summary (see _FINISH)."""
        # vals: singular values and kept repeated ones; counts: occurrences; sizes: payload bytes.
        buf, specs, vals, counts, sizes = self.buf, _SPECS[kind], {}, {}, {}
        pos = start
        while pos < end:
            self.items += 1  # inline count(1): this loop runs once per field
            if self.items > _MAX_ITEMS:
                self.count(0, where)
            if buf[pos] < 0x80:  # fast path: one-byte key
                key, pos = buf[pos], pos + 1
            else:
                key, pos = self.varint(pos, end, where)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise GraphError(f"{where}: field number 0 is not allowed")
            if wire not in (0, 1, 2, 5):
                raise GraphError(f"{where}: field {field} has wire type {wire}; groups and unknown wire types "
                                 "are not allowed")
            spec = specs.get(field)
            if spec is None:
                raise GraphError(f"{where}: unknown field number {field}; "
                                 "only fields defined in onnx.proto are allowed")
            name, repeated, keep, base, expected, refused = spec
            if refused:
                raise GraphError(f"{where}.{name}: {refused}")
            n = counts.get(field, 0)
            if n and not repeated:
                raise GraphError(f"{where}.{name}: singular field appears more than once")
            counts[field] = n + 1
            if wire == 2:
                if pos < end and buf[pos] < 0x80:
                    size, pos = buf[pos], pos + 1
                else:
                    size, pos = self.varint(pos, end, where)
                if size > end - pos:
                    raise GraphError(f"{where}.{name}: length {size} runs past the end of its message")
                val, nxt = (pos, pos + size), pos + size
            elif wire == 0:
                val, nxt = self.varint(pos, end, where)
                size = nxt - pos
            else:
                size = 8 if wire == 1 else 4
                if size > end - pos:
                    raise GraphError(f"{where}.{name}: truncated fixed-width value")
                val, nxt = int.from_bytes(buf[pos:pos + size], "little"), pos + size
            packed = wire == 2 and expected != 2 and repeated
            if wire != expected and not packed:
                raise GraphError(f"{where}.{name}: wire type {wire} does not match the field's type")
            if base in _SPECS:
                child = f"{where}.{name}[{n}]" if repeated else f"{where}.{name}"
                g, t = (gdepth + 1, 0) if base == "Graph" else (gdepth, tdepth + (base == "Type"))
                if g > MAX_DEPTH or t > MAX_DEPTH:
                    raise GraphError(f"{child}: nested more than {MAX_DEPTH} levels deep")
                val = self.message(base, val[0], val[1], child, g, t)
            elif packed:
                val = self.packed(base, val[0], val[1], f"{where}.{name}", keep)
            pos = nxt
            sizes[field] = sizes.get(field, 0) + size
            if not repeated:
                vals[field] = val
            elif keep:
                vals.setdefault(field, []).extend(val if packed else (val,))
        if kind in _ONEOF and len(_ONEOF[kind] & counts.keys()) > 1:
            raise GraphError(f"{where}: more than one member of a oneof is set")
        finish = _FINISH.get(kind)
        return finish(self, vals, sizes, where) if finish else vals

    def packed(self, base: str, start: int, end: int, where: str, keep: bool) -> list[int]:
        """Check a packed run of numbers; decode it only when the summary keeps it."""
        if base != "i":
            if (end - start) % (4 if base == "f" else 8):
                raise GraphError(f"{where}: packed fixed-width values have a partial element")
            return []
        buf = self.buf
        if start < end and (buf[end - 1] >= 0x80 or _BAD_PACKED.search(buf, start, end)):
            raise GraphError(f"{where}: malformed packed varints")
        if not keep:
            return []
        self.count(len(buf[start:end].translate(None, _HIGH_BYTES)), where)  # one end byte per value
        out = []
        while start < end:
            value, start = self.varint(start, end, where)
            out.append(value)
        return out


def _signed(value: int) -> int:
    """Read a 64-bit two's complement varint value as a signed int64."""
    return value - (1 << 64) if value >> 63 else value


# Finishers: check a message once all its fields are read; return what its parent keeps.


def _finish_model(w: _Walk, v: dict, sizes: dict, where: str) -> GraphInfo:
    if 7 not in v:
        raise GraphError("model has no graph")
    opsets: dict[str, int] = {}
    for domain, version in v.get(8, ()):
        if domain in opsets:
            raise GraphError(f"model imports operator set domain {domain!r} more than once")
        opsets[domain] = version
    inputs, outputs, initializers = v[7]
    return GraphInfo(_signed(v.get(1, 0)), opsets, inputs, outputs, initializers, frozenset(w.op_types), w.nodes)


def _finish_opset(w: _Walk, v: dict, sizes: dict, where: str) -> tuple[str, int]:
    domain = w.text(v.get(1), where)
    if domain not in ALLOWED_DOMAINS:
        raise GraphError(f"{where} imports operator set domain {domain!r}; only the standard ONNX domain is allowed")
    return domain, _signed(v.get(2, 0))


def _finish_node(w: _Walk, v: dict, sizes: dict, where: str) -> None:
    op_type, domain = w.text(v.get(4), where), w.text(v.get(7), where)
    if domain not in ALLOWED_DOMAINS:
        raise GraphError(f"{where} ({op_type}) uses operator domain {domain!r}; "
                         "only the standard ONNX domain is allowed")
    w.nodes += 1
    if w.nodes > MAX_NODES:
        raise GraphError(f"{where}: the model has more than {MAX_NODES} nodes")
    w.op_types.add(op_type)


def _finish_tensor(w: _Walk, v: dict, sizes: dict, where: str) -> None:
    # Only main-graph initializers may point outside the model: the caller supplies that data.
    if v.get(14, 0) != 0 or 13 in sizes:
        raise GraphError(f"{where} ({w.text(v.get(8), where)!r}) uses external data (data_location "
                         f"{v.get(14, 0)}); only initializers of the main graph may")


def _finish_init(w: _Walk, v: dict, sizes: dict, where: str) -> TensorInfo:
    name, location = w.text(v.get(8), where), v.get(14, 0)
    where = f"{where} ({name!r})"
    dims = tuple(_signed(d) for d in v.get(1, ()))
    if any(d < 0 for d in dims):
        raise GraphError(f"{where} has a negative dimension: {dims}")
    if location not in (0, 1):
        raise GraphError(f"{where} has unknown data_location {location}")
    entries: dict[str, str] = {}
    for entry in v.get(13, ()):
        key = w.text(entry.get(1), where)
        if key not in _EXTERNAL_KEYS or key in entries:
            raise GraphError(f"{where} has external_data key {key!r}; allowed once each: {', '.join(_EXTERNAL_KEYS)}")
        entries[key] = w.text(entry.get(2), where)
    embedded = sum(sizes.get(f, 0) for f in _DATA_FIELDS)
    if location == 0:
        if entries:
            raise GraphError(f"{where} has external_data but data_location is not EXTERNAL")
        return TensorInfo(name, _signed(v.get(2, 0)), dims, None, embedded)
    if not entries.get("location"):
        raise GraphError(f"{where} has data_location EXTERNAL but no 'location'")
    if embedded:
        raise GraphError(f"{where} has data_location EXTERNAL but also embedded data")
    return TensorInfo(name, _signed(v.get(2, 0)), dims, entries["location"], 0)


def _finish_value_info(w: _Walk, v: dict, sizes: dict, where: str) -> ValueInfo:
    tensor = v.get(2, {}).get(1)  # TypeProto.tensor_type: other kinds of value have no summary
    shape = (tensor or {}).get(2, {})
    return ValueInfo(w.text(v.get(1), where), _signed((tensor or {}).get(1, 0)), tuple(shape.get(1, ())))


_FINISH = {
    "Model": _finish_model,
    "MainGraph": lambda w, v, sizes, where: (tuple(v.get(11, ())), tuple(v.get(12, ())), tuple(v.get(5, ()))),
    "Graph": lambda w, v, sizes, where: None,  # subgraphs are only checked, not summarised
    "Node": _finish_node,
    "Opset": _finish_opset,
    "Tensor": _finish_tensor,
    "Init": _finish_init,
    "ValueInfo": _finish_value_info,
    "Dim": lambda w, v, sizes, where: _signed(v[1]) if 1 in v else w.text(v[2], where) if 2 in v else None,
}


def inspect_graph(data: bytes, *, max_bytes: int = MAX_GRAPH_BYTES) -> GraphInfo:
    """Validate and summarise a serialized ONNX ModelProto; raise GraphError on anything unsafe or malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"inspect_graph needs bytes, not {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise GraphError(f"ONNX graph is {size} bytes; at most {max_bytes} are allowed")
    buf = bytes(data)
    return _Walk(buf).message("Model", 0, len(buf), "model")
