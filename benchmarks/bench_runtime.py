"""Deployment benchmarks: ticket file -> ready onnxruntime session, file sizes of the ticket
and of the dense and sparse ONNX exports, and onnxruntime against torch eager latency.

    python benchmarks/bench_runtime.py [--json out.json] [--quick] [--keep 0.1]

Prints Markdown tables (the ones in docs/performance.md). Times are medians of several runs;
the onnxruntime/torch ratios come from the same process, measured back to back with the
same thread count. Masks are random at density ``keep`` (file sizes depend on the density,
not on which weights are kept). Needs torch for the latency comparison only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402

from supermask import Architecture, InitSpec, Layer, Preprocess, models, read_ticket, write_ticket  # noqa: E402
from supermask.export import export_ticket  # noqa: E402
import supermask.runtime as smr  # noqa: E402
from supermask.runtime.model import make_session  # noqa: E402

SHAPES = {"lenet-300-100": (1, 28, 28), "conv2": (3, 32, 32), "conv4": (3, 32, 32), "conv6": (3, 32, 32)}


def wide_mlp() -> Architecture:
    """A synthetic 25.2 M-weight network: 3072-4096-3072-10 fully connected."""
    dims = [3072, 4096, 3072, 10]
    layers = [Layer("flatten")]
    for i in range(3):
        layers.append(Layer("linear", f"fc{i + 1}", {"in": dims[i], "out": dims[i + 1], "bias": True}))
        if i < 2:
            layers.append(Layer("relu"))
    return Architecture("wide-mlp-25m", (3, 32, 32), tuple(layers), tuple(f"c{i}" for i in range(10)),
                        Preprocess(1 / 255, (0.0,) * 3, (1.0,) * 3))


def make(folder: Path, arch: Architecture, keep: float, seed: int = 0) -> Path:
    g = np.random.default_rng(seed)
    masks = {p.name: g.random(p.shape) < keep for p in arch.params() if p.kind == "weight"}
    path = folder / f"{arch.name}-{keep}.smask"
    write_ticket(path, arch, seed, InitSpec(), masks=masks, keep=keep)
    return path


def load_times(path: Path, repeats: int) -> dict:
    """Median seconds: whole load, and its parts measured separately."""
    t = read_ticket(path)
    w = t.weights()
    out = {
        "model": t.architecture.name, "num_weights": t.architecture.num_weights,
        "load_s": median_seconds(lambda: smr.load(path, device="cpu"), repeats),
        "read_ticket_s": median_seconds(lambda: read_ticket(path), repeats),
        "weights_s": median_seconds(lambda: t.weights(), repeats),
        "session_s": median_seconds(lambda: make_session(t.architecture, w, "cpu"), repeats),
    }
    return out


def import_seconds(repeats: int) -> float:
    """Median wall time of a fresh interpreter that imports supermask.runtime, minus a bare one."""
    def run(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t

    bare = median_seconds(lambda: run("pass"), repeats, warmup=1)
    full = median_seconds(lambda: run("import supermask.runtime, onnx, onnxruntime"), repeats, warmup=1)
    return full - bare


def sizes(folder: Path, keep: float) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        arch = models.build(name, shape, [f"c{i}" for i in range(10)])
        path = make(folder, arch, keep)
        d = export_ticket(path, folder / f"{name}-dense.onnx", "dense")
        s = export_ticket(path, folder / f"{name}-sparse.onnx", "sparse")
        rows.append({"model": name, "input_shape": list(shape), "keep": keep, "num_weights": arch.num_weights,
                     "float32_bytes": 4 * sum(p.size for p in arch.params()), "dense_onnx_bytes": d.file_bytes,
                     "sparse_onnx_bytes": s.file_bytes, "ticket_bytes": path.stat().st_size})
    return rows


def latency(folder: Path, keep: float, repeats: int, threads: int) -> list[dict]:
    import torch

    from supermask.models import torch_module

    torch.set_num_threads(threads)
    rows = []
    g = np.random.default_rng(0)
    for name, shape in SHAPES.items():
        path = folder / f"{name}-{keep}.smask"
        t = read_ticket(path)
        model = smr.load(t, device="cpu", threads=threads)
        net = torch_module.build(t.architecture, t.weights()).eval()
        for batch in (1, 256):
            x = g.integers(0, 256, (batch, *shape), dtype=np.uint8)
            xf = x.astype(np.float32)

            def run_torch(net=net, xf=xf, arch=t.architecture):
                with torch.inference_mode():
                    return net(torch_module.preprocess(xf, arch))

            def run_ort(model=model, xf=xf):
                return model.logits(xf)

            reps = repeats * (20 if batch == 1 else 1)
            # interleave: ort, torch, ort, torch... so that load changes on a shared machine
            # hit both; each sample is the median of a short burst
            ort_s, torch_s = [], []
            for _ in range(3):
                ort_s.append(median_seconds(run_ort, reps))
                torch_s.append(median_seconds(run_torch, reps))
            o, tt = float(np.median(ort_s)), float(np.median(torch_s))
            rows.append({"model": name, "batch": batch, "onnxruntime_ms": 1000 * o, "torch_eager_ms": 1000 * tt,
                         "torch_over_onnxruntime": tt / o, "threads": threads})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--keep", type=float, default=0.1, help="mask density (default 0.1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes")
    args = ap.parse_args()
    repeats = 3 if args.quick else 11
    res: dict = {"machine": machine(), "keep": args.keep, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lenet = make(folder, models.build("lenet-300-100", (1, 28, 28), [f"c{i}" for i in range(10)]), args.keep)
        big = make(folder, wide_mlp(), args.keep)
        res["load"] = [load_times(lenet, repeats * 3), load_times(big, repeats)]
        res["import_s"] = import_seconds(3 if args.quick else 7)
        res["sizes"] = sizes(folder, args.keep)
        res["latency"] = latency(folder, args.keep, repeats, args.threads)

    print(f"machine: {res['machine']}; keep {args.keep}; {args.threads} threads\n")
    print("Ticket file -> ready onnxruntime session (CPU provider), median; parts measured separately:\n")
    print("| model | weights | load | read + decode ticket | regenerate + verify + mask | build graph + session |")
    print("|---|---|---|---|---|---|")
    for r in res["load"]:
        print(f"| {r['model']} | {r['num_weights']:,} | {1000 * r['load_s']:.1f} ms"
              f" | {1000 * r['read_ticket_s']:.1f} ms | {1000 * r['weights_s']:.1f} ms"
              f" | {1000 * r['session_s']:.1f} ms |")
    print(f"\nImporting supermask.runtime (with onnx and onnxruntime) in a fresh interpreter adds "
          f"{1000 * res['import_s']:.0f} ms (median), paid once per process.\n")
    print(f"File sizes at keep {args.keep} (random masks):\n")
    print("| model | input | weights | float32 | dense ONNX | sparse ONNX | ticket | ONNX dense / ticket |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["sizes"]:
        print(f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | {r['num_weights']:,} | "
              f"{r['float32_bytes']:,} | {r['dense_onnx_bytes']:,} | {r['sparse_onnx_bytes']:,} | "
              f"{r['ticket_bytes']:,} | {r['dense_onnx_bytes'] / r['ticket_bytes']:.0f}x |")
    print("\nCPU inference latency, onnxruntime vs torch eager (same process, same threads, median):\n")
    print("| model | batch | onnxruntime | torch eager | torch / onnxruntime |")
    print("|---|---|---|---|---|")
    for r in res["latency"]:
        print(f"| {r['model']} | {r['batch']} | {r['onnxruntime_ms']:.3f} ms | {r['torch_eager_ms']:.3f} ms | "
              f"{r['torch_over_onnxruntime']:.2f} |")
    if args.json:
        atomic_write(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
