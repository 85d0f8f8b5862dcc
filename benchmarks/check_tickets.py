"""Pack every mask of finished find runs and check the ticket's accuracy in onnxruntime
against the figure ``find`` measured in torch.

    python benchmarks/check_tickets.py RUN_OR_SWEEP... [--data-dir DIR] [--criterion NAME] [--json out.json]

For each results row (all of a learned run; the given ``--criterion`` of a criteria run,
``large_final_same_sign`` by default) it writes the ticket with ``--codec auto`` into a
temporary folder, loads it with the torch-free runtime on the CPU and evaluates it on the
same test images. Prints a Markdown table (ticket bytes, find's accuracy, onnxruntime's) and
exits with status 1 when any count differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from supermask import datasets, runtime  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402
from supermask.train.pack import pack  # noqa: E402
from supermask.train.runs import load_run  # noqa: E402
from supermask.train.sweep import run_dirs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--criterion", default="large_final_same_sign", help="for criteria runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out, bad = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for run in run_dirs(args.runs):
            cfg, _info, results = load_run(run)
            test = datasets.load(cfg.dataset, "test", args.data_dir)
            n = cfg.test_limit or len(test)
            images, labels = np.asarray(test.images[:n]), np.asarray(test.labels[:n])
            want = cfg.method if cfg.learned else args.criterion
            for r in results["rows"]:
                if r["criterion"] != want:
                    continue
                path = Path(tmp) / f"{run.name}-{r['criterion']}-{r['init']}-{r['keep']!r}.smask"
                t = pack(run, path, criterion=r["criterion"], keep=r["keep"], init=r["init"])
                ev = runtime.load(path, device="cpu").evaluate(images, labels)
                same = ev.correct == r["correct"]
                bad += not same
                out.append({"run": run.name, "seed": cfg.seed, "criterion": r["criterion"], "init": r["init"],
                            "keep": r["keep"], "density": r["density"], "ticket_bytes": t.file_bytes,
                            "find_accuracy": r["accuracy"], "onnxruntime_accuracy": ev.accuracy, "same": same})
    print(f"machine: {machine()}\n")
    print("| run | criterion | init | keep | ticket bytes | find (torch) % | onnxruntime % | same |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for o in out:
        print(f"| {o['run']} | {o['criterion']} | {o['init']} | {o['keep']:.4g} | {o['ticket_bytes']:,} | "
              f"{100 * o['find_accuracy']:.2f} | {100 * o['onnxruntime_accuracy']:.2f} | {'yes' if o['same'] else 'NO'} |")
    if args.json:
        atomic_write(args.json, json.dumps({"machine": machine(), "rows": out}, indent=1) + "\n")
    if bad:
        print(f"\n{bad} ticket(s) differ from the run's accuracy", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
