"""Exact 4-bit weights for the linear layers of signed-constant tickets. Torch-free.

In a signed-constant ticket every kept weight of a tensor is ``+c`` or ``-c`` (``c`` the
tensor's float32 scale, times its multiplier when it has one) and every pruned weight is 0:
a ternary matrix times one number. onnxruntime's ``com.microsoft.MatMulNBits`` holds such
a matrix exactly in 4 bits per weight: the codes 7, 8, 9 with the default zero point 8 and
the block scale ``c`` dequantize to ``-1*c``, ``0*c`` and ``1*c``, the very float32 values
of the float path. With ``accuracy_level=1`` (float32 compute) the products and sums are
float32 too, so only the order of the additions differs from the float ``Gemm``.

:func:`rewrite` changes a graph: each ``Gemm`` (``alpha = beta = 1``, ``transA = 0``)
or ``MatMul`` whose weight is a ternary initializer used by no other node becomes one
``MatMulNBits`` node with the bias as its ``bias`` input, or two whose outputs are added
when splitting the inputs into whole blocks and a tail saves padding (:func:`split_for`). Convolutions and every other
tensor stay float32 (see docs/performance.md for the measurements behind this).

Which layers are rewritten (:func:`plan`):

``lowbit``
    every ternary linear layer; an error (:class:`LowBitError`) when there is none;
``auto``
    ternary linear layers of at least :data:`AUTO_MIN_WEIGHTS` weights, the size from which
    the 4-bit kernel was measured to be no slower than float32 on the CPU at batch 1
    (the single-layer table of ``benchmarks/bench_lowbit.py``); float32 when there is none,
    with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import RuntimeUnavailableError, SupermaskError

#: Accepted values of ``weights`` for :func:`supermask.runtime.load` and ``--weights``.
WEIGHTS = ("auto", "float", "lowbit")
#: ``weights="auto"`` uses 4 bits for a ternary linear layer of at least this many weights.
#: Smaller layers fit in the CPU caches, where onnxruntime's float32 kernel is faster than
#: unpacking 4-bit codes (benchmarks/bench_lowbit.py; docs/performance.md).
AUTO_MIN_WEIGHTS = 1 << 23
#: The custom operator and its domain.
DOMAIN = "com.microsoft"
OP = "MatMulNBits"
BITS = 4
#: Block sizes onnxruntime's MatMulNBits CPU kernels handle.
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: float32 compute: weights dequantized to float32, activations never quantized.
ACCURACY_LEVEL = 1
_ZERO_POINT = 1 << (BITS - 1)  # MatMulNBits' default zero point for 4 bits: 8


class LowBitError(SupermaskError):
    """4-bit weights were asked for a ticket (or graph) that has no layer they can hold exactly."""


def ternary_scale(w: np.ndarray) -> np.float32 | None:
    """``c`` when every element of ``w`` is ``-c``, ``0`` or ``+c`` (``c > 0``; 1 for an
    all-zero tensor), else None. Values are compared as float32 bit patterns."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.size == 0:
        return None
    bits = w.reshape(-1).view(np.uint32) & np.uint32(0x7FFFFFFF)  # |w| as bits; -0.0 -> 0
    nz = bits[bits != 0]
    if nz.size == 0:
        return np.float32(1.0)
    first = nz[0]
    if not np.all(nz == first):
        return None
    c = np.uint32(first).view(np.float32)
    return c if np.isfinite(c) else None


def _row_bytes(k: int, b: int) -> int:
    return -(-k // b) * (b // 2 + 4)


def block_size_for(k: int) -> int:
    """The block size that stores ``k`` inputs per output in the fewest bytes (4-bit codes
    padded to whole blocks, plus one float32 scale per block); ties go to the larger block."""
    return min(sorted(BLOCK_SIZES, reverse=True), key=lambda b: _row_bytes(k, b))


#: A layer is split in two when that stores it in at most this fraction of the bytes.
SPLIT_GAIN = 0.95


def split_for(k: int) -> int:
    """Where to split ``k`` inputs into a part of whole blocks and a tail, each its own
    MatMulNBits node, when that saves padding (784 = 768 + 16: 4.16 instead of 4.78 bits
    per weight); 0 for no split."""
    whole = _row_bytes(k, block_size_for(k))
    best, at = whole, 0
    for b in sorted(BLOCK_SIZES, reverse=True):
        k1 = (k // b) * b
        if 0 < k1 < k:
            cost = (k1 // b) * (b // 2 + 4) + _row_bytes(k - k1, block_size_for(k - k1))
            if cost < best:
                best, at = cost, k1
    return at if best <= SPLIT_GAIN * whole else 0


@dataclass(frozen=True)
class Packed:
    """A ternary ``(N, K)`` matrix in MatMulNBits layout."""

    codes: np.ndarray  # uint8 (N, blocks, block_size // 2): two 4-bit codes a byte, low nibble first
    scales: np.ndarray  # float32 (N * blocks,)
    k: int
    n: int
    block_size: int

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.k * self.n)


@dataclass(frozen=True)
class LowBitLayer:
    """What a layer rewritten to 4 bits holds (its codes and scales live in onnxruntime)."""

    k: int
    n: int
    block_size: int
    nbytes: int  # codes and scales
    split: int = 0  # inputs [0, split) and [split, k) in two nodes; 0: one node

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.k * self.n)


def pack(w_nk: np.ndarray, c: np.float32) -> Packed:
    """The 4-bit codes and scales of a ternary ``(N, K)`` float32 matrix (``y = x @ w_nk.T``)
    whose values are in ``{-c, 0, +c}``."""
    n, k = w_nk.shape
    bs = block_size_for(k)
    blocks = -(-k // bs)
    codes = np.full((n, blocks * bs), _ZERO_POINT, dtype=np.uint8)
    view = codes[:, :k]
    view[w_nk > 0] += 1
    view[w_nk < 0] -= 1
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(n, blocks, bs // 2)
    scales = np.full(n * blocks, c, dtype=np.float32)
    return Packed(packed, scales, k, n, bs)


def unpack(p: Packed) -> np.ndarray:
    """The float32 ``(N, K)`` matrix that ``p`` dequantizes to (what MatMulNBits computes with)."""
    flat = p.codes.reshape(p.n, -1)
    codes = np.empty((p.n, flat.shape[1] * 2), dtype=np.int16)
    codes[:, 0::2] = flat & 0x0F
    codes[:, 1::2] = flat >> 4
    q = (codes - _ZERO_POINT).astype(np.float32).reshape(p.n, -1, p.block_size)
    return (q * p.scales.reshape(p.n, -1, 1)).reshape(p.n, -1)[:, :p.k]


# ---------------------------------------------------------------------------------------
# Graph rewriting (needs the onnx package)


@dataclass(frozen=True)
class Layer:
    """A linear layer of a graph that 4-bit weights could hold."""

    node: int  # index in graph.node
    weight: str
    bias: str | None
    k: int
    n: int
    transposed: bool  # the weight is stored (N, K) (Gemm transB=1), else (K, N)

    @property
    def size(self) -> int:
        return self.k * self.n


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def linear_layers(graph, weights: Mapping[str, np.ndarray]) -> list[Layer]:
    """The ``Gemm``/``MatMul`` nodes of ``graph`` whose weight is a 2-D tensor of ``weights``
    (ternary or not) that no other node reads, with their bias when it is a tensor of
    ``weights`` of shape (N,)."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    found = []
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2:
            continue
        w_name = node.input[1]
        w = weights.get(w_name)
        if w is None or np.ndim(w) != 2 or uses.get(w_name) != 1:
            continue
        bias = None
        if node.op_type == "Gemm":
            a = _attrs(node)
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) != 0:
                continue
            transposed = a.get("transB", 0) == 1
            if len(node.input) > 2 and node.input[2]:
                bias = node.input[2]
        else:
            transposed = False
        n, k = w.shape if transposed else w.shape[::-1]
        if bias is not None:
            b = weights.get(bias)
            if b is None or np.shape(b) != (n,) or uses.get(bias) != 1:
                continue
        if k < BLOCK_SIZES[0] // 2:  # too narrow to be worth a block
            continue
        found.append(Layer(i, w_name, bias, int(k), int(n), transposed))
    return found


@dataclass
class Plan:
    """What :func:`plan` decided: the layers to hold in 4 bits and, when that is none or
    fewer than asked, why."""

    layers: list[Layer]
    scales: dict[str, np.float32]
    ternary: int  # ternary linear layers found
    linear: int  # linear layers found
    note: str | None = None


def plan(graph, weights: Mapping[str, np.ndarray], mode: str, min_weights: int | None = None,
         only=None) -> Plan:
    """The linear layers of ``graph`` to hold in 4 bits for ``mode`` (``auto`` or ``lowbit``).
    ``only``: when given, the weight names that may be ternary (the others are not examined).

    Raises :class:`LowBitError` for ``lowbit`` when no linear layer is ternary.
    """
    if min_weights is None:
        min_weights = AUTO_MIN_WEIGHTS
    layers = linear_layers(graph, weights)
    scales = {}
    for layer in layers:
        if only is not None and layer.weight not in only:
            continue
        c = ternary_scale(np.asarray(weights[layer.weight]))
        if c is not None:
            scales[layer.weight] = c
    ternary = [layer for layer in layers if layer.weight in scales]
    if not ternary:
        why = (f"none of its {len(layers)} linear layers has ternary weights (only signed-constant tickets "
               f"have them: init signed_kaiming_constant or signed_glorot_constant)" if layers
               else "it has no linear layer with its own weight tensor")
        if mode == "lowbit":
            raise LowBitError(f"4-bit weights need ternary linear layers ({{-c, 0, +c}}); this ticket has none: "
                              f"{why}. Use --weights float (or auto)")
        return Plan([], scales, 0, len(layers), f"float32 weights: {why}")
    if mode == "lowbit":
        return Plan(ternary, scales, len(ternary), len(layers))
    chosen = [layer for layer in ternary if layer.size >= min_weights]
    note = None
    if len(chosen) < len(ternary):
        small = len(ternary) - len(chosen)
        note = (f"{'float32 weights' if not chosen else f'{len(chosen)} linear layers in 4 bits'}: {small} ternary "
                f"linear layer{'s' if small > 1 else ''} under {min_weights:,} weights kept float32, where it is "
                f"faster on the CPU (weights='lowbit' holds them in 4 bits too)")
    return Plan(chosen, scales, len(ternary), len(layers), note)


def rewrite(model, weights: Mapping[str, np.ndarray], p: Plan) -> dict[str, LowBitLayer]:
    """Replace the layers of plan ``p`` in ``model`` (a ModelProto, changed in place) by
    ``MatMulNBits`` nodes; the weight initializers they replace are removed. Returns the
    rewritten layers by weight name.

    The codes and scales become initializers embedded in the graph, so onnxruntime owns
    them: once its kernel has prepacked the codes it frees its copy of the graph's tensor,
    and (with the serialized graph released after the session is made, as
    :func:`supermask.runtime.load` does) the process holds each layer once, in 4 bits
    (docs/performance.md). External initializers would stay alive beside the prepacked
    copy, twice the bytes."""
    from onnx import helper, numpy_helper

    g = model.graph
    packed: dict[str, LowBitLayer] = {}
    replaced = set()
    new_inits = []
    nodes: dict[int, list] = {}

    def codes(prefix: str, pk: Packed) -> tuple[str, str]:
        names = (prefix, prefix + "_scales")
        new_inits.extend(numpy_helper.from_array(a, n) for a, n in zip((pk.codes, pk.scales), names))
        return names

    def matmul(x: str, prefix: str, pk: Packed, bias: str | None, out: str, name: str):
        q, sc = codes(prefix, pk)
        return helper.make_node(OP, [x, q, sc] + (["", "", bias] if bias else []), [out], name=name,
                                domain=DOMAIN, K=pk.k, N=pk.n, bits=BITS, block_size=pk.block_size,
                                accuracy_level=ACCURACY_LEVEL)

    for layer in p.layers:
        w = np.asarray(weights[layer.weight], dtype=np.float32)
        w_nk = w if layer.transposed else w.T
        c = p.scales[layer.weight]
        node = g.node[layer.node]
        x, y, base, prefix = node.input[0], node.output[0], node.name or layer.weight, f"{layer.weight}.q4"
        at = split_for(layer.k)
        if not at:
            pk = pack(w_nk, c)
            nodes[layer.node] = [matmul(x, prefix, pk, layer.bias, y, base + "_q4")]
            packed[layer.weight] = LowBitLayer(pk.k, pk.n, pk.block_size, pk.nbytes)
        else:
            head, tail = pack(w_nk[:, :at], c), pack(w_nk[:, at:], c)
            consts = {f"{prefix}_split": [at], f"{prefix}_end": [layer.k], f"{prefix}_zero": [0],
                      f"{prefix}_axis": [-1]}
            new_inits.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items())
            nodes[layer.node] = [
                helper.make_node("Slice", [x, f"{prefix}_zero", f"{prefix}_split", f"{prefix}_axis"],
                                 [f"{prefix}_x0"], name=base + "_q4_slice0"),
                helper.make_node("Slice", [x, f"{prefix}_split", f"{prefix}_end", f"{prefix}_axis"],
                                 [f"{prefix}_x1"], name=base + "_q4_slice1"),
                matmul(f"{prefix}_x0", prefix, head, layer.bias, f"{prefix}_y0", base + "_q4"),
                matmul(f"{prefix}_x1", prefix + "_tail", tail, None, f"{prefix}_y1", base + "_q4_tail"),
                helper.make_node("Add", [f"{prefix}_y0", f"{prefix}_y1"], [y], name=base + "_q4_add"),
            ]
            packed[layer.weight] = LowBitLayer(layer.k, layer.n, head.block_size, head.nbytes + tail.nbytes, at)
        replaced.add(layer.weight)
    if nodes:
        rebuilt = []
        for i, node in enumerate(g.node):
            rebuilt.extend(nodes.get(i, [node]))
        del g.node[:]
        g.node.extend(rebuilt)
    keep = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    # Remove graph inputs that name a replaced initializer (older IR style), if any.
    ins = [v for v in g.input if v.name not in replaced]
    if len(ins) != len(g.input):
        del g.input[:]
        g.input.extend(ins)
    if packed and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return packed


# ---------------------------------------------------------------------------------------
# Does the onnxruntime build (and the provider in use) run MatMulNBits?

_PROBES: dict[tuple, str | None] = {}


def _probe_model(op: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    k, n = 32, 3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    if not op:  # a plain float op: does the provider start at all?
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()
    w = _probe_weights(k, n)
    pk = pack(w, np.float32(0.5))
    node = helper.make_node(OP, ["x", "q", "s", "", "", "b"], ["y"], domain=DOMAIN, K=k, N=n, bits=BITS,
                            block_size=pk.block_size, accuracy_level=ACCURACY_LEVEL)
    g = helper.make_graph([node], "probe", [x], [y], initializer=[
        numpy_helper.from_array(pk.codes, "q"), numpy_helper.from_array(pk.scales, "s"),
        numpy_helper.from_array(np.array([0.25, -0.5, 1.0], np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)],
                             ir_version=8).SerializeToString()


def _probe_weights(k: int, n: int) -> np.ndarray:
    t = (np.arange(n * k).reshape(n, k) % 3 - 1).astype(np.float32)
    return t * np.float32(0.5)


def _try(ort, graph: bytes, provider: str, check: bool) -> str | None:
    """None when ``provider`` alone runs ``graph`` (and, with ``check``, gets the exact result);
    else a short reason."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if provider != "CPUExecutionProvider":  # the node must run on this provider, not fall back
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = ort.InferenceSession(graph, so, providers=[provider])
        if provider not in s.get_providers():
            return f"{provider} did not start"
        x = (np.arange(32, dtype=np.float32) / 8 - 2).reshape(1, 32)
        y = s.run(None, {"x": x})[0]
    except Exception as e:  # onnxruntime's own exception types
        return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if check:
        want = x.astype(np.float64) @ _probe_weights(32, 3).T.astype(np.float64) + [0.25, -0.5, 1.0]
        if not np.allclose(y, want, rtol=1e-6, atol=1e-6):
            return "MatMulNBits computed a wrong result"
    return None


def unsupported(ort, provider: str) -> str | None:
    """None when ``provider`` of the onnxruntime module ``ort`` runs 4-bit MatMulNBits (with a
    bias input) exactly; else why not. Cached per provider."""
    key = (ort.__version__, provider)
    if key not in _PROBES:
        try:
            graph = _probe_model(True)
        except ImportError:
            _PROBES[key] = "the onnx package is not installed"
            return _PROBES[key]
        why = _try(ort, graph, provider, True)
        _PROBES[key] = None if why is None else (f"onnxruntime {ort.__version__} cannot run {DOMAIN}.{OP} "
                                                 f"(4-bit, with bias) on {provider}: {why}")
    return _PROBES[key]


def provider_starts(ort, provider: str) -> bool:
    """Whether ``provider`` alone can run a trivial float graph (CUDA needs a GPU and its libraries)."""
    key = (ort.__version__, provider, "start")
    if key not in _PROBES:
        try:
            graph = _probe_model(False)
        except ImportError:
            return True
        _PROBES[key] = _try(ort, graph, provider, False)
    return _PROBES[key] is None


def provider_in_use(ort, providers: list[str]) -> str:
    """The provider a session over ``providers`` will most likely run the linear layers on:
    the first that starts."""
    for p in providers[:-1]:
        if provider_starts(ort, p):
            return p
    return providers[-1]


def require_support(ort, provider: str) -> None:
    why = unsupported(ort, provider)
    if why:
        raise RuntimeUnavailableError(f"{why}; 4-bit weights need onnxruntime 1.20 or newer with "
                                      f"MatMulNBits on the provider in use. Use --weights float (or auto)")


def describe(packed: Mapping[str, LowBitLayer], linear: int) -> str:
    """One line: how many linear layers are held in 4 bits and their bits per weight."""
    if not packed:
        return "float32"
    n = sum(p.k * p.n for p in packed.values())
    b = sum(p.nbytes for p in packed.values())
    return (f"4-bit ternary (MatMulNBits) for {len(packed)} of {linear} linear layers "
            f"({8 * b / n:.2f} bits per weight), float32 elsewhere")

