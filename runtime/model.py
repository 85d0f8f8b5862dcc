"""Ticket -> weights -> onnxruntime session. Must never import torch.

See :mod:`supermask.runtime` for the public API and the provider rules.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
import numpy as np

from ..errors import InputError, NonFiniteError, RuntimeUnavailableError, SupermaskError
from ..prediction import predict_classes
from ..ticket import Ticket, check_memory, read_ticket, resolve_max_memory
from .inputs import to_batch, warn_if_out_of_range
from .lowbit import WEIGHTS

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: Accepted values of ``device``: ``auto`` tries CUDA and falls back to the CPU (with a note
#: that :func:`note_worth_showing` tells apart from the expected CPU-only case), ``cuda``
#: insists on CUDA and raises when it cannot have it, ``cpu`` never touches a GPU.
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BATCH_SIZE = 256


def onnxruntime_distributions() -> list[str]:
    """Installed distributions that provide the ``onnxruntime`` module."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


_WARNED_BOTH = False


def _ort():
    global _WARNED_BOTH
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed; install the runtime with `pip install supermask[cpu]` "
            "(or `supermask[gpu]` on a CUDA machine)") from None
    if not _WARNED_BOTH and len(onnxruntime_distributions()) > 1:
        _WARNED_BOTH = True
        log.warning("both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's "
                    "`onnxruntime` module. Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu` "
                    "then `pip install supermask[gpu]` (or [cpu])")
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers the installed onnxruntime build offers."""
    return list(_ort().get_available_providers())


def cuda_available() -> bool:
    """True when the onnxruntime build has the CUDA provider (a GPU may still be missing;
    only a session shows that: see :attr:`Model.provider`)."""
    return CUDA in available_providers()


def gpu_build_installed() -> bool:
    """True when the installed onnxruntime is meant for a GPU: the onnxruntime-gpu
    distribution is installed, or the build lists the CUDA provider."""
    return "onnxruntime-gpu" in onnxruntime_distributions() or cuda_available()


def note_worth_showing(note: str | None) -> bool:
    """Whether a fallback ``note`` (see :attr:`Model.note`) is news to the person who ran
    the command. Running on the CPU is what a CPU-only onnxruntime build is for, so there
    the note is not shown (it is still logged at DEBUG level and kept in ``Model.note``);
    with a GPU build installed, not getting CUDA is worth saying."""
    return bool(note) and gpu_build_installed()


def _cuda_missing_message(ort) -> str:
    return (f"CUDA was requested but onnxruntime {ort.__version__} has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())}); install supermask[gpu] "
            "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --device auto or cpu")


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of a model on a labelled set, with the provider that computed it and timing."""

    accuracy: float
    correct: int
    num_examples: int
    provider: str
    seconds: float
    batch_size: int
    io_binding: bool

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "num_examples": self.num_examples,
                "provider": self.provider, "seconds": self.seconds, "batch_size": self.batch_size,
                "examples_per_second": self.examples_per_second, "io_binding": self.io_binding}


class Model:
    """A ticket ready for inference: an onnxruntime session over its regenerated, masked weights.

    Create it with :func:`load`. ``provider`` is the execution provider the session really
    uses (onnxruntime-gpu falls back to the CPU silently, so this is read back from the
    session); ``note`` says why CUDA was not used when ``device="auto"`` wanted it.
    """

    def __init__(self, ticket: Ticket, session, buffers: object, device: str, note: str | None, *,
                 lowbit: dict | None = None, weights_note: str | None = None, linear_layers: int = 0):
        self.ticket = ticket
        self.session = session
        self.device = device
        self.note = note
        #: The 4-bit layers: weight name -> :class:`~supermask.runtime.lowbit.LowBitLayer` (empty: all float32).
        self.lowbit = dict(lowbit or {})
        #: Why ``weights="auto"`` kept some or all linear layers float32, or None.
        self.weights_note = weights_note
        self._linear_layers = linear_layers
        # The session reads the weight arrays in place (external initializers): keep them alive.
        self._buffers = buffers
        ins, outs = session.get_inputs(), session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise SupermaskError(f"the ticket's graph has {len(ins)} inputs and {len(outs)} outputs once loaded; "
                                 "a ticket's graph takes one input and returns one output")
        self._input = ins[0].name
        self._output = outs[0].name

    @property
    def architecture(self):
        """The layer-list description of a version 1 or 2 ticket (None for version 3)."""
        return self.ticket.architecture

    @property
    def name(self) -> str:
        return self.ticket.model_name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.ticket.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.ticket.input_shape)

    @property
    def weights(self) -> str:
        """``lowbit`` when some linear layers hold 4-bit ternary weights, else ``float``."""
        return "lowbit" if self.lowbit else "float"

    @property
    def weights_summary(self) -> str:
        """One line: which layers hold 4-bit weights and at how many bits per weight."""
        from .lowbit import describe

        return describe(self.lowbit, self._linear_layers)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def provider(self) -> str:
        return self.providers[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for raw inputs ``x``: (N, *input_shape) or one example
        of shape ``input_shape``; any integer or float dtype (uint8 pixels are typical)."""
        batch = to_batch(x, self.input_shape)
        warn_if_out_of_range(batch, self.ticket.metadata)
        return self._run(batch)

    def _check(self, z, n: int) -> np.ndarray:
        if not isinstance(z, np.ndarray) or z.shape != (n, len(self.classes)):
            raise SupermaskError(f"the ticket's graph returned logits of shape {getattr(z, 'shape', None)} for {n} "
                                 f"inputs; {len(self.classes)} classes need ({n}, {len(self.classes)}): the ticket "
                                 f"is inconsistent")
        if not np.isfinite(z).all():
            bad = int(np.count_nonzero(~np.isfinite(z).all(axis=1)))
            raise NonFiniteError(f"the network produced NaN or infinite logits for {bad} of {n} inputs: the "
                                 f"ticket's preprocessing or weights, or these inputs, are out of the range "
                                 f"float32 can carry (inputs are raw values, e.g. pixels 0-255)")
        return z

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            z = self.session.run([self._output], {self._input: batch})[0]
        except Exception as e:  # onnxruntime's own exception types: a bad graph or an unusable input
            raise SupermaskError(f"onnxruntime failed to run the ticket's graph: "
                                 f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
        return self._check(z, batch.shape[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class indices (N,) int64 for raw inputs ``x`` (see :meth:`logits`); ties
        within float32 noise go to the lowest index (:mod:`supermask.prediction`)."""
        return predict_classes(self.logits(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, classes) float32 for raw inputs ``x``."""
        z = self.logits(x)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                 io_binding: bool | None = None) -> Evaluation:
        """Accuracy on ``images`` (N, *input_shape) with integer ``labels`` (N,).

        With IO binding (the default on CUDA; ``io_binding=True`` forces it elsewhere) each batch
        is copied to the device once and the logits are read back from device memory.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != len(self.input_shape) + 1 or tuple(images.shape[1:]) != self.input_shape:
            raise InputError(f"images have shape {images.shape}; this model expects (N, "
                             f"{', '.join(map(str, self.input_shape))})")
        if images.shape[0] == 0:
            raise InputError("no images to evaluate (an empty batch has no accuracy)")
        if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
            raise InputError(f"labels must be {images.shape[0]} integers, "
                             f"got shape {labels.shape} dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise InputError(f"labels must be in [0, {len(self.classes)}); found {labels.min()}..{labels.max()}")
        warn_if_out_of_range(images, self.ticket.metadata, "images")
        use_binding = self.provider == CUDA if io_binding is None else bool(io_binding)
        out_device = "cuda" if self.provider == CUDA else "cpu"
        correct = 0
        start = time.perf_counter()
        if use_binding:
            binding = self.session.io_binding()
        for a in range(0, images.shape[0], batch_size):
            batch = to_batch(images[a:a + batch_size], self.input_shape)
            if use_binding:
                binding.clear_binding_inputs()
                binding.clear_binding_outputs()
                binding.bind_cpu_input(self._input, batch)
                binding.bind_output(self._output, out_device)
                try:
                    self.session.run_with_iobinding(binding)
                except Exception as e:
                    raise SupermaskError(f"onnxruntime failed to run the ticket's graph: {str(e)[:300]}") from None
                z = self._check(binding.copy_outputs_to_cpu()[0], batch.shape[0])
            else:
                z = self._run(batch)
            correct += int(np.count_nonzero(predict_classes(z) == labels[a:a + batch_size]))
        seconds = time.perf_counter() - start
        n = int(images.shape[0])
        accuracy = correct / n
        return Evaluation(accuracy, correct, n, self.provider, seconds, batch_size, use_binding)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, {len(self.classes)} classes, "
                f"input {self.input_shape}, provider {self.provider})")


def _session_options(ort, threads: int | None):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: supermask reports the provider itself
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def _providers_for(device: str, ort) -> tuple[list, str | None]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU], None
    if device == "cuda":
        if CUDA not in available:
            raise RuntimeUnavailableError(_cuda_missing_message(ort))
        return [CUDA, CPU], None
    if CUDA in available:
        return [CUDA, CPU], None
    return [CPU], f"CUDA not available (onnxruntime {ort.__version__} build has no CUDA provider); running on the CPU"


def _build_graph(arch):
    """The ONNX graph of a version 1 or 2 ticket's layer list: built with the ``onnx`` package,
    which a version-3 ticket (that carries its graph) does not need."""
    try:
        from ..export.graph import build_model
    except ImportError:
        raise RuntimeUnavailableError(
            "this ticket is format version 1 or 2 and holds no graph; running it needs the `onnx` package "
            "(`pip install onnx`), or re-pack it with this version of supermask") from None
    return build_model(arch, storage="external").SerializeToString()


def make_session(arch, weights: dict[str, np.ndarray], device: str = "auto", threads: int | None = None):
    """An onnxruntime session for a version 1 or 2 ticket's ``arch`` with ``weights``:
    (session, note, buffers). See :func:`graph_session`."""
    return graph_session(_build_graph(arch), {p.name: weights[p.name] for p in arch.params()}, device, threads)


def graph_session(graph: bytes, weights: dict[str, np.ndarray], device: str = "auto", threads: int | None = None):
    """An onnxruntime session for the serialized ONNX ``graph`` whose external initializers are
    exactly ``weights`` (name -> float32 array): (session, note, buffers).

    The arrays go to onnxruntime in memory (``add_external_initializers``): nothing is
    serialised or read from a file. The session reads the returned ``buffers`` in place: keep
    them alive as long as the session.
    """
    if device not in DEVICES:
        raise SupermaskError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    ort = _ort()
    providers, note = _providers_for(device, ort)
    so = _session_options(ort, threads)
    if not hasattr(so, "add_external_initializers"):
        raise RuntimeUnavailableError(f"onnxruntime {ort.__version__} cannot take weights from memory "
                                      f"(add_external_initializers); install onnxruntime 1.17 or newer")
    names = list(weights)
    # (np.asarray keeps 0-d arrays 0-d; np.ascontiguousarray would make them 1-d)
    keep = [ort.OrtValue.ortvalue_from_numpy(np.asarray(weights[n], order="C", dtype=np.float32)) for n in names]
    so.add_external_initializers(names, keep)
    try:
        with warnings.catch_warnings():
            # onnxruntime warns on stderr when it drops a provider; the fallback is reported below.
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(graph, so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types; report them plainly
        raise RuntimeUnavailableError(f"onnxruntime could not create a session on {providers[0]}: "
                                      f"{str(e).splitlines()[0][:300]}") from None
    used = session.get_providers()
    if CUDA in providers and CUDA not in used:
        why = "the CUDA provider could not start (no GPU, driver or CUDA libraries)"
        if device == "cuda":
            raise RuntimeUnavailableError(f"CUDA was requested but {why}; use --device auto or cpu")
        note = f"{why}; running on the CPU"
    if note:
        log.debug(note)
    return session, note, keep


def _lowbit_graph(ticket: Ticket, weights: dict, mode: str, device: str):
    """For ``mode`` ``auto`` or ``lowbit``: (graph bytes or None, the float32 weights the session
    still takes, packed layers, note, linear layer count). None: use the float path."""
    from . import lowbit

    ort = _ort()
    signed = {t.name for t in ticket.tensors if t.distribution == "signed_constant"}
    if not signed:
        if mode == "lowbit":
            raise lowbit.LowBitError(
                f"4-bit weights need ternary linear layers ({{-c, 0, +c}}); this ticket has none: its init is "
                f"{ticket.init.scheme}, not signed_kaiming_constant or signed_glorot_constant. "
                f"Use --weights float (or auto)")
        return None, weights, {}, f"float32 weights: the ticket's init {ticket.init.scheme} is not signed-constant", 0
    if mode == "auto" and not any(t.size >= lowbit.AUTO_MIN_WEIGHTS for t in ticket.tensors if t.name in signed):
        # decided without parsing the graph (and importing onnx)
        return None, weights, {}, (f"float32 weights: every signed-constant tensor of the ticket is under "
                                   f"{lowbit.AUTO_MIN_WEIGHTS:,} weights, where float32 is faster on the CPU "
                                   f"(weights='lowbit' holds its ternary linear layers in 4 bits anyway)"), 0
    try:
        import onnx
    except ImportError:
        if mode == "lowbit":
            raise RuntimeUnavailableError("4-bit weights need the onnx package to rewrite the graph "
                                          "(`pip install onnx`); use --weights float") from None
        return None, weights, {}, "float32 weights: the onnx package is not installed", 0
    if ticket.graph is not None:
        model = onnx.load_from_string(ticket.graph)
    else:
        from ..export.graph import build_model

        model = build_model(ticket.architecture, storage="external")
    p = lowbit.plan(model.graph, weights, mode, only=signed)
    if not p.layers:
        return None, weights, {}, p.note, p.linear
    providers, _ = _providers_for(device, ort)
    provider = lowbit.provider_in_use(ort, providers)
    if mode == "lowbit":
        lowbit.require_support(ort, provider)
    else:
        why = lowbit.unsupported(ort, provider)
        if why:
            return None, weights, {}, f"float32 weights: {why}", p.linear
    packed = lowbit.rewrite(model, weights, p)
    rest = {k: v for k, v in weights.items() if k not in packed}
    return model.SerializeToString(), rest, packed, p.note, p.linear


def _release_graph_bytes(session) -> None:
    """Let go of the serialized graph that onnxruntime's Python session keeps (to rebuild the
    session if a run on another provider fails and falls back). A 4-bit graph embeds its codes,
    which onnxruntime has already copied (and prepacked); keeping the bytes too would hold
    every 4-bit layer twice. Without them the session cannot fall back by itself, so that is
    turned off: a failing run raises instead."""
    if isinstance(getattr(session, "_model_bytes", None), bytes):
        session.disable_fallback()
        session._model_bytes = None


def load(source: Ticket | str | os.PathLike, device: str = "auto", *, threads: int | None = None,
         verify: bool = True, max_memory: int | str | None = None, weights: str = "auto") -> Model:
    """Read a ticket, regenerate and mask its weights, and open an onnxruntime session.

    ``device``: ``auto`` (CUDA when onnxruntime can use it, else the CPU with a note in
    :attr:`Model.note`), ``cuda`` (raise :class:`RuntimeUnavailableError` without CUDA) or
    ``cpu``. ``threads`` caps onnxruntime's intra-op threads. ``verify`` checks the
    regenerated weights against the fingerprints in the ticket. ``max_memory`` (bytes, or a
    size such as ``"2GiB"``; default: ``SUPERMASK_MAX_MEMORY`` or 4 GiB) caps what decoding,
    regeneration and the session are estimated to need; above it,
    :class:`~supermask.errors.MemoryLimitError` is raised before anything large is allocated.

    ``weights``: ``float`` (float32 everywhere), ``lowbit`` (every ternary linear layer of a
    signed-constant ticket as exact 4-bit ``MatMulNBits``; :class:`~supermask.runtime.lowbit.LowBitError`
    when the ticket has none, :class:`RuntimeUnavailableError` when onnxruntime cannot run
    the operator on the provider in use) or ``auto`` (4 bits for the ternary linear layers
    large enough to be faster that way, see :data:`~supermask.runtime.lowbit.AUTO_MIN_WEIGHTS`;
    float32 otherwise, with the reason in :attr:`Model.weights_note` and the debug log).
    """
    if device not in DEVICES:
        raise SupermaskError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if weights not in WEIGHTS:
        raise SupermaskError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    cap = resolve_max_memory(max_memory)
    ticket = source if isinstance(source, Ticket) else read_ticket(source, max_memory=cap)
    check_memory("loading this ticket", ticket.memory_estimate(session=True), cap)
    tensors = ticket.weights(verify=verify, max_memory=cap)
    graph, packed, weights_note, linear = None, {}, None, 0
    if weights != "float":
        graph, tensors, packed, weights_note, linear = _lowbit_graph(ticket, tensors, weights, device)
        if weights_note:
            log.debug(weights_note)
    if graph is not None:
        session, note, buffers = graph_session(graph, tensors, device, threads)
        del graph
        _release_graph_bytes(session)
    elif ticket.graph is not None:
        session, note, buffers = graph_session(ticket.graph, tensors, device, threads)
    else:
        session, note, buffers = make_session(ticket.architecture, tensors, device, threads)
    return Model(ticket, session, (tensors, buffers), device, note, lowbit=packed, weights_note=weights_note,
                 linear_layers=linear)

