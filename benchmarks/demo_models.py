"""ResNet-20 and the depthwise-separable net (dwnet), edge-popup on Fashion-MNIST: BatchNorm
statistics only (``--affine fixed``) and "+BN" (``--affine trained``). Resumable: a finished
run is skipped, an interrupted one resumes from its last epoch.

    python benchmarks/demo_models.py --data-dir ../shared/data --epochs 2 --out runs/demo

Prints one Markdown row per run (accuracy, ticket bytes, compressed graph section, stored
floats) and writes the tickets to OUT/<model>-<affine>.smask.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from supermask.train.config import FindConfig
from supermask.train.find import find
from supermask.train.pack import pack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="resnet20,dwnet")
    ap.add_argument("--affine", default="fixed,trained")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = []
    for model in args.models.split(","):
        for affine in args.affine.split(","):
            cfg = FindConfig(model, "fashion-mnist", seed=0, method="edge-popup", keeps=(args.keep,),
                             epochs=args.epochs, affine=affine)
            run = out / f"{model}-{affine}"
            t0 = time.perf_counter()
            res = find(cfg, run, data_dir=args.data_dir, progress=True)
            seconds = time.perf_counter() - t0
            ticket, check = pack(run, out / f"{model}-{affine}.smask", return_validation=True)
            s = ticket.summary()
            r = res["rows"][0]
            rows.append({"model": model, "affine": affine, "accuracy": r["accuracy"], "correct": r["correct"],
                         "total": r["total"], "ticket_bytes": s["file_bytes"], "mask_bytes": s["mask_bytes"],
                         "stored_bytes": s["stored_bytes"], "section_bytes": s["graph"]["section_bytes"],
                         "graph_bytes": s["graph"]["bytes"], "dense_float32_bytes": s["dense_float32_bytes"],
                         "max_abs_diff": check.max_abs_diff, "seconds_this_call": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.epochs} epochs, keep {args.keep}\n")
    print("| model | biases, BN affine | test accuracy | ticket bytes | masks | stored floats | graph section |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['affine']} | {100 * r['accuracy']:.2f} % ({r['correct']}/{r['total']}) | "
              f"{r['ticket_bytes']:,} | {r['mask_bytes']:,} | {r['stored_bytes']:,} | {r['section_bytes']:,} |")


if __name__ == "__main__":
    main()
