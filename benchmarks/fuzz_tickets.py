"""Fuzz the ticket reader and print the figures quoted in docs/reliability.md.

    python benchmarks/fuzz_tickets.py [--cases 200000] [--meaning-cases 5000] [--seed 1]

Runs every single-bit flip and every truncation of the sample tickets, then a random campaign
of header mutations (with valid checksums), splices, multi-bit flips and re-signed damage.
Last, mutations of the header's meaning (shapes, counts, scales, preprocessing), repaired so
they pass the integrity checks, are read, regenerated and run with onnxruntime in a child
process whose address space is capped at 3 GiB (Linux). Any exception other than a
SupermaskError (MemoryError included) stops the run with a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fuzzlib  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200_000, help="random mutations (default 200000)")
    ap.add_argument("--meaning-cases", type=int, default=5_000,
                    help="meaning mutations run end to end under the memory cap (default 5000; 0 skips)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    start = time.perf_counter()
    tickets = fuzzlib.sample_tickets()
    print(f"sample tickets: {', '.join(f'{len(t):,} B' for t in tickets)}")
    flips = [fuzzlib.all_single_bit_flips(t) for t in tickets]
    print(f"single-bit flips: {sum(f[0] for f in flips):,} tried, {sum(f[1] for f in flips):,} detected")
    cuts = [fuzzlib.all_truncations(t) for t in tickets]
    print(f"truncations: {sum(c[0] for c in cuts):,} offsets, {sum(c[1] for c in cuts):,} rejected")
    counts: Counter = fuzzlib.random_campaign(args.seed, args.cases)
    print(f"random campaign: {args.cases:,} cases, seed {args.seed}")
    for (family, outcome), n in sorted(counts.items()):
        print(f"  {family:<18} {outcome:<24} {n:,}")
    if args.meaning_cases:
        status, meaning, stderr = fuzzlib.meaning_campaign_capped(args.seed, args.meaning_cases, timeout=24 * 3600)
        if status != 0:
            sys.exit(f"meaning campaign failed (exit status {status}):\n{stderr[-5000:]}")
        print(f"meaning campaign: {args.meaning_cases:,} cases under a 3 GiB address-space cap, seed {args.seed}")
        for (kind, outcome), n in sorted(meaning.items()):
            print(f"  {kind:<18} {outcome:<24} {n:,}")
    print(f"untyped exceptions: 0; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
