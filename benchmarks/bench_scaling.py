"""Overhead of the scale-out paths, side by side in one run (docs/scaling.md).

    python benchmarks/bench_scaling.py --repeats 3 --out scaling.json

1. ``find`` under ``torchrun --nproc-per-node 2`` (gloo, CPU, per-process batch B/2) against
   one process at batch B: the same global batch, so the same number of steps and the same
   masks. Each process uses ``--threads`` torch threads (1 by default).
2. A sweep of 6 runs (seeds 0-5) with the local backend against ``--backend ray`` on a local
   Ray started by the sweep (``--cpus-per-run 1``); Ray's start is part of its time.

Reported: median wall seconds of each command (whole processes, start-up included) and the
ratios. The runs alternate, so machine load hits both alike.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        raise click.ClickException(f"{name} is not installed beside {sys.executable}")
    return found


def _timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise click.ClickException(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


@click.command()
@click.option("--model", default="lenet-300-100", show_default=True)
@click.option("--dataset", default="digits", show_default=True)
@click.option("--method", default="edge-popup", show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs of each find run.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch.")
@click.option("--sweep-epochs", type=int, default=10, show_default=True, help="Epochs of each sweep run.")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="Torch threads per process.")
@click.option("--data-dir", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the figures as JSON here.")
def main(model, dataset, method, epochs, batch_size, sweep_epochs, repeats, threads, data_dir, out):
    supermask, torchrun = _tool("supermask"), _tool("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "")}
    env = {k: v for k, v in env.items() if v != ""}
    keep = ["--keep", "0.1"] if method != "bernoulli" else []
    common = ["--model", model, "--dataset", dataset, "--method", method, *keep, "--epochs", str(epochs), "-q",
              *(["--data-dir", data_dir] if data_dir else [])]
    times: dict[str, list[float]] = {"one process": [], "torchrun 2 processes": [], "sweep local": [],
                                     "sweep ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            runs = {
                "one process": [supermask, "find", *common, "--batch-size", str(batch_size), "--threads",
                                str(threads)],
                "torchrun 2 processes": [torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", supermask,
                                         "find", *common, "--batch-size", str(batch_size // 2), "--threads",
                                         str(threads)],
            }
            for label, cmd in runs.items():
                times[label].append(_timed([*cmd, "-o", f"{tmp}/{label.replace(' ', '_')}{r}"], env))
            sweep = [supermask, "sweep", "--models", model, "--datasets", dataset, "--seeds", "0,1,2,3,4,5",
                     "--method", method, *keep, "--epochs", str(sweep_epochs), "-q",
                     *(["--data-dir", data_dir] if data_dir else [])]
            times["sweep local"].append(_timed([*sweep, "-o", f"{tmp}/sl{r}"], env))
            times["sweep ray"].append(_timed([*sweep, "--backend", "ray", "--cpus-per-run", "1", "-o",
                                              f"{tmp}/sr{r}"], env))
            print(f"repeat {r + 1} of {repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                  file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": machine(),
        "setup": {"model": model, "dataset": dataset, "method": method, "epochs": epochs, "global_batch": batch_size,
                  "sweep_runs": 6, "sweep_epochs": sweep_epochs, "threads": threads, "repeats": repeats},
        "median_seconds": med,
        "ratios": {"torchrun 2 / one process": med["torchrun 2 processes"] / med["one process"],
                   "sweep ray / local": med["sweep ray"] / med["sweep local"]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
