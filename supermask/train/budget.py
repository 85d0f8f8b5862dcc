"""``find --budget``: the most accurate ticket whose file fits in a byte budget.

A ticket's size is about the graph plus ``n * H(keep)`` bits of masks, so at one budget a
wider random network at a lower keep competes with a narrower one at a higher keep. The
search (docs/frontier.md) scales the hidden widths of a fully connected model by each
multiplier, picks for each width the largest keep of :data:`KEEP_LADDER` whose ticket is
predicted to fit, runs ``find`` for those (width, keep) pairs (each an ordinary, resumable run
folder), packs every result that fits and keeps the most accurate.

The prediction packs a ticket of the real graph with random masks of exactly the kept count
per layer; learned masks of the same counts code to within a few bytes of it. A margin of
:data:`MARGIN` of the budget absorbs the rest, and the real ticket is measured before it counts.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import models
from ..atomic import atomic_write
from ..errors import RunError
from . import criteria as crit
from .config import FindConfig

log = logging.getLogger(__name__)

#: Width multipliers of the hidden layers that the search tries by default.
DEFAULT_WIDTHS = (0.25, 0.5, 1.0, 2.0)
#: The keeps a width may take: the largest whose ticket fits is trained.
KEEP_LADDER = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.025, 0.02, 0.015, 0.012,
               0.01, 0.008, 0.006, 0.005, 0.004, 0.003, 0.0025, 0.002, 0.0015, 0.0012, 0.001)
#: A candidate's predicted ticket must fit in (1 - MARGIN) of the budget.
MARGIN = 0.01
#: The methods whose masks have a keep chosen in advance.
BUDGET_METHODS = ("edge-popup", "criteria")


def base_widths(model: str) -> tuple[int, ...]:
    """The hidden widths that the multipliers scale: those of an ``mlp-...`` name or lenet-300-100."""
    widths = (300, 100) if model == "lenet-300-100" else models.mlp_widths(model)
    if widths is None:
        raise RunError(f"--budget searches over the widths of a fully connected model; give --model lenet-300-100 "
                       f"or {models.MLP_FAMILY} (for example mlp-300-100), not {model!r}")
    return widths


def scaled(model: str, multiplier: float) -> str:
    """The ``mlp-...`` name of ``model`` with every hidden width times ``multiplier`` (at least 1)."""
    return models.mlp_name(max(1, int(round(w * multiplier))) for w in base_widths(model))


def predicted_bytes(cfg: FindConfig, keeps: Sequence[float], *, data_dir: str | None = None,
                    download: bool = False) -> dict[float, int]:
    """keep -> bytes of a ticket of ``cfg``'s model at that keep (random masks of the kept counts)."""
    from ..export.torch_graph import export_graph
    from ..ticket3 import encode_v3
    from .find import prepare
    from .masks import kept_count, learned_multipliers
    from .pack import ticket_tensors

    cfg, inputs = prepare(cfg, data_dir=data_dir, download=download)
    subject = inputs.subject
    stored = {n: np.zeros(subject.plans[n].shape, np.float32) for n in subject.trained_extras}
    masked = {n: subject.plans[n].shape for n, p in subject.plans.items() if p.fate == "masked"}
    gen = np.random.default_rng(0)

    def random_masks(keep: float) -> dict[str, np.ndarray]:
        out = {}
        for n, shape in masked.items():
            flat = np.zeros(int(np.prod(shape)), bool)
            flat[gen.permutation(flat.size)[:kept_count(keep, flat.size)]] = True
            out[n] = flat.reshape(shape)
        return out

    # The roles and the weight-free graph do not depend on the keep: build them once.
    masks = random_masks(keeps[0])
    roles, tensors = ticket_tensors(subject, cfg.seed, cfg.init_for(keeps[0] if cfg.learned else None), masks,
                                    stored, learned_multipliers(cfg, masks))
    graph = export_graph(subject.module, tensors, inputs.test_set.input_shape, inputs.preprocess)
    meta = {"method": cfg.method, "dataset": cfg.dataset[-200:], "model": cfg.model[-200:],
            "accuracy": 0.123456789, "test_examples": len(inputs.test_set), "input_min": 0, "input_max": 255}
    criterion = cfg.method if cfg.learned else crit.DEFAULT_CRITERION
    sizes = {}
    for i, keep in enumerate(keeps):
        masks = masks if i == 0 else random_masks(keep)
        sizes[keep] = len(encode_v3(graph, seed=cfg.seed, init=cfg.init_for(keep if cfg.learned else None),
                                    roles=roles, classes=inputs.test_set.classes, masks=masks, stored=stored,
                                    criterion=criterion, keep=keep, metadata=meta))
    return sizes


def plan(budgets: Sequence[int], cfg: FindConfig, widths: Sequence[float] = DEFAULT_WIDTHS, **data) -> list[dict]:
    """The (model, keep) candidates for ``budgets``: per budget and width multiplier, the
    largest keep of :data:`KEEP_LADDER` whose predicted ticket fits in (1 - MARGIN) of the
    budget. A width whose smallest keep does not fit is left out (and logged). Each candidate
    lists the budgets it serves."""
    out: dict[tuple[str, float], dict] = {}
    for m in widths:
        model = scaled(cfg.model, m)
        sizes = predicted_bytes(replace(cfg, model=model), KEEP_LADDER, **data)
        for budget in budgets:
            keep = next((k for k in KEEP_LADDER if sizes[k] <= budget * (1 - MARGIN)), None)  # largest first
            if keep is None:
                log.info("%s: even keep %g needs %s bytes, over %s; left out", model, KEEP_LADDER[-1],
                         f"{sizes[KEEP_LADDER[-1]]:,}", f"{budget:,}")
                continue
            c = out.setdefault((model, keep), {"model": model, "width": m, "keep": keep,
                                               "predicted_bytes": sizes[keep], "budgets": []})
            c["budgets"].append(budget)
    return list(out.values())


def run_name(c: dict) -> str:
    return f"{c['model']}-keep{c['keep']:g}"


def find_budget(budgets: Sequence[int], cfg: FindConfig, out: str | os.PathLike, *,
                widths: Sequence[float] = DEFAULT_WIDTHS, data_dir: str | None = None, download: bool = False,
                **run) -> dict:
    """Search (or resume searching) ``out`` for the most accurate ticket of at most each of
    ``budgets`` bytes (``cfg.keeps`` is not used: the search picks the keeps). Candidate runs go
    to ``out/<model>-keep<keep>`` (shared by the budgets they serve), the best ticket of each
    budget to ``out/best-<budget>.smask`` and the search to ``out/budget.json``, which is returned."""
    from .find import find
    from .pack import fitting
    from .runs import load_run, ranked_rows

    if cfg.method not in BUDGET_METHODS:
        raise RunError(f"--budget picks each width's keep; --method {cfg.method} "
                       f"{'learns its own density' if cfg.method == 'bernoulli' else 'sets keeps by rounds'}; "
                       f"use --method {' or '.join(BUDGET_METHODS)}")
    if not widths or any(not 0 < w <= 64 for w in widths):
        raise RunError(f"width multipliers must be in (0, 64], got {list(widths)}")
    budgets = sorted(set(int(b) for b in budgets))
    if not budgets or budgets[0] < 1:
        raise RunError(f"budgets must be positive numbers of bytes, got {budgets}")
    base_widths(cfg.model)
    out = Path(out)
    candidates = plan(budgets, cfg, widths, data_dir=data_dir, download=download)
    for b in budgets:
        if not any(b in c["budgets"] for c in candidates):
            raise RunError(f"no width fits a ticket in {b:,} bytes, even at keep {KEEP_LADDER[-1]}; allow more "
                           f"bytes or give smaller --widths")
    tickets: dict[str, bytes] = {}  # candidate run name -> its packed ticket
    for i, c in enumerate(candidates, 1):
        run_dir = out / run_name(c)
        log.info("candidate %d of %d: %s keep %g (predicted %s bytes) -> %s", i, len(candidates), c["model"],
                 c["keep"], f"{c['predicted_bytes']:,}", run_dir)
        find(replace(cfg, model=c["model"], keeps=(c["keep"],)), run_dir, data_dir=data_dir, download=download,
             **run)
        rcfg, info, results = load_run(run_dir)
        c["run"] = run_dir.name
        try:
            row, data, _, _ = fitting(run_dir, rcfg, info, ranked_rows(results), min(c["budgets"]), "auto", None)
        except RunError as e:  # the margin did not cover it: reported, never packed
            c.update(bytes=None, error=str(e))
            continue
        c.update(bytes=len(data), accuracy=row["accuracy"], correct=row["correct"], total=row["total"],
                 criterion=row["criterion"], init=row["init"])
        tickets[c["run"]] = data
    best = {}
    for b in budgets:
        fits = [c for c in candidates if b in c["budgets"] and c.get("bytes") is not None and c["bytes"] <= b]
        if not fits:
            raise RunError(f"no candidate's ticket fit in {b:,} bytes once trained; see {out}/*/ and allow more bytes")
        top = max(fits, key=lambda c: (c["correct"], -c["bytes"]))
        atomic_write(out / f"best-{b}.smask", tickets[top["run"]])
        best[str(b)] = {**top, "ticket": f"best-{b}.smask"}
    summary = {"budgets": budgets, "method": cfg.method, "dataset": cfg.dataset, "seed": cfg.seed,
               "model": cfg.model, "widths": list(widths), "margin": MARGIN, "candidates": candidates, "best": best}
    atomic_write(out / "budget.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary
