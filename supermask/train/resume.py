"""Resumable training loops (imports torch lazily).

Dense training and the learned methods run the same loop: shuffle once per epoch from a seeded
generator, take whole batches, step. A stage with a checkpoint path saves its whole state

* after every epoch, and
* at once when the process gets SIGINT (Ctrl-C) or SIGTERM: the step in flight finishes, the
  state is written atomically, and :class:`TrainingInterrupted` ends the command with the
  command to run again. A second Ctrl-C stops at once (losing only the work since the last
  checkpoint).

The state holds everything the rest of the run depends on: the trainable tensors, the optimizer,
the shuffle generator's state at the start of the current epoch (the permutation is drawn
again on resume), torch's global generator (dropout), the meter's partial window and the
history. So a resumed stage ends with the same bits as an unbroken one, on the same device,
torch build and thread count.

Checkpoints go through ``torch.save`` and are read with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers; a damaged file is ignored (the stage starts over).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_open
from ..errors import SupermaskError
from . import distributed

log = logging.getLogger(__name__)


class TrainingInterrupted(SupermaskError):
    """Training stopped on SIGINT/SIGTERM after saving its state; running again resumes it."""

    exit_code = 130


class StopRequests:
    """While active (in the main thread), SIGINT and SIGTERM set :attr:`signum` instead of
    stopping the process, so the loop can save its state first. A second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.agreed = False  # a distributed run: some rank was asked to stop (see sync_step)
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.agreed

    def __enter__(self) -> "StopRequests":
        global _stop
        _stop = self
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # a process told to ignore it (nohup, a background job) keeps ignoring it
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: saving the training state after this step "
                         f"(Ctrl-C again to stop at once)\n")

    def __exit__(self, *exc) -> None:
        global _stop
        _stop = None
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()


_stop: StopRequests | None = None  # the loop that runs now


def _read(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint only costs the work since the start
        # torch's own message suggests weights_only=False, which would run pickled code: not passed on
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("ignoring unreadable checkpoint %s (damaged or written by another version: %s); "
                    "training this stage from the start", path, why[:200])
        return None


def write_checkpoint(path: Path, state: dict) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(state, f)


@dataclass
class Checkpoint:
    """Where a stage keeps its state, and what the state must match to be resumed."""

    path: Path
    fingerprint: str
    total: int
    device_type: str

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        ck = _read(self.path)
        if ck is None:
            return None
        if not isinstance(ck, dict) or ck.get("fingerprint") != self.fingerprint or ck.get("total") != self.total:
            log.warning("checkpoint %s belongs to another config; training this stage from the start", self.path)
            return None
        if ck.get("device") != self.device_type:
            # generator states and the arithmetic differ between devices: no resuming across them
            log.warning("checkpoint %s was written on %s, this run is on %s; training this stage from the start",
                        self.path, ck.get("device"), self.device_type)
            return None
        return ck

    def save(self, state: dict) -> None:
        if not distributed.current().writer:
            return  # rank 0 keeps the state of a distributed run: every rank holds the same
        write_checkpoint(self.path, {"fingerprint": self.fingerprint, "total": self.total,
                                    "device": self.device_type, **state})


@dataclass
class Resumed:
    """Where a stage starts: step, time already spent, history and meter window so far."""

    start: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    meter: list | None = None
    torch_rng: Any = None
    cuda_rng: Any = None


def resume(ck: Checkpoint | None, apply: Callable[[dict], Resumed], reset: Callable[[], None]) -> Resumed:
    """Where a stage starts: from checkpoint ``ck`` when it loads and ``apply`` (which puts the
    stage's own tensors back and returns :func:`restore`'s result) succeeds; from the start
    otherwise. A checkpoint that loads but does not fit is ignored with a warning, after
    ``reset`` has put the starting state back."""
    # in a distributed run rank 0 reads the checkpoint and hands it to the others
    saved = distributed.from_writer(ck.load, "resuming") if ck is not None else None
    if saved is None:
        return Resumed()
    try:
        return apply(saved)
    except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit costs only the work since the start
        log.warning("ignoring checkpoint %s that does not fit this run (%s); training this stage from the start",
                    ck.path, e)
        reset()
        return Resumed()


def restore(ck: dict, opt, shuffle_gen) -> Resumed:
    """Load the parts every loop shares from checkpoint ``ck`` (the caller loads its tensors)."""
    import torch

    opt.load_state_dict(ck["optimizer"])
    shuffle_gen.set_state(ck["shuffle"])
    loss_sum, correct, steps, seen = ck["meter"]
    meter = [torch.as_tensor(loss_sum, dtype=torch.float32).reshape(()),
             torch.as_tensor(correct, dtype=torch.int64).reshape(()), int(steps), int(seen)]
    # Histories are stored flat (weights-only loading takes no lists of dicts): [it, loss, acc].
    history = [{"iteration": int(h[0]), "loss": float(h[1]), "train_accuracy": float(h[2])} for h in ck["history"]]
    return Resumed(int(ck["iteration"]), float(ck["seconds"]), history, meter, ck.get("torch_rng"), ck.get("cuda_rng"))


def batches(n: int, batch_size: int) -> tuple[int, int]:
    """(examples per rank and step, steps per epoch) for ``n`` examples.

    Each step takes one global batch of ``batch_size`` x processes examples (whole batches only,
    so every step sees as many); each rank takes its ``batch_size`` share. With fewer examples
    than one global batch, the batch shrinks to fit."""
    world = distributed.current().world
    if n < world:
        raise ValueError(f"{n} training examples cannot be shared by {world} processes")
    bs = min(batch_size, n // world)
    return bs, n // (bs * world)


def run_steps(*, x, y, batch_size: int, total: int, start: int, device: str, shuffle_gen,
              step: Callable[[int, Any, Any], None], snapshot: Callable[[], dict], meter, opt,
              checkpoint: Checkpoint | None, seconds: float, label: str) -> float:
    """Steps ``start .. total-1`` of an epoch-shuffled loop; ``step(it, xb, yb)`` trains one batch.

    ``batch_size`` is per process (:func:`batches`): in a distributed run every rank draws the
    same permutation and takes its slice of each global batch. With ``checkpoint``, the state
    (``snapshot()`` plus the shared parts) is saved after every epoch and when a stop is
    requested. Returns the seconds spent, earlier sessions included.
    """
    import torch

    group = distributed.current()
    n = x.shape[0]
    step_examples = batch_size * group.world
    per_epoch = n // step_examples
    mine = group.rank * batch_size  # this rank's slice of a global batch
    t0 = time.perf_counter()
    perm, epoch_start = None, None

    def save(done: int, shuffle_state) -> None:
        checkpoint.save({
            "iteration": done, "meter": meter.state(), "optimizer": opt.state_dict(), "shuffle": shuffle_state,
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if torch.device(device).type == "cuda" else {}),
            "history": [[h["iteration"], h["loss"], h["train_accuracy"]] for h in meter.history],
            "seconds": seconds + time.perf_counter() - t0, **snapshot(),
        })

    meter.skip_to(start)
    with StopRequests() as stop:
        for it in range(start, total):
            b = it % per_epoch
            if b == 0 or perm is None:
                epoch_start = shuffle_gen.get_state()
                perm = torch.randperm(n, generator=shuffle_gen).to(device)
            at = b * step_examples + mine
            idx = perm[at:at + batch_size]
            step(it, x[idx], y[idx])
            done = it + 1
            if stop.requested:  # in a distributed run every rank sees it after the same step
                if checkpoint is None:
                    raise KeyboardInterrupt
                meter.close()
                # mid-epoch: the permutation is drawn again from the epoch's starting state
                save(done, epoch_start if done % per_epoch else shuffle_gen.get_state())
                raise TrainingInterrupted(
                    f"{label}: interrupted at step {done:,} of {total:,}; the training state is saved in "
                    f"{checkpoint.path}. Run the same command again to resume from there.")
            if checkpoint is not None and done % per_epoch == 0 and done < total:
                save(done, shuffle_gen.get_state())
    return seconds + time.perf_counter() - t0


def sync_step(opt, loss, out, labels) -> tuple[Any, Any, int]:
    """Between ``backward`` and the optimizer step: in a distributed run, average the gradients
    of ``opt``'s parameters over the ranks and share whether any rank was asked to stop, in one
    all-reduce. Returns (loss, correct count, examples) of the whole step, for the meter (this
    rank's own in a plain run; no device sync there)."""
    correct = (out.detach().argmax(1) == labels).sum()
    group = distributed.current()
    if not group.active:
        return loss.detach(), correct, labels.shape[0]
    import torch

    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    flag = 1.0 if _stop is not None and _stop.signum is not None else 0.0
    tail = torch.stack([loss.detach().float(), correct.float(), torch.tensor(flag, device=loss.device)])
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [tail])
    distributed.all_reduce_sum(flat)
    at = 0
    for g in grads:
        g.copy_(flat[at:at + g.numel()].view_as(g) / group.world)
        at += g.numel()
    if flat[-1].item() > 0 and _stop is not None:
        _stop.agreed = True
    return flat[-3] / group.world, flat[-2].round().long(), labels.shape[0] * group.world


def supervised_step(net, opt, meter, it: int, xb, yb, after: Callable[[], None] | None = None) -> None:
    """One step of plain supervised training: cross-entropy, backward, (in a distributed run)
    gradients averaged over the ranks, optimizer step, then ``after`` (a constraint on the
    weights, such as a mask), then the meter."""
    from torch.nn import functional as F

    out = net(xb)
    loss = F.cross_entropy(out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    stats = sync_step(opt, loss, out, yb)
    opt.step()
    if after is not None:
        after()
    meter.record(it, *stats)


def say_resumed(label: str, start: int, total: int, path: Path) -> None:
    """Tell the user where a stage resumes (stderr: the result tables go to stdout)."""
    if start and distributed.current().writer:
        sys.stderr.write(f"{label}: resuming at step {start:,} of {total:,} from {path}\n")


def set_torch_rng(resumed: Resumed, device: str) -> None:
    """Put torch's global generators (dropout) back where a checkpoint left them."""
    import torch

    if resumed.torch_rng is not None:
        torch.set_rng_state(resumed.torch_rng)
    if resumed.cuda_rng is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(resumed.cuda_rng)
