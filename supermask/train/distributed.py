"""Data-parallel ``find`` under torchrun (imports torch lazily; see docs/scaling.md).

``torchrun --nproc-per-node N --no-python supermask find ...`` starts N processes with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address in their environment.
:func:`joined` makes them one process group (gloo on the CPU, NCCL on GPUs) for the length of
a run. A plain process is a group of one, and every function here is then a no-op.

How the ranks share the work:

* every rank holds the same network, optimizer and generators; each step every rank takes its
  own slice of the same seeded global batch, and the gradients (of the weights, or of the
  scores for learned masks) are averaged with one all-reduce, so the ranks stay identical;
* rank 0 alone reads and writes the run folder: what it finds there (a finished stage, a
  checkpoint) reaches the others by broadcast, so no other rank needs the folder at all;
* before anything that depends on the training is written, the ranks exchange a digest of
  what they computed (trained weights, scores, masks) and stop if any differs.

A rank that fails makes the collectives of the others fail (the connection closes); they stop
with :class:`DistributedError` instead of waiting. The gloo timeout (how long a rank waits for
a peer that is alive but stuck) is ``SUPERMASK_DIST_TIMEOUT`` seconds, 1800 by default.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np

from ..errors import SupermaskError

log = logging.getLogger(__name__)
T = TypeVar("T")


class DistributedError(SupermaskError):
    """The ranks of a distributed run lost each other or disagree."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process reads and writes the run folder (rank 0)."""
        return self.rank == 0


_current = Group()


def current() -> Group:
    return _current


def launched_world() -> int:
    """The number of processes the launcher (torchrun) started, from ``WORLD_SIZE``; 1 without one."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be a whole number, got {raw!r}") from None
    if world < 1:
        raise DistributedError(f"WORLD_SIZE must be at least 1, got {world}")
    return world


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``); 0 without one."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _timeout_seconds() -> float:
    raw = os.environ.get("SUPERMASK_DIST_TIMEOUT", "1800")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"SUPERMASK_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


@contextmanager
def joined(device: str) -> Iterator[tuple[Group, str]]:
    """Join the process group the environment describes, for the length of the block; yields
    (the group, the device this rank trains on: ``cuda:<LOCAL_RANK>`` for CUDA)."""
    global _current
    world = launched_world()
    if world == 1:
        yield Group(), device
        return
    import datetime

    import torch
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    made = not dist.is_initialized()
    if made:
        try:
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=_timeout_seconds()))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"could not join the {world} processes of the run: {_first_line(e)}. Start "
                                   f"distributed runs with torchrun (docs/scaling.md)") from None
    group = Group(dist.get_rank(), dist.get_world_size())
    previous, _current = _current, group
    ok = False
    try:
        yield group, device
        ok = True
    finally:
        _current = previous
        if made and ok:
            # every rank leaves together: gloo aborts a process whose peer is gone mid-teardown
            _collective("the end of the run", dist.barrier)
            dist.destroy_process_group()
            # a group object that outlives this (held by a leftover reference) would be torn down at
            # interpreter exit, where gloo's threads abort the process; collect it now
            import gc

            gc.collect()
        # after a failure the group is left to the process's exit: tearing it down could wait on a
        # dead peer


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _collective(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; a peer that died or hangs becomes a :class:`DistributedError`."""
    try:
        return fn()
    except RuntimeError as e:  # gloo and NCCL report a lost peer as RuntimeError (DistBackendError)
        g = current()
        raise DistributedError(
            f"rank {g.rank} of {g.world}: lost contact with the other processes during {what} "
            f"({_first_line(e)}); another rank probably failed, and its output says why") from None


def all_reduce_sum(flat, what: str = "training") -> None:
    """Sum ``flat`` (a tensor) over the ranks, in place."""
    import torch.distributed as dist

    _collective(what, lambda: dist.all_reduce(flat))


def from_writer(fn: Callable[[], T], what: str) -> T:
    """``fn()`` computed by rank 0 alone (it reads the run folder) and handed to every rank.

    When ``fn`` raises on rank 0, rank 0 raises it and the other ranks raise a
    :class:`DistributedError` that quotes it."""
    g = current()
    if not g.active:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    error = None
    if g.writer:
        try:
            box[0] = ("ok", fn())
        except SupermaskError as e:
            error, box[0] = e, ("error", str(e))
    _collective(what, lambda: dist.broadcast_object_list(box, src=0))
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise DistributedError(f"rank 0 stopped: {value}")
    return value


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def agree(what: str, arrays: Mapping[str, np.ndarray]) -> str:
    """Check that every rank computed the same ``arrays``; return their digest.

    Raises :class:`DistributedError` on every rank when any two differ."""
    mine = digest(arrays)
    g = current()
    if not g.active:
        return mine
    import torch.distributed as dist

    seen: list[Any] = [None] * g.world
    _collective(f"the check of the {what}", lambda: dist.all_gather_object(seen, mine))
    if len(set(seen)) != 1:
        listed = ", ".join(f"rank {i} {d[:12]}" for i, d in enumerate(seen))
        raise DistributedError(f"the ranks computed different {what} ({listed}); nothing was written. The ranks "
                               f"must run the same code, torch build and data")
    if g.writer:
        log.info("%s agree on all %d processes (sha256 %s)", what, g.world, mine[:16])
    return mine
