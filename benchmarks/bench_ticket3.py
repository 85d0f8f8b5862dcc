"""Format version 3 (the graph travels in the ticket): sizes and load times, side by side.

    python benchmarks/bench_ticket3.py --data-dir ../shared/data [--repeats 7]

* Ticket overhead: bytes beyond the mask payloads of a lenet-300-100 ticket packed from a
  short edge-popup run on Fashion-MNIST (keep 0.1 and 0.2), and the same masks written as a
  version-1 ticket (layer list, no graph) for comparison. The overhead does not depend on
  how long the masks trained.
* Graph section of the built-in models with BatchNorm (resnet20, dwnet): graph bytes, the
  compressed header-and-graph section, and the stored floats.
* Import time of the runtime: a fresh interpreter importing ``supermask.runtime`` and
  onnxruntime, against the same plus ``onnx`` (which version 1 and 2 tickets need), minus a
  bare interpreter; medians.
* Ticket -> ready session: version 3 (graph bytes from the ticket) against version 1 (graph
  built with onnx.helper), same masks; medians.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_seconds  # noqa: E402


def fresh(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import torch

    import supermask.runtime as smr
    from supermask import datasets, models, read_ticket, write_ticket
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    torch.set_num_threads(1)
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        cfg = FindConfig("lenet-300-100", "fashion-mnist", method="edge-popup", keeps=(0.2, 0.1), iterations=50)
        find(cfg, tmp / "lenet", data_dir=args.data_dir, progress=False)
        for keep in (0.2, 0.1):
            t = pack(tmp / "lenet", tmp / f"l{keep}.smask", keep=keep)
            s = t.summary()
            arch = models.build("lenet-300-100", (1, 28, 28), datasets.SOURCES["fashion-mnist"].classes)
            v1 = write_ticket(tmp / f"v1-{keep}.smask", arch, t.seed, t.init, dict(t.masks), criterion=t.criterion,
                              keep=t.keep, metadata=dict(t.metadata))
            rows.append({"keep": keep, "v3_bytes": s["file_bytes"], "v3_overhead": s["overhead_bytes"],
                         "mask_bytes": s["mask_bytes"], "v1_bytes": v1.file_bytes,
                         "v1_overhead": v1.file_bytes - s["mask_bytes"], "section_bytes": s["graph"]["section_bytes"],
                         "graph_bytes": s["graph"]["bytes"]})
        out["lenet_overhead"] = rows

        graphs = []
        for name in ("resnet20", "dwnet"):
            cfg = FindConfig(name, "fashion-mnist", method="edge-popup", keeps=(0.5,), iterations=2,
                             bn_examples=500, test_limit=500)
            find(cfg, tmp / name, data_dir=args.data_dir, progress=False)
            t = pack(tmp / name, tmp / f"{name}.smask")
            s = t.summary()
            graphs.append({"model": name, "ticket_bytes": s["file_bytes"], "graph_bytes": s["graph"]["bytes"],
                           "section_bytes": s["graph"]["section_bytes"], "mask_bytes": s["mask_bytes"],
                           "stored_bytes": s["stored_bytes"], "num_weights": s["num_weights"]})
        out["graph_section"] = graphs

        bare = median_seconds(lambda: fresh("pass"), args.repeats, warmup=1)
        light = median_seconds(lambda: fresh("import supermask.runtime, onnxruntime"), args.repeats, warmup=1)
        heavy = median_seconds(lambda: fresh("import supermask.runtime, onnxruntime, onnx"), args.repeats, warmup=1)
        out["import_seconds"] = {"runtime_and_onnxruntime": light - bare, "plus_onnx": heavy - bare,
                                 "ratio": (heavy - bare) / max(light - bare, 1e-9)}

        v3, v1 = tmp / "l0.1.smask", tmp / "v1-0.1.smask"
        smr.load(v3, "cpu"), smr.load(v1, "cpu")  # warm both paths (imports, caches)
        s3 = median_seconds(lambda: smr.load(read_ticket(v3), "cpu"), args.repeats * 3, warmup=2)
        s1 = median_seconds(lambda: smr.load(read_ticket(v1), "cpu"), args.repeats * 3, warmup=2)
        x = np.array(datasets.load("fashion-mnist", "test", args.data_dir).images[:1000])
        same = bool((smr.load(v3, "cpu").predict(x) == smr.load(v1, "cpu").predict(x)).all())
        out["load_seconds"] = {"v3": s3, "v1": s1, "ratio_v1_over_v3": s1 / s3, "same_predictions_1000": same}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
