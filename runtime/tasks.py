"""The work behind ``supermask eval`` and ``supermask predict``, as library calls that return
JSON-ready dicts. Torch-free.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ..errors import InputError, SupermaskError
from .inputs import range_warning, read_input
from ..prediction import predict_classes
from .model import DEFAULT_BATCH_SIZE, load


def evaluate_dataset(
    ticket: str | os.PathLike,
    dataset: str,
    *,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    threads: int | None = None,
    weights: str = "auto",
) -> dict:
    """Test accuracy of a ticket on a named data set, computed by onnxruntime.

    Returns ``accuracy``, ``correct``, ``num_examples``, ``provider``, ``providers``,
    ``note`` (why CUDA was not used, or null), timings in seconds (``load_seconds``: ticket
    to ready session; ``seconds``: inference over the whole set), ``examples_per_second``,
    ``ticket_accuracy`` / ``ticket_dataset`` / ``ticket_test_examples``: what ``find``
    measured for this mask, as recorded in the ticket's metadata (null when absent), and
    ``warnings``: a line when the data lie far outside the range the model was trained on
    (see :func:`~supermask.runtime.inputs.range_warning`; the model also issues it as an
    :class:`~supermask.runtime.inputs.InputRangeWarning`), and ``weights`` (``float`` or
    ``lowbit``: the form in use, see :func:`~supermask.runtime.load`), ``weights_summary``
    (one line) and ``weights_note`` (why ``auto`` kept layers float32, or null).
    """
    from .. import datasets
    from .model import _ort

    _ort()
    t0 = time.perf_counter()
    model = load(ticket, device, threads=threads, weights=weights)
    load_seconds = time.perf_counter() - t0
    ds = datasets.load(dataset, split, data_dir=data_dir, download=download)
    shape = tuple(ds.images.shape[1:])
    if shape != model.input_shape:
        raise SupermaskError(f"data set {ds.name} has inputs of shape {shape}; the ticket's model "
                             f"({model.name}) expects {model.input_shape}")
    if len(ds.classes) > len(model.classes):
        raise SupermaskError(f"data set {ds.name} has {len(ds.classes)} classes; "
                             f"the ticket's model has {len(model.classes)}")
    images, labels = ds.images, ds.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    alerts = [m for m in [range_warning(images, model.ticket.metadata, f"data set {ds.name}")] if m]
    result = model.evaluate(images, labels, batch_size=batch_size)
    out = {"ticket": str(ticket), "dataset": ds.name, "split": split}
    out.update(result.to_dict())
    meta = model.ticket.metadata
    out.update(providers=model.providers, device=device, note=model.note, load_seconds=load_seconds,
               ticket_sha256=model.ticket.sha256,
               # what `find` measured for this mask, as `pack` recorded it (null when unknown)
               ticket_accuracy=meta.get("accuracy"), ticket_dataset=meta.get("dataset"),
               ticket_test_examples=meta.get("test_examples"), warnings=alerts, **_weights(model))
    return out


def predict_files(
    ticket: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    top_k: int = 1,
    threads: int | None = None,
    weights: str = "auto",
) -> dict:
    """Class predictions for ``.npy`` arrays and image files.

    A ``.npy`` file holds one example (``input_shape``) or a batch (N, ``input_shape``); an
    image is one example. Returns ``predictions``: one row per example with ``input``,
    ``index`` (position in its file), ``class`` (index), ``label`` (class name),
    ``probability`` (softmax) and ``top`` (the ``top_k`` best as [label, probability]), and
    ``warnings``: one line for each file whose values lie far outside the range the model was
    trained on (also issued as an :class:`~supermask.runtime.inputs.InputRangeWarning`).
    """
    if not inputs:
        raise InputError("no inputs given")
    model = load(ticket, device, threads=threads, weights=weights)
    batches = [(str(p), read_input(p, model.input_shape)) for p in inputs]  # read all first: fail early
    alerts = [m for path, batch in batches if (m := range_warning(batch, model.ticket.metadata, path))]
    k = max(1, min(int(top_k), len(model.classes)))
    rows = []
    for path, batch in batches:
        logits = np.concatenate([model.logits(batch[a:a + DEFAULT_BATCH_SIZE])
                                 for a in range(0, batch.shape[0], DEFAULT_BATCH_SIZE)] or [np.zeros((0, 1))])
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        best = predict_classes(logits) if len(logits) else np.zeros(0, np.int64)
        for i in range(batch.shape[0]):
            c = int(best[i])  # the shared rule decides ties; the rest follow by probability
            rest = [int(j) for j in np.argsort(-probs[i], kind="stable") if j != c]
            order = [c] + rest[:k - 1]
            rows.append({
                "input": path, "index": i, "class": c, "label": model.classes[c],
                "probability": float(probs[i, c]),
                "top": [[model.classes[j], float(probs[i, j])] for j in order],
            })
    return {"ticket": str(ticket), "provider": model.provider, "providers": model.providers,
            "note": model.note, "warnings": alerts, **_weights(model), "predictions": rows}


def _weights(model) -> dict:
    return {"weights": model.weights, "weights_summary": model.weights_summary, "weights_note": model.weights_note}
