"""Mutation fuzzing of tickets, shared by tests/test_fuzz.py (bounded, in CI) and
benchmarks/fuzz_tickets.py (long runs, prints the figures in docs/reliability.md).

The property: whatever bytes a reader is given, it either returns a ticket whose weights
regenerate, or raises a SupermaskError subclass. Any other exception is a bug.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections import Counter

import numpy as np

from supermask import InitSpec, models, ticket
from supermask.errors import SupermaskError

NASTY_VALUES = [
    10**12, -1, 0, 1.5, -0.0, 2**64, 2**63 - 1, 10**400, 1e308, "", "x" * 10_000, None, True, False,
    [], {}, [1, 2, 3], {"a": 1}, [[[[[[]]]]]], "0x1p-3", "nan",
]


def outcome(data: bytes, max_weights: int = ticket.DEFAULT_MAX_WEIGHTS) -> str:
    """'ok' or the SupermaskError class name; re-raises anything else."""
    try:
        t = ticket.decode_ticket(data, max_weights=max_weights)
        t.weights(verify=True)
    except SupermaskError as e:
        return type(e).__name__
    return "ok"


def resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def split(data: bytes) -> tuple[bytes, dict, bytes]:
    (hlen,) = struct.unpack_from("<I", data, 12)
    return data[:12], json.loads(data[16:16 + hlen]), data[16 + hlen:-32]


def join(prefix: bytes, header_raw: bytes, payload: bytes) -> bytes:
    return resign(prefix + struct.pack("<I", len(header_raw)) + header_raw + payload)


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _set(node, path, value):
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


def mutate_header(data: bytes, r: random.Random) -> bytes:
    """Replace one JSON value anywhere in the header by a hostile one; keep the checksum valid."""
    prefix, header, payload = split(data)
    paths = list(_paths(header))
    path = r.choice(paths[1:])
    kind = r.random()
    if kind < 0.7:
        value = r.choice(NASTY_VALUES)
    elif kind < 0.85:  # a numeric field scaled or negated
        value = r.choice([-1, 2, 1000, 10**9]) * (r.randint(1, 99))
    else:  # deep nesting
        value: object = []
        for _ in range(5000):
            value = [value]
        if r.random() < 0.5:
            value = {"k": [0] * 100_000}
    header = _set(header, path, value)
    try:
        raw = json.dumps(header).encode()
    except (ValueError, RecursionError):
        raw = b"[" * 100_000
    return join(prefix, raw, payload)


def splice(data: bytes, other: bytes, r: random.Random) -> bytes:
    a, b = sorted(r.sample(range(len(data) + 1), 2))
    c = r.randrange(len(other) + 1)
    out = data[:a] + other[c:c + (b - a) + r.randint(-8, 8)] + data[b:]
    return resign(out[:-32]) if r.random() < 0.5 and len(out) > 32 else out


def flip_bits(data: bytes, r: random.Random, count: int) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        i = r.randrange(len(buf) * 8)
        buf[i // 8] ^= 1 << (i % 8)
    return bytes(buf)


def sample_tickets() -> list[bytes]:
    """Tickets to mutate: the committed fixture plus in-memory ones with other inits/codecs."""
    from helpers import FIXTURES

    arch = models.build("lenet-300-100", (1, 8, 8), [str(i) for i in range(10)])
    g = np.random.default_rng(0)
    masks = {p.name: g.random(p.shape) < 0.2 for p in arch.params() if p.kind == "weight"}
    out = [(FIXTURES / "tiny-v1.smask").read_bytes()]
    for scheme, codec in (("glorot_normal", "entropy"), ("signed_kaiming_constant", "bitpack")):
        out.append(ticket.encode_ticket(arch, 5, InitSpec(scheme), masks, codec=codec))
    return out


def all_single_bit_flips(data: bytes) -> tuple[int, int]:
    """(tried, detected) over every bit of ``data``."""
    detected = 0
    for i in range(len(data) * 8):
        buf = bytearray(data)
        buf[i // 8] ^= 1 << (i % 8)
        detected += outcome(bytes(buf)) != "ok"
    return len(data) * 8, detected


def all_truncations(data: bytes) -> tuple[int, int]:
    rejected = sum(outcome(data[:n]) != "ok" for n in range(len(data)))
    return len(data), rejected


def random_campaign(seed: int, cases: int) -> Counter:
    """``cases`` random mutations of every family; returns outcome counts per family."""
    r = random.Random(seed)
    tickets = sample_tickets()
    counts: Counter = Counter()
    for i in range(cases):
        data = tickets[i % len(tickets)]
        family = ("header", "splice", "flips", "resigned-flips", "truncate-resigned")[i % 5]
        if family == "header":
            m = mutate_header(data, r)
        elif family == "splice":
            m = splice(data, r.choice(tickets), r)
        elif family == "flips":
            m = flip_bits(data, r, r.randint(1, 16))
        elif family == "resigned-flips":  # damage that the checksum does not catch
            m = resign(flip_bits(data[:-32], r, r.randint(1, 4)))
        else:
            m = resign(data[: r.randrange(len(data) - 32)])
        counts[(family, outcome(m))] += 1
    return counts


# ------------------------------------------------------------------------------------------
# Mutations of the header's meaning. The campaign above mostly meets the reader's first
# checks; these mutations change what a well-formed ticket *says* (shapes, counts, init
# scales and multipliers, preprocessing), then repair everything the integrity checks look
# at (tensor shapes and scales, fingerprints, payload layout, the SHA-256), so the reader
# accepts the result and the runtime has to regenerate and run it.

#: Hidden widths, input sides and placeholder sizes: small, awkward, and far too big.
WIDTHS = [1, 2, 3, 7, 64, 300, 4096, 1 << 15, 1 << 20, 1 << 22, 1 << 25, 1 << 31]
GAINS = [1e-300, 1e-30, 1e-6, 0.5, 2.0, 999_999.0, 1e6, 1e300]
MULTIPLIERS = ["0x1.fffffep+127", "0x1p+100", "0x1p-149", "0x1.8p+1", "0x1p-60"]
PREPROCESS_VALUES = [1e300, -1e300, 3.5e38, 3.4e38, 1e38, 1e30, 1e-30, 1e-45, 1e-300, 0.0, -1.0, 255.0]
#: Refit fingerprints of tensors up to this many elements (larger ones keep a stale one: the
#: memory cap must refuse them before any fingerprint is checked).
FINGERPRINT_LIMIT = 1 << 24
ZERO_MASK = struct.pack("<I", 1)  # entropy payload q = 1, no words: a mask of zeros of any size
MEANINGS = ("shape", "count", "scale", "preprocess")


def _fingerprint(seed, name, shape, distribution, scale, old):
    import math

    from supermask import rng

    if math.prod(shape) > FINGERPRINT_LIMIT:
        return old
    try:
        return rng.stream_fingerprint(seed, name, tuple(shape), distribution, scale)
    except SupermaskError:
        return old


def _refit_v1(header: dict, blobs: dict, r: random.Random) -> tuple[dict, bytes]:
    """Make the tensor table and payloads agree with the (mutated) architecture and init."""
    from supermask.arch import Architecture

    try:
        arch = Architecture.from_dict(header["architecture"])
        init = InitSpec.from_dict(header["init"])
        params = arch.params()
    except SupermaskError:
        return header, b"".join(blobs.values())
    old = {row["name"]: row for row in header["tensors"]}
    rows, payload = [], b""
    for p in params:
        o = old.get(p.name, {})
        if p.kind == "bias":
            rows.append({"name": p.name, "shape": list(p.shape), "role": "zero"})
            continue
        try:
            scale = init.scale(p.fan_in, p.fan_out)
        except SupermaskError:
            scale = 1.0
        row = {"name": p.name, "shape": list(p.shape), "role": "regenerated",
               "init": {"distribution": init.distribution, "scale": float(scale).hex()},
               "fingerprint": _fingerprint(header["seed"], p.name, p.shape, init.distribution, scale,
                                           o.get("fingerprint", {"sha256": "0" * 16}))}
        if "multiplier" in o:
            row["multiplier"] = o["multiplier"]
        blob = None
        if o.get("role") == "masked" and tuple(o["shape"]) == p.shape:
            blob = blobs[p.name]
            row.update(role="masked", codec=o["codec"], num_kept=o["num_kept"])
        elif r.random() < 0.5:
            blob = ZERO_MASK
            row.update(role="masked", codec="entropy", num_kept=0)
        if blob is not None:
            blobs[p.name] = blob
            row.update(offset=len(payload), length=len(blob))
            payload += blob
        rows.append(row)
    header["tensors"] = rows
    return header, payload


def _mutate_meaning_v1(data: bytes, r: random.Random, kind: str) -> bytes:
    prefix, header, payload = split(data)
    version = struct.unpack_from("<H", prefix, 8)[0]
    blobs = {row["name"]: payload[row["offset"]:row["offset"] + row["length"]]
             for row in header["tensors"] if row["role"] == "masked"}
    arch = header["architecture"]
    linear = [layer for layer in arch["layers"] if layer.get("type") == "linear"]
    if kind == "shape":
        if r.random() < 0.3:  # the input: (1, a, b), and the first layer's fan-in with it
            a, b = r.choice(WIDTHS), r.choice(WIDTHS[:8])
            arch["input_shape"] = [1, a, b]
            linear[0]["in"] = a * b
        else:  # a hidden width between two linear layers
            i = r.randrange(len(linear) - 1)
            linear[i]["out"] = linear[i + 1]["in"] = r.choice(WIDTHS)
    elif kind == "scale":
        if r.random() < 0.5:
            header["init"]["gain_sq"] = r.choice(GAINS)
        else:
            row = r.choice([row for row in header["tensors"] if row["role"] != "zero"])
            row["multiplier"] = r.choice(MULTIPLIERS)
            version = 2
    elif kind == "preprocess":
        key = r.choice(["scale", "mean", "std"])
        value = r.choice(PREPROCESS_VALUES)
        arch["preprocess"][key] = value if key == "scale" else [value] * len(arch["preprocess"][key])
    header, payload = _refit_v1(header, blobs, r)
    if kind == "count":
        what = r.choice(["num_kept", "length", "classes", "classes-out"])
        masked = [row for row in header["tensors"] if row["role"] == "masked"]
        if what == "num_kept" and masked:
            r.choice(masked)["num_kept"] += r.choice([-1, 1, 10**6])
        elif what == "length" and masked:
            r.choice(masked)["length"] += r.choice([-4, 4, 1])
        elif what == "classes":
            arch["classes"] = arch["classes"] + ["extra"]
        else:  # classes and the last layer's width together: a consistent, different head
            n = r.choice([1, 2, 1000])
            arch["classes"] = [f"c{i}" for i in range(n)]
            linear[-1]["out"] = n
            header, payload = _refit_v1(header, blobs, r)
    prefix = prefix[:8] + struct.pack("<HH", version, 0)
    return join(prefix, json.dumps(header).encode(), payload)


def split_v3(data: bytes) -> tuple[dict, bytes, bytes]:
    """(header, graph, payload) of a version-3 ticket."""
    from supermask import ticket3

    (section_len,) = struct.unpack_from("<I", data, 12)
    raw = ticket3.inflate(data[16:16 + section_len], 16 << 20)
    (hlen,) = struct.unpack_from("<I", raw, 0)
    return json.loads(raw[4:4 + hlen]), raw[4 + hlen:], data[16 + section_len:-32]


def join_v3(header: dict, graph: bytes, payload: bytes) -> bytes:
    from supermask import ticket3

    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    section = ticket3.deflate(struct.pack("<I", len(hb)) + hb + graph)
    return resign(ticket.MAGIC + struct.pack("<HHI", 3, 0, len(section)) + section + payload)


def _v3_blobs(header: dict, shapes: dict, payload: bytes) -> dict:
    import math

    blobs, at = {}, 0
    for row in header["tensors"]:
        n = {"masked": row.get("length", 0), "stored": 4 * math.prod(shapes.get(row["name"], ()))}.get(row["role"], 0)
        blobs[row["name"]] = payload[at:at + n]
        at += n
    return blobs


def _refit_v3(header: dict, graph: bytes, blobs: dict, changed: set) -> tuple[dict, bytes]:
    import math

    from supermask import rng, ticket3

    try:
        shapes = ticket3.graph_tensors(graph)[0]
        init = InitSpec.from_dict(header["init"])
    except SupermaskError:
        return header, b"".join(blobs.values())
    payload, digest, total = b"", hashlib.sha256(), 0
    for row in header["tensors"]:
        name, shape = row["name"], shapes.get(row["name"], ())
        blob = blobs.get(name, b"")
        if name in changed:
            if row["role"] == "masked":
                row.update(codec="entropy", length=len(ZERO_MASK), kept=0)
                blob = ZERO_MASK
            elif row["role"] == "stored":
                row["role"], blob = "zero", b""
        payload += blob
        if row["role"] in ("masked", "regenerated"):
            total += math.prod(shape)
            if total <= FINGERPRINT_LIMIT and len(shape) >= 2:
                try:
                    scale = init.scale(*ticket3.weight_fans(shape))
                    digest.update(rng.generate(header["seed"], name, shape, init.distribution, scale).tobytes())
                except SupermaskError:
                    total = FINGERPRINT_LIMIT + 1
    if total <= FINGERPRINT_LIMIT:
        header["fingerprint"] = digest.hexdigest()[:16]
    return header, payload


def _mutate_graph(graph: bytes, r: random.Random, kind: str) -> tuple[bytes, set]:
    """A placeholder's dims (``shape``) or the preprocessing constants (``preprocess``) of a
    version-3 graph, changed with the onnx package (None when it is not installed)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return graph, set()
    m = onnx.load_from_string(graph)
    changed = set()
    if kind == "shape":
        placeholders = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        t = r.choice(placeholders)
        dims = r.choice([[1], [2, 2], [r.choice(WIDTHS), r.choice(WIDTHS[:8])], [1 << 15, 1 << 15],
                         list(t.dims)[:1] + [r.choice(WIDTHS)] + list(t.dims)[2:]])
        del t.dims[:]
        t.dims.extend(dims)
        changed.add(t.name)
    else:
        consts = [n for n in m.graph.node if n.op_type == "Constant"]
        if consts:
            attr = r.choice(consts).attribute[0]
            a = numpy_helper.to_array(attr.t).astype(np.float32)
            with np.errstate(over="ignore"):
                a = np.full_like(a, r.choice(PREPROCESS_VALUES + [float("inf"), float("nan")]))
            attr.t.CopyFrom(numpy_helper.from_array(a, attr.t.name))
    return m.SerializeToString(), changed


def _mutate_meaning_v3(data: bytes, r: random.Random, kind: str) -> bytes:
    from supermask import ticket3

    header, graph, payload = split_v3(data)
    blobs = _v3_blobs(header, ticket3.graph_tensors(graph)[0], payload)
    changed: set = set()
    if kind in ("shape", "preprocess"):
        graph, changed = _mutate_graph(graph, r, kind)
    elif kind == "scale":
        if r.random() < 0.5:
            header["init"]["gain_sq"] = r.choice(GAINS)
        else:
            rows = [row for row in header["tensors"] if row["role"] in ("masked", "regenerated")]
            r.choice(rows)["multiplier"] = r.choice(MULTIPLIERS)
    header, payload = _refit_v3(header, graph, blobs, changed)
    if kind == "count":
        what = r.choice(["kept", "length", "classes"])
        masked = [row for row in header["tensors"] if row["role"] == "masked"]
        if what == "kept":
            r.choice(masked)["kept"] += r.choice([-1, 1, 10**6])
        elif what == "length":
            r.choice(masked)["length"] += r.choice([-4, 4])
        else:
            header["classes"] = header["classes"] + ["extra"] if r.random() < 0.5 else header["classes"][:1]
    return join_v3(header, graph, payload)


def mutate_meaning(data: bytes, r: random.Random, kind: str | None = None) -> bytes:
    """Change one thing the header means (``kind``: one of :data:`MEANINGS`, random when None),
    repair the table, fingerprints and checksum so that integrity checks pass."""
    kind = kind or r.choice(MEANINGS)
    if struct.unpack_from("<H", data, 8)[0] == 3:
        return _mutate_meaning_v3(data, r, kind)
    return _mutate_meaning_v1(data, r, kind)


def meaning_samples() -> list[bytes]:
    """Tickets for the meaning campaign: the version-1 samples and the version-3 fixture."""
    from helpers import FIXTURES

    return sample_tickets() + [(FIXTURES / "tiny-v3.smask").read_bytes()]


def run_outcome(data: bytes, max_memory: int) -> str:
    """'ok' when ``data`` reads, regenerates and runs (onnxruntime, CPU) on a batch of inputs,
    else the SupermaskError class name; re-raises anything else, MemoryError included."""
    import supermask.runtime as smr

    try:
        t = ticket.decode_ticket(data, max_memory=max_memory)
        model = smr.load(t, "cpu", threads=1, max_memory=max_memory)
        x = np.random.default_rng(0).integers(0, 256, size=(3,) + tuple(t.input_shape)).astype(np.float32)
        model.logits(x)
    except SupermaskError as e:
        return type(e).__name__
    return "ok"


def meaning_campaign(seed: int, cases: int, max_memory: int) -> Counter:
    """``cases`` meaning mutations, each run end to end; outcome counts per (kind, outcome)."""
    r = random.Random(seed)
    tickets = meaning_samples()
    counts: Counter = Counter()
    for i in range(cases):
        kind = MEANINGS[i % len(MEANINGS)]
        data = mutate_meaning(tickets[(i // len(MEANINGS)) % len(tickets)], r, kind)
        counts[(kind, run_outcome(data, max_memory))] += 1
    return counts


def meaning_campaign_capped(seed: int, cases: int, *, address_space: int = 3 << 30,
                            max_memory: int = 512 << 20, timeout: float = 900):
    """:func:`meaning_campaign` in a child process whose address space is capped with
    ``RLIMIT_AS`` (a small device): returns (exit status, outcome counts, stderr). Any
    exception that is not a SupermaskError, MemoryError included, ends the child with a
    traceback and a non-zero status."""
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = ("import json, sys, fuzzlib\n"
            f"c = fuzzlib.meaning_campaign({seed}, {cases}, {max_memory})\n"
            "print(json.dumps([[k, o, n] for (k, o), n in sorted(c.items())]))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       preexec_fn=cap, timeout=timeout)
    counts: Counter = Counter()
    if p.returncode == 0:
        for k, o, n in json.loads(p.stdout.strip().splitlines()[-1]):
            counts[(k, o)] = n
    return p.returncode, counts, p.stderr
