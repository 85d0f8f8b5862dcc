"""`supermask` as a torchrun worker, with a record of the files this rank changes.

tests/test_distributed.py starts it as ``torchrun ... tests/dist_worker.py find ...``. Every
open for writing, rename, removal and mkdir under ``$AUDIT_WATCH`` is written, one per line, to
``$AUDIT_DIR/rank<RANK>.txt`` when the process ends. ``$FAULT`` injects a failure into one
rank: ``exit:<rank>:<n>`` ends that rank at its n-th training all-reduce (a crash),
``sigint:<rank>:<n>`` sends SIGINT to the launcher there (a user's Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import sys

WATCH = os.path.realpath(os.environ["AUDIT_WATCH"])
LOG = os.path.join(os.environ["AUDIT_DIR"], f"rank{os.environ.get('RANK', '0')}.txt")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
changes: list[str] = []


def _watched(path) -> bool:
    if isinstance(path, int):
        return False
    path = os.fsdecode(path)
    return os.path.realpath(path).startswith(WATCH)


def _audit(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writing and _watched(path):
            changes.append(f"open {os.fsdecode(path)}")
    elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir", "os.rmdir"):
        if _watched(args[0]) or (event in ("os.rename", "os.replace") and _watched(args[1])):
            changes.append(f"{event} {os.fsdecode(args[0])}")


def _inject(spec: str) -> None:
    kind, rank, n = spec.split(":")
    if os.environ.get("RANK") != rank:
        return
    from supermask.train import distributed

    real, calls = distributed.all_reduce_sum, [0]

    def faulty(flat, what="training"):
        calls[0] += 1
        if calls[0] == int(n):
            if kind == "exit":
                os._exit(3)
            os.kill(os.getppid(), signal.SIGINT)
        return real(flat, what)

    distributed.all_reduce_sum = faulty


if __name__ == "__main__":
    sys.addaudithook(_audit)
    if os.environ.get("FAULT"):
        _inject(os.environ["FAULT"])
    from supermask.cli import main

    try:
        main(prog_name="supermask")
    finally:
        with open(LOG, "w") as f:  # outside the watched folder
            f.write("".join(c + "\n" for c in changes))
