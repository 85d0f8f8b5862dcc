"""The model-first library API: ``supermask.find(model, train_data, test_data, ...)`` and
``supermask.pack(run, out)``. Imports torch when work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Run:
    """A finished find run: its folder, results and (when given as an object) its model."""

    path: Path
    results: dict
    model: Any = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict]:
        return self.results["rows"]

    def best(self, criterion: str | None = None, init: str | None = None) -> dict:
        """The most accurate supermask row, optionally of one ``criterion`` and ``init`` variant:
        the row :meth:`pack` writes by default."""
        from .runs import best_row

        row = best_row(self.results, criterion, None, init)
        if row is None:
            raise ValueError(f"no results for criterion {criterion!r} with init {init!r}")
        return row

    def pack(self, out: str | os.PathLike, *, criterion: str | None = None, keep: float | None = None,
             init: str | None = None, codec: str = "auto"):
        """Write one supermask of this run as a ticket (see :func:`pack`)."""
        return pack(self.path, out, criterion=criterion, keep=keep, init=init, codec=codec, model=self.model)


def find(model, train_data=None, test_data=None, *, method: str = "criteria",
         keep: float | Sequence[float] | None = None, seed: int = 0, out: str | os.PathLike | None = None,
         classes: Sequence[str] | None = None, device: str = "auto", progress: bool = True,
         threads: int | None = None, data_dir: str | None = None, download: bool = False, **options) -> Run:
    """Find supermasks of ``model`` and measure the masked, untrained network.

    ``model`` is any ``torch.nn.Module`` (or a built-in name, or a ``module:factory`` spec).
    ``train_data`` and ``test_data`` are numpy ``(x, y)`` pairs, torch ``Dataset``s or
    ``DataLoader``s, or one data set name or path (``.npz``, image folder) for both splits.
    ``method`` is ``criteria``, ``edge-popup`` or ``bernoulli``; ``keep`` one fraction or
    several. Other keyword arguments are :class:`~supermask.train.config.FindConfig` fields
    (``epochs``, ``iterations``, ``lr``, ``affine``, ``include``, ``exclude``, ...).
    Returns a :class:`Run`; ``run.pack("model.smask")`` writes a ticket.
    """
    from . import find as find_module
    from .config import OBJECT_PREFIX, FindConfig

    if isinstance(model, str):
        model_label, module = model, None
    else:
        model_label, module = f"{OBJECT_PREFIX}{type(model).__name__}", model
    if isinstance(train_data, (str, os.PathLike)) and test_data is None:
        dataset, train_data = os.fspath(train_data), None
    elif train_data is None:
        raise ValueError("give the training data: a data set name or path, (x, y) arrays, or a torch Dataset")
    else:
        dataset = f"{OBJECT_PREFIX}{type(train_data).__name__}"
    if keep is not None:
        options["keeps"] = (float(keep),) if isinstance(keep, (int, float)) else tuple(float(k) for k in keep)
    cfg = FindConfig(model=model_label, dataset=dataset, seed=seed, method=method, **options)
    out = Path(out) if out is not None else Path(cfg.default_out())
    results = find_module.find(cfg, out, data_dir=data_dir, download=download, device=device, progress=progress,
                       threads=threads, model=module, train_data=train_data, test_data=test_data, classes=classes)
    return Run(out, results, module)


def pack(run: str | os.PathLike, out: str | os.PathLike, **kwargs):
    """Write one supermask of a finished run as a version-3 ticket; see :func:`supermask.train.pack.pack`."""
    from . import pack as pack_module

    return pack_module.pack(run, out, **kwargs)


__all__ = ["Run", "find", "pack"]
