"""Pack every mask of finished find runs and check the ticket's accuracy in onnxruntime
against the figure ``find`` measured in torch.

    python benchmarks/check_tickets.py RUN_OR_SWEEP... [--data-dir DIR] [--criterion NAME] [--lowbit] [--json out.json]

For each results row (all of a learned run; the given ``--criterion`` of a criteria run,
``large_final_same_sign`` by default, or ``all``) it writes the ticket with ``--codec auto`` into a
temporary folder, loads it with the torch-free runtime on the CPU and evaluates it on the
same test images. Prints a Markdown table (ticket bytes, find's accuracy, onnxruntime's) and
exits with status 1 when any count differs.

``--lowbit``: also load every signed-constant ticket with exact 4-bit weights
(``weights="lowbit"``) and check the exactness contract of docs/deploy.md against the
float32 path: the same correct count, and the same prediction (under the tie rule of
``supermask.prediction``) for every test image except ties (the two classes' float32
logits within ``2e-5 * max(1, largest |logit|)``, where the order of the additions can move
a logit across the edge of the tie band).
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
from supermask.prediction import TIE_TOLERANCE, predict_classes  # noqa: E402
from supermask.train.pack import pack  # noqa: E402
from supermask.train.runs import load_run  # noqa: E402
from supermask.train.sweep import run_dirs  # noqa: E402


def differing_predictions(zf: np.ndarray, zq: np.ndarray) -> tuple[int, int]:
    """(examples whose prediction under the project's rule (``predict_classes``: ties within
    the band of 1e-5 times the largest |logit| go to the lowest class) differs between the
    float32 logits ``zf`` and the 4-bit ones ``zq``, how many of those are ties the contract
    allows. The contract lets logits differ by ``tol = 1e-5 * max(1, largest |logit|)``, so a
    prediction may differ where the two classes' float32 logits are within ``2 * tol``: the
    band plus that difference. The floor of 1 matters where all logits cancel to about 0.)"""
    pf, pq = predict_classes(zf), predict_classes(zq)
    rows = np.nonzero(pf != pq)[0]
    tol = TIE_TOLERANCE * np.maximum(1.0, np.abs(zf[rows]).max(1))
    near = np.abs(zf[rows, pf[rows]] - zf[rows, pq[rows]]) <= 2 * tol
    return int(rows.size), int(near.sum())


def lowbit_check(path: Path, model, float_correct: int, images: np.ndarray, labels: np.ndarray) -> dict:
    """The ticket at ``path`` loaded with 4-bit weights, against its float32 ``model``."""
    q = runtime.load(path, device="cpu", weights="lowbit")
    zf, zq = model.logits(images), q.logits(images)
    differ, near = differing_predictions(zf, zq)
    # for scale: the float32 path against itself, all 10,000 images in one run vs batches of 256
    zb = np.concatenate([model.logits(images[a:a + 256]) for a in range(0, len(images), 256)])
    # evaluate() for both paths: the same batches
    return {"lowbit_correct": q.evaluate(images, labels).correct, "float_correct": float_correct,
            "lowbit_differ": differ, "lowbit_differ_outside_tolerance": differ - near,
            "float_batch_differ": differing_predictions(zf, zb)[0], "lowbit_summary": q.weights_summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--criterion", default="large_final_same_sign", help="for criteria runs ('all': every criterion)")
    ap.add_argument("--lowbit", action="store_true", help="also check 4-bit weights against float32")
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
                if r["criterion"] != want and not (want == "all" and not cfg.learned and r["criterion"] != "dense"):
                    continue
                path = Path(tmp) / f"{run.name}-{r['criterion']}-{r['init']}-{r['keep']!r}.smask"
                t = pack(run, path, criterion=r["criterion"], keep=r["keep"], init=r["init"])
                model = runtime.load(path, device="cpu", weights="float")
                ev = model.evaluate(images, labels)
                same = ev.correct == r["correct"]
                row = {"run": run.name, "seed": cfg.seed, "criterion": r["criterion"], "init": r["init"],
                       "keep": r["keep"], "density": r["density"], "ticket_bytes": t.file_bytes,
                       "find_accuracy": r["accuracy"], "onnxruntime_accuracy": ev.accuracy}
                if args.lowbit and all(e.distribution == "signed_constant" for e in t.tensors if e.role == "masked"):
                    row.update(lowbit_check(path, model, ev.correct, images, labels))
                    same = same and row["lowbit_correct"] == ev.correct and not row["lowbit_differ_outside_tolerance"]
                row["same"] = same
                bad += not same
                out.append(row)
    print(f"machine: {machine()}\n")
    low = ("| 4-bit correct | float correct | predictions that differ (all near-ties?) "
           "| float32 vs float32 in batches of 256 ") if args.lowbit else ""
    print(f"| run | criterion | init | keep | ticket bytes | find (torch) % | onnxruntime % {low}| same |")
    print("|" + " --- |" * (8 + 4 * bool(args.lowbit)))
    for o in out:
        cells = ""
        if args.lowbit:
            cells = (f"{o['lowbit_correct']:,} | {o['float_correct']:,} | {o['lowbit_differ']} "
                     f"({'yes' if not o['lowbit_differ_outside_tolerance'] else 'NO'}) | {o['float_batch_differ']} | "
                     if "lowbit_correct" in o else "- | - | - | - | ")
        print(f"| {o['run']} | {o['criterion']} | {o['init']} | {o['keep']:.4g} | {o['ticket_bytes']:,} | "
              f"{100 * o['find_accuracy']:.2f} | {100 * o['onnxruntime_accuracy']:.2f} | {cells}{'yes' if o['same'] else 'NO'} |")
    if args.lowbit:
        low = [o for o in out if "lowbit_correct" in o]
        print(f"\n{len(low)} signed-constant tickets loaded with 4-bit weights too: the same correct count in "
              f"{sum(o['lowbit_correct'] == o['float_correct'] for o in low)}; "
              f"{sum(o['lowbit_differ'] for o in low)} predictions differ from float32 in "
              f"{sum(o['lowbit_differ'] > 0 for o in low)} tickets, "
              f"{sum(o['lowbit_differ_outside_tolerance'] for o in low)} of them outside the near-tie tolerance "
              f"(float32 against itself in batches of 256: {sum(o['float_batch_differ'] for o in low)} in "
              f"{sum(o['float_batch_differ'] > 0 for o in low)} tickets)")
    if args.json:
        atomic_write(args.json, json.dumps({"machine": machine(), "rows": out}, indent=1) + "\n")
    if bad:
        print(f"\n{bad} ticket(s) differ from the run's accuracy (or 4-bit from float32)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
