"""Dense training, prediction and BatchNorm statistics for any network (imports torch).

Everything random is explicit: the data order comes from a torch generator seeded from the
run's seed, the BatchNorm calibration examples from the project's generator. On the CPU a run
is deterministic for a given torch build and thread count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import rng
from ..prediction import predict_classes
from .meter import TrainMeter
from .resume import Checkpoint, batches, restore, resume, run_steps, say_resumed, set_torch_rng, supervised_step
from .subject import Subject, forward, load_state, state_to_torch

#: Largest batch of the BatchNorm calibration passes (the examples are split into equal batches).
BN_BATCH = 250


def seed_of(seed: int, name: str) -> int:
    """A 63-bit torch seed derived from the run's seed and a purpose name."""
    return int(rng.raw_words(seed, name, 1)[0] >> np.uint64(1))


def seeded_torch(seed: int, device: str):
    """A context in which torch's global generators (the ones dropout and other random layers
    of a user's model draw from) start from the run's seed, restored afterwards."""
    import torch

    class _Ctx:
        def __enter__(self):
            devices = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
            self._fork = torch.random.fork_rng(devices=devices)
            self._fork.__enter__()
            torch.manual_seed(seed_of(seed, "model-randomness"))

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()


def train_dense(subject: Subject, state: Mapping[str, np.ndarray], x, y, *, seed: int, lr: float, batch_size: int,
                iterations: int | None, epochs: int | None, device: str, progress: bool = True,
                checkpoint: Path | None = None, fingerprint: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """Train every parameter of the network from ``state`` with Adam on preprocessed ``x``/``y``
    (device tensors); return (every tensor after training, summary).

    With ``checkpoint`` the training state is saved there after every epoch and on SIGINT/SIGTERM,
    and read back on start when its ``fingerprint`` matches (:mod:`supermask.train.resume`).
    """
    import torch

    net = subject.module.to(device)
    load_state(net, state)
    n = x.shape[0]
    bs, per_epoch = batches(n, batch_size)  # per process; whole batches only
    total = iterations or epochs * per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed_of(seed, "shuffle"))
    ck = Checkpoint(checkpoint, fingerprint, total, torch.device(device).type) if checkpoint is not None else None

    def apply(saved):
        net.load_state_dict(saved["model"])
        return restore(saved, opt, gen)

    def reset():
        nonlocal opt
        load_state(net, state)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen.manual_seed(seed_of(seed, "shuffle"))

    resumed = resume(ck, apply, reset)
    meter = TrainMeter(total, "train", progress, device, resumed.history, window=resumed.meter)
    if ck is not None:
        say_resumed("train", resumed.start, total, ck.path)

    def step(it, xb, yb):
        supervised_step(net, opt, meter, it, xb, yb)

    net.train()
    t0 = time.perf_counter()
    with seeded_torch(seed, device):
        set_torch_rng(resumed, device)
        seconds = run_steps(x=x, y=y, batch_size=bs, total=total, start=resumed.start, device=device,
                            shuffle_gen=gen, step=step, snapshot=lambda: {"model": net.state_dict()}, meter=meter,
                            opt=opt, checkpoint=ck, seconds=resumed.seconds, label="train")
    meter.close()
    tensors = {**dict(net.named_parameters()), **dict(net.named_buffers())}
    final = {n: tensors[n].detach().cpu().numpy().astype(np.float32) for n in subject.plans}
    summary = {
        "iterations": total,
        "epochs": total / per_epoch,
        "resumed_at": resumed.start or None,
        "train_examples": n,
        "device": device,
        "seconds": seconds,
        "iterations_per_second": (total - resumed.start) / max(time.perf_counter() - t0, 1e-9),
        "history": resumed.history,
    }
    return final, summary


def logits(subject: Subject, tensors: Mapping, x, batch: int = 2000) -> np.ndarray:
    """Float32 logits of the network (eval mode) with ``tensors`` on preprocessed ``x``."""
    import torch

    net = subject.module.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            out.append(forward(net, tensors, x[i:i + batch]).float().cpu().numpy())
    return np.concatenate(out)


def accuracy(subject: Subject, state: Mapping[str, np.ndarray], x, y_np: np.ndarray,
             device: str) -> tuple[int, np.ndarray]:
    """(number correct, predictions) of the network with ``state`` on preprocessed ``x``; the
    runtime's tie rule (:func:`supermask.prediction.predict_classes`) decides the class."""
    subject.module.to(device)
    pred = predict_classes(logits(subject, state_to_torch(state, device), x))
    return int(np.count_nonzero(pred == y_np)), pred


def calibration_indices(seed: int, n_available: int, n: int) -> np.ndarray:
    """A fixed, seeded choice of ``n`` training examples for BatchNorm statistics: the order of
    the generator's words under the name ``bn-calibration``, so it is the same everywhere."""
    words = rng.raw_words(seed, "bn-calibration", n_available)
    return np.argsort(words, kind="stable")[:min(n, n_available)]


def batchnorm_statistics(subject: Subject, state: Mapping[str, np.ndarray], x_cal,
                         device: str) -> dict[str, np.ndarray]:
    """BatchNorm running means and variances of the network with ``state``: the average of the
    batch statistics over ``x_cal`` split into equal batches of at most :data:`BN_BATCH` (a
    cumulative average, as torch computes with ``momentum=None``). Other layers run in eval
    mode (no dropout)."""
    import torch
    from torch import nn

    net = subject.module.to(device)
    tensors = state_to_torch(state, device)
    norms = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training) for _, m in norms]
    net.eval()
    for name, m in norms:
        m.momentum = None
        m.train()
        prefix = f"{name}." if name else ""
        if f"{prefix}running_mean" in tensors:
            tensors[f"{prefix}running_mean"].zero_()
            tensors[f"{prefix}running_var"].fill_(1.0)
            tensors[f"{prefix}num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=device)
    n = int(x_cal.shape[0])
    if n < 2:
        raise ValueError("BatchNorm statistics need at least 2 calibration examples")
    # Equal batches (sizes differ by at most one), so the plain average of the batch statistics
    # weighs every example alike and no batch is too small for BatchNorm.
    bounds = np.linspace(0, n, -(-n // BN_BATCH) + 1).round().astype(int)
    try:
        with torch.no_grad():
            for a, b in zip(bounds[:-1], bounds[1:]):
                forward(net, tensors, x_cal[a:b])
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        net.eval()
    return {n: tensors[n].detach().cpu().numpy().astype(np.float32) for n in subject.names("statistic")}
