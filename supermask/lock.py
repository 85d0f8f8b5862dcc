"""An exclusive lock on a folder, so two processes never write one run or sweep at once.
Torch-free.

The lock is an OS advisory lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows)
on ``FOLDER/.lock``. The OS releases it when the holder exits, even after SIGKILL, so a
killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from .errors import LockedError, SupermaskError

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "LockedError", "folder_lock", "remove_stale_temporaries"]

LOCK_NAME = ".lock"
# The temporary names supermask.atomic gives: "." + target name + "." + mkstemp's 8 random
# characters + ".tmp".
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[None]:
    """Hold the lock on ``folder`` for the duration of the block; fail at once if taken."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SupermaskError(f"cannot lock the {what} {folder}: cannot open {path}: {e.strerror or e}; "
                             f"check that {folder} is a folder you may write to") from None
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


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete temporary files that killed atomic writes left in ``folder``; return their names.

    Call it only while holding :func:`folder_lock` on ``folder``: then no other supermask
    process is writing there, so every such file is stale.
    """
    removed = []
    for p in Path(folder).iterdir():
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return sorted(removed)


@contextlib.contextmanager
def claim_folder(folder: str | os.PathLike, what: str, error: type[SupermaskError] = SupermaskError) -> Iterator[Path]:
    """Create ``folder`` if needed, hold its lock, and clear temporaries of killed writers."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create the {what} {folder}: {e.strerror or e}; pick another --out") from None
    try:
        with folder_lock(folder, what):
            stale = remove_stale_temporaries(folder)
            if stale:
                log.info("removed %d temporary files left by an interrupted write in %s", len(stale), folder)
            yield folder
    except BaseException:
        # A command that failed before writing anything leaves no folder behind that it created.
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()
                    folder.rmdir()
        raise


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
