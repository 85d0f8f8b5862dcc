"""Ticket-format benchmarks: mask codec sizes against the entropy bound, and the speed of
weight regeneration and mask decoding.

    python benchmarks/bench_format.py [--json out.json] [--quick]

Prints Markdown tables (the ones in docs/performance.md). Sizes are exact and repeatable;
speeds are medians of several runs (these machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median_seconds  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402

from supermask import codecs, rng  # noqa: E402

DENSITIES = [0.5, 0.2, 0.1, 0.05, 0.01]


def h2(p: float) -> float:
    return 0.0 if p in (0, 1) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def codec_sizes(n: int = 1_000_000) -> list[dict]:
    rows = []
    g = np.random.default_rng(0)
    for p in DENSITIES:
        bits = g.random(n) < p
        phat = float(bits.mean())
        bound = h2(phat)
        ent = len(codecs.encode_entropy(bits))
        packed = codecs.encode_bitpack(bits)
        xz = len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME))
        used, blob = codecs.encode(bits, "auto")
        rows.append({
            "p": p, "n": n, "empirical_density": phat, "entropy_bound_bpw": bound,
            "entropy_codec_bpw": 8 * ent / n, "entropy_overhead_pct": 100 * (8 * ent / n / bound - 1),
            "bitpack_bpw": 8 * len(packed) / n, "xz9_bpw": 8 * xz / n, "auto_choice": used,
            "auto_bpw": 8 * len(blob) / n,
        })
    return rows


def speeds(n: int, repeats: int) -> dict:
    out = {"n": n}
    for dist in ("uniform", "signed_constant", "normal"):
        t = median_seconds(lambda: rng.generate(0, "bench.weight", (n,), dist, 0.01), repeats)
        out[f"generate_{dist}_Mw_per_s"] = n / t / 1e6
    t = median_seconds(lambda: rng.generate(0, "bench.weight", (n,), "uniform", 0.01, threads=1), repeats)
    out["generate_uniform_1thread_Mw_per_s"] = n / t / 1e6
    bits = np.random.default_rng(1).random(n) < 0.1
    packed = codecs.encode_bitpack(bits)
    t = median_seconds(lambda: codecs.decode_bitpack(packed, n), repeats)
    out["bitpack_decode_Gw_per_s"] = n / t / 1e9
    t = median_seconds(lambda: codecs.encode_bitpack(bits), repeats)
    out["bitpack_encode_Gw_per_s"] = n / t / 1e9
    try:
        import bitarray

        def with_bitarray():
            a = bitarray.bitarray(endian="little")
            a.frombytes(packed)
            return np.frombuffer(a.unpack(), dtype=bool)[:n]

        t = median_seconds(with_bitarray, repeats)
        out["bitarray_decode_Gw_per_s"] = n / t / 1e9
    except ImportError:
        pass
    coded = codecs.encode_entropy(bits)
    t = median_seconds(lambda: codecs.decode_entropy(coded, n), max(3, repeats // 2))
    out["entropy_decode_Mw_per_s_p0.1"] = n / t / 1e6
    t = median_seconds(lambda: codecs.encode_entropy(bits), max(3, repeats // 2))
    out["entropy_encode_Mw_per_s_p0.1"] = n / t / 1e6
    small = bits[:200_000]
    small_coded = codecs.encode_entropy(small)
    t = median_seconds(lambda: codecs.reference_decode(small_coded, small.size), 3)
    out["entropy_decode_pure_python_Mw_per_s_p0.1"] = small.size / t / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--quick", action="store_true", help="2.5 M weights and 3 repeats instead of 25 M and 7")
    args = ap.parse_args()
    sizes = codec_sizes()
    sp = speeds(2_500_000 if args.quick else 25_000_000, 3 if args.quick else 7)
    print(f"machine: {machine()}\n")
    print("Mask codecs on i.i.d. masks of 1,000,000 weights with P(kept) = p (bits per weight;\n"
          "H is the binary entropy of the mask's actual density):\n")
    print("| p | H(density) | entropy codec | over H | bitpack | xz -9e of bitpack | auto picks |")
    print("|---|---|---|---|---|---|---|")
    for r in sizes:
        print(f"| {r['p']} | {r['entropy_bound_bpw']:.4f} | {r['entropy_codec_bpw']:.4f} | "
              f"{r['entropy_overhead_pct']:+.3f} % | {r['bitpack_bpw']:.4f} | {r['xz9_bpw']:.4f} | {r['auto_choice']} |")
    print(f"\nSpeed on {sp['n']:,} weights (median):\n")
    print("| operation | rate |")
    print("|---|---|")
    for k, v in sp.items():
        if k != "n":
            unit = "G weights/s" if "_Gw_" in k else "M weights/s"
            print(f"| {k.replace('_Mw_per_s', '').replace('_Gw_per_s', '')} | {v:,.2f} {unit} |")
    if args.json:
        atomic_write(args.json, json.dumps({"machine": machine(), "codecs": sizes, "speed": sp}, indent=2))


if __name__ == "__main__":
    main()
