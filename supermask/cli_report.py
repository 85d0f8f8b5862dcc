"""``supermask sweep`` and ``supermask report``. Import-light: torch and matplotlib are
imported by the library functions, never at import time."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from . import datasets
from .cli_train import _models, _sizes, find_options, split_options, threads_option


def _csv(choices, also=None):
    def parse(ctx, param, value):
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [n for n in names if n not in choices and not (also and also(n))]
        if bad or not names:
            raise click.BadParameter(f"unknown {', '.join(bad) or repr(value)}; choose from {', '.join(choices)}")
        return names

    return parse


def _builtin(name: str) -> bool:
    from . import models

    return models.known(name)


def _seeds(ctx, param, value):
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {value!r}") from None
    if not seeds or any(not 0 <= s < 2**64 for s in seeds) or len(set(seeds)) != len(seeds):
        raise click.BadParameter("seeds must be distinct integers in [0, 2**64)")
    return seeds


@click.command()
@click.option("--models", required=True, callback=_csv(_models(), lambda n: ":" in n or _builtin(n)),
              help=f"Comma-separated models: {', '.join(_models())}, or 'module:factory' / 'file.py:factory' specs.")
@click.option("--datasets", "dataset_names", required=True,
              callback=_csv(list(datasets.DATASETS), datasets.is_path_dataset),
              help=f"Comma-separated data sets: {', '.join(datasets.DATASETS)}, or .npz files / image folders.")
@click.option("--seeds", required=True, callback=_seeds, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Sweep folder; each run goes to OUT/<model>-<dataset>-s<seed>.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one run after another in this process. ray: every run is a Ray task, on the cluster "
                   "at --address or on a local Ray (needs supermask[cluster]; docs/scaling.md).")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="ray: the cluster to use (as `ray start --head` printed, or 'auto'). Default: start a local Ray.")
@click.option("--cpus-per-run", type=click.FloatRange(0, min_open=True), default=None,
              help="ray: CPUs each run reserves (default 1); also its torch thread count, unless set.")
@click.option("--gpus-per-run", type=click.FloatRange(0), default=None,
              help="ray: GPUs each run reserves; fractions share a GPU, e.g. 0.25 (default 0).")
@find_options
def sweep(models, dataset_names, seeds, out, backend, address, cpus_per_run, gpus_per_run, **opts):
    """Run `find` for every model x dataset x seed; finished runs are skipped, so an
    interrupted sweep resumes where it stopped."""
    from .train.sweep import sweep as run_sweep

    config, run = split_options(opts)
    cluster = {k: v for k, v in (("address", address), ("cpus_per_run", cpus_per_run),
                                 ("gpus_per_run", gpus_per_run)) if v is not None}
    if backend == "local" and cluster:
        raise click.UsageError(f"--{next(iter(cluster)).replace('_', '-')} applies to --backend ray only")
    manifest = run_sweep(models, dataset_names, seeds, out, backend=backend, **cluster, **run, **config)
    done = sum(r["state"] == "done" for r in manifest["runs"])
    click.echo(f"sweep {out}: {done} of {len(manifest['runs'])} runs finished")


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for results.csv/json, report.md, the PNG plots and report.html.")
@click.option("--keep-files", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Keep every measured file (tickets, ONNX models, float32 weights) under this folder.")
@click.option("--from-csv", "from_csv", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Draw the tables and plots again from the results.csv of an earlier report, without "
                   "measuring (instead of RUNS).")
@threads_option("torch")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def report(runs, out, keep_files, from_csv, threads, quiet):
    """Size-vs-accuracy report over find runs or sweep folders (RUNS...).

    Every row's sizes come from files actually written: the ticket bit-packed and
    entropy-coded, dense and sparse ONNX, and the dense float32 weights.
    """
    from .report import read_rows, report as run_report, require_matplotlib, write_report

    if bool(runs) == bool(from_csv):
        raise click.UsageError("give run or sweep folders (RUNS...) or --from-csv FILE, not both" if runs
                               else "give the run or sweep folders to report on (RUNS...), or --from-csv FILE")
    if from_csv and keep_files:
        raise click.UsageError("--keep-files needs RUNS: --from-csv measures nothing")
    command = "supermask " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["report"] else None
    if threads is not None and not from_csv:  # packing each row exports its graph with torch
        import torch

        torch.set_num_threads(threads)
    if from_csv:
        require_matplotlib()
        rows = read_rows(from_csv)  # read before writing: FILE may be OUT/results.csv itself
        written = write_report(rows, out, command=command)
    else:
        written = run_report(runs, out, artifacts=keep_files, progress=not quiet, command=command)
    click.echo(f"wrote {len(written)} files to {out}: " + ", ".join(sorted(written)))


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for frontier.md, frontier.csv and frontier.png.")
@click.option("--budgets", default="4KiB,8KiB,16KiB,32KiB,64KiB", show_default=True, metavar="SIZE[,SIZE...]",
              callback=lambda c, p, v: _sizes(v), help="The byte budgets of the table (KiB = 1024 bytes).")
@click.option("--title", default="accuracy per byte", show_default=True, help="The plot's title.")
def frontier(folders, out, budgets, title):
    """Accuracy per byte: the best ticket beside the best baseline at each byte budget.

    FOLDERS are `find --budget` searches (with budget.json), folders of such searches (one per
    seed) and `supermask baseline` folders. Accuracies are means over seeds; a config counts at
    a budget only when its file fits on every seed.
    """
    from .frontier import frontier_report

    command = "supermask " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["frontier"] else None
    written = frontier_report(folders, out, budgets, command=command, title=title)
    click.echo((Path(out) / "frontier.md").read_text())
    click.echo(f"wrote {', '.join(sorted(written))} to {out}")


COMMANDS = [sweep, report, frontier]
