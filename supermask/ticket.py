"""The ``.smask`` ticket: (architecture, seed, init spec, packed masks) in one small file.
Torch-free.

Layout (versions 1 and 2; the normative text is ``docs/format.md``)::

    offset  size  field
    0       8     magic  89 53 4D 41 53 4B 0D 0A  ("\\x89SMASK\\r\\n")
    8       2     format version, uint16 little-endian (1 or 2)
    10      2     reserved, zero
    12      4     header length H, uint32 little-endian (1 <= H <= 4 MiB)
    16      H     header: UTF-8 JSON object
    16+H    P     mask payloads, one per masked tensor, in header order, back to back
    end-32  32    SHA-256 of every byte before it

Version 2 adds one optional tensor field, ``multiplier`` (a float32 by which the masked
weights are multiplied, for example the dynamic rescaling of a Bernoulli supermask). A writer
uses version 1 whenever no tensor has a multiplier other than 1, so a version-1 reader still
reads every ticket that does not need the new field, and refuses the others by their version.

A ticket is untrusted input: :func:`decode_ticket` checks sizes, the checksum, every header
field and every payload length before it allocates anything, and only raises
:class:`~supermask.errors.TicketFormatError` (or a subclass) on bad input.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from . import codecs, rng
from .arch import Architecture, Param
from .atomic import atomic_write
from .errors import (
    ArchitectureError,
    ChecksumError,
    CodecError,
    InitSpecError,
    MemoryLimitError,
    SupermaskError,
    TicketFormatError,
    UnsupportedVersionError,
)

MAGIC = b"\x89SMASK\r\n"
FORMAT_VERSION = 3  # the newest version this package reads and writes (3: supermask.ticket3)
READ_VERSIONS = (1, 2, 3)
SUFFIX = ".smask"
_PREFIX = struct.Struct("<8sHHI")
_DIGEST = 32
MAX_HEADER_BYTES = 4 << 20
MAX_FILE_BYTES = 1 << 34
DEFAULT_MAX_WEIGHTS = 1 << 30
ROLES = ("masked", "regenerated", "zero")  # versions 1 and 2; version 3 adds "one" and "stored"
#: Memory cap (bytes) for decoding, regenerating and running a ticket, unless the caller
#: passes ``max_memory`` or sets :data:`MEMORY_ENV` (see :func:`resolve_max_memory`).
DEFAULT_MAX_MEMORY = 4 << 30
MEMORY_ENV = "SUPERMASK_MAX_MEMORY"
#: What an onnxruntime session holds per byte of float32 weights it is given (its own copies:
#: pre-packed matrices, transposed filters); measured at about 1.4 on the CPU provider.
SESSION_BYTES_PER_WEIGHT_BYTE = 2
_TOP_KEYS = {"architecture", "seed", "generator", "init", "criterion", "keep", "tensors", "metadata"}
_TENSOR_KEYS = {"name", "shape", "role", "init", "fingerprint", "codec", "offset", "length", "num_kept", "multiplier"}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_cap: contextvars.ContextVar[int | None] = contextvars.ContextVar("supermask_max_memory", default=None)


def parse_size(text: str | int) -> int:
    """Bytes from ``text``: a plain number of bytes, or a number with a unit: ``KiB``, ``MiB``,
    ``GiB``, ``TiB`` (also ``K``, ``M``, ``G``, ``T``) are powers of 1024, ``KB``, ``MB``, ``GB``,
    ``TB`` powers of 1000. Raises :class:`SupermaskError` on anything else or on 0."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE.match(str(text))
        if not m or (m.group(3) and not m.group(2)):
            raise SupermaskError(f"cannot read {str(text)!r:.40} as a size: give bytes or a number with a unit, "
                                 "e.g. 512MiB, 2GiB, 4GB")
        unit = "kmgt".index(m.group(2).lower()) + 1 if m.group(2) else 0
        base = 1000 if (m.group(4) and not m.group(3)) else 1024
        n = int(float(m.group(1)) * base ** unit)
    if n < 1:
        raise SupermaskError(f"a memory cap must be at least 1 byte, got {text!r:.40}")
    return n


def format_size(n: int) -> str:
    """``n`` bytes for a message: 3.0 GiB, 512.0 MiB, 900 B."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def resolve_max_memory(max_memory: int | str | None = None) -> int:
    """The memory cap in bytes: ``max_memory`` when given, else the one set by
    :func:`memory_cap`, else the environment variable ``SUPERMASK_MAX_MEMORY``, else
    :data:`DEFAULT_MAX_MEMORY` (4 GiB)."""
    if max_memory is not None:
        return parse_size(max_memory)
    if _cap.get() is not None:
        return _cap.get()
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            return parse_size(env)
        except SupermaskError as e:
            raise SupermaskError(f"{MEMORY_ENV}: {e}") from None
    return DEFAULT_MAX_MEMORY


@contextlib.contextmanager
def memory_cap(max_memory: int | str | None):
    """Within the block, readers and loaders that get no ``max_memory`` use this one (None:
    leave the cap as it is). The CLI's ``--max-memory`` option works this way."""
    if max_memory is None:
        yield
        return
    token = _cap.set(parse_size(max_memory))
    try:
        yield
    finally:
        _cap.reset(token)


def _refuse(what: str, parts: Mapping[str, int], cap: int) -> MemoryLimitError:
    total = sum(parts.values())
    detail = ", ".join(f"{k} {format_size(v)}" for k, v in parts.items() if v)
    return MemoryLimitError(
        f"{what} would need about {format_size(total)} of memory ({detail}), above the cap of "
        f"{format_size(cap)}. If you trust this ticket and the machine has the memory, raise the cap: "
        f"--max-memory on the command line, {MEMORY_ENV} in the environment, or max_memory= in Python")


def check_memory(what: str, parts: Mapping[str, int], max_memory: int | str | None = None) -> None:
    """Raise :class:`MemoryLimitError` when the estimated ``parts`` (name -> bytes) add up to
    more than the cap (:func:`resolve_max_memory`)."""
    cap = resolve_max_memory(max_memory)
    if sum(parts.values()) > cap:
        raise _refuse(what, parts, cap)


@dataclass(frozen=True)
class TensorEntry:
    """One row of the ticket's tensor table."""

    name: str
    shape: tuple[int, ...]
    role: str
    distribution: str | None = None
    scale: float | None = None
    fingerprint: dict | None = None
    codec: str | None = None
    offset: int = 0
    length: int = 0
    num_kept: int | None = None
    multiplier: float = 1.0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        d: dict = {"name": self.name, "shape": list(self.shape), "role": self.role}
        if self.role != "zero":
            d["init"] = {"distribution": self.distribution, "scale": float(self.scale).hex()}
            d["fingerprint"] = self.fingerprint
        if self.role == "masked":
            d.update(codec=self.codec, offset=self.offset, length=self.length, num_kept=self.num_kept)
        if self.multiplier != 1.0:
            d["multiplier"] = float(self.multiplier).hex()
        return d


@dataclass(frozen=True)
class Ticket:
    """A parsed ticket. ``masks`` maps each masked tensor's name to a bool array of its shape.

    Version 1 and 2 tickets describe their network with ``architecture`` (a layer list);
    version 3 tickets carry an ONNX ``graph`` instead (``architecture`` is None), plus the
    ``stored`` float32 tensors (BatchNorm statistics, trained biases and norm parameters).
    """

    architecture: Architecture | None
    seed: int
    init: rng.InitSpec
    masks: Mapping[str, np.ndarray]
    tensors: tuple[TensorEntry, ...]
    criterion: str | None = None
    keep: float | None = None
    metadata: Mapping = field(default_factory=dict)
    file_bytes: int = 0
    sha256: str = ""
    version: int = 1
    graph: bytes | None = None
    graph_input_shape: tuple[int, ...] | None = None
    graph_classes: tuple[str, ...] | None = None
    stored: Mapping[str, np.ndarray] = field(default_factory=dict)
    fingerprint: str | None = None  # version 3: one digest over every regenerated tensor
    section_bytes: int = 0  # version 3: the compressed header-and-graph section

    @property
    def classes(self) -> tuple[str, ...]:
        return self.graph_classes if self.architecture is None else self.architecture.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph_input_shape if self.architecture is None else tuple(self.architecture.input_shape)

    @property
    def model_name(self) -> str:
        if self.architecture is not None:
            return self.architecture.name
        return str(self.metadata.get("model") or "onnx graph")

    def tensor(self, name: str) -> TensorEntry:
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, TensorEntry]:
        # a dict, so a ticket of many tensors is not scanned once per tensor (quadratic time)
        return {t.name: t for t in self.tensors}

    def init_weights(self, name: str) -> np.ndarray:
        """The unmasked initial weights of tensor ``name``, regenerated from the seed."""
        t = self.tensor(name)
        if t.role == "zero":
            return np.zeros(t.shape, dtype=np.float32)
        if t.role == "one":
            return np.ones(t.shape, dtype=np.float32)
        if t.role == "stored":
            return np.array(self.stored[t.name], dtype=np.float32)
        return rng.generate(self.seed, t.name, t.shape, t.distribution, t.scale)

    def memory_estimate(self, session: bool = False) -> dict[str, int]:
        """Bytes that regenerating this ticket's weights needs, by part: the decoded masks it
        holds (one byte per element) and float32 values for every tensor; with ``session``,
        also what an onnxruntime session over them adds (its own copies of the weights)."""
        weights = 4 * sum(t.size for t in self.tensors)
        parts = {"masks": sum(t.size for t in self.tensors if t.role == "masked"), "float32 weights": weights}
        if session:
            parts["onnxruntime session"] = SESSION_BYTES_PER_WEIGHT_BYTE * weights
        return parts

    def weights(self, verify: bool = True, *, max_memory: int | str | None = None) -> dict[str, np.ndarray]:
        """Every parameter as float32: masked init weights, regenerated weights, zero biases.
        A tensor with a multiplier is ``(w * mask) * multiplier``, one float32 rounding.

        With ``verify`` (the default) each regenerated tensor is checked against the
        fingerprint in the ticket; a mismatch raises :class:`VerificationError`. Before
        allocating, the memory needed (:meth:`memory_estimate`) is compared with
        ``max_memory`` (bytes or a size such as ``"2GiB"``; default: :func:`resolve_max_memory`)
        and :class:`MemoryLimitError` raised above it.
        """
        check_memory("regenerating the weights of this ticket", self.memory_estimate(), max_memory)
        try:
            return self._weights(verify)
        except MemoryError:
            raise MemoryLimitError(
                f"ran out of memory regenerating the weights of this ticket (about "
                f"{format_size(sum(self.memory_estimate().values()))}); this machine has less free memory than "
                f"the cap of {format_size(resolve_max_memory(max_memory))} assumes: lower the cap "
                f"(--max-memory, {MEMORY_ENV}) to fail early, or free memory") from None

    def _weights(self, verify: bool) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        digest = hashlib.sha256() if verify and self.fingerprint is not None else None
        for t in self.tensors:
            w = self.init_weights(t.name)
            generated = t.role in ("masked", "regenerated")
            if verify and generated and digest is None:
                rng.verify(w, t.distribution, t.fingerprint, t.name)
            if digest is not None and generated:
                digest.update(np.ascontiguousarray(w, dtype="<f4").reshape(-1).view(np.uint8))
            if t.role == "masked":
                np.multiply(w, self.masks[t.name], out=w)
            if t.multiplier != 1.0:
                w *= np.float32(t.multiplier)
            if generated:
                w += np.float32(0.0)  # -0.0 -> +0.0: pruned weights are exactly +0.0
            out[t.name] = w
        if digest is not None:
            self._check_digest(digest)
        return out

    def _check_digest(self, digest) -> None:
        if digest.hexdigest()[:16] != self.fingerprint:
            from .errors import VerificationError

            raise VerificationError(
                f"the regenerated weights do not match the ticket's fingerprint {self.fingerprint} (got "
                f"{digest.hexdigest()[:16]}): this machine's generator differs from the one that packed it")

    def verify(self) -> None:
        """Regenerate every generated tensor and check it against the ticket's fingerprints,
        without keeping the weights: each tensor is made and hashed one range of
        ``rng.STREAM_CHUNK`` elements at a time, so memory stays a few tens of MiB whatever
        the tensor sizes. Raises :class:`VerificationError` on a mismatch."""
        generated = [t for t in self.tensors if t.role in ("masked", "regenerated")]
        if self.fingerprint is None:  # versions 1 and 2: one fingerprint per tensor
            for t in generated:
                got = rng.stream_fingerprint(self.seed, t.name, t.shape, t.distribution, t.scale)
                rng.check_fingerprint(got, t.distribution, t.fingerprint, t.name)
            return
        digest = hashlib.sha256()  # version 3: one digest over every generated tensor in order
        for t in generated:
            for a in range(0, t.size, rng.STREAM_CHUNK):
                piece = rng.generate_range(self.seed, t.name, a, min(a + rng.STREAM_CHUNK, t.size),
                                           t.distribution, t.scale)
                digest.update(np.ascontiguousarray(piece, dtype="<f4").view(np.uint8))
        self._check_digest(digest)

    @property
    def num_weights(self) -> int:
        """Elements of the generated tensors (the ones a mask may cover)."""
        return sum(t.size for t in self.tensors if t.role in ("masked", "regenerated"))

    @property
    def num_kept(self) -> int:
        return sum(t.num_kept if t.role == "masked" else t.size for t in self.tensors
                   if t.role in ("masked", "regenerated"))

    def summary(self) -> dict:
        """Machine-readable summary (what ``supermask inspect --json`` prints)."""
        dense_bytes = 4 * sum(t.size for t in self.tensors)
        rows = []
        for t in self.tensors:
            kept = t.num_kept if t.role == "masked" else (t.size if t.role == "regenerated" else 0)
            rows.append({
                "name": t.name,
                "shape": list(t.shape),
                "role": t.role,
                "distribution": t.distribution,
                "num_weights": t.size,
                "num_kept": kept,
                "density": (kept / t.size) if t.size and t.role in ("masked", "regenerated") else None,
                "codec": t.codec,
                "payload_bytes": t.length,
                "bits_per_weight": (8 * t.length / t.size) if t.size and t.role == "masked" else None,
                "multiplier": t.multiplier,
            })
        n = self.num_weights
        stored_bytes = sum(t.length for t in self.tensors if t.role == "stored")
        mask_bytes = sum(t.length for t in self.tensors if t.role == "masked")
        return {
            "version": self.version,
            "architecture": self.model_name,
            "input_shape": list(self.input_shape),
            "num_classes": len(self.classes),
            "seed": self.seed,
            "generator": {"name": rng.GENERATOR_NAME, "version": rng.GENERATOR_VERSION},
            "init": self.init.to_dict(),
            "criterion": self.criterion,
            "keep": self.keep,
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
            "num_weights": n,
            "num_kept": self.num_kept,
            "density": self.num_kept / n if n else None,
            "bits_per_weight": 8 * self.file_bytes / n if n else None,
            "dense_float32_bytes": dense_bytes,
            "compression_ratio": dense_bytes / self.file_bytes if self.file_bytes else None,
            "mask_bytes": mask_bytes,
            "stored_bytes": stored_bytes,
            "overhead_bytes": self.file_bytes - mask_bytes - stored_bytes,
            "graph": None if self.graph is None else {"bytes": len(self.graph), "section_bytes": self.section_bytes},
            "metadata": dict(self.metadata),
            "tensors": rows,
        }


# ------------------------------------------------------------------------------- writing


def _check_metadata(meta: object) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or len(meta) > 64:
        raise TicketFormatError("metadata must be an object with at most 64 entries")
    for k, v in meta.items():
        if not isinstance(k, str) or len(k) > 64:
            raise TicketFormatError("metadata keys must be strings of at most 64 characters")
        ok = v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))
        if not ok or (isinstance(v, str) and len(v) > 1024):
            raise TicketFormatError(f"metadata value for {k!r} must be a short string, a number, a bool or null")
    return dict(meta)


def _check_keep(keep: object) -> float | None:
    if keep is None:
        return None
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise TicketFormatError(f"keep must be a fraction in (0, 1], got {keep!r:.40}")
    return float(keep)


def _check_multiplier(v: object, name: str) -> float:
    """A tensor multiplier: a positive, finite float32 value."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)):
        raise TicketFormatError(f"multiplier of {name!r} must be a number, got {v!r:.40}")
    v = float(v)
    if not (math.isfinite(v) and v > 0 and float(np.float32(v)) == v and math.isfinite(np.float32(v))):
        raise TicketFormatError(f"multiplier of {name!r} must be a positive finite float32 value, got {v!r}")
    return v


def _check_criterion(c: object) -> str | None:
    if c is None:
        return None
    if not isinstance(c, str) or not 0 < len(c) <= 64:
        raise TicketFormatError("criterion must be a string of 1 to 64 characters")
    return c


def encode_ticket(
    architecture: Architecture,
    seed: int,
    init: rng.InitSpec,
    masks: Mapping[str, np.ndarray],
    *,
    codec: str = "auto",
    criterion: str | None = None,
    keep: float | None = None,
    metadata: Mapping | None = None,
    multipliers: Mapping[str, float] | None = None,
) -> bytes:
    """The bytes of a ticket. Weight tensors without a mask are stored as ``regenerated``
    (kept whole); biases are ``zero``. Masks and ``multipliers`` (float32 values, 1 when
    absent) are matched to tensors by name. The file is version 1 unless a multiplier needs 2."""
    params = architecture.params()
    weight_names = {p.name for p in params if p.kind == "weight"}
    unknown = set(masks) - weight_names
    if unknown:
        raise TicketFormatError(f"masks given for tensors the architecture has no weight for: {sorted(unknown)}")
    factors = {k: _check_multiplier(v, k) for k, v in (multipliers or {}).items()}
    if set(factors) - weight_names:
        raise TicketFormatError(f"multipliers given for tensors the architecture has no weight for: "
                                f"{sorted(set(factors) - weight_names)}")
    seed = rng._check_seed(seed)
    entries, payloads, offset = [], [], 0
    for p in params:
        if p.kind == "bias":
            entries.append(TensorEntry(p.name, p.shape, "zero"))
            continue
        scale = init.scale(p.fan_in, p.fan_out)
        w0 = rng.generate(seed, p.name, p.shape, init.distribution, scale)
        fp = rng.fingerprint(w0, init.distribution)
        factor = factors.get(p.name, 1.0)
        if p.name not in masks:
            entries.append(TensorEntry(p.name, p.shape, "regenerated", init.distribution, scale, fp,
                                       multiplier=factor))
            continue
        m = np.asarray(masks[p.name])
        if m.shape != p.shape:
            raise TicketFormatError(f"mask for {p.name!r} has shape {m.shape}; the architecture says {p.shape}")
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise TicketFormatError(f"mask for {p.name!r} must hold only 0/1 or booleans")
            m = m.astype(bool)
        used, blob = codecs.encode(m, codec)
        entries.append(TensorEntry(p.name, p.shape, "masked", init.distribution, scale, fp, used,
                                   offset, len(blob), int(np.count_nonzero(m)), factor))
        payloads.append(blob)
        offset += len(blob)
    header = {
        "architecture": architecture.to_dict(),
        "seed": seed,
        "generator": {"name": rng.GENERATOR_NAME, "version": rng.GENERATOR_VERSION},
        "init": init.to_dict(),
        "criterion": _check_criterion(criterion),
        "keep": _check_keep(keep),
        "tensors": [e.to_dict() for e in entries],
        "metadata": _check_metadata(dict(metadata) if metadata is not None else None),
    }
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(hbytes) > MAX_HEADER_BYTES:
        raise TicketFormatError(f"header of {len(hbytes)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    version = 2 if any(e.multiplier != 1.0 for e in entries) else 1
    body = _PREFIX.pack(MAGIC, version, 0, len(hbytes)) + hbytes + b"".join(payloads)
    return body + hashlib.sha256(body).digest()


def write_ticket(path: str | os.PathLike, *args, **kwargs) -> Ticket:
    """Encode a ticket (see :func:`encode_ticket`), write it atomically, return it parsed."""
    data = encode_ticket(*args, **kwargs)
    atomic_write(path, data)
    return decode_ticket(data)


# ------------------------------------------------------------------------------- reading


def _fail(msg: str) -> TicketFormatError:
    return TicketFormatError(msg)



def _no_duplicates(pairs: list) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise _fail(f"header has a duplicate key {k!r:.40}")
        d[k] = v
    return d


def _reject_constant(name: str) -> None:
    raise _fail(f"header contains {name}, which is not valid JSON")


def _parse_header(raw: bytes, keys: set[str] = _TOP_KEYS) -> dict:
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except TicketFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(f"header is not valid UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise _fail("header must be a JSON object")
    missing, extra = keys - set(header), set(header) - keys
    if missing or extra:
        raise _fail(f"header fields wrong: missing {sorted(missing)}, unknown {sorted(extra)[:10]}")
    return header


def _int_field(v: object, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(f"{what} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _is_hex_float(v: object) -> bool:
    if not isinstance(v, str) or len(v) > 40:
        return False
    try:
        return math.isfinite(float.fromhex(v))
    except (ValueError, OverflowError):
        return False


def parse_multiplier(m: object, name: str) -> float:
    """A tensor's ``multiplier`` field: a hex float32, positive, finite and not 1."""
    try:
        factor = _check_multiplier(float.fromhex(m), name) if _is_hex_float(m) else None
    except TicketFormatError:
        factor = None
    if factor is None or factor == 1.0:
        raise _fail(f"tensor {name!r}: multiplier {m!r:.40} must be a hex float32 other than 1")
    return factor


def _parse_tensor(d: object, p: Param, init: rng.InitSpec, version: int) -> TensorEntry:
    if not isinstance(d, dict):
        raise _fail("each tensor entry must be an object")
    name = p.name
    extra = set(d) - _TENSOR_KEYS
    if version < 2 and "multiplier" in d:
        extra.add("multiplier")
    if extra:
        raise _fail(f"tensor {name!r} has unknown fields {sorted(map(str, extra))[:10]}")
    shape = d.get("shape")
    if not isinstance(shape, list) or tuple(shape) != p.shape or any(isinstance(v, bool) for v in shape):
        raise _fail(f"tensor {name!r} declares shape {shape!r:.60}; the architecture says {list(p.shape)}")
    role = d.get("role")
    if role not in ROLES:
        raise _fail(f"tensor {name!r} has unknown role {role!r:.40}; known: {', '.join(ROLES)}")
    need = {"name", "shape", "role"}
    if role != "zero":
        need |= {"init", "fingerprint"}
    if role == "masked":
        need |= {"codec", "offset", "length", "num_kept"}
    factor = 1.0
    if "multiplier" in d and role != "zero":
        factor = parse_multiplier(d["multiplier"], name)
        need.add("multiplier")
    if set(d) != need:
        raise _fail(f"tensor {name!r} with role {role} must have exactly the fields {sorted(need)}")
    if role == "zero":
        return TensorEntry(name, p.shape, role)
    if p.kind != "weight":
        raise _fail(f"tensor {name!r} is a bias; biases can only have role 'zero'")
    ti = d["init"]
    if not isinstance(ti, dict) or set(ti) != {"distribution", "scale"}:
        raise _fail(f"tensor {name!r}: init must have 'distribution' and 'scale'")
    if ti["distribution"] != init.distribution:
        raise _fail(f"tensor {name!r}: distribution {ti['distribution']!r:.40} does not match init scheme {init.scheme}")
    expected = init.scale(p.fan_in, p.fan_out)
    try:
        scale = float.fromhex(ti["scale"]) if isinstance(ti["scale"], str) else None
    except (ValueError, OverflowError):
        scale = None
    if scale != expected:
        raise _fail(f"tensor {name!r}: scale {ti['scale']!r:.40} does not match {init.scheme} "
                    f"for fans ({p.fan_in}, {p.fan_out}), which gives {expected.hex()}")
    fp = d["fingerprint"]
    exact = init.distribution in rng.EXACT_DISTRIBUTIONS
    if exact:
        ok = isinstance(fp, dict) and set(fp) == {"sha256"} and isinstance(fp["sha256"], str) and len(fp["sha256"]) == 16
    else:
        probes = fp.get("probes") if isinstance(fp, dict) else None
        ok = (isinstance(fp, dict) and set(fp) == {"sign_sha256", "probes"} and isinstance(fp["sign_sha256"], str)
              and isinstance(probes, list) and len(probes) <= 64
              and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and not isinstance(x[0], bool)
                      and _is_hex_float(x[1]) for x in probes))
    if not ok:
        raise _fail(f"tensor {name!r}: malformed fingerprint")
    if role == "regenerated":
        return TensorEntry(name, p.shape, role, init.distribution, scale, fp, multiplier=factor)
    codec = d["codec"]
    if codec not in codecs.CODECS:
        raise _fail(f"tensor {name!r}: unknown codec {codec!r:.40}; this reader knows {', '.join(codecs.CODECS)}")
    n = p.size
    length = _int_field(d["length"], f"tensor {name!r} length", 0, MAX_FILE_BYTES)
    if codec == "bitpack" and length != codecs.bitpack_size(n):
        raise _fail(f"tensor {name!r}: bitpack payload of {length} bytes; {codecs.bitpack_size(n)} expected")
    if codec == "entropy" and (length < 4 or length % 4):
        raise _fail(f"tensor {name!r}: entropy payload length {length} is not a positive multiple of 4")
    return TensorEntry(name, p.shape, role, init.distribution, scale, fp, codec,
                       _int_field(d["offset"], f"tensor {name!r} offset", 0, MAX_FILE_BYTES), length,
                       _int_field(d["num_kept"], f"tensor {name!r} num_kept", 0, n), factor)


def decode_ticket(data: bytes | bytearray | memoryview, *, max_weights: int = DEFAULT_MAX_WEIGHTS,
                  max_memory: int | str | None = None) -> Ticket:
    """Parse and validate a ticket from bytes. Raises TicketFormatError on any bad input, and
    MemoryLimitError before decoding masks that would take more than ``max_memory`` bytes
    (default: :func:`resolve_max_memory`)."""
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    size = len(data)
    if size < _PREFIX.size + _DIGEST:
        if bytes(data[:8]) != MAGIC[: min(8, size)] or size < 8:
            raise _fail(f"not a supermask ticket ({size} bytes; a ticket starts with {MAGIC!r})")
        raise _fail(f"truncated ticket: {size} bytes is shorter than the fixed {_PREFIX.size + _DIGEST}-byte frame")
    magic, version, reserved, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise _fail(f"not a supermask ticket (starts with {bytes(magic)!r}, expected {MAGIC!r})")
    if version not in READ_VERSIONS:
        raise UnsupportedVersionError(
            f"ticket format version {version}; this reader supports versions "
            f"{', '.join(map(str, READ_VERSIONS))} (upgrade supermask to read newer tickets)")

    if reserved != 0:
        raise _fail("reserved header bytes are not zero")
    if not 1 <= hlen <= MAX_HEADER_BYTES:
        raise _fail(f"header length {hlen} is outside [1, {MAX_HEADER_BYTES}]")
    if _PREFIX.size + hlen + _DIGEST > size:
        raise _fail(f"truncated ticket: header says {hlen} bytes but the file has {size} bytes in all")
    digest = hashlib.sha256(data[: size - _DIGEST]).digest()
    if digest != bytes(data[size - _DIGEST:]):
        raise ChecksumError("ticket checksum mismatch: the file is damaged or was modified "
                            "(re-copy it or re-run `supermask pack`)")
    if version == 3:
        from .ticket3 import decode_v3

        return decode_v3(data, hlen, max_weights=max_weights, max_memory=max_memory)
    header = _parse_header(bytes(data[_PREFIX.size: _PREFIX.size + hlen]))

    gen = header["generator"]
    if not isinstance(gen, dict) or gen.get("name") != rng.GENERATOR_NAME or set(gen) != {"name", "version"}:
        raise _fail(f"unknown generator {gen!r:.80}; this reader knows {rng.GENERATOR_NAME}")
    if gen["version"] != rng.GENERATOR_VERSION:
        raise UnsupportedVersionError(
            f"generator version {gen['version']!r:.20}; this reader supports {rng.GENERATOR_VERSION}")
    try:
        arch = Architecture.from_dict(header["architecture"])
        init = rng.InitSpec.from_dict(header["init"])
        params = arch.params()
    except (ArchitectureError, InitSpecError) as e:
        raise _fail(f"bad header: {e}") from None
    check_preprocess(arch.preprocess)
    seed = _int_field(header["seed"], "seed", 0, (1 << 64) - 1)
    total = sum(p.size for p in params)
    if total > max_weights:
        raise _fail(f"ticket describes {total} parameters, above the limit of {max_weights} "
                    "(pass a larger max_weights if you trust this file)")
    rows = header["tensors"]
    if not isinstance(rows, list) or len(rows) != len(params):
        raise _fail(f"tensor table must list the architecture's {len(params)} tensors")
    by_name: dict[str, object] = {}
    for r in rows:
        nm = r.get("name") if isinstance(r, dict) else None
        if not isinstance(nm, str) or nm in by_name:
            raise _fail(f"tensor table has a missing or duplicate name: {nm!r:.60}")
        by_name[nm] = r
    if set(by_name) != {p.name for p in params}:
        raise _fail(f"tensor names {sorted(by_name)[:8]} do not match the architecture's {[p.name for p in params][:8]}")
    if [r["name"] for r in rows] != [p.name for p in params]:
        raise _fail("tensor table must follow the architecture's parameter order")
    entries = tuple(_parse_tensor(by_name[p.name], p, init, version) for p in params)
    if version == 2 and all(e.multiplier == 1.0 for e in entries):
        raise _fail("a version-2 ticket must use a version-2 field (a tensor multiplier); write it as version 1")

    payload_start = _PREFIX.size + hlen
    payload_size = size - _DIGEST - payload_start
    offset = 0
    for e in entries:
        if e.role == "masked":
            if e.offset != offset:
                raise _fail(f"tensor {e.name!r}: payload offset {e.offset}, expected {offset} (payloads are back to back)")
            offset += e.length
    if offset != payload_size:
        raise _fail(f"payload section is {payload_size} bytes but the tensor table accounts for {offset}")
    check_memory("decoding the masks of this ticket",
                 {"masks": sum(e.size for e in entries if e.role == "masked")}, max_memory)

    masks: dict[str, np.ndarray] = {}
    for e in entries:
        if e.role != "masked":
            continue
        blob = data[payload_start + e.offset: payload_start + e.offset + e.length]
        try:
            bits = codecs.decode(blob, e.size, e.codec)
        except CodecError as ex:
            raise _fail(f"tensor {e.name!r}: {ex}") from None
        kept = int(np.count_nonzero(bits))
        if kept != e.num_kept:
            raise _fail(f"tensor {e.name!r}: mask keeps {kept} weights but the header says {e.num_kept}")
        masks[e.name] = bits.reshape(e.shape)

    return Ticket(
        architecture=arch,
        seed=seed,
        init=init,
        masks=masks,
        tensors=entries,
        criterion=_wrap(_check_criterion, header["criterion"]),
        keep=_wrap(_check_keep, header["keep"]),
        metadata=_wrap(_check_metadata, header["metadata"]),
        file_bytes=size,
        sha256=hashlib.sha256(data).hexdigest(),
        version=version,
    )


def check_preprocess(pre) -> None:
    """Refuse preprocessing that float32 cannot carry: the runtime computes
    ``(x * scale - mean) / std`` in float32, so every value must be finite as a float32 and
    every ``std`` must stay above zero there (1e300 would become infinity, 1e-300 zero)."""
    values = [("scale", pre.scale)] + [("mean", v) for v in pre.mean] + [("std", v) for v in pre.std]
    with np.errstate(over="ignore", under="ignore"):
        for what, v in values:
            v32 = np.float32(v)
            if not np.isfinite(v32) or (what == "std" and not v32 > 0):
                raise _fail(f"bad header: preprocess {what} {v!r:.40} is not a finite"
                            f"{' positive' if what == 'std' else ''} float32 value (float32 holds magnitudes "
                            f"from about 1.4e-45 to 3.4e38)")


def _wrap(check, value):
    try:
        return check(value)
    except TicketFormatError as e:
        raise _fail(f"bad header: {e}") from None


def read_ticket(path: str | os.PathLike, *, max_weights: int = DEFAULT_MAX_WEIGHTS,
                max_memory: int | str | None = None) -> Ticket:
    """Read and validate a ticket file (see :func:`decode_ticket`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _fail(f"{path}: {size} bytes is too large for a ticket")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SupermaskError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SupermaskError(f"{path} is a folder, not a ticket file") from None
    except PermissionError:
        raise SupermaskError(f"permission denied reading {path}") from None
    except OSError as e:
        raise SupermaskError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return decode_ticket(data, max_weights=max_weights, max_memory=max_memory)
    except (TicketFormatError, MemoryLimitError) as e:
        raise type(e)(f"{path}: {e}") from None
