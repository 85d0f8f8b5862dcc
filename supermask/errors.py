"""Typed errors raised by supermask. Torch-free.

Every error a user can cause (a bad file, a bad option, missing data) is a subclass of
:class:`SupermaskError`, and its message says what was wrong and what to do. The CLI
prints the message and exits with status 1 instead of showing a traceback.
"""

from __future__ import annotations


class SupermaskError(Exception):
    """Base class for every error supermask raises on purpose."""


class TicketFormatError(SupermaskError):
    """The file is not a valid ticket: bad magic, bad header, wrong sizes, bad payload."""


class ChecksumError(TicketFormatError):
    """The ticket's SHA-256 does not match its contents (the file was changed or damaged)."""


class UnsupportedVersionError(TicketFormatError):
    """The ticket was written by a newer format or generator version than this reader knows."""


class ArchitectureError(SupermaskError):
    """An architecture description is malformed or inconsistent."""


class InitSpecError(SupermaskError):
    """An init specification is unknown or inconsistent."""


class CodecError(SupermaskError):
    """A mask could not be encoded or decoded."""


class VerificationError(SupermaskError):
    """Regenerated weights do not match the fingerprint stored in the ticket."""


class RuntimeUnavailableError(SupermaskError):
    """The requested execution device or runtime library is not available on this machine."""


class InputError(SupermaskError):
    """An input given for inference has the wrong shape, dtype or file format."""


class DatasetError(SupermaskError):
    """A data set is unknown, missing or malformed; the message says where it was looked for."""


class RunError(SupermaskError):
    """A run directory is missing, incomplete or does not hold what was asked for."""


class LockedError(SupermaskError):
    """Another process holds the lock on a run or sweep folder."""


class SweepError(SupermaskError):
    """A sweep folder cannot be used as asked."""


class ReportError(SupermaskError):
    """A report cannot be made from the runs given (missing extra, duplicate runs)."""


class ModelError(SupermaskError):
    """A network cannot be used as asked: its factory fails, it has nothing to mask, a pattern
    matches no layer, or it cannot be exported to ONNX (the message names the layer)."""


class MemoryLimitError(SupermaskError):
    """Regenerating or running a ticket would need more memory than the cap allows (the
    message gives both sizes and how to raise the cap); also raised when memory runs out."""


class NonFiniteError(SupermaskError):
    """A network produced NaN or infinite values (logits): its ticket or its inputs are out of
    the range float32 arithmetic can carry."""
