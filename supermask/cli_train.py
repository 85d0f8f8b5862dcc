"""``supermask find`` and ``supermask pack``. Import-light: torch is imported by the library
functions these commands call, never at import time."""

from __future__ import annotations

import json
import logging
import os

import click

from . import datasets
from .codecs import CODECS
from .errors import SupermaskError
from .train import criteria as crit
from .train.config import (AFFINE, DEFAULT_BN_EXAMPLES, DEFAULT_DENSE_LR, DEFAULT_EPOCHS, DEFAULT_IMP_ROUNDS,
                           DEFAULT_KEEPS, DEFAULT_LR, DEFAULT_PRUNE_RATE, DEVICES, IMP_CONTROLS, INIT_VARIANTS,
                           METHOD_DEFAULTS, METHODS, FindConfig)


def _models() -> list[str]:
    from . import models

    return models.names()


MODEL_HELP = ("A built-in model ({}), or your own network: 'package.module:factory' or "
              "'path/to/file.py:factory', where factory() returns an nn.Module (it gets num_classes= and "
              "input_shape= if it takes them).")
DATASET_HELP = ("A data set name ({}; 'digits' ships with the package), a .npz file with x_train, y_train, "
                "x_test, y_test (optional classes), or an image folder DIR/train/<class>/*.png, DIR/test/<class>/*.png.")


def _patterns(ctx, param, value: tuple[str, ...]):
    out = tuple(p.strip() for v in value for p in v.split(",") if p.strip())
    return out or None


def _numbers(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.5,0.5,0.5, got {value!r}") from None
    if not out:
        raise click.BadParameter("give at least one number")
    return out


def parse_keeps(value: str, several: bool = True) -> tuple[float, ...]:
    """The fractions of weights to keep in a --keep value: one number or a comma-separated list,
    each in (0, 1]. `find` and `pack` both parse --keep with this, so they accept the same text."""
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        example = "or a comma-separated list such as 0.5,0.2,0.1" if several else "such as 0.2"
        raise click.BadParameter(f"expected a fraction in (0, 1] {example}, got {value!r}") from None
    if not out or any(not 0 < v <= 1 for v in out):
        raise click.BadParameter(f"every keep value must be a fraction in (0, 1], got {value!r}")
    return out


def _float_list(ctx, param, value: str | None):  # find: one keep or several
    return None if value is None else parse_keeps(value)


def _one_keep(ctx, param, value: str | None):
    if value is None:
        return None
    keeps = parse_keeps(value, several=False)
    if len(keeps) != 1:
        raise click.BadParameter(f"pack writes one ticket: give one keep, got {value!r}")
    return keeps[0]


THREADS_HELP = "CPU threads for {} (default: {}'s choice). 1 is often fastest on a busy machine."


def threads_option(engine: str):
    """--threads, the same on every command that computes: ``engine`` is torch or onnxruntime."""
    return click.option("--threads", type=click.IntRange(1), default=None, help=THREADS_HELP.format(engine, engine))


def _names(ctx, param, value: str | None):
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if value.strip() == "all":
        return tuple(crit.CRITERIA)
    bad = [n for n in names if n not in crit.CRITERIA]
    if bad or not names:
        raise click.BadParameter(f"unknown criterion {', '.join(bad) or value!r}; choose from "
                                 f"{', '.join(crit.CRITERIA)} (or 'all')")
    return names


def _controls(ctx, param, value: str | None):
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if names == ("all",):
        return IMP_CONTROLS
    bad = [n for n in names if n not in IMP_CONTROLS]
    if bad or not names:
        raise click.BadParameter(f"unknown control {', '.join(bad) or value!r}; choose from "
                                 f"{', '.join(IMP_CONTROLS)} (or 'all')")
    return names


def _inits() -> list[str]:
    from . import rng

    return [s for s in rng.SCHEMES if "normal" not in s]


def _default(name: str):
    return FindConfig.__dataclass_fields__[name].default


def find_options(f):
    """The options of `find` and `sweep` beyond what to run (model, dataset, seed, out).

    Defaults and help come from :class:`~supermask.train.config.FindConfig` and its constants, so the
    two commands cannot drift apart. An option left out is None: the config's default.
    """
    lrs = ", ".join(f"{v:g} ({m})" for m, v in DEFAULT_LR.items()) + f", {DEFAULT_DENSE_LR:g} (other models)"
    ep, be = METHOD_DEFAULTS["edge-popup"], METHOD_DEFAULTS["bernoulli"]
    options = [
        click.option("--method", type=click.Choice(list(METHODS)), default="criteria", show_default=True,
                     help="criteria: train the dense net, derive masks from its weights; edge-popup / bernoulli: "
                          "learn the masks over the frozen initial weights (docs/learned.md); imp: iterative "
                          "magnitude pruning with rewinding and its controls (docs/lottery.md)."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=str), default=None,
                     help="Folder with the data set files (DIR or DIR/<dataset>/). Default: the download cache."),
        click.option("--download", is_flag=True,
                     help="Download a missing data set (checked by MD5) into DIR/<dataset>/ with --data-dir, "
                          "else into the cache."),
        click.option("--init", "init", type=click.Choice(_inits()), default=None,
                     help="Initial weight distribution (bit-exact schemes only). Default: "
                          f"{METHOD_DEFAULTS['criteria']['init']} (criteria), {ep['init']} (learned)."),
        click.option("--gain-sq", type=click.FloatRange(0, 1e6, min_open=True, max_open=True), default=None,
                     help="Square of the init gain. Default 2 (ReLU networks); edge-popup: 2 / keep for each keep "
                          "(scaled init, so a masked layer starts with the variance of a dense one)."),
        click.option("--lr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help=f"Learning rate. Default for criteria (Adam): {lrs}; edge-popup (SGD): {ep['lr']:g}; "
                          f"bernoulli (Adam): {be['lr']:g}."),
        click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help=f"edge-popup: SGD momentum (default {ep['momentum']:g})."),
        click.option("--weight-decay", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help=f"Learned methods: weight decay on the scores (default {ep['weight_decay']:g} edge-popup, "
                          f"{be['weight_decay']:g} bernoulli)."),
        click.option("--rescale/--no-rescale", default=None,
                     help="bernoulli: dynamic weight rescaling, n/kept per layer (default on)."),
        click.option("--batch-size", type=click.IntRange(1), default=None,
                     help=f"Default {METHOD_DEFAULTS['criteria']['batch_size']} (criteria), "
                          f"{ep['batch_size']} (learned)."),
        click.option("--epochs", type=click.IntRange(1), default=None,
                     help=f"Training epochs (default {DEFAULT_EPOCHS}; ignored when --iterations is given)."),
        click.option("--iterations", type=click.IntRange(1), default=None, help="Training steps (overrides --epochs)."),
        click.option("--criteria", callback=_names, default=None,
                     help="Comma-separated criteria to evaluate, or 'all' (default: all): "
                          f"{', '.join(crit.CRITERIA)}."),
        click.option("--keep", "keeps", callback=_float_list, default=None, metavar="FRACTIONS",
                     help="Weights to keep: a fraction in (0, 1], or several comma-separated "
                          f"(default {','.join(map(str, DEFAULT_KEEPS))}); with edge-popup each keep is "
                          "one training. Not for bernoulli, which learns its density."),
        click.option("--affine", type=click.Choice(list(AFFINE)), default=None,
                     help="Biases and BatchNorm/LayerNorm scales and shifts: fixed (zero biases, unit scales; "
                          "nothing but masks is learned) or trained and stored in the ticket ('+BN'). "
                          "Default: fixed."),
        click.option("--include", multiple=True, callback=_patterns,
                     help="Mask only the Linear/Conv layers whose qualified name matches one of these patterns "
                          "(fnmatch, comma-separated or repeated, e.g. 'layer*'). Default: all of them."),
        click.option("--exclude", multiple=True, callback=_patterns,
                     help="Never mask the layers matching these patterns; their weights stay whole (regenerated "
                          "from the seed, unmasked)."),
        click.option("--scale", type=click.FloatRange(0, min_open=True), default=None,
                     help="Input preprocessing: x * scale (default 1/255 for uint8 data, 1 for float data)."),
        click.option("--mean", callback=_numbers, default=None,
                     help="Input preprocessing: subtract a mean per channel (comma-separated; default 0)."),
        click.option("--std", callback=_numbers, default=None,
                     help="Input preprocessing: divide by a std per channel (comma-separated; default 1)."),
        click.option("--bn-examples", type=click.IntRange(1), default=None,
                     help=f"Training examples used to compute BatchNorm statistics for each mask "
                          f"(default {DEFAULT_BN_EXAMPLES})."),
        click.option("--selection", type=click.Choice(list(crit.SELECTIONS)), default=_default("selection"),
                     show_default=True,
                     help="Top-k per layer (output layer pruned at half the rate) or over all layers at once."),
        click.option("--rounds", type=click.IntRange(0), default=None,
                     help=f"imp: pruning rounds after the dense round 0 (default {DEFAULT_IMP_ROUNDS}, or what "
                          "--keep needs). Give two of --rounds, --prune-rate and --keep."),
        click.option("--prune-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help=f"imp: fraction of the remaining weights pruned each round (default {DEFAULT_PRUNE_RATE:g}; "
                          "the output layer at half the rate with layerwise selection)."),
        click.option("--rewind", type=click.IntRange(0), default=None,
                     help="imp: the training iteration whose weights each round restarts from (default 0: the "
                          "initial weights; late resetting for deep nets)."),
        click.option("--controls", callback=_controls, default=None,
                     help=f"imp: controls retrained at every round, comma-separated or 'all': "
                          f"{', '.join(IMP_CONTROLS)}."),
        click.option("--val-examples", type=click.IntRange(1), default=None,
                     help="imp: training examples held out to find the early-stopping iteration "
                          "(default 5000, at most a tenth of the training set)."),
        click.option("--eval-every", type=click.IntRange(1), default=None,
                     help="imp: iterations between validation passes (default: about 20 a training, at most 100 "
                          "iterations apart)."),
        click.option("--train-limit", type=click.IntRange(1), default=None, help="Train on the first N images only."),
        click.option("--test-limit", type=click.IntRange(1), default=None, help="Evaluate on the first N images only."),
        click.option("--device", type=click.Choice(list(DEVICES)), default="auto", show_default=True),
        threads_option("torch"),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars (and no summary table from find)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


#: The find_options that are FindConfig fields; the rest say where and how to run.
CONFIG_OPTIONS = ("method", "init", "gain_sq", "lr", "momentum", "weight_decay", "rescale", "batch_size", "epochs",
                  "iterations", "criteria", "keeps", "selection", "train_limit", "test_limit", "affine", "include",
                  "exclude", "scale", "mean", "std", "bn_examples", "rounds", "prune_rate", "rewind", "controls",
                  "val_examples", "eval_every")


def split_options(opts: dict) -> tuple[dict, dict]:
    """(FindConfig fields that were given, keyword arguments of find/sweep) from find_options' values."""
    config = {k: opts[k] for k in CONFIG_OPTIONS if opts[k] is not None}
    run = dict(data_dir=opts["data_dir"], download=opts["download"], device=opts["device"],
               threads=opts["threads"], progress=not opts["quiet"])
    return config, run


@click.command()
@click.option("--model", required=True, help=MODEL_HELP.format(", ".join(_models())))
@click.option("--dataset", required=True, help=DATASET_HELP.format(", ".join(datasets.DATASETS)))
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the initial weights (and the data order): the seed is the model.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Run directory. Default: runs/<model>-<dataset>-s<seed>-<config hash>.")
@click.option("--budget", "budgets", default=None, metavar="SIZE[,SIZE...]", callback=lambda c, p, v: _sizes(v),
              help="Search for the most accurate ticket whose file fits in SIZE (e.g. 16KiB; several: 4KiB,8KiB): "
                   "trains --widths multiples of a fully connected model, each at the largest keep whose ticket "
                   "fits, and writes OUT/best-<bytes>.smask and OUT/budget.json (docs/frontier.md).")
@click.option("--widths", default=None, metavar="M[,M...]", callback=lambda c, p, v: _multipliers(v),
              help="With --budget: multipliers of the model's hidden widths to try. Default: 0.25,0.5,1,2.")
@find_options
def find(model, dataset, seed, out, budgets, widths, **opts):
    """Find supermasks and measure the untrained masked network.

    With --method criteria (the default) a dense network is trained once and every
    (criterion, keep) mask is derived from its weights, then evaluated with the original
    initial weights and with their signed constants, next to the dense trained accuracy.
    With --method edge-popup or bernoulli the masks are learned directly over the frozen
    initial weights. Results go to OUT/results.json; re-running resumes where it stopped.
    """
    from .train.distributed import launched_rank
    from .train.find import find as run_find

    follower = launched_rank() > 0  # under torchrun, rank 0 alone reports
    if follower:
        logging.getLogger("supermask").setLevel(logging.WARNING)
    config, run = split_options(opts)
    try:
        cfg = FindConfig(model=model, dataset=dataset, seed=seed, **config)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if budgets is not None:
        if opts["keeps"] is not None:
            raise click.UsageError("--budget chooses the keeps itself; leave out --keep")
        return _find_budget(budgets, cfg, out, widths, run, opts["quiet"])
    if widths is not None:
        raise click.UsageError("--widths applies to --budget searches only")
    out = out or cfg.default_out()
    res = run_find(cfg, out, **run)
    if follower:
        return
    if not opts["quiet"] and res["rows"] and "affine" in res["rows"][0]:
        click.echo(f"biases and norm parameters: {res['rows'][0]['affine']}")
    if not opts["quiet"]:
        click.echo(format_results(res))
    click.echo(f"results: {out}/results.json")


def _sizes(value):
    if value is None:
        return None
    from .ticket import parse_size

    try:
        return tuple(parse_size(v.strip()) for v in value.split(","))
    except SupermaskError as e:
        raise click.BadParameter(str(e).replace("a memory cap", "a size")) from None


def _multipliers(value):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.5,1,2, got {value!r}") from None
    if any(not 0 < m <= 64 for m in out) or len(set(out)) != len(out):
        raise click.BadParameter("width multipliers must be distinct numbers in (0, 64]")
    return out


def _find_budget(budgets, cfg, out, widths, run, quiet):
    from .train.budget import DEFAULT_WIDTHS, find_budget

    out = out or os.path.join("runs", f"budget-{cfg.model}-{os.path.basename(cfg.dataset)}-s{cfg.seed}")
    res = find_budget(budgets, cfg, out, widths=widths or DEFAULT_WIDTHS, **run)
    if not quiet:
        click.echo(f"{'model':<16} {'keep':>7} {'bytes':>9} {'accuracy %':>11}  budgets")
        for c in res["candidates"]:
            acc = f"{100 * c['accuracy']:.2f}" if c.get("accuracy") is not None else "-"
            size = f"{c['bytes']:,}" if c.get("bytes") else "over"
            click.echo(f"{c['model']:<16} {c['keep']:>7g} {size:>9} {acc:>11}  "
                       + ",".join(f"{b:,}" for b in c["budgets"]))
    for b, c in res["best"].items():
        click.echo(f"budget {int(b):,} bytes: {c['model']} keep {c['keep']:g}, {100 * c['accuracy']:.2f} %, "
                   f"{c['bytes']:,} bytes -> {out}/{c['ticket']}")


def format_imp(rows: list[dict]) -> str:
    """A text table of an IMP run: per round, the retrained accuracies (early-stop iteration)
    and the supermask accuracy of the round's mask over the untrained weights."""
    variants = list(dict.fromkeys(r["variant"] for r in rows if r.get("retrained") and r["round"] > 0))
    dense = next(r for r in rows if r["criterion"] == "dense")
    lines = [f"iterative pruning ({rows[-1]['criterion']}), test accuracy % at the early-stopping iteration; "
             f"dense {100 * dense['accuracy']:.2f} (iteration {dense['early_stop_iteration']})",
             f"{'round':>5} {'keep %':>7}" + "".join(f"{v:>20}" for v in variants)
             + f"{'supermask':>11}{'signed c.':>11}"]
    by = {(r["round"], r["init"]): r for r in rows}
    for k in sorted({r["round"] for r in rows if r["round"] > 0}):
        trained = [by[k, f"retrained-{v}"] for v in variants]
        cells = "".join(f"{100 * t['accuracy']:>11.2f} ({t['early_stop_iteration']:>5})" for t in trained)
        sm = "".join(f"{100 * by[k, v]['accuracy']:>11.2f}" for v in INIT_VARIANTS)
        lines.append(f"{k:>5} {100 * by[k, 'original']['keep']:>7.2f}{cells}{sm}")
    return "\n".join(lines)


def format_results(res: dict) -> str:
    """A text table: dense accuracy, then accuracy per criterion x keep for both init variants."""
    rows = res["rows"]
    if rows and rows[0].get("method") == "imp":
        return format_imp(rows)
    dense = next((r for r in rows if r["criterion"] == "dense"), None)
    if dense is None:  # a learned run: one row per learned mask
        lines = [f"learned supermasks ({rows[0]['criterion']}), untrained masked network on {rows[0]['total']} "
                 f"test images:", f"{'keep':>8} {'density':>8} {'accuracy %':>11}"]
        for r in sorted(rows, key=lambda r: -r["keep"]):
            lines.append(f"{r['keep']:>8.4g} {100 * r['density']:>7.2f}% {100 * r['accuracy']:>11.2f}")
        return "\n".join(lines)
    keeps = sorted({r["keep"] for r in rows if r["criterion"] != "dense"}, reverse=True)
    lines = [f"dense trained accuracy {100 * dense['accuracy']:.2f} % on {dense['total']} test images",
             "supermask accuracy (untrained masked network), % by keep:"]
    head = f"{'criterion':<24} {'init':<16}" + "".join(f"{k:>8g}" for k in keeps)
    lines.append(head)
    by = {(r["criterion"], r["init"], r["keep"]): r for r in rows}
    for c in dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != "dense"):
        for v in ("original", "signed-constant"):
            cells = "".join(f"{100 * by[c, v, k]['accuracy']:>8.2f}" if (c, v, k) in by else f"{'-':>8}"
                            for k in keeps)
            lines.append(f"{c:<24} {v:<16}{cells}")
    return "\n".join(lines)


def _size(ctx, param, value):
    if value is None:
        return None
    from .ticket import parse_size

    try:
        return parse_size(value)
    except SupermaskError as e:
        raise click.BadParameter(str(e).replace("a memory cap", "a size")) from None


@click.command()
@click.argument("ticket", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The ticket file to write (or give it as the TICKET argument).")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=str),
              help="A finished `supermask find` run directory.")
@click.option("--criterion", type=click.Choice([*crit.CRITERIA, "edge-popup", "bernoulli"]), default=None,
              help="Only masks of this criterion (a learned run has only its method's). Default: any.")
@click.option("--keep", callback=_one_keep, default=None, metavar="FRACTION",
              help="Only masks of this keep, a fraction in (0, 1]. Default: any. A bernoulli run holds one "
                   "mask of a learned density; its printed value (e.g. 0.513108) also selects it.")
@click.option("--init", "init", type=click.Choice(list(INIT_VARIANTS)), default=None,
              help="Only this init variant: the run's own weights or their signed constants (criteria runs "
                   "evaluate both; a learned run, only the weights it learned over). Default: either.")
@click.option("--round", "imp_round", type=click.IntRange(0), default=None,
              help="imp runs: the round whose mask to pack (over the untrained initial weights; retrained "
                   "weights are never a ticket: `supermask export --run DIR --round N` writes them as ONNX).")
@click.option("--codec", type=click.Choice(["auto", *CODECS]), default="auto", show_default=True,
              help="Mask coding: auto picks the smaller of bitpack and entropy per tensor.")
@click.option("--max-bytes", "max_bytes", default=None, metavar="SIZE", callback=_size,
              help="Pack the most accurate matching supermask whose ticket file fits in SIZE (bytes, or e.g. "
                   "16KiB, 16KB); an error when none does.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the ticket summary as JSON (accuracies and densities as fractions).")
@threads_option("torch")
def pack(ticket, out, run_dir, criterion, keep, init, imp_round, codec, max_bytes, as_json, threads):
    """Write one supermask of a find run as a ticket file (-o/--out, or TICKET): seed, init
    spec, packed masks, the values it stores (BatchNorm statistics, trained biases) and the
    network's ONNX graph.

    By default the run's most accurate supermask is packed, over every criterion, keep and init
    variant it evaluated (ties: the sparser mask); --criterion, --keep and --init narrow the choice.

    The graph is exported from the run's model and checked in onnxruntime against the masked
    torch model on fixed inputs before anything is written.
    """
    if (ticket is None) == (out is None):
        raise click.UsageError("give the ticket file to write once: as -o/--out FILE (or as the TICKET argument)"
                               if ticket is None else
                               f"the ticket file is given twice ({ticket} and -o {out}); give -o/--out FILE only")
    ticket = ticket or out
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from .train.pack import pack as run_pack

    t, check = run_pack(run_dir, ticket, criterion=criterion, keep=keep, init=init, codec=codec,
                        return_validation=True, round=imp_round, max_bytes=max_bytes)
    s = t.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        acc = s["metadata"].get("accuracy")
        click.echo(f"wrote {ticket}: {s['file_bytes']:,} bytes, {t.criterion} keep {t.keep:.6g} "
                   f"(init {t.init.scheme}), density {100 * s['density']:.2f} %"
                   + (f", accuracy {100 * acc:.2f} % in the run" if acc is not None else ""))
        click.echo(f"graph checked in onnxruntime: max |logit difference| {check.max_abs_diff:.3g} on "
                   f"{check.examples} fixed inputs (tolerance {check.tolerance:.3g})")


COMMANDS = [find, pack]
