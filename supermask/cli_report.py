"""``supermask sweep`` and ``supermask report``. Import-light: torch and matplotlib are
imported by the library functions, never at import time."""

from __future__ import annotations

import shlex
import sys

import click

from . import criteria as crit
from . import datasets
from .cli_train import _float_list, _inits, _models, _names


def _csv(choices):
    def parse(ctx, param, value):
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise click.BadParameter(f"unknown {', '.join(bad) or repr(value)}; choose from {', '.join(choices)}")
        return names

    return parse


def _seeds(ctx, param, value):
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {value!r}") from None
    if not seeds or any(not 0 <= s < 2**64 for s in seeds) or len(set(seeds)) != len(seeds):
        raise click.BadParameter("seeds must be distinct integers in [0, 2**64)")
    return seeds


@click.command()
@click.option("--models", required=True, callback=_csv(_models()),
              help=f"Comma-separated architectures: {', '.join(_models())}.")
@click.option("--datasets", "dataset_names", required=True, callback=_csv(list(datasets.DATASETS)),
              help=f"Comma-separated data sets: {', '.join(datasets.DATASETS)}.")
@click.option("--seeds", required=True, callback=_seeds, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Sweep folder; each run goes to OUT/<model>-<dataset>-s<seed>.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder with the data set files (DIR or DIR/<dataset>/).")
@click.option("--download", is_flag=True, help="Download missing data sets into the cache.")
@click.option("--init", "init", type=click.Choice(_inits()), default="kaiming_uniform", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs (default: find's).")
@click.option("--iterations", type=click.IntRange(1), default=None, help="Training steps (overrides --epochs).")
@click.option("--criteria", callback=_names, default=None, help="Comma-separated criteria, or 'all' (default).")
@click.option("--keep", "keeps", callback=_float_list, default=None,
              help="Comma-separated keep fractions (default 0.5,0.3,0.2,0.1,0.05).")
@click.option("--selection", type=click.Choice(list(crit.SELECTIONS)), default="layerwise", show_default=True)
@click.option("--train-limit", type=click.IntRange(1), default=None, help="Train on the first N images only.")
@click.option("--test-limit", type=click.IntRange(1), default=None, help="Evaluate on the first N images only.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def sweep(models, dataset_names, seeds, out, data_dir, download, init, epochs, iterations, criteria, keeps,
          selection, train_limit, test_limit, device, threads, quiet):
    """Run `find` for every model x dataset x seed; finished runs are skipped, so an
    interrupted sweep resumes where it stopped."""
    from .sweep import sweep as run_sweep

    opts = dict(init=init, iterations=iterations, selection=selection, train_limit=train_limit,
                test_limit=test_limit)
    if epochs is not None:
        opts["epochs"] = epochs
    if criteria is not None:
        opts["criteria"] = criteria
    if keeps is not None:
        opts["keeps"] = keeps
    manifest = run_sweep(models, dataset_names, seeds, out, data_dir=data_dir, download=download, device=device,
                         progress=not quiet, threads=threads, **opts)
    done = sum(r["state"] == "done" for r in manifest["runs"])
    click.echo(f"sweep {out}: {done} of {len(manifest['runs'])} runs finished")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for results.csv/json, report.md, the PNG plots and report.html.")
@click.option("--keep-files", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Keep every measured file (tickets, ONNX models, float32 weights) under this folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def report(runs, out, keep_files, quiet):
    """Size-vs-accuracy report over find runs or sweep folders (RUNS...).

    Every row's sizes come from files actually written: the ticket bit-packed and
    entropy-coded, dense and sparse ONNX, and the dense float32 weights.
    """
    from .report import report as run_report

    command = "supermask " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["report"] else None
    written = run_report(runs, out, artifacts=keep_files, progress=not quiet, command=command)
    click.echo(f"wrote {len(written)} files to {out}: " + ", ".join(sorted(written)))


COMMANDS = [sweep, report]
