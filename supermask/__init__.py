"""supermask: store a network as (architecture, seed, init spec, packed mask) and run it.

This package and everything it imports at top level are torch-free. Library API::

    from supermask import write_ticket, read_ticket
    ticket = read_ticket("model.smask")
    weights = ticket.weights()          # name -> float32 numpy array, masks applied
"""

__version__ = "0.1.0"

from .arch import Architecture, Layer, Preprocess  # noqa: E402
from .errors import (  # noqa: E402
    ChecksumError,
    SupermaskError,
    TicketFormatError,
    UnsupportedVersionError,
    VerificationError,
)
from .rng import InitSpec  # noqa: E402
from .ticket import Ticket, decode_ticket, encode_ticket, read_ticket, write_ticket  # noqa: E402

_SUBMODULES = ("runtime", "export", "datasets", "models", "report", "train")


def find(model, train_data=None, test_data=None, **kwargs):
    """Find supermasks of any ``nn.Module`` on your data; see :func:`supermask.train.api.find`."""
    from .train.api import find as _find

    return _find(model, train_data, test_data, **kwargs)


def pack(run, out, **kwargs):
    """Write one supermask of a finished run as a ticket; see :func:`supermask.train.api.pack`."""
    from .train.api import pack as _pack

    return _pack(run, out, **kwargs)


def __getattr__(name: str):
    # `import supermask; supermask.runtime.load(...)` without importing the subpackage first;
    # loaded on first use so that `import supermask` stays light (and torch-free).
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'supermask' has no attribute {name!r}")


__all__ = [
    "find", "pack", "Architecture", "Layer", "Preprocess", "InitSpec", "Ticket",
    "encode_ticket", "decode_ticket", "read_ticket", "write_ticket",
    "SupermaskError", "TicketFormatError", "ChecksumError", "UnsupportedVersionError", "VerificationError",
]
