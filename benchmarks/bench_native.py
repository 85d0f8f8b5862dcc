"""Streaming inference in the C reader (`smask-c run`, runtime/c) against onnxruntime with
whole weight tensors (`supermask.runtime.load`), batch 1, on a version-3 lenet-300-100 ticket.

    python benchmarks/bench_native.py [--ticket T.smask] [--runs 1000] [--rounds 3] [--json out.json]

Without --ticket it makes one: a short edge-popup search (keep 0.1) of lenet-300-100 on
Fashion-MNIST from ../shared/data, or on the bundled digits where that is missing, and
`supermask pack` (the default codec choice, and again with `--codec bitpack`, whose masks need no
entropy decoding while running). Prints one JSON object:

* memory: what streaming inference needs beyond the ticket bytes, as `smask-c bench` counts it
  through a counting allocator: the scratch `smask_run_scratch(t, 1)` asks for, and the bytes
  the parsed ticket keeps from `smask_parse` to `smask_free` (tensor table, names, layer list,
  constants, including the 16-byte header of each allocation); also the parser's peak (its
  temporary JSON tree and inflated section, released before it returns);
* time: the median wall time of one inference, batch 1, of the same input, for `smask-c`
  (weights regenerated during every inference) and for onnxruntime (weights regenerated once
  when the session is made), in alternating rounds of the same process run, so that both see the
  same load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

import supermask.runtime as smr  # noqa: E402
from supermask import read_ticket  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "runtime" / "c"
SHARED_DATA = REPO.parent / "shared" / "data"
SOURCES = ["smask.c", "smask_json.c", "smask_rng.c", "smask_inflate.c", "smask_onnx.c", "smask_cli.c"]


def build(out: Path) -> Path:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        sys.exit(f"no C compiler ({cc})")
    exe = out / "smask-c"
    subprocess.run([cc, "-std=c99", "-O2", "-o", str(exe), *[str(SRC / s) for s in SOURCES], "-lm"], check=True)
    return exe


def make_ticket(out: Path) -> tuple[Path, Path, str]:
    cli = Path(sys.executable).parent / "supermask"
    if (SHARED_DATA / "fashion-mnist").is_dir():
        dataset, extra = "fashion-mnist", ["--data-dir", str(SHARED_DATA)]
    else:
        dataset, extra = "digits", []
    run_dir, path = out / "run", out / "lenet.smask"
    subprocess.run([str(cli), "find", "--model", "lenet-300-100", "--dataset", dataset, "--method", "edge-popup",
                    "--keep", "0.1", "--iterations", "30", "-q", "-o", str(run_dir), *extra], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([str(cli), "pack", "--run", str(run_dir), "-o", str(path)], check=True, stdout=subprocess.DEVNULL)
    # the same masks as bitpack (no entropy decoding during inference)
    bitpack = out / "lenet-bitpack.smask"
    subprocess.run([str(cli), "pack", "--run", str(run_dir), "--codec", "bitpack", "-o", str(bitpack)], check=True,
                   stdout=subprocess.DEVNULL)
    return path, bitpack, f"lenet-300-100 on {dataset}, edge-popup keep 0.1, 30 iterations"


def c_bench(exe: Path, ticket: Path, runs: int) -> dict:
    p = subprocess.run([str(exe), "bench", str(ticket), str(runs)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def ort_times(model, x: np.ndarray, runs: int) -> tuple[list[float], list[float]]:
    """Per-call wall times of Model.logits (the supermask.runtime entry point, with its input
    checks) and of the bare onnxruntime session under it."""
    sess = model.session
    name = sess.get_inputs()[0].name
    model.logits(x)
    sess.run(None, {name: x})
    a, b = [], []
    for _ in range(runs):
        t = time.perf_counter()
        model.logits(x)
        a.append(time.perf_counter() - t)
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        b.append(time.perf_counter() - t)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticket", type=Path)
    ap.add_argument("--runs", type=int, default=1000, help="inferences per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exe = build(tmp)
        if args.ticket:
            ticket, bitpack, what = args.ticket, None, str(args.ticket)
        else:
            ticket, bitpack, what = make_ticket(tmp)
        t = read_ticket(ticket)
        import warnings

        model = smr.load(t, "cpu")
        shape = model.input_shape
        size = int(np.prod(shape))
        # the input smask-c bench uses: element k is (37 k) mod 256
        x = ((np.arange(size, dtype=np.int64) * 37) % 256).astype(np.float32).reshape((1, *shape))
        c_rounds, bp_rounds, ort_rounds, sess_rounds, c_first, bp_first = [], [], [], [], None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input-range warnings: the timing input is synthetic
            ref = model.logits(x)
            for _ in range(args.rounds):
                c = c_bench(exe, ticket, args.runs)
                c_first = c_first or c
                c_rounds.append(c["median_us"])
                if bitpack is not None:
                    bp = c_bench(exe, bitpack, args.runs)
                    bp_first = bp_first or bp
                    bp_rounds.append(bp["median_us"])
                a, b = ort_times(model, x, args.runs)
                ort_rounds.append(1e6 * statistics.median(a))
                sess_rounds.append(1e6 * statistics.median(b))
    c = c_first
    logit0 = float.fromhex(c["logit0"])
    beyond = c["scratch_bytes"] + c["ticket_struct_bytes"]
    out = {
        "machine": machine(),
        "ticket": what,
        "ticket_bytes": c["ticket_bytes"],
        "codecs": sorted({e.codec for e in t.tensors if e.codec}),
        "bitpack_ticket_bytes": bp_first["ticket_bytes"] if bp_first else None,
        "weights": int(sum(int(np.prod(e.shape)) for e in t.tensors)),
        "multiply_adds": c["multiply_adds"],
        "memory": {
            "scratch_bytes": c["scratch_bytes"],
            "ticket_struct_bytes": c["ticket_struct_bytes"],
            "beyond_ticket_bytes": beyond,
            "parse_peak_bytes": c["parse_peak_bytes"],
            "dense_float32_weights_bytes": 4 * int(sum(int(np.prod(e.shape)) for e in t.tensors)),
        },
        "time_us_batch1": {
            "smask_c_streaming": statistics.median(c_rounds),
            "smask_c_streaming_bitpack_ticket": statistics.median(bp_rounds) if bp_rounds else None,
            "onnxruntime_model_logits": statistics.median(ort_rounds),
            "onnxruntime_session_run": statistics.median(sess_rounds),
            "rounds": {"smask_c": c_rounds, "smask_c_bitpack": bp_rounds, "model_logits": ort_rounds, "session_run": sess_rounds},
            "runs_per_round": args.runs,
        },
        "check": {"logit0_c": logit0, "logit0_onnxruntime": float(ref[0, 0]),
                  "agree_1e-5": bool(abs(logit0 - float(ref[0, 0])) <= 1e-5 * max(1.0, float(np.abs(ref).max())))},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
