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
