"""Ticket -> self-contained ONNX file (``supermask.export``). Torch-free.

::

    from supermask.export import export_ticket
    result = export_ticket("model.smask", "model.onnx", fmt="sparse")

A version-3 ticket carries its graph: its placeholders are filled with the regenerated
tensors (:func:`fill_graph`). For version 1 and 2 tickets the graph is built from the
ticket's architecture description (see :mod:`supermask.export.graph`). Either way it includes
the input preprocessing, takes raw values ``input`` float32 ``[N, *input_shape]`` and returns
``logits`` ``[N, classes]``. Every
written model passes ``onnx.checker``; the class names travel in the model's metadata
(``supermask.classes``, a JSON list).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SupermaskError
from ..ticket import Ticket, check_memory, read_ticket
from .graph import INPUT_NAME, IR_VERSION, MAX_PROTO_BYTES, OPSET, OUTPUT_NAME, STORAGE, build_model

FORMATS = ("dense", "sparse", "lowbit")
#: Initializers the lowbit rewrite adds (codes, scales, split points), not parameter tensors.
_LOWBIT_SUFFIXES = tuple(".q4" + s for s in ("", "_scales", "_tail", "_tail_scales", "_split", "_end", "_zero", "_axis"))

__all__ = ["export_ticket", "ticket_model", "fill_graph", "ExportResult", "build_model", "FORMATS", "STORAGE",
           "IR_VERSION", "OPSET", "INPUT_NAME", "OUTPUT_NAME"]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_ticket` wrote.

    ``sparse_tensors`` and ``dense_tensors`` name the model's parameter tensors (weights and
    biases; not the preprocessing constants) by how each was stored; ``lowbit_tensors`` the
    weights held as 4-bit ``MatMulNBits`` codes (format ``lowbit``).
    """

    path: str
    format: str
    file_bytes: int
    ticket_bytes: int
    sparse_tensors: tuple[str, ...]
    dense_tensors: tuple[str, ...]
    ir_version: int
    opset: int
    lowbit_tensors: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "path": self.path, "format": self.format, "file_bytes": self.file_bytes,
            "ticket_bytes": self.ticket_bytes, "sparse_tensors": list(self.sparse_tensors),
            "dense_tensors": list(self.dense_tensors), "lowbit_tensors": list(self.lowbit_tensors),
            "ir_version": self.ir_version, "opset": self.opset,
        }


def _as_ticket(ticket: Ticket | str | os.PathLike) -> Ticket:
    return ticket if isinstance(ticket, Ticket) else read_ticket(ticket)


def fill_graph(graph: bytes, weights, storage: str = "dense", metadata=None, classes=None):
    """A self-contained ONNX ``ModelProto``: the weight-free ``graph`` of a version-3 ticket with
    every placeholder replaced by its array in ``weights`` (dense or, where smaller, sparse)."""
    import json

    import numpy as np
    import onnx
    from onnx import helper

    from .graph import dense_initializer, sparse_bytes, sparse_initializer

    if storage not in ("dense", "sparse"):
        raise SupermaskError(f"unknown storage {storage!r}; choose dense or sparse")
    model = onnx.load_from_string(graph)
    g = model.graph
    inits, sparse = [], []
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            inits.append(t)
            continue
        w = np.asarray(weights[t.name], dtype=np.float32).reshape(tuple(t.dims))
        if storage == "sparse" and sparse_bytes(int(np.count_nonzero(w))) < 4 * w.size:
            sparse.append(sparse_initializer(t.name, w))
        else:
            inits.append(dense_initializer(t.name, w))
    del g.initializer[:]
    g.initializer.extend(inits)
    g.sparse_initializer.extend(sparse)
    props = dict(metadata or {})
    if classes is not None:
        props["supermask.classes"] = json.dumps(list(classes))
    model.producer_name = "supermask"
    helper.set_model_props(model, props)
    return model


def ticket_model(ticket: Ticket | str | os.PathLike, fmt: str = "dense"):
    """The ONNX ``ModelProto`` of a ticket, self-contained, with weights stored as ``fmt``.

    ``lowbit``: every ternary linear layer (signed-constant tickets) becomes an exact 4-bit
    ``com.microsoft.MatMulNBits`` node (:mod:`supermask.runtime.lowbit`), the rest is dense;
    :class:`~supermask.runtime.lowbit.LowBitError` when the ticket has no ternary linear layer.
    """
    if fmt not in FORMATS:
        raise SupermaskError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    t = _as_ticket(ticket)
    meta = {"supermask.ticket_sha256": t.sha256, "supermask.seed": str(t.seed),
            "supermask.init": t.init.scheme}
    if t.criterion:
        meta["supermask.criterion"] = t.criterion
    if t.keep is not None:
        meta["supermask.keep"] = repr(t.keep)
    # The model holds a copy of every weight, and writing it serializes another: check the cap
    # for all of it before regenerating anything.
    parts = t.memory_estimate()
    parts["ONNX model and its serialized bytes"] = 2 * parts["float32 weights"]
    check_memory("exporting this ticket to ONNX", parts)
    if fmt == "lowbit":
        return _lowbit_model(t, meta)
    if t.graph is not None:
        return fill_graph(t.graph, t.weights(), fmt, meta, t.classes)
    return build_model(t.architecture, t.weights(), storage=fmt, metadata=meta)


def _lowbit_model(t: Ticket, meta: dict):
    from onnx import helper

    from ..runtime import lowbit

    signed = {e.name for e in t.tensors if e.distribution == "signed_constant"}
    if not signed:
        raise lowbit.LowBitError(
            f"--format lowbit needs ternary linear layers ({{-c, 0, +c}}); this ticket has none: its init is "
            f"{t.init.scheme}, not signed_kaiming_constant or signed_glorot_constant. Use --format dense or sparse")
    weights = t.weights()
    meta = dict(meta, **{"supermask.weights": "lowbit"})
    if t.graph is not None:
        model = fill_graph(t.graph, weights, "dense", meta, t.classes)
    else:
        model = build_model(t.architecture, weights, storage="dense", metadata=meta)
    p = lowbit.plan(model.graph, weights, "lowbit", only=signed)
    done = lowbit.rewrite(model, weights, p)
    meta["supermask.lowbit_tensors"] = ",".join(done)
    props = {e.key: e.value for e in model.metadata_props}
    props.update(meta)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    return model


def export_ticket(ticket: Ticket | str | os.PathLike, out: str | os.PathLike, fmt: str = "dense",
                  *, check: bool = True) -> ExportResult:
    """Write the ONNX model of ``ticket`` to ``out`` (atomically) and describe what was written.

    ``fmt`` is ``dense`` (plain initializers) or ``sparse`` (per tensor the smaller of a dense
    and a sparse initializer). With ``check`` the model goes through ``onnx.checker`` first.
    """
    import onnx

    from ..atomic import atomic_write

    out = Path(out)
    if not isinstance(ticket, Ticket) and out.exists() and out.resolve() == Path(ticket).resolve():
        raise SupermaskError(f"the output {out} is the ticket itself; choose another file name")
    t = _as_ticket(ticket)
    model = ticket_model(t, fmt)
    size = model.ByteSize()
    if size > MAX_PROTO_BYTES:
        raise SupermaskError(
            f"the {fmt} ONNX model would be {size:,} bytes, above protobuf's 2 GiB limit"
            + ("; try --format sparse" if fmt == "dense" else ""))
    lowbit_tensors = tuple(n for e in model.metadata_props if e.key == "supermask.lowbit_tensors"
                           for n in e.value.split(",") if n)
    if check:
        try:
            # Shape inference does not understand sparse initializers, so the full check (which
            # runs it) is for dense models only.
            onnx.checker.check_model(model, full_check=(fmt in ("dense", "lowbit")))
        except onnx.checker.ValidationError as e:  # a bug here, not a user error, but say so clearly
            raise SupermaskError(f"the exported model failed onnx.checker: {str(e)[:300]}") from None
    if out.is_dir():
        raise SupermaskError(f"{out} is a folder; give a file name such as {out / 'model.onnx'}")
    if not out.parent.exists():
        raise SupermaskError(f"folder {out.parent} does not exist")
    atomic_write(out, model.SerializeToString())
    return ExportResult(
        path=str(out), format=fmt, file_bytes=out.stat().st_size, ticket_bytes=t.file_bytes,
        # parameter tensors (weights and biases) by storage; preprocessing constants left out
        sparse_tensors=tuple(s.values.name for s in model.graph.sparse_initializer),
        dense_tensors=tuple(i.name for i in model.graph.initializer
                            if not i.name.startswith("preprocess_") and not i.name.endswith(_LOWBIT_SUFFIXES)),
        ir_version=model.ir_version,
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET),
        lowbit_tensors=lowbit_tensors,
    )
