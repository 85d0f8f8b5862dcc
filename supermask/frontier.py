"""Accuracy per byte: the best ticket against the best baseline at each byte budget.

Reads ``find --budget`` searches (folders with ``budget.json``, or folders of them, one per
seed) and ``supermask baseline`` folders (``results.json``), and writes ``frontier.md``,
``frontier.csv`` and ``frontier.png``. The rule (docs/frontier.md):

* a *config* is one ticket (model, keep, method) or one baseline (method, width); its accuracy
  is the mean over its seeds and its size the largest file over its seeds;
* only configs measured on every seed of their kind count (no lucky single seed);
* at each budget the best ticket is the most accurate ticket config whose files all fit, and
  likewise the best baseline over every baseline method (ties: the smaller file).

Both sides are picked on the test set the same way. Torch-free; the plot needs matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .atomic import atomic_write
from .errors import ReportError

TICKET = "ticket"


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None


def _num(row: dict, key: str, where: Path) -> float:
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ReportError(f"{where}: a row has no valid {key!r}; re-run the command that wrote it")
    return v


def ticket_rows(search: Path) -> list[dict]:
    """One row per trained candidate of a ``find --budget`` search folder."""
    summary = _read(search / "budget.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("candidates"), list):
        raise ReportError(f"{search}/budget.json is not a find --budget summary")
    rows = []
    for c in summary["candidates"]:
        if not isinstance(c, dict) or c.get("bytes") is None:  # a candidate over its budget: never a ticket
            continue
        rows.append({"kind": TICKET, "method": f"{summary.get('method')} ticket",
                     "config": f"{c.get('model')} keep {c.get('keep'):g}", "seed": summary.get("seed"),
                     "bytes": int(_num(c, "bytes", search)), "accuracy": _num(c, "accuracy", search),
                     "source": str(search)})
    return rows


def baseline_rows(folder: Path) -> list[dict]:
    """One row per artifact of a ``supermask baseline`` folder."""
    data = _read(folder / "results.json")
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ReportError(f"{folder}/results.json has no list of rows")
    out = []
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("method"), str):
            raise ReportError(f"{folder}/results.json: a row has no method")
        config = f"width {int(_num(r, 'width', folder))}" + (f", density {r['density']:g}" if "density" in r else "")
        out.append({"kind": "baseline", "method": r["method"], "config": config,
                    "seed": r.get("seed"), "bytes": int(_num(r, "bytes", folder)),
                    "accuracy": _num(r, "accuracy", folder), "source": str(folder)})
    return out


def collect(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The rows of every search and baseline folder under ``paths`` (one level deep)."""
    rows: list[dict] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReportError(f"{p} is not a folder")
        if (p / "budget.json").exists():
            rows += ticket_rows(p)
        elif (p / "results.json").exists():
            rows += baseline_rows(p)
        else:
            subs = sorted(d for d in p.iterdir() if (d / "budget.json").exists())
            if not subs:
                raise ReportError(f"{p} holds no find --budget search (budget.json) and no baseline results "
                                  f"(results.json)")
            for d in subs:
                rows += ticket_rows(d)
    if not rows:
        raise ReportError("no measured rows in " + ", ".join(map(str, paths)))
    return rows


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Configs with their mean, spread and largest file over seeds; only configs measured on
    every seed of their kind (tickets, baselines) are kept."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["method"], r["config"])].append(r)
    for key, rs in groups.items():
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ReportError(f"{key[1]} {key[2]} has seed {seeds[0]} twice (from {rs[0]['source']} and another "
                              f"folder); give each measurement once")
    full = {kind: max(len(rs) for k, rs in groups.items() if k[0] == kind) for kind in {k[0] for k in groups}}
    out = []
    for (kind, method, config), rs in sorted(groups.items()):
        if len(rs) < full[kind]:
            continue
        accs = [r["accuracy"] for r in rs]
        out.append({"kind": kind, "method": method, "config": config, "seeds": sorted(r["seed"] for r in rs),
                    "bytes": max(r["bytes"] for r in rs), "accuracy": statistics.fmean(accs),
                    "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0})
    return out


def best_at(configs: Sequence[dict], budget: int) -> dict | None:
    """The most accurate config whose largest file is at most ``budget`` bytes (ties: smaller)."""
    fits = [c for c in configs if c["bytes"] <= budget]
    return max(fits, key=lambda c: (c["accuracy"], -c["bytes"])) if fits else None


def table(configs: Sequence[dict], budgets: Sequence[int]) -> list[dict]:
    """Per budget: the best ticket, the best baseline, and the best of each baseline method."""
    tickets = [c for c in configs if c["kind"] == TICKET]
    bases = [c for c in configs if c["kind"] != TICKET]
    methods = sorted({c["method"] for c in bases})
    out = []
    for b in budgets:
        t, base = best_at(tickets, b), best_at(bases, b)
        out.append({"budget": b, "ticket": t, "baseline": base,
                    "margin": None if t is None or base is None else t["accuracy"] - base["accuracy"],
                    "per_method": {m: best_at([c for c in bases if c["method"] == m], b) for m in methods}})
    return out


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _cell(c: dict | None) -> str:
    if c is None:
        return "nothing fits"
    sd = f" ± {100 * c['sd']:.2f}" if len(c["seeds"]) > 1 else ""
    return f"{100 * c['accuracy']:.2f}{sd} ({c['method'] if c['kind'] != TICKET else 'ticket'}, {c['config']}, " \
           f"{c['bytes']:,} B)"


def markdown(rows: Sequence[dict], command: str | None = None) -> str:
    lines = ["# Accuracy per byte", ""]
    if command:
        lines += ["```sh", command, "```", ""]
    lines += ["Test accuracy %, mean ± sd over seeds, of the best config whose files all fit the budget.", "",
              "| budget | best ticket | best baseline | ticket − baseline (points) |", "| --- | --- | --- | --- |"]
    for r in rows:
        m = "-" if r["margin"] is None else f"{100 * r['margin']:+.2f}"
        lines.append(f"| {_kib(r['budget'])} | {_cell(r['ticket'])} | {_cell(r['baseline'])} | {m} |")
    methods = list(rows[0]["per_method"]) if rows else []
    if methods:
        lines += ["", "The best of each baseline method:", "",
                  "| budget | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
        for r in rows:
            cells = [("-" if c is None else f"{100 * c['accuracy']:.2f} ({c['config']}, {c['bytes']:,} B)")
                     for c in r["per_method"].values()]
            lines.append(f"| {_kib(r['budget'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(configs: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "method", "config", "seeds", "bytes", "accuracy_mean", "accuracy_sd"])
    for c in configs:
        w.writerow([c["kind"], c["method"], c["config"], " ".join(map(str, c["seeds"])), c["bytes"],
                    f"{c['accuracy']:.6f}", f"{c['sd']:.6f}"])
    return buf.getvalue()


def plot(rows: Sequence[dict], title: str) -> bytes:
    """Best ticket and best baseline against the budget, with a ±1 sd band where there are seeds."""
    from .report import _png, bytes_label, require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("ticket", "best ticket", "o-"), ("baseline", "best baseline", "s--")):
        pts = [(r["budget"], r[key]) for r in rows if r[key] is not None]
        if not pts:
            continue
        xs = [b for b, _ in pts]
        ys = [100 * c["accuracy"] for _, c in pts]
        ax.plot(xs, ys, style, label=label)
        if any(len(c["seeds"]) > 1 for _, c in pts):
            sd = [100 * c["sd"] for _, c in pts]
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.2)
    ax.set_xscale("log", base=2)
    budgets = [r["budget"] for r in rows]
    ax.set_xticks(budgets, [bytes_label(b) for b in budgets])
    ax.set_xlabel("byte budget (file size)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig, plt)


def frontier_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, budgets: Sequence[int], *,
                    command: str | None = None, title: str = "accuracy per byte") -> dict[str, Path]:
    """Write frontier.md, frontier.csv and frontier.png for the searches and baselines in ``paths``."""
    configs = aggregate(collect(paths))
    rows = table(configs, sorted(budgets))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"frontier.md": markdown(rows, command).encode(), "frontier.csv": _csv(configs).encode(),
             "frontier.png": plot(rows, title)}
    written = {}
    for name, data in files.items():
        atomic_write(out / name, data)
        written[name] = out / name
    return written
