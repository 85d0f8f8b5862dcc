"""An exclusive lock on a folder, so two processes never write one run or sweep at once.
Torch-free.

The lock is an OS advisory lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows)
on ``FOLDER/.lock``. The OS releases it when the holder exits, even after SIGKILL, so a
killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import SupermaskError

LOCK_NAME = ".lock"


class LockedError(SupermaskError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[None]:
    """Hold the lock on ``folder`` for the duration of the block; fail at once if taken."""
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _lock(fd)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() if hasattr(os, "pread") else ""
            except OSError:
                holder = ""
            raise LockedError(
                f"another supermask process{f' (pid {holder})' if holder else ''} is using the {what} "
                f"{folder}; wait for it to finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
