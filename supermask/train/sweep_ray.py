"""The Ray backend of ``supermask sweep``: every run of the sweep is one Ray task.

Ray schedules the tasks on a cluster (``address``) or on a local Ray it starts; each task
declares ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractions allowed, so several runs
can share a GPU). A task is ``find`` into ``SWEEP/<run>`` on storage every node sees, so the
rules of a local sweep hold unchanged: the run folder's lock, skipping a finished run and
resuming a half-done one from its checkpoints.

When a worker dies (a killed process, a lost node) Ray runs the task again, and the new
attempt resumes from the run's last checkpoint; a task stopped by SIGTERM saves its state and
is retried the same way. A run finishes, and writes its results, once: the results are written
last, atomically, and an attempt that finds them done does nothing. An error of the run itself
(bad data, a model that fails) is not retried: the sweep stops and says which run failed.
Imports ``ray`` only here; it is the optional extra ``supermask[cluster]``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from ..errors import SupermaskError, SweepError

log = logging.getLogger(__name__)

#: How often Ray runs a task again after its worker died, per run.
RETRIES = 3


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray needs Ray: pip install 'supermask[cluster]' (or pip install ray)") from None
    return ray


def _find_task(cfg_dict: dict, out: str, data_dir, download: bool, device: str, threads: int | None) -> float:
    """One run, on a Ray worker; returns its seconds."""
    from .config import FindConfig
    from .find import find

    start = time.perf_counter()
    find(FindConfig.from_dict(cfg_dict), out, data_dir=data_dir, download=download, device=device, progress=False,
         threads=threads)
    return time.perf_counter() - start


def run_on_ray(jobs: list[tuple[str, object, str]], *, address: str | None, cpus_per_run: float,
               gpus_per_run: float, data_dir, download: bool, device: str, threads: int | None,
               finished: Callable[[str, float], None]) -> None:
    """Run ``jobs`` (name, FindConfig, run folder) as Ray tasks; call ``finished(name, seconds)``
    as each completes (in completion order)."""
    ray = _import_ray()
    from .resume import TrainingInterrupted

    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise SweepError(f"could not start or reach {where}: {str(e).strip().splitlines()[0][:300]}") from None
    if threads is None:  # a run uses the CPUs it declared, not every core of the node
        threads = max(1, int(cpus_per_run))
    task = ray.remote(_find_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=RETRIES,
                                          retry_exceptions=[TrainingInterrupted])
    # workers may start elsewhere: folders go as absolute paths (a data set path is part of the
    # run's identity, so it goes as given; on a cluster give it absolute, on shared storage)
    data_dir = None if data_dir is None else str(Path(data_dir).resolve())
    pending = {task.remote(cfg.to_dict(), str(Path(out).resolve()), data_dir, download, device, threads): name
               for name, cfg, out in jobs}
    log.info("sweep: %d runs on Ray (%s CPUs and %s GPUs each)", len(pending), f"{cpus_per_run:g}",
             f"{gpus_per_run:g}")
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            name = pending.pop(ref)
            try:
                seconds = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                text = str(cause).strip() if cause is not None else ""
                why = text if isinstance(cause, SupermaskError) else f"{type(cause).__name__}: {text}"
                raise SweepError(f"run {name} failed: {why[:500]}") from None
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.RayError) as e:
                raise SweepError(f"run {name} failed {RETRIES + 1} times on Ray ({type(e).__name__}); its folder "
                                 f"keeps the last checkpoint: run the sweep again to resume it") from None
            finished(name, seconds)
    finally:
        for ref in pending:  # a failed sweep leaves no tasks running into the folder
            ray.cancel(ref, force=True)
