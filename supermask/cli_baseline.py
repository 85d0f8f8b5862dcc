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


def _densities(ctx, param, value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fractions such as 0.1,0.3, got {value!r}") from None
    if not out or any(not 0 < d <= 1 for d in out) or len(set(out)) != len(out):
        raise click.BadParameter(f"give distinct fractions in (0, 1], got {value!r}")
    return out


def format_table(rows: list[dict]) -> str:
    """Method, width, density, mean accuracy over seeds and the largest file, one line per network."""
    groups: dict[tuple[str, int, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["width"], r.get("density", 1.0)), []).append(r)
    lines = [f"{'method':<18}{'width':>6}{'density':>8}{'seeds':>6}{'accuracy %':>12}{'max bytes':>11}"]
    for (method, width, density), rs in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), *kv[0][1:])):
        acc = 100 * sum(r["accuracy"] for r in rs) / len(rs)
        d = f"{density:g}" if "density" in rs[0] else "-"
        lines.append(f"{method:<18}{width:>6}{d:>8}{len(rs):>6}{acc:>12.2f}{max(r['bytes'] for r in rs):>11}")
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
@click.option("--finetune-lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Starting learning rate of those extra epochs.")
@click.option("--dc-density", "dc_densities", default="0.1,0.3", show_default=True, callback=_densities,
              metavar="D[,D...]", help="Fractions of the weights deep-compression keeps in each layer; one network "
                                       "per width and density.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="CPU threads for torch.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; running again with the same settings resumes and skips finished rows.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines, only the final table.")
def baseline(dataset, data_dir, download, widths, methods, seeds, epochs, finetune_epochs, finetune_lr, dc_densities,
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
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, dc_densities=dc_densities,
                         data_dir=data_dir, download=download, threads=threads, progress=not quiet)
    click.echo(format_table(rows))


COMMANDS = [baseline]
