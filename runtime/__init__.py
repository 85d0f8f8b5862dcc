"""Run a ticket with onnxruntime (``supermask.runtime``). Never imports torch.

Needs numpy, onnx (to build the graph) and onnxruntime, CPU or GPU build::

    import supermask.runtime as smr

    model = smr.load("model.smask")          # device="auto": CUDA if usable, else CPU
    model.provider                           # the provider really in use
    model.note                               # why CUDA was not used, or None
    model.predict(images)                    # (N,) class indices; uint8 or float input
    model.logits(images)                     # (N, classes) float32
    [model.classes[i] for i in model.predict(images)]
    model.evaluate(images, labels).accuracy

``load`` reads the ticket, regenerates and masks the weights, builds the ONNX graph from the
ticket's architecture description (preprocessing included) and opens a session. Devices:

* ``auto`` (default): providers CUDA then CPU. onnxruntime-gpu falls back to the CPU
  silently when it cannot start CUDA, so the provider is read back from the session and a
  fallback is recorded in ``model.note`` (and logged).
* ``cuda``: strict; raises :class:`~supermask.errors.RuntimeUnavailableError` when CUDA is
  not available instead of running on the CPU.
* ``cpu``: the CPU provider only.

``load(..., weights=...)`` picks how the weights are held: ``float`` (float32), ``lowbit``
(the ternary linear layers of a signed-constant ticket as exact 4-bit ``MatMulNBits``, about
8x less memory; see :mod:`supermask.runtime.lowbit`) or ``auto`` (the default: 4 bits where
that is also faster, float32 otherwise; ``model.weights_note`` says why).

``load(..., max_memory=...)`` caps the memory a ticket may ask for (default 4 GiB, or the
``SUPERMASK_MAX_MEMORY`` environment variable): above the estimate it raises
:class:`~supermask.errors.MemoryLimitError` before allocating. NaN or infinite logits raise
:class:`~supermask.errors.NonFiniteError`.
"""

from __future__ import annotations

from .inputs import read_input, to_batch
from .lowbit import WEIGHTS, LowBitError
from .model import (
    CPU,
    CUDA,
    DEFAULT_BATCH_SIZE,
    DEVICES,
    Evaluation,
    Model,
    available_providers,
    cuda_available,
    load,
    make_session,
)

__all__ = [
    "load", "Model", "Evaluation", "DEVICES", "CPU", "CUDA", "DEFAULT_BATCH_SIZE",
    "available_providers", "cuda_available", "make_session", "read_input", "to_batch", "WEIGHTS", "LowBitError",
]
