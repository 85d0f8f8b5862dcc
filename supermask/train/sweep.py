"""Seeded sweeps: ``find`` over several models, datasets and seeds into one folder.

Torch is imported only when a run actually trains. Each run lives in
``SWEEP/<model>-<dataset>-s<seed>``; ``find`` itself skips a finished run (its
``results.json`` matches the run's config hash) and resumes a half-done one from its
finished stages, so an interrupted sweep started again redoes nothing that was finished.
``sweep.json`` lists the runs and their state; it is rewritten atomically after each run.
The sweep folder is locked while a sweep works on it; temporary files that a killed sweep left
there are removed when the next one starts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write
from ..errors import SweepError
from ..lock import claim_folder

__all__ = ["SWEEP_FILE", "SweepError", "run_dirs", "run_name", "sweep"]

log = logging.getLogger(__name__)
SWEEP_FILE = "sweep.json"


def run_name(model: str, dataset: str, seed: int) -> str:
    from .. import datasets as ds
    from .config import _slug, is_builtin_model

    m = model if is_builtin_model(model) else _slug(model)
    d = dataset if dataset in ds.DATASETS else _slug(dataset)
    return f"{m}-{d}-s{seed}"


def sweep(models: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], out: str | os.PathLike,
          *, data_dir: str | None = None, download: bool = False, device: str = "auto",
          progress: bool = True, threads: int | None = None, **find_options) -> dict:
    """Run ``find`` for every (model, dataset, seed); return the sweep manifest.

    ``find_options`` are further :class:`~supermask.train.config.FindConfig` fields (epochs,
    iterations, criteria, keeps, init, ...), the same for every run.
    """
    if not models or not datasets or not seeds:
        raise SweepError("a sweep needs at least one model, one dataset and one seed")
    if len(set(seeds)) != len(seeds):
        raise SweepError("seeds must not repeat")
    with claim_folder(out, "sweep folder", SweepError) as out:
        return _sweep_locked(models, datasets, seeds, out, data_dir, download, device, progress, threads,
                             find_options)


def _sweep_locked(models, datasets, seeds, out: Path, data_dir, download, device, progress, threads,
                  find_options) -> dict:
    from .config import FindConfig
    from .find import find
    from .runs import is_complete

    try:
        base = FindConfig(model=models[0], dataset=datasets[0], seed=seeds[0], **find_options)
    except (TypeError, ValueError) as e:
        raise SweepError(f"bad find options for the sweep: {e}") from None
    plan = []
    for model in models:
        for dataset in datasets:
            for seed in seeds:
                try:
                    cfg = replace(base, model=model, dataset=dataset, seed=seed)
                except ValueError as e:
                    raise SweepError(str(e)) from None
                plan.append((run_name(model, dataset, seed), cfg))

    manifest = {"runs": [{"run": name, "run_hash": cfg.run_hash, "state": "pending"} for name, cfg in plan],
                "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in find_options.items()}}

    def save() -> None:
        atomic_write(out / SWEEP_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    for entry, (name, cfg) in zip(manifest["runs"], plan):
        if is_complete(out / name, cfg):
            entry["state"] = "done"
    save()
    total = len(plan)
    for i, (entry, (name, cfg)) in enumerate(zip(manifest["runs"], plan), 1):
        if entry["state"] == "done":
            log.info("sweep: run %d of %d, %s, is finished; skipping", i, total, name)
            continue
        start = time.perf_counter()
        if progress:
            log.info("sweep: run %d of %d: %s", i, total, name)
        find(cfg, out / name, data_dir=data_dir, download=download, device=device, progress=progress,
             threads=threads)
        entry["state"] = "done"
        entry["seconds"] = round(time.perf_counter() - start, 1)
        save()
    return manifest


def run_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The finished run folders under ``paths`` (each a run folder or a sweep folder)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise SweepError(f"{p} is not a folder; give run folders (from `supermask find`) or sweep folders")
        if (p / "results.json").exists():
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "results.json").exists())
        if not subs:
            raise SweepError(f"{p} holds no finished runs (no results.json in it or its subfolders)")
        found += subs
    return found
