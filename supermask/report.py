"""Size-vs-accuracy reports over find runs and sweeps.

:func:`measure` turns finished runs into rows, one per (model, dataset, selection, training
config, criterion, init variant, keep, seed), with the test accuracy ``find`` measured and the
size of every representation of that model, measured by writing each file: dense float32 weights, dense
ONNX, sparse ONNX, the ticket bit-packed and the ticket entropy-coded (through the same code
as ``supermask pack`` and ``supermask export``). :func:`write_report` renders rows into
``results.csv``, ``results.json``, ``report.md``, PNG plots and one self-contained
``report.html``. Rows are averaged over seeds only within one (model, dataset, selection,
training config): runs that differ in anything else are never mixed, and the same run given
twice is refused. Needs matplotlib for the plots (the ``report`` extra); never imports torch.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import statistics
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import ReportError
from .train.config import DENSITY_LEARNED, LEARNED_METHODS

log = logging.getLogger(__name__)

REPRESENTATIONS = {
    "dense_float32_bytes": "dense float32 weights",
    "dense_onnx_bytes": "dense ONNX",
    "sparse_onnx_bytes": "sparse ONNX",
    "ticket_bitpack_bytes": "ticket, bit-packed",
    "ticket_entropy_bytes": "ticket, entropy-coded",
}
#: What identifies a group of rows that differ only in their seed (with criterion, init, keep).
#: ``train_config`` is FindConfig.train_config_hash: the training config apart from the seed.
TASK_FIELDS = ("model", "dataset", "method", "selection", "train_init", "train_config")
COLUMNS = [
    *TASK_FIELDS, "criterion", "init", "keep", "seed", "accuracy", "density", "num_weights",
    "num_params", *REPRESENTATIONS, "bits_per_weight_bitpack", "bits_per_weight_entropy", "train_hash", "run",
    "retrained", "early_stop_iteration",
]
#: Columns only IMP runs fill; a results.csv of an older report may lack them.
OPTIONAL_COLUMNS = ("retrained", "early_stop_iteration")
BUDGETS = [2 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 1 << 20]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
_STYLES = ["-", "--", "-.", ":"]


# ----------------------------------------------------------------------------- measuring


def _size(path: Path) -> int:
    return path.stat().st_size


def _write_float32(path: Path, weights: dict) -> int:
    atomic_write(path, b"".join(np.ascontiguousarray(weights[n], dtype="<f4").tobytes() for n in sorted(weights)))
    return _size(path)


def measure(run_dirs: Sequence[str | os.PathLike], *, artifacts: str | os.PathLike | None = None,
            progress: bool = True) -> list[dict]:
    """Rows with accuracies and measured sizes for every result of every run.

    Files are written to a temporary folder, or kept under ``artifacts`` when given.
    """
    from .export import export_ticket, fill_graph
    from .train.data import load_model
    from .train.meter import Progress
    from .train.pack import pack
    from .train.runs import load_npz

    rows: list[dict] = []
    runs = check_runs(run_dirs)
    total = sum(len(results.get("rows", [])) for _, _, results in runs.values())
    log.info("report: measuring %d rows of %d runs", total, len(runs))
    bar = Progress(total, "report: measuring", progress)
    with tempfile.TemporaryDirectory(prefix="supermask-report-") as tmp, _closing(bar):
        for run, (cfg, info, results) in runs.items():
            num_params = sum(math.prod(t["shape"]) for t in info["tensors"])
            num_weights = sum(math.prod(t["shape"]) for t in info["tensors"] if t["fate"] == "masked")
            base = Path(artifacts) / run.name if artifacts else Path(tmp) / run.name
            base.mkdir(parents=True, exist_ok=True)
            model = load_model(cfg.model, info["input_shape"], len(info["classes"]))
            graph = None
            # the dense row reuses the graph of a packed ticket, so it comes last
            todo = sorted(results.get("rows", []), key=lambda r: r["criterion"] == "dense")
            for r in todo:
                tag = f"{r['criterion']}-{r['init']}-{r['keep']:g}"
                row = {k: r.get(k) for k in ("model", "dataset", "criterion", "init", "keep", "seed",
                                             "accuracy", "density")}
                row.update(_identity(cfg), train_hash=cfg.train_hash)
                row.update(num_weights=num_weights, num_params=num_params, run=str(run))
                if "retrained" in r:  # an IMP run: retrained rows and their early-stopping iteration
                    row["retrained"] = bool(r["retrained"])
                    if r.get("early_stop_iteration") is not None:
                        row["early_stop_iteration"] = r["early_stop_iteration"]
                if r.get("retrained") and r["criterion"] != "dense":
                    # trained weights are not a ticket: nothing to pack or size (docs/lottery.md)
                    for k in REPRESENTATIONS:
                        row[k] = None
                    row["bits_per_weight_bitpack"] = row["bits_per_weight_entropy"] = None
                elif r["criterion"] == "dense":
                    w = load_npz(run / "weights.npz")
                    row["dense_float32_bytes"] = _write_float32(base / f"{tag}.f32", w)
                    for fmt in ("dense", "sparse"):
                        path = base / f"{tag}.{fmt}.onnx"
                        if graph is None:
                            raise ReportError(f"{run}: the dense row needs a packed ticket's graph; evaluate at "
                                              f"least one criterion")
                        atomic_write(path, fill_graph(graph, w, fmt).SerializeToString())
                        row[f"{fmt}_onnx_bytes"] = _size(path)
                    row["ticket_bitpack_bytes"] = row["ticket_entropy_bytes"] = None
                    row["bits_per_weight_bitpack"] = row["bits_per_weight_entropy"] = None
                else:
                    tickets = {}
                    for codec in ("bitpack", "entropy"):
                        path = base / f"{tag}.{codec}.smask"
                        tickets[codec] = pack(run, path, criterion=r["criterion"], keep=r["keep"],
                                              init=r["init"], codec=codec, model=model)
                        row[f"ticket_{codec}_bytes"] = _size(path)
                        row[f"bits_per_weight_{codec}"] = 8 * row[f"ticket_{codec}_bytes"] / num_weights
                    t = tickets["entropy"]
                    graph = t.graph
                    row["dense_float32_bytes"] = _write_float32(base / f"{tag}.f32", t.weights(verify=False))
                    for fmt in ("dense", "sparse"):
                        res = export_ticket(t, base / f"{tag}.{fmt}.onnx", fmt, check=False)
                        row[f"{fmt}_onnx_bytes"] = res.file_bytes
                rows.append(row)
                bar.update(len(rows))
    return rows


class _closing:
    """Closes a progress bar however the block ends, so an error starts on a fresh line."""

    def __init__(self, bar):
        self.bar = bar

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _identity(cfg) -> dict:
    """The fields of TASK_FIELDS that come from a run's config rather than its result rows."""
    return {"method": cfg.method, "selection": cfg.selection, "train_init": cfg.init,
            "train_config": cfg.train_config_hash}


def check_runs(run_dirs: Sequence[str | os.PathLike]) -> dict[Path, tuple]:
    """``load_run`` of every run, refusing runs that would be averaged as if they were two seeds.

    Two runs clash when they hold a result for the same group and seed: the same folder
    given twice (through two paths), or two folders with the same training config and seed.
    """
    from .train.runs import load_run

    runs: dict[Path, tuple] = {}
    seen: dict[tuple, Path] = {}
    real: dict[Path, Path] = {}
    for run in map(Path, run_dirs):
        here = run.resolve()
        if here in real:
            raise ReportError(f"{run} and {real[here]} are the same run folder; give each run once")
        real[here] = run
        cfg, arch, results = load_run(run)
        for r in results["rows"]:
            key = _group_key({**r, **_identity(cfg)}) + (r.get("seed"),)
            if key in seen and seen[key] != run:
                raise ReportError(
                    f"{seen[key]} and {run} both hold {r['criterion']} keep {r['keep']:g} ({r['init']}) for seed "
                    f"{r.get('seed')} with the same training config and selection: the report "
                    f"would average one seed twice; give only one of them")
            seen[key] = run
        runs[run] = (cfg, arch, results)
    return runs


# ----------------------------------------------------------------------------- aggregating


def _group_key(r: dict) -> tuple:
    # A method that learns its density has, per seed, the density that seed reached as its
    # keep: its seeds form one group regardless (the aggregate's keep is the mean).
    keep = None if r.get("method") in DENSITY_LEARNED else float(r["keep"])
    return (*(r[k] for k in TASK_FIELDS), r["criterion"], r["init"], keep)


def aggregate(rows: Iterable[dict]) -> list[dict]:
    """Mean and min-max over seeds for each (model, dataset, selection, training config, criterion,
    init, keep); a seed that appears twice in one group is a :class:`ReportError`.

    A method that learns its density (bernoulli) reaches a slightly different density with each
    seed; its seeds form one group whose ``keep`` and ``density`` are the means over the seeds,
    with ``keep_min``/``keep_max`` and ``density_min``/``density_max`` giving the spread.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_group_key(r)].append(r)
    out = []
    n = len(TASK_FIELDS) + 2
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][:n], -(kv[0][n] or 0.0))):
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            runs = ", ".join(sorted({str(r.get("run")) for r in rs}))
            raise ReportError(f"seed {next(s for s in seeds if seeds.count(s) > 1)} appears twice for "
                              f"{', '.join(map(str, key))} (runs {runs}); give each run once")
        acc = [r["accuracy"] for r in rs]
        agg = dict(zip((*TASK_FIELDS, "criterion", "init", "keep"), key))
        if agg["keep"] is None:  # a learned density: the mean over the seeds
            agg["keep"] = statistics.fmean(r["keep"] for r in rs)
        keeps, dens = [float(r["keep"]) for r in rs], [float(r["density"]) for r in rs]
        agg.update(seeds=sorted(r["seed"] for r in rs), accuracy_mean=statistics.fmean(acc),
                   accuracy_min=min(acc), accuracy_max=max(acc), keep_min=min(keeps), keep_max=max(keeps),
                   density=statistics.fmean(dens), density_min=min(dens), density_max=max(dens),
                   num_weights=rs[0]["num_weights"], retrained=bool(rs[0].get("retrained")))
        stops = [r["early_stop_iteration"] for r in rs if r.get("early_stop_iteration") is not None]
        if stops:
            agg.update(early_stop_mean=statistics.fmean(stops), early_stop_min=min(stops), early_stop_max=max(stops))
        for k in REPRESENTATIONS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            agg[k] = max(vals) if vals else None  # the budget a user must plan for
        out.append(agg)
    return out


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The size-accuracy frontier: points no other point beats with less or equal size."""
    best, out = -math.inf, []
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            out.append((size, acc))
            best = acc
    return out


def best_per_budget(aggs: Sequence[dict], budgets: Sequence[int] = BUDGETS) -> list[dict]:
    """For each (model, dataset) and byte budget, the most accurate ticket that fits it."""
    out = []
    by_task: dict[tuple, list[dict]] = defaultdict(list)
    for a in aggs:
        if a["criterion"] != "dense":
            by_task[(a["model"], a["dataset"])].append(a)
    for (model, dataset), cands in sorted(by_task.items()):
        for budget in budgets:
            fits = []
            for a in cands:
                size, codec = min((a["ticket_bitpack_bytes"], "bitpack"), (a["ticket_entropy_bytes"], "entropy"))
                if size <= budget:
                    fits.append((a["accuracy_mean"], -size, a, codec, size))
            if fits:
                acc, _, a, codec, size = max(fits, key=lambda f: (f[0], f[1]))
                out.append({"model": model, "dataset": dataset, "budget_bytes": budget, "criterion": a["criterion"],
                            "selection": a["selection"], "train_config": a["train_config"], "init": a["init"],
                            "train_init": a["train_init"],
                            "keep": a["keep"], "codec": codec, "ticket_bytes": size,
                            "accuracy_mean": acc, "accuracy_min": a["accuracy_min"], "accuracy_max": a["accuracy_max"],
                            "seeds": a["seeds"]})
    return out


# ----------------------------------------------------------------------------- rendering


def _tasks(aggs: Sequence[dict]) -> list[tuple[list[dict], str, str]]:
    """(aggregates, title, file name stem) for each (model, dataset, method, selection, training
    config).

    Names grow the method (when learned) and, when one (model, dataset, method) has several
    configs, the selection and training config, so the common report of one config keeps
    short names.
    """
    keys = sorted({tuple(a[k] for k in TASK_FIELDS) for a in aggs})
    out = []
    for key in keys:
        model, dataset, method, selection, train_init, train_config = key
        title, stem = f"{model} on {dataset}", f"{model}_{dataset}"
        if method != "criteria":
            title += f", learned by {method}" if method in LEARNED_METHODS else f", {method}"
            stem += f"_{method}"
        if sum(k[:3] == key[:3] for k in keys) > 1:
            title += f" ({selection} selection, trained from {train_init}, training config {train_config[:8]})"
            stem += f"_{selection}_{train_config[:8]}"
        out.append(([a for a in aggs if tuple(a[k] for k in TASK_FIELDS) == key], title, stem))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB" if n < (1 << 20) else f"{n / (1 << 20):,.2f} MiB"


def bytes_label(n: float) -> str:
    """A size for an axis tick in the units of the report's tables (KiB = 1024 bytes, MiB =
    1024 KiB): ``512 B``, ``4 KiB``, ``1.5 MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{n:.0f} B"


def size_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Tick positions (bytes) on a log size axis from ``lo`` to ``hi``: the powers of two, thinned
    to at most ``most``, with the steps 1.5 times a power of two added when fewer than three fit."""
    if not (0 < lo < hi) or not math.isfinite(hi):
        return []
    ks = range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)
    ticks = [2.0**k for k in ks if lo <= 2.0**k <= hi]
    if len(ticks) < 3:
        ticks = sorted(ticks + [1.5 * 2.0**k for k in ks if lo <= 1.5 * 2.0**k <= hi])
    step = math.ceil(len(ticks) / most) if ticks else 1
    return ticks[::step]


#: The smallest accuracy axis span, in percentage points: seed noise of a few tenths of a point
#: must not fill the plot's height and look like a trend.
MIN_ACCURACY_SPAN = 5.0


def accuracy_limits(values: Iterable[float], min_span: float = MIN_ACCURACY_SPAN) -> tuple[float, float]:
    """Limits of an accuracy axis (%) that hold every value with a margin and span at least
    ``min_span`` points; a span widened to the minimum stays within 0-100 % (plus the margin)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max(0.05 * (hi - lo), 0.5)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = min(max((lo + hi) / 2, min_span / 2 - pad), 100 + pad - min_span / 2)
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return lo, hi


def init_label(train_init: str, variant: str) -> str:
    """The init scheme a mask's weights really come from: the run's own scheme (``train_init``)
    for the ``original`` variant, and its signed-constant form for ``signed-constant``."""
    from .rng import SCHEMES

    if variant == "original":
        return train_init
    if variant == "signed-constant":
        if train_init not in SCHEMES:
            return f"signed constant, signs of {train_init}"
        distribution, rule = SCHEMES[train_init]
        signed = f"signed_{rule}_constant"
        return signed if distribution == "signed_constant" else f"{signed}, signs of {train_init}"
    return variant


def _wrap(text: str, width: int = 46) -> str:
    """A legend label or title line broken into lines of at most ``width`` characters."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _init_cell(a: dict) -> str:
    """The init of a table row: the variant ``pack --init`` takes, and the scheme it means."""
    if a["criterion"] == "dense":
        return a["init"]
    return f"{a['init']} ({init_label(a['train_init'], a['init']).split(',')[0]})"


def _acc(a: dict) -> str:
    """An accuracy cell: the mean, and the min-max over seeds only when there is more than one."""
    if len(a["seeds"]) < 2:
        return _pct(a["accuracy_mean"])
    return f"{_pct(a['accuracy_mean'])} ({_pct(a['accuracy_min'])}-{_pct(a['accuracy_max'])})"


def _seeds_text(seeds: Sequence[int]) -> str:
    """``seed 0`` or ``3 seeds (0, 1, 2)``."""
    seeds = sorted(seeds)
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def _count_text(counts: Iterable[int]) -> str:
    """``1 seed``, ``3 seeds`` or ``1-3 seeds`` for the seed counts of a plot's series."""
    counts = set(counts)
    lo, hi = min(counts), max(counts)
    return f"{lo}-{hi} seeds" if lo != hi else "1 seed" if hi == 1 else f"{hi} seeds"


def _learned_density(a: dict) -> bool:
    return a.get("method") in DENSITY_LEARNED and a["criterion"] != "dense"


def _keep_text(a: dict, header: bool = False) -> str:
    """A keep for a table: a learned density is the mean over the seeds, so it says so."""
    if not _learned_density(a):
        return f"keep {a['keep']:g}" if header else f"{a['keep']:g}"
    if len(a["seeds"]) < 2:
        return f"learned keep {a['keep']:.4g}" if header else f"{a['keep']:.4g} (learned)"
    spread = f"{a['keep_min']:.4g}-{a['keep_max']:.4g}"
    if header:
        return f"learned keep {a['keep']:.4g} (mean over {len(a['seeds'])} seeds, {spread})"
    return f"{a['keep']:.4g} (learned; mean, {spread})"


def _tables(aggs: list[dict], budgets: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table in the report."""
    tables = []
    for task, name, _ in _tasks(aggs):
        dense = [a for a in task if a["criterion"] == "dense"]
        seeds = sorted({s for a in task for s in a["seeds"]})
        masks = [a for a in task if a["criterion"] != "dense"]
        keeps = sorted({a["keep"] for a in masks}, reverse=True)
        for init in sorted({a["init"] for a in masks}):
            header = ["criterion"] + [_keep_text(next(a for a in masks if a["keep"] == k), header=True)
                                      for k in keeps]
            body = []
            if dense:
                body.append(["dense, trained (all weights)"] + [_acc(dense[0])] * len(keeps))
            for c in sorted({a["criterion"] for a in task if a["init"] == init}):
                cells = []
                for k in keeps:
                    m = [a for a in task if a["criterion"] == c and a["init"] == init and a["keep"] == k]
                    cells.append(_acc(m[0]) if m else "-")
                body.append([c] + cells)
            spread = "" if len(seeds) < 2 else "mean (min-max) over "
            tables.append((f"{name}, init {init_label(task[0]['train_init'], init)}: test accuracy % of the "
                           f"untrained masked network, {spread}{_seeds_text(seeds)}", header, body))
        header = ["criterion", "init", "keep"] + list(REPRESENTATIONS.values()) + ["bits/weight (entropy)"]
        body = []
        default = ([a for a in task if a["criterion"] == "large_final_same_sign"] or masks)
        for a in dense + default:
            bpw = "-" if a["ticket_entropy_bytes"] is None else f"{8 * a['ticket_entropy_bytes'] / a['num_weights']:.3f}"
            body.append([a["criterion"], _init_cell(a), _keep_text(a)] + [_kb(a[k]) for k in REPRESENTATIONS] + [bpw])
        largest = "" if len(seeds) < 2 else " (largest over seeds)"
        tables.append((f"{name}: file size of each representation{largest}", header, body))
    header = ["model", "dataset", "budget", "selection", "criterion", "init", "keep", "codec", "ticket",
              "accuracy %: mean (min-max) over seeds", "seeds"]
    body = [[b["model"], b["dataset"], _kb(b["budget_bytes"]), b["selection"], b["criterion"], _init_cell(b),
             f"{b['keep']:.4g}", b["codec"], _kb(b["ticket_bytes"]), _acc(b), str(len(b["seeds"]))]
            for b in budgets]
    tables.append(("Best ticket per size budget", header, body))
    return tables


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(title: str, header: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<h3>{html.escape(title)}</h3>\n<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>\n"


def require_matplotlib() -> None:
    """Fail early, before anything is measured or written, when the plots cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ReportError(f"supermask report needs matplotlib for its plots ({e}); install it with "
                          f"pip install 'supermask[report]'") from None


def _dense_reference(aggs: Sequence[dict], task: Sequence[dict]) -> tuple[dict, bool] | None:
    """The dense, trained row to draw as a reference on a task's plots, and whether it comes
    from another run of the same model and data set (a learned run trains no dense network)."""
    own = [a for a in task if a["criterion"] == "dense"]
    if own:
        return own[0], False
    here = (task[0]["model"], task[0]["dataset"])
    other = [a for a in aggs if a["criterion"] == "dense" and (a["model"], a["dataset"]) == here]
    return (max(other, key=lambda a: len(a["seeds"])), True) if other else None


def _draw_dense(ax, ref: tuple[dict, bool] | None, linestyle: str, extra: str = "") -> list[float]:
    """Draw the dense reference line (with its min-max band over seeds); return its values."""
    if ref is None:
        return []
    d, borrowed = ref
    n = len(d["seeds"])
    label = "dense, trained" + (" (criteria run)" if borrowed else "") + extra
    label += f": {_pct(d['accuracy_mean'])} %" + ("" if n < 2 else f", mean of {n} seeds")
    ax.axhline(100 * d["accuracy_mean"], color="black", linestyle=linestyle, linewidth=1.2, label=_wrap(label))
    if n > 1:
        ax.axhspan(100 * d["accuracy_min"], 100 * d["accuracy_max"], color="black", alpha=0.08)
    return [100 * d["accuracy_mean"], 100 * d["accuracy_min"], 100 * d["accuracy_max"]]


def _keep_figure(aggs, task, name, init, plt):
    """Accuracy against keep for one task and init variant, every criterion."""
    crits = sorted({a["criterion"] for a in task if a["criterion"] != "dense"})
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ys: list[float] = []
    counts: set[int] = set()
    band = bars = learned = False
    for i, c in enumerate(crits):
        pts = sorted((a for a in task if a["criterion"] == c and a["init"] == init), key=lambda a: a["keep"])
        if not pts:
            continue
        counts |= {len(a["seeds"]) for a in pts}
        x = [100 * a["keep"] for a in pts]
        mean = [100 * a["accuracy_mean"] for a in pts]
        lo, hi = [100 * a["accuracy_min"] for a in pts], [100 * a["accuracy_max"] for a in pts]
        ys += mean + lo + hi
        colour = cmap(i / max(1, len(crits) - 1) * 0.9)
        ax.plot(x, mean, color=colour, marker=_MARKERS[i % len(_MARKERS)], linestyle=_STYLES[i % len(_STYLES)],
                linewidth=1.6 if c == "large_final_same_sign" else 1.0, label=c)
        if not any(len(a["seeds"]) > 1 for a in pts):
            continue
        spread_keep = any(_learned_density(a) for a in pts)
        learned |= spread_keep
        if len(pts) > 1:
            band = True
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        else:  # a lone point (one learned density) has no band to draw: bars instead
            bars = True
        if spread_keep or len(pts) == 1:
            ax.errorbar(x, mean, xerr=[[100 * (a["keep"] - a["keep_min"]) for a in pts],
                                       [100 * (a["keep_max"] - a["keep"]) for a in pts]] if spread_keep else None,
                        yerr=None if len(pts) > 1 else [[m - y for m, y in zip(mean, lo)], [y - m for m, y in zip(mean, hi)]],
                        fmt="none", ecolor=colour, capsize=4, linewidth=1.0)
    ys += _draw_dense(ax, _dense_reference(aggs, task), "--")
    ax.set_ylim(*accuracy_limits(ys))
    ax.set_xscale("log")
    ticks = sorted({100 * a["keep"] for a in task if a["criterion"] != "dense"})
    ax.set_xticks(ticks)
    ax.set_xticks([], minor=True)
    ax.set_xticklabels([f"{t:.3g}" for t in ticks])
    if ticks and max(ticks) < 2 * min(ticks):  # one learned density: room to see its spread
        ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
    ax.set_xlabel("weights kept (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    if max(counts, default=1) < 2:
        note = "one seed"
    else:
        note = f"mean over {_count_text(counts)}"
        if band:
            note += "; band: min-max over seeds"
        if bars:
            note += "; bars: min-max over seeds"
        if learned:
            note += "; keep: mean of the densities the seeds learned"
    note = _wrap(f"({note})", 72)
    title = _wrap(f"{name}: untrained supermasks, init {init_label(task[0]['train_init'], init)}", 72)
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _size_figure(aggs, task, name, plt):
    """Accuracy against file size for one task: every representation of every row."""
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    points = []
    for j, (key, label) in enumerate(REPRESENTATIONS.items()):
        pts = [(a[key], 100 * a["accuracy_mean"]) for a in task if a.get(key) is not None]
        if not pts:
            continue
        points += pts
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, marker=_MARKERS[j],
                   color=cmap(j / (len(REPRESENTATIONS) - 1) * 0.9), label=label, alpha=0.8,
                   edgecolors="black", linewidths=0.3)
    f = frontier(points)
    if f:
        xs, ys = [p[0] for p in f], [p[1] for p in f]
        ax.step(xs + [max(p[0] for p in points)], ys + [ys[-1]], where="post", color="black", linewidth=1.2,
                label="size-accuracy frontier")
    ys = [p[1] for p in points] + _draw_dense(ax, _dense_reference(aggs, task), ":")
    _size_axes(fig, ax, "file size (bytes, log scale; KiB = 1024 B)",
               f"{name}: accuracy against file size, every criterion, init and keep", 8,
               ys, {len(a["seeds"]) for a in task})
    return fig


def overlapping(points: Sequence[tuple[str, float, float]], radius: float) -> list[int]:
    """Indices of the points (series, x, y in display pixels) that lie within ``radius`` pixels of
    an earlier point of another series: markers a reader could not tell apart without a label."""
    out = []
    for i, (series, x, y) in enumerate(points):
        if any(s != series and math.hypot(x - px, y - py) < radius for s, px, py in points[:i]):
            out.append(i)
    return out


def _ticket_figure(model, dataset, here, plt):
    """Accuracy against ticket size (the smaller codec) for every mask series of one (model,
    dataset), learned and heuristic together; None when no row has a ticket."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    for a in here:
        if a["criterion"] != "dense" and a.get("ticket_entropy_bytes") is not None:
            series[(a["criterion"], a["init"], a["train_config"], a["train_init"])].append(a)
    if not series:
        return None
    configs = defaultdict(set)
    for c, _, tc, _ in series:
        configs[c].add(tc)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colours = plt.get_cmap("tab10")
    learned_i = 0
    marked = []  # (series, colour, size, accuracy, points in the series) of every marker drawn
    ys: list[float] = []
    for (c, init, tc, train_init), pts in sorted(series.items(), key=lambda kv: (kv[0][0] in LEARNED_METHODS, kv[0])):
        pts = sorted(pts, key=lambda a: min(a["ticket_bitpack_bytes"], a["ticket_entropy_bytes"]))
        x = [min(a["ticket_bitpack_bytes"], a["ticket_entropy_bytes"]) for a in pts]
        y = [100 * a["accuracy_mean"] for a in pts]
        ys += y
        label = f"{c} ({init_label(train_init, init)})"
        if len(configs[c]) > 1:
            label += f" [{tc[:8]}]"
        if any(_learned_density(a) and len(a["seeds"]) > 1 for a in pts):
            label += f", keep: mean of {_count_text(len(a['seeds']) for a in pts)}' learned densities"
        label = _wrap(label)
        if c in LEARNED_METHODS:
            colour = colours(learned_i % 10)
            lone = len(pts) == 1  # one learned density: a ring, which stays visible over another marker
            ax.plot(x, y, marker="oD^v"[learned_i % 4], markersize=11 if lone else 7 - 2 * (c == "edge-popup"),
                    markerfacecolor="none" if lone else colour, markeredgewidth=2 if lone else 1,
                    linewidth=2, color=colour, label=label, zorder=4 - (c == "edge-popup"))
            learned_i += 1
        elif c == "large_final_same_sign":
            colour = "black" if init == "original" else "dimgray"
            ax.plot(x, y, marker="s", linewidth=1.4, linestyle="--", label=label, zorder=2, color=colour)
        else:
            ax.plot(x, y, linewidth=0.8, color="silver", alpha=0.8, zorder=1)
            continue
        marked += [(c, colour, xi, yi, len(pts)) for xi, yi in zip(x, y)]
    if any(a["criterion"] not in LEARNED_METHODS and a["criterion"] not in ("dense", "large_final_same_sign")
           for s in series.values() for a in s):
        ax.plot([], [], linewidth=0.8, color="silver", label="other criteria")
    dense = [a for a in here if a["criterion"] == "dense"]
    ys += _draw_dense(ax, (dense[0], False) if dense else None, ":",
                      f" ({_kb(dense[0]['dense_onnx_bytes'])} ONNX)" if dense else "")
    _size_axes(fig, ax, "ticket size (bytes, smaller codec, log scale; KiB = 1024 B)",
               f"{model} on {dataset}: learned and heuristic supermasks by ticket size", 7, ys,
               {len(a["seeds"]) for s in series.values() for a in s})
    # markers that would hide one another get their series' name beside them; the longest
    # series come first, so the label goes to the lone or shorter one
    marked.sort(key=lambda m: -m[4])
    pixels = [(m[0], *ax.transData.transform((m[2], m[3]))) for m in marked]
    box = ax.get_window_extent()
    for k, i in enumerate(overlapping(pixels, radius=7 * fig.dpi / 72)):
        c, colour, x, y, _ = marked[i]
        left = pixels[i][1] > (box.x0 + box.x1) / 2
        ax.annotate(c, (x, y), xytext=(-16 if left else 16, -20 - 10 * k), textcoords="offset points",
                    ha="right" if left else "left", va="top", fontsize=7, color=colour,
                    arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.8))
    return fig


def _size_axes(fig, ax, xlabel: str, title: str, legend_size: int, ys: Sequence[float], counts: set[int]) -> None:
    """Finish a plot of accuracy against a size: log size axis with byte ticks, an accuracy axis
    at least MIN_ACCURACY_SPAN points high, labels, legend."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = size_ticks(lo, hi)
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: bytes_label(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(*accuracy_limits(ys))
    ax.set_xlabel(xlabel)
    n = max(counts, default=1)
    ax.set_ylabel("test accuracy (%)" if n < 2 else f"test accuracy (%, mean over {_count_text(counts)})")
    ax.set_title(_wrap(title, 72), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()


def figures(aggs: list[dict]):
    """Yield (PNG file name, matplotlib figure) for every plot of the report; the caller closes
    each figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    for task, name, stem in _tasks(aggs):
        for init in sorted({a["init"] for a in task if a["criterion"] != "dense"}):
            yield f"accuracy_vs_keep_{stem}_{init}.png", _keep_figure(aggs, task, name, init, plt)
        yield f"accuracy_vs_size_{stem}.png", _size_figure(aggs, task, name, plt)
    for model, dataset in sorted({(a["model"], a["dataset"]) for a in aggs}):
        here = [a for a in aggs if (a["model"], a["dataset"]) == (model, dataset)]
        fig = _ticket_figure(model, dataset, here, plt)
        if fig is not None:
            yield f"accuracy_vs_ticket_{model}_{dataset}.png", fig


def _lottery_tasks(aggs: Sequence[dict]) -> list[tuple[list[dict], str, str]]:
    """The tasks of IMP runs: those with retrained rows."""
    return [t for t in _tasks(aggs) if any(a.get("retrained") and a["criterion"] != "dense" for a in t[0])]


def _variants(task: Sequence[dict]) -> list[str]:
    order = ["original", "reinit", "random-mask", "reshuffle", "signed-constant", "freeze"]
    have = {a["init"][len("retrained-"):] for a in task if a.get("retrained") and a["criterion"] != "dense"}
    return [v for v in order if v in have] + sorted(have - set(order))


def _stop(a: dict) -> str:
    if "early_stop_mean" not in a:
        return "-"
    if len(a["seeds"]) < 2:
        return f"{a['early_stop_mean']:,.0f}"
    return f"{a['early_stop_mean']:,.0f} ({a['early_stop_min']:,}-{a['early_stop_max']:,})"


def _lottery_tables(aggs: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per IMP task: accuracy at the early-stopping iteration and that iteration, per round
    (keep) and variant, beside the round's mask over the untrained weights."""
    tables = []
    for task, name, _ in _lottery_tasks(aggs):
        seeds = sorted({s for a in task for s in a["seeds"]})
        variants = _variants(task)
        sm = sorted({a["init"] for a in task if not a.get("retrained") and a["criterion"] != "dense"})
        keeps = sorted({a["keep"] for a in task if a["criterion"] != "dense"}, reverse=True)
        by = {(a["init"], a["keep"]): a for a in task}
        header = (["weights kept %"] + [f"retrained: {v}" for v in variants]
                  + [f"early-stop iteration: {v}" for v in variants] + [f"untrained supermask: {v}" for v in sm])
        dense = next((a for a in task if a["criterion"] == "dense"), None)
        body = []
        if dense is not None:
            body.append(["100 (dense)"] + [_acc(dense)] + ["-"] * (len(variants) - 1) + [_stop(dense)]
                        + ["-"] * (len(variants) - 1) + ["-"] * len(sm))
        for k in keeps:
            trained = [by.get((f"retrained-{v}", k)) for v in variants]
            body.append([f"{100 * k:.3g}"] + [_acc(a) if a else "-" for a in trained]
                        + [_stop(a) if a else "-" for a in trained]
                        + [_acc(by[v, k]) if (v, k) in by else "-" for v in sm])
        spread = "" if len(seeds) < 2 else "mean (min-max) over "
        criterion = next(a["criterion"] for a in task if a["criterion"] != "dense")
        tables.append((f"{name}: iterative pruning by {criterion}, test accuracy % at the early-stopping iteration "
                       f"(minimum validation loss), {spread}{_seeds_text(seeds)}", header, body))
    return tables


def _lottery_plots(aggs: list[dict]) -> dict[str, bytes]:
    from matplotlib import pyplot as plt

    return {f"lottery_{stem}.png": _png(_lottery_figure(task, name, plt), plt)
            for task, name, stem in _lottery_tasks(aggs)}


def _lottery_figure(task, name, plt):
    """The papers' figure: test accuracy at early stopping and the early-stopping iteration
    against the weights remaining, one line per retrained variant (the untrained supermasks of
    the same masks are in the tables and the accuracy-vs-keep plots)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    colours = plt.get_cmap("tab10")
    ys: list[float] = []
    series = [(f"retrained-{v}", f"retrained: {v}", "-") for v in _variants(task)]
    counts = {len(a["seeds"]) for a in task}
    for i, (init, label, style) in enumerate(series):
        pts = sorted((a for a in task if a["init"] == init), key=lambda a: -a["keep"])
        if not pts:
            continue
        x = [100 * a["keep"] for a in pts]
        mean = [100 * a["accuracy_mean"] for a in pts]
        lo, hi = [100 * a["accuracy_min"] for a in pts], [100 * a["accuracy_max"] for a in pts]
        c = colours(i % 10)
        ax.plot(x, mean, color=c, linestyle=style, marker=_MARKERS[i % len(_MARKERS)], markersize=4, label=label)
        if max(counts) > 1:
            ax.fill_between(x, lo, hi, color=c, alpha=0.12, linewidth=0)
        if init.startswith("retrained-"):
            ys += mean + lo + hi
            stops = [a.get("early_stop_mean") for a in pts]
            if all(v is not None for v in stops):
                ax2.plot(x, stops, color=c, linestyle=style, marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                         label=label)
                if max(counts) > 1:
                    ax2.fill_between(x, [a["early_stop_min"] for a in pts], [a["early_stop_max"] for a in pts],
                                     color=c, alpha=0.12, linewidth=0)
    dense = next((a for a in task if a["criterion"] == "dense"), None)
    ys += _draw_dense(ax, None if dense is None else (dense, False), "--")
    lo, hi = accuracy_limits(ys)
    ax.set_ylim(lo, hi)
    for a_ in (ax, ax2):
        a_.set_xscale("log")
        a_.invert_xaxis()  # weights remaining fall from left to right, as pruning proceeds
        ticks = sorted({100 * a["keep"] for a in task if a["criterion"] != "dense"}, reverse=True)
        a_.set_xticks(ticks)
        a_.set_xticks([], minor=True)
        a_.set_xticklabels([f"{t:.3g}" for t in ticks], fontsize=7, rotation=90)
        a_.set_xlabel("weights remaining (%, log scale)")
        a_.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("test accuracy at early stopping (%)")
    ax2.set_ylabel("early-stopping iteration (minimum validation loss)")
    note = "one seed" if max(counts) < 2 else f"mean over {_count_text(counts)}; band: min-max over seeds"
    ax.set_title(_wrap(f"{name}: iterative pruning ({note})", 70), fontsize=10)
    ax2.set_title("when each retrained network stopped improving", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _plots(aggs: list[dict]) -> dict[str, bytes]:
    """PNG bytes by file name."""
    from matplotlib import pyplot as plt

    return {name: _png(fig, plt) for name, fig in figures(aggs)}


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    try:  # a 128-colour palette makes the files about 3x smaller with no visible change
        from PIL import Image
    except ImportError:
        return buf.getvalue()
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors=128)
    small = io.BytesIO()
    img.save(small, format="PNG", optimize=True)
    return small.getvalue()


def write_report(rows: list[dict], out: str | os.PathLike, *, command: str | None = None) -> dict[str, Path]:
    """Write results.csv, results.json, report.md, the PNG plots and report.html into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    aggs = aggregate(rows)
    # retrained IMP rows have no ticket: they go to the lottery tables and plots only
    plain = [a for a in aggs if not (a.get("retrained") and a["criterion"] != "dense")]
    budgets = best_per_budget(plain)
    written: dict[str, Path] = {}

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    atomic_write(out / "results.csv", buf.getvalue())
    atomic_write(out / "results.json", json.dumps({"rows": rows, "aggregates": aggs, "best_per_budget": budgets},
                                                  indent=1, allow_nan=False) + "\n")
    written["results.csv"], written["results.json"] = out / "results.csv", out / "results.json"

    plots = {**_plots(plain), **_lottery_plots(aggs)}
    for name, data in plots.items():
        atomic_write(out / name, data)
        written[name] = out / name

    tables = _tables(plain, budgets) + _lottery_tables(aggs)
    md = ["# Supermask size-vs-accuracy report", ""]
    if command:
        md += [f"Made by `{command}`.", ""]
    md += ["Accuracies are on the test set; sizes are of files written by `supermask pack` and "
           "`supermask export` for each row.", ""]
    for title, header, body in tables:
        md += [f"## {title}", "", _markdown_table(header, body), ""]
    md += ["## Plots", ""] + [f"![{n}]({n})" for n in plots] + [""]
    atomic_write(out / "report.md", "\n".join(md))
    written["report.md"] = out / "report.md"

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Supermask report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}",
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}",
             "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}",
             "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             "<h1>Supermask size-vs-accuracy report</h1>"]
    if command:
        parts.append(f"<p>Made by <code>{html.escape(command)}</code>.</p>")
    parts += [_html_table(t, h, b) for t, h, b in tables]
    for name, data in plots.items():
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>\n")
    atomic_write(out / "report.html", "\n".join(parts))
    written["report.html"] = out / "report.html"
    return written


_INT_COLUMNS = {"seed", "num_weights", "num_params", "early_stop_iteration", *REPRESENTATIONS}
_FLOAT_COLUMNS = {"keep", "accuracy", "density", "bits_per_weight_bitpack", "bits_per_weight_entropy"}
_FRACTIONS = {"keep", "accuracy", "density"}


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``results.csv`` that :func:`write_report` wrote, with their types back
    (empty cells are None), so a report can be drawn again without measuring."""
    from .errors import SupermaskError

    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL_COLUMNS]
            if missing:
                raise SupermaskError(f"{path} is not a results.csv of `supermask report`: no column "
                                     f"{', '.join(missing[:5])}")
            rows = []
            for r in reader:
                row = {}
                for k in COLUMNS:
                    v = r.get(k)
                    if k == "retrained":
                        if v not in ("", None, "True", "False"):
                            raise SupermaskError(f"{path}, row {reader.line_num - 1}: retrained is {v!r}; it must "
                                                 f"be True, False or empty")
                        row[k] = None if v in ("", None) else v == "True"
                        continue
                    row[k] = (None if v in ("", None) else int(v) if k in _INT_COLUMNS
                              else float(v) if k in _FLOAT_COLUMNS else v)
                    x = row[k]
                    if isinstance(x, (int, float)) and not (math.isfinite(x) and x >= 0
                                                            and (k not in _FRACTIONS or x <= 1)):
                        raise SupermaskError(f"{path}, row {reader.line_num - 1}: {k} is {v!r}; it must be "
                                             + ("a fraction in [0, 1]" if k in _FRACTIONS
                                                else "a finite number of at least 0"))
                rows.append({k: v for k, v in row.items() if k not in OPTIONAL_COLUMNS or v is not None})
    except OSError as e:
        raise SupermaskError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise SupermaskError(f"{path}: a cell is not a number ({e})") from None
    if not rows:
        raise SupermaskError(f"{path} holds no rows")
    return rows


def report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, artifacts: str | None = None,
           progress: bool = True, command: str | None = None) -> dict[str, Path]:
    """Measure every run under ``paths`` and write the report into ``out``."""
    from .train.sweep import run_dirs

    require_matplotlib()
    rows = measure(run_dirs(paths), artifacts=artifacts, progress=progress)
    return write_report(rows, out, command=command)
