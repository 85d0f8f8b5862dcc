"""``supermask baseline``: the networks a user with a byte budget would pick instead of a ticket,
trained and sized on the same data. Import-light: torch is imported by the library function."""

from __future__ import annotations

import click

from . import datasets
from .baseline.train import DEFAULT_WIDTHS, METHODS
from .cli_train import DATASET_HELP


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {value!r}") from None
    low = 0 if param.name == "seeds" else 1
    if not out or any(v < low for v in out):
        raise click.BadParameter(f"give one or more integers >= {low}, got {value!r}")
    return out


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise click.BadParameter(f"unknown method {', '.join(bad) or repr(value)}; choose from {', '.join(METHODS)}")
    return names


def format_table(rows: list[dict]) -> str:
    """Method, width, mean accuracy over seeds and the largest file, one line per (method, width)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["width"]), []).append(r)
    lines = [f"{'method':<18}{'width':>6}{'seeds':>6}{'accuracy %':>12}{'max bytes':>11}"]
    for (method, width), rs in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        acc = 100 * sum(r["accuracy"] for r in rs) / len(rs)
        lines.append(f"{method:<18}{width:>6}{len(rs):>6}{acc:>12.2f}{max(r['bytes'] for r in rs):>11}")
    return "\n".join(lines)


@click.command()
@click.option("--dataset", required=True, help=DATASET_HELP.format(", ".join(datasets.DATASETS)))
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding the data set's files (default: the download cache).")
@click.option("--download", is_flag=True, help="Download a registered data set that is not there yet.")
@click.option("--widths", default=",".join(map(str, DEFAULT_WIDTHS)), show_default=True, callback=_ints,
              metavar="H[,H...]", help="Hidden widths H of the MLPs inputs-H-classes.")
@click.option("--methods", default=",".join(METHODS), show_default=True, callback=_methods,
              metavar="NAME[,NAME...]", help=f"Baselines to make, from: {', '.join(METHODS)}.")
@click.option("--seeds", default="0", show_default=True, callback=_ints, metavar="S[,S...]",
              help="Seeds (initial weights and data order); each seed finishes before the next starts.")
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True,
              help="Epochs of the float network (Adam, lr 1e-3, cosine to 0, batch 128).")
@click.option("--finetune-epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Extra epochs of int4-qat, ternary-qat and deep-compression (Adam, cosine schedule).")
@click.option("--finetune-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Starting learning rate of those extra epochs.")
@click.option("--dc-density", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Fraction of weights deep-compression keeps in each layer.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="CPU threads for torch.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; running again with the same settings resumes and skips finished rows.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines, only the final table.")
def baseline(dataset, data_dir, download, widths, methods, seeds, epochs, finetune_epochs, finetune_lr, dc_density,
             threads, out, quiet):
    """Train and size the baselines a ticket competes with.

    For each seed, width H and method: a float MLP inputs-H-classes (ReLU) is trained once on
    the data set's train split, then turned into the method's network and written as the file
    a device would load (OUT/artifacts/*.smbl). Its accuracy is measured on the test split by
    decoding that file with numpy. Methods: float (float32), int8-ptq and int4-ptq
    (per-channel post-training quantization), int4-qat (quantization-aware fine-tuning),
    ternary-qat (ternary weight networks), deep-compression (pruning, retraining, 16-cluster
    weight sharing, entropy-coded positions). Rows go to OUT/rows/ and OUT/results.json.
    """
    from .baseline.train import run_baselines

    rows = run_baselines(dataset, widths=widths, methods=methods, seeds=seeds, out=out, epochs=epochs,
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, dc_density=dc_density,
                         data_dir=data_dir, download=download, threads=threads, progress=not quiet)
    click.echo(format_table(rows))


COMMANDS = [baseline]
