"""Version 3 of the ``.smask`` ticket: the network's ONNX graph travels inside. Torch-free and
onnx-free (the graph is vetted by :mod:`supermask.onnxcheck`, which reads protobuf by hand).

Layout (normative text: ``docs/format.md``)::

    offset  size  field
    0       8     magic  89 53 4D 41 53 4B 0D 0A
    8       2     format version, uint16 little-endian: 3
    10      2     reserved, zero
    12      4     section length S, uint32 little-endian (1 <= S <= 4 MiB)
    16      S     section: raw DEFLATE (RFC 1951) of  uint32 J | header (J bytes of JSON) | graph
    16+S    P     payloads, one per tensor that has one, in table order, back to back
    end-32  32    SHA-256 of every byte before it

The graph is a weight-free ONNX model: every tensor of the table is an initializer whose data
is *external* with location :data:`PLACEHOLDER`; a reader regenerates or reads each tensor and
hands them to onnxruntime (``SessionOptions.add_external_initializers``), so nothing but numpy
and onnxruntime is needed on a device. Shapes live in the graph only (one source of truth);
the header says how to fill each tensor:

``masked``       generator weights times a mask (payload: the coded mask)
``regenerated``  generator weights, unmasked
``zero``/``one`` constant tensors
``stored``       float32 values, little-endian (payload: 4 bytes per element)

Header and graph are compressed together because their names repeat: for lenet-300-100 the
whole section is about 600 bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import zlib
from typing import Mapping, Sequence

import numpy as np

from . import codecs, rng
from .errors import CodecError, InitSpecError, TicketFormatError
from .onnxcheck import GraphError, inspect_graph

VERSION = 3
PLACEHOLDER = "supermask:tensor"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ROLES = ("masked", "regenerated", "zero", "one", "stored")
MAX_SECTION_BYTES = 4 << 20  # compressed
MAX_HEADER_BYTES = 4 << 20  # decompressed JSON
MAX_GRAPH_BYTES = 4 << 20  # decompressed ONNX (a ResNet-20 graph is 14 KB)
MAX_TENSORS = 100_000
#: The operators a ticket's graph may use: what torch exports for feed-forward classifiers
#: (convolutions, linear layers, norms, activations, pooling, elementwise and shape
#: arithmetic). Operators that make tensors of a size written in the graph itself
#: (ConstantOfShape, Expand, Tile, Range, Resize), control flow (If, Loop, Scan) and the rest
#: are refused, so a small hostile graph cannot ask onnxruntime for unbounded memory or time
#: that way (docs/format.md 7.3).
ALLOWED_OPS = frozenset("""
    Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Celu Clip Concat Constant
    Conv ConvTranspose Cos Div Dropout Einsum Elu Equal Erf Exp Flatten Floor Gather GatherElements Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish
    Identity InstanceNormalization LRN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization
    MatMul Max MaxPool Mean Min Mish Mod Mul Neg Not Or PRelu Pow Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Round Selu Shape Shrink
    Sigmoid Sign Sin Size Slice Softmax Softplus Softsign Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Transpose Trilu Unsqueeze Where Xor
""".split())
MAX_CLASSES = 100_000
_PREFIX = struct.Struct("<8sHHI")
_MAGIC = b"\x89SMASK\r\n"
_DIGEST = 32
_TOP_KEYS = {"classes", "criterion", "fingerprint", "init", "keep", "metadata", "seed", "tensors"}
_NAME = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces
_FIELDS = {
    "masked": {"name", "role", "codec", "length", "kept"},
    "regenerated": {"name", "role"},
    "zero": {"name", "role"},
    "one": {"name", "role"},
    "stored": {"name", "role"},
}


def _fail(msg: str) -> TicketFormatError:
    return TicketFormatError(msg)


#: The preset dictionary of the section's DEFLATE stream (RFC 1951 with the window primed by
#: these bytes, zlib's ``zdict``): names that every ticket's header and graph repeat. It saves
#: about 150 bytes a ticket (a fifth of a lenet-300-100 ticket's overhead); changing it needs
#: a new format version. SHA-256 in docs/format.md.
DICTIONARY = (
    b'supermask:tensorlocation.weight.biasrunning_meanrunning_varGemmReluConvBatchNormalizationFlatten'
    b'MaxPoolGlobalAveragePoolAddMulSubDivReshapeConstantlogitsinput{"classes":["criterion":"large_final_same_sign",'
    b'"edge-popup","bernoulli","fingerprint":"init":{"gain_sq":"scheme":"kaiming_uniform","signed_kaiming_constant"},'
    b'"keep":"metadata":{"accuracy":"dataset":"method":"model":"test_examples":},"seed":"tensors":[{"codec":"entropy",'
    b'"kept":"length":"name":"role":"masked"},{"name":"role":"zero"},{"name":"role":"one"},{"name":"role":"stored"},'
    b'{"codec":"bitpack","kept":'
)


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=DICTIONARY)
    return c.compress(data) + c.flush()


def inflate(data: bytes, cap: int) -> bytes:
    """Decompress raw DEFLATE, refusing output over ``cap`` bytes, truncation and trailing data."""
    d = zlib.decompressobj(-15, zdict=DICTIONARY)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as e:
        raise _fail(f"the header section is not valid DEFLATE data ({e})") from None
    if len(out) > cap or d.unconsumed_tail:
        raise _fail(f"the header section decompresses to more than {cap} bytes")
    if not d.eof:
        raise _fail("the header section is truncated (its DEFLATE stream does not end)")
    if d.unused_data:
        raise _fail(f"the header section has {len(d.unused_data)} bytes after its DEFLATE stream")
    return out


def weight_fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a generated tensor: the second and first dimension times the
    receptive field (the rule of torch's initialisers)."""
    rf = math.prod(shape[2:])
    return shape[1] * rf, shape[0] * rf


def fingerprint(weights: Sequence[np.ndarray]) -> str:
    """First 16 hex digits of SHA-256 over the float32 little-endian bytes of ``weights`` in order."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w, dtype="<f4").reshape(-1).view(np.uint8))  # no copy
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------- the graph


def graph_tensors(graph: bytes) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...], int | None]:
    """Vet ``graph``; return (placeholder name -> shape in graph order, input shape without the
    batch, number of output classes or None). Raises TicketFormatError."""
    try:
        info = inspect_graph(graph, max_bytes=MAX_GRAPH_BYTES)
    except GraphError as e:
        raise _fail(f"graph: {e}") from None
    if [i.name for i in info.inputs] != [INPUT_NAME]:
        raise _fail(f"graph: inputs must be exactly [{INPUT_NAME!r}] (the weights are placeholders), got "
                    f"{[i.name for i in info.inputs][:8]}")
    inp = info.inputs[0]
    if inp.elem_type != 1 or not 2 <= len(inp.dims) <= 4 or any(
            not isinstance(d, int) or not 1 <= d <= (1 << 20) for d in inp.dims[1:]):
        raise _fail(f"graph: input must be float32 (N, d1[, d2[, d3]]) with fixed sizes, got elem type "
                    f"{inp.elem_type} dims {inp.dims}")
    if [o.name for o in info.outputs] != [OUTPUT_NAME]:
        raise _fail(f"graph: outputs must be exactly [{OUTPUT_NAME!r}], got {[o.name for o in info.outputs][:8]}")
    out = info.outputs[0]
    if out.elem_type != 1 or len(out.dims) != 2:
        raise _fail(f"graph: output must be float32 (N, classes), got elem type {out.elem_type} dims {out.dims}")
    refused = sorted(info.op_types - ALLOWED_OPS)
    if refused:
        raise _fail(f"graph: operator {refused[0]!r:.40} is not allowed in a ticket (see docs/format.md 7.3)"
                    + (f", nor {', '.join(refused[1:4])}" if len(refused) > 1 else ""))
    shapes: dict[str, tuple[int, ...]] = {}
    names: set[str] = set()
    for t in info.initializers:
        if t.name in names or t.name in (INPUT_NAME, OUTPUT_NAME):
            raise _fail(f"graph: initializer name {t.name!r:.60} is repeated or is the graph's input or output")
        names.add(t.name)
        if t.external_location is None:
            continue  # a constant the graph holds itself (no external data: nothing to fill)
        if t.external_location != PLACEHOLDER:
            raise _fail(f"graph: initializer {t.name!r:.60} refers to external data {t.external_location!r:.60}; "
                        f"a ticket graph may only name placeholders ({PLACEHOLDER!r})")
        if t.data_type != 1:
            raise _fail(f"graph: placeholder {t.name!r:.60} must be float32")
        if not _NAME.match(t.name):
            raise _fail(f"graph: placeholder name {t.name!r:.60} is not 1 to 200 printable ASCII characters")
        if any(not 1 <= d <= (1 << 31) - 1 for d in t.dims) or math.prod(t.dims) > (1 << 31) - 1:
            raise _fail(f"graph: placeholder {t.name!r:.60} has dims {t.dims}; each must be 1 to 2^31-1 in all")
        shapes[t.name] = tuple(t.dims)
    classes = out.dims[1] if isinstance(out.dims[1], int) else None
    return shapes, tuple(inp.dims[1:]), classes


def placeholder_names(graph: bytes) -> list[str]:
    """The placeholders of a vetted ``graph``, in graph order (see :func:`graph_tensors`)."""
    return list(graph_tensors(graph)[0])


# ------------------------------------------------------------------------------- writing


def encode_v3(
    graph: bytes,
    *,
    seed: int,
    init: rng.InitSpec,
    roles: Mapping[str, str],
    classes: Sequence[str],
    masks: Mapping[str, np.ndarray] | None = None,
    stored: Mapping[str, np.ndarray] | None = None,
    multipliers: Mapping[str, float] | None = None,
    codec: str = "auto",
    criterion: str | None = None,
    keep: float | None = None,
    metadata: Mapping | None = None,
) -> bytes:
    """The bytes of a version-3 ticket for ``graph`` (a weight-free ONNX model whose
    placeholders are exactly the keys of ``roles``, name -> role)."""
    from .ticket import _check_criterion, _check_keep, _check_metadata, _check_multiplier

    masks, stored, multipliers = dict(masks or {}), dict(stored or {}), dict(multipliers or {})
    shapes, _, n_out = graph_tensors(graph)
    if set(roles) != set(shapes):
        raise _fail(f"the graph's placeholders {sorted(shapes)[:6]} and the tensors given {sorted(roles)[:6]} differ")
    if not init.exact:
        raise _fail(f"init {init.scheme} is not bit-exact; version-3 tickets take uniform or signed-constant inits")
    classes = [str(c) for c in classes]
    if n_out is not None and n_out != len(classes):
        raise _fail(f"the graph outputs {n_out} classes but {len(classes)} class names were given")
    seed = rng._check_seed(seed)
    rows, payloads, generated = [], [], []
    for name, shape in shapes.items():  # graph order
        role = roles[name]
        if role not in ROLES:
            raise _fail(f"tensor {name!r}: unknown role {role!r}; known: {', '.join(ROLES)}")
        row: dict = {"name": name, "role": role}
        if role in ("masked", "regenerated"):
            if len(shape) < 2:
                raise _fail(f"tensor {name!r} of shape {shape} cannot be generated: weights need 2+ dimensions")
            generated.append(rng.generate(seed, name, shape, init.distribution, init.scale(*weight_fans(shape))))
            factor = _check_multiplier(multipliers.get(name, 1.0), name)
            if factor != 1.0:
                row["multiplier"] = float(factor).hex()
        if role == "masked":
            m = np.asarray(masks[name])
            if m.shape != shape:
                raise _fail(f"mask for {name!r} has shape {m.shape}; the graph says {shape}")
            used, blob = codecs.encode(m.astype(bool), codec)
            row.update(codec=used, length=len(blob), kept=int(np.count_nonzero(m)))
            payloads.append(blob)
        elif role == "stored":
            a = np.asarray(stored[name], dtype=np.float32)
            if a.shape != shape or not np.isfinite(a).all():
                raise _fail(f"stored tensor {name!r} must be finite float32 of shape {shape}, got {a.shape}")
            payloads.append(np.ascontiguousarray(a, dtype="<f4").tobytes())
        rows.append(row)
    header = {
        "classes": classes,
        "criterion": _check_criterion(criterion),
        "fingerprint": fingerprint(generated),
        "init": init.to_dict(),
        "keep": _check_keep(keep),
        "metadata": _check_metadata(dict(metadata) if metadata is not None else None),
        "seed": seed,
        "tensors": rows,
    }
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    section = deflate(struct.pack("<I", len(hbytes)) + hbytes + graph)
    if len(section) > MAX_SECTION_BYTES:
        raise _fail(f"the compressed header and graph take {len(section)} bytes, above {MAX_SECTION_BYTES}")
    body = _PREFIX.pack(_MAGIC, VERSION, 0, len(section)) + section + b"".join(payloads)
    return body + hashlib.sha256(body).digest()


# ------------------------------------------------------------------------------- reading


def _check_classes(v: object, n_out: int | None) -> tuple[str, ...]:
    if (not isinstance(v, list) or not 1 <= len(v) <= MAX_CLASSES
            or any(not isinstance(c, str) or len(c) > 200 for c in v)):
        raise _fail(f"classes must be a list of 1 to {MAX_CLASSES} strings of at most 200 characters")
    if n_out is not None and n_out != len(v):
        raise _fail(f"the graph outputs {n_out} classes but the header names {len(v)}")
    return tuple(v)


def decode_v3(data: bytes, section_len: int, *, max_weights: int, max_memory: int | str | None = None) -> "Ticket":
    """Parse a version-3 ticket whose frame (magic, version, length, checksum) is already checked."""
    from .ticket import (Ticket, TensorEntry, _check_criterion, _check_keep, _check_metadata, _int_field,
                         _parse_header, _wrap, check_memory, parse_multiplier)

    if section_len > MAX_SECTION_BYTES:
        raise _fail(f"header section of {section_len} bytes exceeds {MAX_SECTION_BYTES}")
    raw = inflate(bytes(data[_PREFIX.size:_PREFIX.size + section_len]), 4 + MAX_HEADER_BYTES + MAX_GRAPH_BYTES)
    if len(raw) < 4:
        raise _fail("the header section is shorter than its 4-byte header length")
    (hlen,) = struct.unpack_from("<I", raw, 0)
    if not 1 <= hlen <= MAX_HEADER_BYTES or 4 + hlen >= len(raw):
        raise _fail(f"header length {hlen} does not fit the {len(raw)}-byte section (a graph must follow)")
    graph = raw[4 + hlen:]
    header = _parse_header(raw[4:4 + hlen], _TOP_KEYS)
    shapes, input_shape, n_out = graph_tensors(graph)
    try:
        init = rng.InitSpec.from_dict(header["init"])
    except InitSpecError as e:
        raise _fail(f"bad header: {e}") from None
    if not init.exact:
        raise _fail(f"init {init.scheme} is not allowed in a version-3 ticket (bit-exact inits only)")
    seed = _int_field(header["seed"], "seed", 0, (1 << 64) - 1)
    classes = _check_classes(header["classes"], n_out)
    fp = header["fingerprint"]
    if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{16}", fp):
        raise _fail("fingerprint must be 16 lowercase hex digits")
    rows = header["tensors"]
    if not isinstance(rows, list) or len(rows) != len(shapes):
        raise _fail(f"tensor table must list the graph's {len(shapes)} placeholders")
    total = sum(math.prod(s) for s in shapes.values())
    if total > max_weights:
        raise _fail(f"ticket describes {total} parameters, above the limit of {max_weights} "
                    "(pass a larger max_weights if you trust this file)")
    entries, seen, offset = [], set(), 0
    for r in rows:
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or name not in shapes or name in seen:
            raise _fail(f"tensor table entry {name!r:.60} is missing, repeated or not a placeholder of the graph")
        seen.add(name)
        role = r.get("role")
        if role not in ROLES:
            raise _fail(f"tensor {name!r}: unknown role {role!r:.40}; known: {', '.join(ROLES)}")
        shape = shapes[name]
        need = set(_FIELDS[role])
        factor = 1.0
        if "multiplier" in r and role in ("masked", "regenerated"):
            factor = parse_multiplier(r["multiplier"], name)
            need.add("multiplier")
        if set(r) != need:
            raise _fail(f"tensor {name!r} with role {role} must have exactly the fields {sorted(need)}")
        n = math.prod(shape)
        dist = scale = None
        if role in ("masked", "regenerated"):
            if len(shape) < 2:
                raise _fail(f"tensor {name!r} of shape {shape} cannot be generated (weights need 2+ dimensions)")
            dist = init.distribution
            try:
                scale = init.scale(*weight_fans(shape))
            except InitSpecError as e:
                raise _fail(f"tensor {name!r}: {e}") from None
        codec, length, kept = None, 0, None
        if role == "masked":
            codec = r["codec"]
            if codec not in codecs.CODECS:
                raise _fail(f"tensor {name!r}: unknown codec {codec!r:.40}; this reader knows {', '.join(codecs.CODECS)}")
            length = _int_field(r["length"], f"tensor {name!r} length", 0, 1 << 34)
            if codec == "bitpack" and length != codecs.bitpack_size(n):
                raise _fail(f"tensor {name!r}: bitpack payload of {length} bytes; {codecs.bitpack_size(n)} expected")
            if codec == "entropy" and (length < 4 or length % 4):
                raise _fail(f"tensor {name!r}: entropy payload length {length} is not a positive multiple of 4")
            kept = _int_field(r["kept"], f"tensor {name!r} kept", 0, n)
        elif role == "stored":
            length = 4 * n
        entries.append(TensorEntry(name, shape, role, dist, scale, None, codec, offset, length, kept, factor))
        offset += length
    start = _PREFIX.size + section_len
    payload_size = len(data) - _DIGEST - start
    if offset != payload_size:
        raise _fail(f"payload section is {payload_size} bytes but the tensor table accounts for {offset}")
    check_memory("decoding the masks of this ticket",
                 {"masks": sum(e.size for e in entries if e.role == "masked"),
                  "stored values": sum(2 * e.length for e in entries if e.role == "stored")}, max_memory)
    masks, stored = {}, {}
    for e in entries:
        blob = data[start + e.offset:start + e.offset + e.length]
        if e.role == "masked":
            try:
                bits = codecs.decode(blob, e.size, e.codec)
            except CodecError as ex:
                raise _fail(f"tensor {e.name!r}: {ex}") from None
            if int(np.count_nonzero(bits)) != e.num_kept:
                raise _fail(f"tensor {e.name!r}: mask keeps {int(np.count_nonzero(bits))} weights but the header "
                            f"says {e.num_kept}")
            masks[e.name] = bits.reshape(e.shape)
        elif e.role == "stored":
            a = np.frombuffer(bytes(blob), dtype="<f4").astype(np.float32).reshape(e.shape)
            if not np.isfinite(a).all():
                raise _fail(f"tensor {e.name!r}: stored values include NaN or infinity")
            stored[e.name] = a
    return Ticket(
        architecture=None, seed=seed, init=init, masks=masks, tensors=tuple(entries),
        criterion=_wrap(_check_criterion, header["criterion"]), keep=_wrap(_check_keep, header["keep"]),
        metadata=_wrap(_check_metadata, header["metadata"]), file_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), version=VERSION, graph=graph, graph_input_shape=input_shape,
        graph_classes=classes, stored=stored, fingerprint=fp, section_bytes=section_len)
