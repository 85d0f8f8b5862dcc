"""Reproduce the supermask results of Zhou et al. 2019 over several seeds in one command.

    python benchmarks/reproduce_supermasks.py --model lenet-300-100 --dataset fashion-mnist \\
        --data-dir ../shared/data --seeds 0,1,2 --out runs/repro-fashion

Runs ``supermask find`` once per seed (finished runs are reused), writes
``OUT/summary.json`` and ``OUT/summary.md`` (the table in docs/results.md) and checks the
acceptance thresholds: exit status 1 if any check fails.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402

KEEPS = (0.5, 0.3, 0.2, 0.1, 0.05)


def checks(rows_by_seed: dict[int, list[dict]]) -> list[tuple[str, bool]]:
    out = []
    for seed, rows in rows_by_seed.items():
        by = {(r["criterion"], r["init"], r["keep"]): r["accuracy"] for r in rows}
        dense = by["dense", "trained", 1.0]
        lfss = [by["large_final_same_sign", "original", k] for k in KEEPS]
        sc = [by["large_final_same_sign", "signed-constant", k] for k in KEEPS]
        out.append((f"seed {seed}: dense {100 * dense:.2f} % >= 88 %", dense >= 0.88))
        out.append((f"seed {seed}: best large_final_same_sign {100 * max(lfss):.2f} % >= 65 %", max(lfss) >= 0.65))
        for k in KEEPS:
            a = by["large_final_same_sign", "original", k]
            lf, rnd = by["large_final", "original", k], by["random", "original", k]
            out.append((f"seed {seed}: keep {k:g}: large_final_same_sign {100 * a:.2f} > large_final "
                        f"{100 * lf:.2f} and random {100 * rnd:.2f}", a > lf and a > rnd))
        out.append((f"seed {seed}: best signed-constant large_final_same_sign {100 * max(sc):.2f} % >= 70 %",
                    max(sc) >= 0.70))
    return out


def table(rows_by_seed: dict[int, list[dict]]) -> str:
    seeds = sorted(rows_by_seed)
    acc = {}
    for seed in seeds:
        for r in rows_by_seed[seed]:
            acc.setdefault((r["criterion"], r["init"], r["keep"]), []).append(r["accuracy"])

    def cell(v):
        return f"{100 * statistics.mean(v):.1f} ± {100 * statistics.pstdev(v):.1f}" if len(v) > 1 \
            else f"{100 * v[0]:.1f}"

    lines = [f"Dense trained network: **{cell(acc['dense', 'trained', 1.0])} %** "
             f"(mean ± std over seeds {', '.join(map(str, seeds))}).", "",
             "| criterion | init | " + " | ".join(f"keep {k:g}" for k in KEEPS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in KEEPS) + " |"]
    crits = list(dict.fromkeys(c for c, _, _ in acc if c != "dense"))
    for c in crits:
        for v in ("original", "signed-constant"):
            lines.append(f"| {c} | {v} | " + " | ".join(cell(acc[c, v, k]) if (c, v, k) in acc else "-"
                                                             for k in KEEPS) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--model", default="lenet-300-100", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--epochs", type=int, default=None, help="Default: supermask find's default.")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", default="runs/repro", show_default=True)
def main(model, dataset, data_dir, seeds, epochs, device, threads, out):
    from supermask.train.config import DEFAULT_EPOCHS, FindConfig
    from supermask.train.find import find

    out = Path(out)
    rows_by_seed, seconds = {}, {}
    for seed in (int(s) for s in seeds.split(",")):
        cfg = FindConfig(model, dataset, seed=seed, epochs=epochs or DEFAULT_EPOCHS, keeps=KEEPS)
        t = time.perf_counter()
        res = find(cfg, out / f"seed-{seed}", data_dir=data_dir, device=device, progress=False, threads=threads)
        seconds[seed] = time.perf_counter() - t
        rows_by_seed[seed] = res["rows"]
        click.echo(f"seed {seed} done in {seconds[seed]:.0f} s", err=True)
    results = checks(rows_by_seed)
    md = table(rows_by_seed)
    summary = {"model": model, "dataset": dataset, "epochs": epochs or DEFAULT_EPOCHS, "machine": machine(), "threads": threads,
               "seconds_per_seed": seconds, "checks": [{"check": c, "ok": ok} for c, ok in results]}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / "summary.md", md + "\n")
    click.echo(md)
    for c, ok in results:
        click.echo(f"{'PASS' if ok else 'FAIL'}  {c}")
    sys.exit(0 if all(ok for _, ok in results) else 1)


if __name__ == "__main__":
    main()
