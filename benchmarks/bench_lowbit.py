"""Exact 4-bit weights (``weights="lowbit"``) against float32, side by side in one run.

    python benchmarks/bench_lowbit.py [--json out.json] [--quick] [--keep 0.5] [--threads N]

For signed-constant tickets of lenet-300-100, conv2, conv4, conv6 and the 25 M-weight MLP
(3072-4096-3072-10) with random masks at density ``keep``, and of ResNet-20 (packed from a
one-step edge-popup run on random images, which needs torch; left out without it), it
measures:

* resident weight bytes after load: the bytes the session's weight tensors hold (float32
  tensors, 4-bit codes and their scales) and, as a check, the growth of the process's RSS
  across ``load`` plus one inference, each form in a fresh interpreter;
* batch-1 and batch-256 latency of the ``float``, ``lowbit`` and ``auto`` models, loaded in
  the same process and run in turn, round after round (medians, and ratios to float);
* single linear layers of several sizes, Gemm against MatMulNBits at batch 1 (the basis of
  ``AUTO_MIN_WEIGHTS``);
* a 3x3 convolution as Conv against an exact lowering to im2col + MatMulNBits.

Every model's lowbit predictions are also checked against float on the same random inputs.
Prints Markdown tables (the ones in docs/performance.md). Needs numpy, onnx, onnxruntime.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from bench_runtime import SHAPES, wide_mlp  # noqa: E402

import supermask.runtime as smr  # noqa: E402
from supermask import InitSpec, models, read_ticket, write_ticket  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402
from supermask.runtime import lowbit  # noqa: E402

FORMS = ("float", "lowbit", "auto")


def _no_spinning() -> None:
    """Sessions whose idle intra-op threads do not spin. The forms of a model are three
    sessions run in turn; with spinning (onnxruntime's default) the threads of the session
    that just ran keep a core busy while the next one runs, which made identical graphs
    measure up to 2x apart with 2 threads. Applies to every form alike."""
    from supermask.runtime import model as runtime_model

    make = runtime_model._session_options

    def options(ort, threads):
        so = make(ort, threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    runtime_model._session_options = options


def make(folder: Path, arch, keep: float, seed: int = 0) -> Path:
    g = np.random.default_rng(seed)
    masks = {p.name: g.random(p.shape) < keep for p in arch.params() if p.kind == "weight"}
    path = folder / f"{arch.name}.smask"
    write_ticket(path, arch, seed, InitSpec("signed_kaiming_constant"), masks=masks, keep=keep)
    return path


def resnet20(folder: Path, keep: float) -> Path:
    """A ResNet-20 ticket (3x32x32 inputs) from a one-step edge-popup run on random images: its
    graph (BatchNorm folded to float32 affine ops) and signed-constant weights are what a real
    run packs; latency and memory do not depend on which weights are kept."""
    import supermask

    g = np.random.default_rng(0)
    x, y = g.integers(0, 256, (128, 3, 32, 32)).astype(np.uint8), g.integers(0, 10, 128)
    run = supermask.find("resnet20", (x, y), (x[:32], y[:32]), method="edge-popup", keep=keep, iterations=1,
                         out=folder / "resnet20-run", progress=False, threads=1)
    path = folder / "resnet20.smask"
    run.pack(path)
    return path


def weight_bytes(model) -> tuple[int, int, int]:
    """(bytes the session's parameter tensors hold, linear weights in 4 bits, their bytes)."""
    t = model.ticket
    rest = 4 * sum(e.size for e in t.tensors if e.name not in model.lowbit)
    n4 = sum(layer.k * layer.n for layer in model.lowbit.values())
    b4 = sum(layer.nbytes for layer in model.lowbit.values())
    return rest + b4, n4, b4


_RSS_CODE = """
import gc, json, sys
import numpy as np
import supermask.runtime as smr
from supermask import read_ticket

def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024

import ctypes
trim = getattr(ctypes.CDLL(None), 'malloc_trim', lambda n: 0)  # glibc: hand freed heap pages back

if sys.argv[4] == "no-arena":  # onnxruntime's CPU arena off: what is left is the weights and the graph
    from supermask.runtime import model as runtime_model
    make = runtime_model._session_options
    def options(ort, threads):
        so = make(ort, threads)
        so.enable_cpu_mem_arena = False
        return so
    runtime_model._session_options = options

t = read_ticket(sys.argv[1])
w = smr.load(t, device='cpu', weights=sys.argv[2], threads=int(sys.argv[3]))  # warm up: imports, probes
del w
gc.collect(); trim(0)
before = rss()
m = smr.load(t, device='cpu', weights=sys.argv[2], threads=int(sys.argv[3]))
x = np.zeros((1, *m.input_shape), np.float32)
m.logits(x)
gc.collect(); trim(0)
print(json.dumps({'rss_delta': rss() - before}))
"""


def rss_delta(path: Path, form: str, threads: int, arena: bool = True) -> int:
    out = subprocess.run([sys.executable, "-c", _RSS_CODE, str(path), form, str(threads),
                          "arena" if arena else "no-arena"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_delta"]


def interleaved(fns: dict, rounds: int, warmup: int = 3) -> dict:
    """Median seconds of each function, run in turn round after round (same conditions)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def model_rows(path: Path, threads: int, quick: bool) -> dict:
    t = read_ticket(path)
    loaded = {f: smr.load(t, device="cpu", weights=f, threads=threads) for f in FORMS}
    n = t.num_weights
    g = np.random.default_rng(1)
    row: dict = {"model": t.model_name, "num_weights": n, "auto": loaded["auto"].weights,
                 "auto_layers": len(loaded["auto"].lowbit), "linear_layers": loaded["lowbit"]._linear_layers}
    for f in ("float", "lowbit"):
        total, n4, b4 = weight_bytes(loaded[f])
        row[f"{f}_weight_bytes"] = total
        if f == "lowbit":
            row["lowbit_linear_weights"] = n4
            row["lowbit_linear_bits"] = 8 * b4 / n4
    for batch in (1, 256):
        x = g.integers(0, 256, (batch, *t.input_shape), dtype=np.uint8).astype(np.float32)
        fns = {f: (lambda m=m: m.session.run([m._output], {m._input: x})) for f, m in loaded.items()}
        fns["float"]()
        once = time.perf_counter()
        fns["float"]()
        once = time.perf_counter() - once
        # about 2 s (batch 1) or 8 s (batch 256) of runs per form, at least 5 and at most 300 or 30 rounds
        rounds = max(5, min(300 if batch == 1 else 30, int((2.0 if batch == 1 else 8.0) / max(once, 1e-6))))
        if quick:
            rounds = max(5, rounds // 5)
        med = interleaved(fns, rounds)
        for f in FORMS:
            row[f"b{batch}_{f}_ms"] = 1000 * med[f]
        zf = loaded["float"].logits(x)
        zl = loaded["lowbit"].logits(x)
        row[f"b{batch}_max_abs_diff"] = float(np.abs(zf - zl).max())
        row[f"b{batch}_same_argmax"] = bool((zf.argmax(1) == zl.argmax(1)).all())
    del loaded
    gc.collect()
    for f in ("float", "lowbit"):
        row[f"{f}_rss_delta"] = rss_delta(path, f, threads)
    row["lowbit_rss_delta_no_arena"] = rss_delta(path, "lowbit", threads, arena=False)
    return row


def _layer_session(k: int, n: int, form: str, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(k * 7 + n)
    c = np.float32(0.01)
    w = (g.integers(-1, 2, (n, k)).astype(np.float32) * c)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])
    if form == "float":
        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
        inits = [numpy_helper.from_array(w, "w")]
        opsets = [helper.make_opsetid("", 13)]
    else:
        p = lowbit.pack(w, c)
        node = helper.make_node(lowbit.OP, ["x", "q", "s"], ["y"], domain=lowbit.DOMAIN, K=k, N=n, bits=4,
                                block_size=p.block_size, accuracy_level=lowbit.ACCURACY_LEVEL)
        inits = [numpy_helper.from_array(p.codes, "q"), numpy_helper.from_array(p.scales, "s")]
        opsets = [helper.make_opsetid("", 13), helper.make_opsetid(lowbit.DOMAIN, 1)]
    m = helper.make_model(helper.make_graph([node], "layer", [x], [y], initializer=inits), opset_imports=opsets,
                          ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


LAYERS = [(100, 10), (300, 100), (784, 300), (1024, 1024), (2304, 256), (6272, 256), (12544, 256),
          (16384, 256), (8192, 512), (4096, 1024), (2048, 2048), (1024, 4096), (3072, 4096), (4096, 3072),
          (4096, 4096)]


def layer_rows(threads: int, quick: bool) -> list[dict]:
    rows = []
    for k, n in LAYERS:
        s = {f: _layer_session(k, n, f, threads) for f in ("float", "lowbit")}
        x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
        rounds = max(30, min(1000, int(3e8 / (k * n))))
        med = interleaved({f: (lambda s=s[f]: s.run(None, {"x": x})) for f in s}, rounds // 5 if quick else rounds)
        rows.append({"k": k, "n": n, "weights": k * n, "float_us": 1e6 * med["float"],
                     "lowbit_us": 1e6 * med["lowbit"], "ratio": med["lowbit"] / med["float"]})
    return rows


def _conv_sessions(c: int, o: int, hw: int, threads: int):
    """A 3x3 padding-1 convolution as Conv, and the same as Pad + 9 Slices + Concat (im2col)
    + MatMulNBits: (float session, lowbit session, float32 input shape without the batch)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(c + o)
    cst = np.float32(0.02)
    w = g.integers(-1, 2, (o, c, 3, 3)).astype(np.float32) * cst
    b = g.standard_normal(o).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o, hw, hw])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    conv = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3],
                                               pads=[1, 1, 1, 1])], "conv", [x], [y],
                             initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    s_float = ort.InferenceSession(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 13)],
                                                     ir_version=8).SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    # im2col in (dy, dx, c) order; the weight reordered to match
    w_nk = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(o, 9 * c))
    p = lowbit.pack(w_nk, cst)
    inits = [numpy_helper.from_array(p.codes, "q"), numpy_helper.from_array(p.scales, "s"),
             numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1, 9 * c], np.int64), "flat"),
             numpy_helper.from_array(np.array([-1, hw, hw, o], np.int64), "unflat")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"])]
    cols = []
    for dy in range(3):
        for dx in range(3):
            s0, e0 = f"s{dy}{dx}", f"e{dy}{dx}"
            inits += [numpy_helper.from_array(np.array([dy, dx], np.int64), s0),
                      numpy_helper.from_array(np.array([dy + hw, dx + hw], np.int64), e0)]
            nodes.append(helper.make_node("Slice", ["xp", s0, e0, "axes"], [f"c{dy}{dx}"]))
            cols.append(f"c{dy}{dx}")
    nodes += [helper.make_node("Concat", cols, ["col"], axis=1),
              helper.make_node("Transpose", ["col"], ["colt"], perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", ["colt", "flat"], ["a"]),
              helper.make_node(lowbit.OP, ["a", "q", "s", "", "", "b"], ["m"], domain=lowbit.DOMAIN, K=9 * c, N=o,
                               bits=4, block_size=p.block_size, accuracy_level=lowbit.ACCURACY_LEVEL),
              helper.make_node("Reshape", ["m", "unflat"], ["mr"]),
              helper.make_node("Transpose", ["mr"], ["y"], perm=[0, 3, 1, 2])]
    low = helper.make_graph(nodes, "im2col", [x], [y], initializer=inits)
    s_low = ort.InferenceSession(helper.make_model(low, opset_imports=[helper.make_opsetid("", 13),
                                                                       helper.make_opsetid(lowbit.DOMAIN, 1)],
                                                   ir_version=8).SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
    return s_float, s_low, (c, hw, hw)


CONVS = [(64, 64, 32), (64, 128, 16), (128, 128, 16), (256, 256, 8)]


def conv_rows(threads: int, quick: bool) -> list[dict]:
    rows = []
    for c, o, hw in CONVS:
        s_float, s_low, shape = _conv_sessions(c, o, hw, threads)
        for batch in (1, 32):
            x = np.random.default_rng(2).standard_normal((batch, *shape)).astype(np.float32)
            diff = float(np.abs(s_float.run(None, {"x": x})[0] - s_low.run(None, {"x": x})[0]).max())
            rounds = 100 if batch == 1 else 10
            med = interleaved({"float": lambda: s_float.run(None, {"x": x}),
                               "lowbit": lambda: s_low.run(None, {"x": x})}, rounds // 5 if quick else rounds)
            rows.append({"conv": f"{c}->{o} 3x3 at {hw}x{hw}", "weights": 9 * c * o, "batch": batch,
                         "float_ms": 1000 * med["float"], "lowbit_ms": 1000 * med["lowbit"],
                         "ratio": med["lowbit"] / med["float"], "max_abs_diff": diff})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--keep", type=float, default=0.5, help="mask density (default 0.5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: models,layers,convs")
    ap.add_argument("--models", default="", help="comma-separated model names to measure (default: all)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    _no_spinning()
    import onnxruntime as ort

    res: dict = {"machine": machine(), "onnxruntime": ort.__version__, "keep": args.keep, "threads": args.threads,
                 "auto_min_weights": lowbit.AUTO_MIN_WEIGHTS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archs = [models.build(m, SHAPES[m], [f"c{i}" for i in range(10)]) for m in SHAPES] + [wide_mlp()]
        names = [a.name for a in archs] + ["resnet20"]
        if args.models:
            names = [n for n in names if n in args.models.split(",")]
        if "models" not in skip:
            paths = [make(folder, a, args.keep) for a in archs if a.name in names]
            if "resnet20" in names:
                try:
                    paths.append(resnet20(folder, args.keep))
                except ImportError as e:
                    print(f"resnet20 left out: packing it needs torch ({e})", file=sys.stderr)
            res["models"] = [model_rows(p, args.threads, args.quick) for p in paths]
    if "layers" not in skip:
        res["layers"] = layer_rows(args.threads, args.quick)
    if "convs" not in skip:
        res["convs"] = conv_rows(args.threads, args.quick)

    print(f"machine: {res['machine']}; onnxruntime {res['onnxruntime']}; {args.threads} threads; "
          f"signed-constant tickets, random masks at keep {args.keep}\n")
    if "models" in res:
        print("Resident weights after load (bytes the session's parameter tensors hold; RSS growth over load "
              "plus one inference, each in a fresh interpreter):\n")
        print("| model | weights | float32 weights | lowbit weights | ratio | linear weights in 4 bits "
              "| bits/weight (those layers) | RSS growth float | RSS growth lowbit | RSS ratio "
              "| RSS growth lowbit, arena off |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["models"]:
            print(f"| {r['model']} | {r['num_weights']:,} | {r['float_weight_bytes']:,} | {r['lowbit_weight_bytes']:,} "
                  f"| {r['float_weight_bytes'] / r['lowbit_weight_bytes']:.1f}x | {r['lowbit_linear_weights']:,} "
                  f"| {r['lowbit_linear_bits']:.2f} | {r['float_rss_delta'] / 1e6:.1f} MB "
                  f"| {r['lowbit_rss_delta'] / 1e6:.1f} MB | {r['float_rss_delta'] / max(1, r['lowbit_rss_delta']):.1f}x "
                  f"| {r['lowbit_rss_delta_no_arena'] / 1e6:.1f} MB |")
        print("\nLatency, median, the three forms run in turn in one process (ratio < 1: faster than float):\n")
        print("| model | batch | float | lowbit | lowbit / float | auto (layers in 4 bits) | auto / float "
              "| max abs logit diff | same predictions |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in res["models"]:
            for b in (1, 256):
                print(f"| {r['model']} | {b} | {r[f'b{b}_float_ms']:.3f} ms | {r[f'b{b}_lowbit_ms']:.3f} ms "
                      f"| {r[f'b{b}_lowbit_ms'] / r[f'b{b}_float_ms']:.2f} | {r[f'b{b}_auto_ms']:.3f} ms "
                      f"({r['auto_layers']} of {r['linear_layers']}) | {r[f'b{b}_auto_ms'] / r[f'b{b}_float_ms']:.2f} "
                      f"| {r[f'b{b}_max_abs_diff']:.1e} | {'yes' if r[f'b{b}_same_argmax'] else 'NO'} |")
    if "layers" in res:
        print("\nOne linear layer, batch 1, Gemm (float32) against MatMulNBits (4-bit, float32 compute), median:\n")
        print("| in x out | weights | Gemm | MatMulNBits | MatMulNBits / Gemm |")
        print("|---|---|---|---|---|")
        for r in res["layers"]:
            print(f"| {r['k']} x {r['n']} | {r['weights']:,} | {r['float_us']:.1f} us | {r['lowbit_us']:.1f} us "
                  f"| {r['ratio']:.2f} |")
    if "convs" in res:
        print("\nOne 3x3 convolution: Conv (float32) against im2col + MatMulNBits (exact 4-bit), median:\n")
        print("| convolution | weights | batch | Conv | im2col + MatMulNBits | ratio | max abs diff |")
        print("|---|---|---|---|---|---|---|")
        for r in res["convs"]:
            print(f"| {r['conv']} | {r['weights']:,} | {r['batch']} | {r['float_ms']:.3f} ms | {r['lowbit_ms']:.3f} ms "
                  f"| {r['ratio']:.2f} | {r['max_abs_diff']:.1e} |")
    if args.json:
        atomic_write(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
