"""Learned supermasks: masks trained directly over frozen random weights (imports torch lazily).

Two methods, both selectable with ``supermask find --method`` (see ``docs/learned.md``):

``edge-popup``
    Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?". One real
    score per weight; the forward pass uses ``w * m`` where ``m`` keeps the ``k`` weights of
    largest ``|score|`` in each layer (``k = round(keep * n)``, at least 1, the same fraction
    for every layer). The top-k step passes gradients straight through to the scores. SGD
    with momentum, weight decay and a cosine learning-rate schedule.

``bernoulli``
    Zhou et al. 2019, "Deconstructing Lottery Tickets". One score per weight; the forward pass
    samples ``m ~ Bernoulli(sigmoid(score))`` afresh at every step, with a straight-through
    gradient. With dynamic weight rescaling (the default) each layer's masked weights are
    multiplied by ``n / kept`` for the mask in use. The final mask is deterministic: a weight
    is kept when ``sigmoid(score) > 0.5`` (``score > 0``), the most likely mask.

Weights never change: they are the generator's initial weights, so the result packs into an
ordinary ticket. The per-layer rescaling factor of a Bernoulli mask is stored in the ticket
as the tensor's ``multiplier`` (format version 2, ``docs/format.md``).

Everything random is explicit: scores start from the project's generator (keyed by the seed
and ``scores/<tensor>``), the data order and the Bernoulli samples come from torch generators
seeded from the run's seed. On the CPU a run is deterministic for a given torch build and
thread count. Training writes a checkpoint after every epoch; a killed run resumes from it
and finishes with the same scores as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from . import rng
from .arch import Architecture
from .atomic import atomic_open

log = logging.getLogger(__name__)

METHODS = ("criteria", "edge-popup", "bernoulli")
LEARNED_METHODS = ("edge-popup", "bernoulli")
#: Learned methods that learn their density too: one mask per run, no ``--keep``.
DENSITY_LEARNED = ("bernoulli",)


def kept_count(keep: float, n: int) -> int:
    """How many of ``n`` weights a layer keeps at fraction ``keep``: ``round(keep * n)``, at least 1."""
    return max(1, min(n, int(math.floor(keep * n + 0.5))))


def initial_scores(arch: Architecture, seed: int) -> dict[str, np.ndarray]:
    """Starting scores, uniform in +-1/sqrt(fan_in) (the default init of a torch layer), drawn
    from the project's generator under the name ``scores/<tensor>``."""
    out = {}
    for p in arch.weight_params():
        bound = float(np.float32(1.0 / math.sqrt(p.fan_in)))
        out[p.name] = rng.generate(seed, f"scores/{p.name}", p.shape, "uniform", bound)
    return out


def final_mask(method: str, scores: np.ndarray, keep: float | None) -> np.ndarray:
    """The deterministic mask of trained ``scores``.

    edge-popup: the ``kept_count(keep, n)`` largest ``|score|``; among equal magnitudes the
    lower flat (C-order) index wins. bernoulli: ``score > 0``.
    """
    if method == "edge-popup":
        flat = np.abs(scores.reshape(-1).astype(np.float64))
        k = kept_count(keep, flat.size)
        order = np.argsort(-flat, kind="stable")
        m = np.zeros(flat.size, dtype=bool)
        m[order[:k]] = True
        return m.reshape(scores.shape)
    if method == "bernoulli":
        return scores > 0
    raise ValueError(f"unknown learned method {method!r}; choose one of {', '.join(LEARNED_METHODS)}")


def multiplier(mask: np.ndarray) -> float:
    """The dynamic rescaling factor of a mask, ``n / kept`` rounded once to float32 (1 when empty)."""
    kept = int(np.count_nonzero(mask))
    return float(np.float32(mask.size / kept)) if kept else 1.0


def scaled_masked(w: np.ndarray, mask: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """``(w * mask) * factor`` in float32 with pruned weights exactly +0.0: the arithmetic of
    :meth:`supermask.ticket.Ticket.weights`, so a run and its ticket agree bit for bit."""
    out = np.multiply(w, mask, dtype=np.float32)
    if factor != 1.0:
        out *= np.float32(factor)
    out += np.float32(0.0)  # -0.0 -> +0.0
    return out


# ------------------------------------------------------------------------------- torch parts


def _functions():
    """The straight-through autograd functions (built on first use, so torch stays lazy)."""
    import torch

    class TopK(torch.autograd.Function):
        @staticmethod
        def forward(ctx, magnitude, k):
            flat = magnitude.reshape(-1)
            m = torch.zeros_like(flat)
            m[torch.topk(flat, k, sorted=False).indices] = 1.0
            return m.view_as(magnitude)

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    class Sample(torch.autograd.Function):
        @staticmethod
        def forward(ctx, prob, generator):
            u = torch.rand(prob.shape, generator=generator, device=prob.device, dtype=prob.dtype)
            return (u < prob).to(prob.dtype)

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    return TopK, Sample


class _Masker:
    """The masked forward pass: frozen weights, trainable scores, a torch Net called functionally."""

    def __init__(self, method: str, arch: Architecture, weights: Mapping[str, np.ndarray],
                 scores: Mapping[str, np.ndarray], keep: float | None, rescale: bool, device: str, generator):
        import torch

        from .models import torch_module as tm

        self.method, self.keep, self.rescale, self.generator = method, keep, rescale, generator
        self.net = tm.build(arch).to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.names = [p.name for p in arch.weight_params()]
        self.weights = {n: torch.from_numpy(np.array(weights[n], dtype=np.float32)).to(device) for n in self.names}
        self.biases = {n: torch.zeros_like(p) for n, p in self.net.named_parameters() if n not in self.weights}
        self.scores = {n: torch.from_numpy(np.array(scores[n], dtype=np.float32)).to(device).requires_grad_(True)
                       for n in self.names}
        self.k = {n: kept_count(keep, self.weights[n].numel()) for n in self.names} if method == "edge-popup" else {}
        self._topk, self._sample = _functions()

    def params(self) -> list:
        return [self.scores[n] for n in self.names]

    def forward(self, x):
        from torch.func import functional_call

        eff = dict(self.biases)
        for n in self.names:
            s, w = self.scores[n], self.weights[n]
            if self.method == "edge-popup":
                m = self._topk.apply(s.abs(), self.k[n])
            else:
                m = self._sample.apply(s.sigmoid(), self.generator)
            we = w * m
            if self.rescale:
                we = we * (m.numel() / m.sum().clamp_min(1.0)).detach()
            eff[n] = we
        return functional_call(self.net, eff, (x,))


def _seed_of(seed: int, name: str) -> int:
    return int(rng.raw_words(seed, name, 1)[0] >> np.uint64(1))


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def _load_checkpoint(path: Path) -> dict | None:
    """The checkpoint's tensors on the CPU (generator states must be CPU tensors; scores and
    optimizer state move to the device when they are loaded)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged checkpoint only costs the work since the start
        log.warning("ignoring unreadable checkpoint %s (%s); training this stage from the start", path, e)
        return None


def train_scores(method: str, arch: Architecture, weights: Mapping[str, np.ndarray], x, y, *, seed: int,
                 keep: float | None, lr: float, momentum: float, weight_decay: float, batch_size: int,
                 iterations: int | None, epochs: int | None, rescale: bool, device: str,
                 checkpoint: Path | None = None, progress: bool = True, label: str = "learn",
                 fingerprint: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """Learn scores over the frozen ``weights`` on preprocessed ``x``/``y`` (device tensors).

    Returns (final scores as float32 numpy arrays, summary). With ``checkpoint`` a state file
    is written there after every epoch (and read back on start when its ``fingerprint``
    matches), so a killed run resumes where it stopped.
    """
    import torch
    from torch.nn import functional as F

    from .find import TrainMeter

    n = x.shape[0]
    bs = min(batch_size, n)
    per_epoch = n // bs
    total = iterations or epochs * per_epoch
    device_type = torch.device(device).type

    def fresh():
        sample_gen.manual_seed(_seed_of(seed, "bernoulli-samples"))
        shuffle_gen.manual_seed(_seed_of(seed, "shuffle"))
        m = _Masker(method, arch, weights, initial_scores(arch, seed), keep, rescale, device, sample_gen)
        if method == "edge-popup":
            o = torch.optim.SGD(m.params(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            o = torch.optim.Adam(m.params(), lr=lr, weight_decay=weight_decay)
        return m, o

    sample_gen = torch.Generator(device=device)
    shuffle_gen = torch.Generator(device="cpu")
    masker, opt = fresh()
    params = masker.params()
    start, history, seconds, meter_state = 0, [], 0.0, None
    state = _load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    if state is not None and (state.get("fingerprint") != fingerprint or state.get("total") != total):
        log.warning("checkpoint %s belongs to another config; training this stage from the start", checkpoint)
        state = None
    if state is not None and state.get("device") != device_type:
        # generator states and the arithmetic differ between devices: no resuming across them
        log.warning("checkpoint %s was written on %s, this run is on %s; training this stage from the start",
                    checkpoint, state.get("device"), device_type)
        state = None
    if state is not None:
        try:
            with torch.no_grad():
                for name, s in zip(masker.names, params):
                    s.copy_(state["scores"][name])
            opt.load_state_dict(state["optimizer"])
            shuffle_gen.set_state(state["shuffle"])
            sample_gen.set_state(state["samples"])
            start, seconds = int(state["iteration"]), float(state["seconds"])
            loss_sum, correct, steps, seen = state["meter"]
            meter_state = [torch.as_tensor(loss_sum, dtype=torch.float32).reshape(()),
                           torch.as_tensor(correct, dtype=torch.int64).reshape(()), int(steps), int(seen)]
            # Histories are stored flat (torch.load's weights-only mode takes no nested floats
            # lists), as [iteration, loss, accuracy] triples.
            history = [{"iteration": int(h[0]), "loss": float(h[1]), "train_accuracy": float(h[2])}
                       for h in state["history"]]
        except Exception as e:  # a checkpoint that loads but does not fit costs only the work since the start
            log.warning("ignoring checkpoint %s that does not fit this run (%s); training this stage from the "
                        "start", checkpoint, e)
            masker, opt = fresh()
            params = masker.params()
            start, history, seconds, meter_state = 0, [], 0.0, None

    def lr_at(it: int) -> float:
        if method == "edge-popup":  # cosine from lr to 0 over the run
            return 0.5 * lr * (1.0 + math.cos(math.pi * it / total))
        return lr

    meter = TrainMeter(total, label, progress, device, history)
    if meter_state is not None:
        meter.load_state(meter_state)  # the partial window, so a resumed history matches an unbroken one
    t0 = time.perf_counter()
    perm = None
    for it in range(start, total):
        b = it % per_epoch
        if b == 0 or perm is None:
            if b != 0:
                raise RuntimeError("checkpoints are taken at epoch boundaries only")
            perm = torch.randperm(n, generator=shuffle_gen).to(device)
        idx = perm[b * bs:(b + 1) * bs]
        xb, yb = x[idx], y[idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        out = masker.forward(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        meter.step(it, loss, out, yb)
        if checkpoint is not None and (it + 1) % per_epoch == 0 and it + 1 < total:
            _save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "total": total, "iteration": it + 1, "device": device_type,
                "meter": meter.state(),
                "scores": {nm: s.detach() for nm, s in zip(masker.names, params)},
                "optimizer": opt.state_dict(), "shuffle": shuffle_gen.get_state(),
                "samples": sample_gen.get_state().cpu(),
                "history": [[h["iteration"], h["loss"], h["train_accuracy"]] for h in history],
                "seconds": seconds + time.perf_counter() - t0,
            })
    meter.close()
    seconds += time.perf_counter() - t0
    scores = {nm: s.detach().cpu().numpy().astype(np.float32) for nm, s in zip(masker.names, params)}
    summary = {
        "method": method,
        "keep": keep,
        "iterations": total,
        "epochs": total / per_epoch,
        "resumed_at": start or None,
        "train_examples": n,
        "device": device,
        "seconds": seconds,
        "iterations_per_second": (total - start) / max(time.perf_counter() - t0, 1e-9),
        "history": history,
    }
    return scores, summary
