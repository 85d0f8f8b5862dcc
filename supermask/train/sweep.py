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


BACKENDS = ("local", "ray")


def sweep(models: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], out: str | os.PathLike,
          *, data_dir: str | None = None, download: bool = False, device: str = "auto",
          progress: bool = True, threads: int | None = None, backend: str = "local", address: str | None = None,
          cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, **find_options) -> dict:
    """Run ``find`` for every (model, dataset, seed); return the sweep manifest.

    ``find_options`` are further :class:`~supermask.train.config.FindConfig` fields (epochs,
    iterations, criteria, keeps, init, ...), the same for every run. ``backend="ray"`` runs
    each run as a Ray task (:mod:`.sweep_ray`) on the cluster at ``address`` (a local Ray when
    None), with ``cpus_per_run`` and ``gpus_per_run`` reserved for each.
    """
    if not models or not datasets or not seeds:
        raise SweepError("a sweep needs at least one model, one dataset and one seed")
    if len(set(seeds)) != len(seeds):
        raise SweepError("seeds must not repeat")
    if backend not in BACKENDS:
        raise SweepError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "local" and (address is not None or cpus_per_run != 1.0 or gpus_per_run != 0.0):
        raise SweepError("--address, --cpus-per-run and --gpus-per-run apply to --backend ray only")
    if not cpus_per_run > 0 or not gpus_per_run >= 0:
        raise SweepError(f"a run needs a positive number of CPUs and zero or more GPUs, got {cpus_per_run:g} "
                         f"and {gpus_per_run:g}")
    ray = None
    if backend == "ray":
        from .sweep_ray import _import_ray

        ray = _import_ray()  # before the folder is made: a missing Ray fails at once
    with claim_folder(out, "sweep folder", SweepError) as out:
        run = dict(data_dir=data_dir, download=download, device=device, threads=threads)
        if ray is None:
            return _sweep_locked(models, datasets, seeds, out, run, progress, find_options, None)
        opts = dict(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
        return _sweep_locked(models, datasets, seeds, out, run, progress, find_options, opts)


def _sweep_locked(models, datasets, seeds, out: Path, run: dict, progress: bool, find_options,
                  ray_options: dict | None) -> dict:
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
    entries = {e["run"]: e for e in manifest["runs"]}
    todo = [(name, cfg) for name, cfg in plan if entries[name]["state"] != "done"]
    for name, _ in plan:
        if entries[name]["state"] == "done":
            log.info("sweep: %s is finished; skipping", name)

    def finished(name: str, seconds: float) -> None:
        entries[name].update(state="done", seconds=round(seconds, 1))
        save()
        done = sum(e["state"] == "done" for e in manifest["runs"])
        if progress:
            log.info("sweep: %d of %d runs done (%s, %.1f s)", done, total, name, seconds)

    if ray_options is not None:
        from .sweep_ray import run_on_ray

        run_on_ray([(name, cfg, out / name) for name, cfg in todo], finished=finished, **ray_options, **run)
        return manifest
    for i, (name, cfg) in enumerate(todo, total - len(todo) + 1):
        start = time.perf_counter()
        if progress:
            log.info("sweep: run %d of %d: %s", i, total, name)
        find(cfg, out / name, progress=progress, **run)
        finished(name, time.perf_counter() - start)
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
