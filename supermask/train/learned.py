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
ordinary ticket. With ``affine="trained"`` ("+BN") the biases and normalization scales and
shifts are trained beside the scores and stored in the ticket. The per-layer rescaling factor of a Bernoulli mask is stored in the ticket
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
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .. import rng
from .config import DENSITY_LEARNED, LEARNED_METHODS, METHODS  # noqa: F401  (re-exported)
from .loop import seed_of, seeded_torch
from .resume import Checkpoint, batches, restore, resume, run_steps, say_resumed, set_torch_rng, sync_step
from .masks import fans, final_mask, kept_count, multiplier, scaled_masked  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .subject import Subject

log = logging.getLogger(__name__)


def initial_scores(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Starting scores of the masked tensors (name -> shape), uniform in +-1/sqrt(fan_in) (the
    default init of a torch layer), from the project's generator under the name ``scores/<tensor>``."""
    out = {}
    for name, shape in shapes.items():
        bound = float(np.float32(1.0 / math.sqrt(fans(shape)[0])))
        out[name] = rng.generate(seed, f"scores/{name}", shape, "uniform", bound)
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
    """The masked forward pass: frozen weights, trainable scores (and, with ``affine="trained"``,
    trainable biases and norm parameters), the user's module called functionally."""

    def __init__(self, method: str, subject: Subject, state: Mapping[str, np.ndarray],
                 scores: Mapping[str, np.ndarray], keep: float | None, rescale: bool, device: str, generator):
        import torch

        self.method, self.keep, self.rescale, self.generator = method, keep, rescale, generator
        self.net = subject.module.to(device)
        self.names = subject.masked
        self.extras = subject.trained_extras

        def tensor(v, grad=False):
            return torch.from_numpy(np.array(v, dtype=np.float32)).to(device).requires_grad_(grad)

        self.fixed = {n: tensor(v) for n, v in state.items() if n not in self.names and n not in self.extras}
        self.weights = {n: tensor(state[n]) for n in self.names}
        self.trained = {n: tensor(state[n], True) for n in self.extras}
        self.scores = {n: tensor(scores[n], True) for n in self.names}
        self.k = {n: kept_count(keep, self.weights[n].numel()) for n in self.names} if method == "edge-popup" else {}
        self._topk, self._sample = _functions()

    def params(self) -> list:
        return [self.scores[n] for n in self.names]

    def extra_params(self) -> list:
        return [self.trained[n] for n in self.extras]

    def forward(self, x):
        from .subject import forward

        eff = {**self.fixed, **self.trained}
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
        return forward(self.net, eff, x)


def train_scores(method: str, subject: Subject, state: Mapping[str, np.ndarray], x, y, *, seed: int,
                 keep: float | None, lr: float, momentum: float, weight_decay: float, batch_size: int,
                 iterations: int | None, epochs: int | None, rescale: bool, device: str,
                 checkpoint: Path | None = None, progress: bool = True, label: str = "learn",
                 fingerprint: str = "") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Learn scores over the frozen weights of ``state`` (every tensor of the network) on
    preprocessed ``x``/``y`` (device tensors).

    Returns (final scores, trained biases and norm parameters (empty unless the subject's
    ``affine`` is ``trained``), summary); arrays are float32 numpy. With ``checkpoint`` a state file
    is written there after every epoch (and read back on start when its ``fingerprint``
    matches), so a killed run resumes where it stopped.
    """
    import torch
    from torch.nn import functional as F

    from .meter import TrainMeter

    n = x.shape[0]
    bs, per_epoch = batches(n, batch_size)  # per process; whole batches only
    total = iterations or epochs * per_epoch
    device_type = torch.device(device).type

    def fresh():
        sample_gen.manual_seed(seed_of(seed, "bernoulli-samples"))
        shuffle_gen.manual_seed(seed_of(seed, "shuffle"))
        shapes = {n: subject.plans[n].shape for n in subject.masked}
        m = _Masker(method, subject, state, initial_scores(shapes, seed), keep, rescale, device, sample_gen)
        # Biases and norm parameters ("+BN") get no weight decay, as is usual for them.
        groups = [{"params": m.params(), "weight_decay": weight_decay}]
        if m.extras:
            groups.append({"params": m.extra_params(), "weight_decay": 0.0})
        if method == "edge-popup":
            o = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        else:
            o = torch.optim.Adam(groups, lr=lr)
        return m, o

    sample_gen = torch.Generator(device=device)
    shuffle_gen = torch.Generator(device="cpu")
    masker, opt = fresh()
    ck = Checkpoint(checkpoint, fingerprint, total, device_type) if checkpoint is not None else None

    def apply(saved):
        with torch.no_grad():
            for name, sc in zip(masker.names, masker.params()):
                sc.copy_(saved["scores"][name])
            for name, t in masker.trained.items():
                t.copy_(saved["extras"][name])
        out = restore(saved, opt, shuffle_gen)
        sample_gen.set_state(saved["samples"])
        return out

    def reset():
        nonlocal masker, opt
        masker, opt = fresh()

    resumed = resume(ck, apply, reset)
    params = masker.params()

    def lr_at(it: int) -> float:
        if method == "edge-popup":  # cosine from lr to 0 over the run
            return 0.5 * lr * (1.0 + math.cos(math.pi * it / total))
        return lr

    # the partial window travels in the checkpoint, so a resumed history matches an unbroken one
    meter = TrainMeter(total, label, progress, device, resumed.history, window=resumed.meter)
    if ck is not None:
        say_resumed(label, resumed.start, total, ck.path)

    def step(it, xb, yb):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        out = masker.forward(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stats = sync_step(opt, loss, out, yb)  # distributed: score gradients averaged over the ranks
        opt.step()
        meter.record(it, *stats)

    def snapshot() -> dict:
        return {"scores": {nm: sc.detach() for nm, sc in zip(masker.names, params)},
                "extras": {nm: t.detach() for nm, t in masker.trained.items()},
                "samples": sample_gen.get_state().cpu()}

    masker.net.train()  # BatchNorm uses batch statistics while the masks are learned
    t0 = time.perf_counter()
    with seeded_torch(seed, device):  # dropout and other random layers of the model
        set_torch_rng(resumed, device)
        seconds = run_steps(x=x, y=y, batch_size=bs, total=total, start=resumed.start, device=device,
                            shuffle_gen=shuffle_gen, step=step, snapshot=snapshot, meter=meter, opt=opt,
                            checkpoint=ck, seconds=resumed.seconds, label=label)
    start = resumed.start
    history = resumed.history
    meter.close()
    scores = {nm: s.detach().cpu().numpy().astype(np.float32) for nm, s in zip(masker.names, params)}
    extras = {nm: t.detach().cpu().numpy().astype(np.float32) for nm, t in masker.trained.items()}
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
    return scores, extras, summary
