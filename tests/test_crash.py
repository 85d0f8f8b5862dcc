"""Crash safety of writes: a writer killed with SIGKILL at random moments leaves the old
complete file or the new complete file, never a partial one.

CI runs a few dozen kill points; more: `SUPERMASK_KILL_TRIALS=500 pytest tests/test_crash.py`.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import FIXTURES, REPO

TRIALS = int(os.environ.get("SUPERMASK_KILL_TRIALS", "30"))

WRITER = r"""
import sys, numpy as np
from supermask.atomic import atomic_write
from supermask import write_ticket, read_ticket
dest, mode = sys.argv[1], sys.argv[2]
if mode == "bytes":
    blobs = [bytes([65 + i]) * (3 << 20) for i in range(2)]   # 3 MiB each: writes take a while
    print("ready", flush=True)
    i = 0
    while True:
        atomic_write(dest, blobs[i % 2]); i += 1
else:
    t = read_ticket(sys.argv[3])
    g = np.random.default_rng(0)
    variants = [{k: g.random(v.shape) < d for k, v in t.masks.items()} for d in (0.1, 0.6)]
    print("ready", flush=True)
    i = 0
    while True:
        write_ticket(dest, t.architecture, t.seed, t.init, variants[i % 2], codec="auto"); i += 1
"""


def _kill_at_random(dest, mode, r, extra=()):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), mode, *extra], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(r.uniform(0.0, 0.25))
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.mark.parametrize("mode", ["bytes", "ticket"])
def test_sigkill_never_leaves_a_partial_file(tmp_path, mode):
    r = random.Random(7)
    dest = tmp_path / ("out.bin" if mode == "bytes" else "out.smask")
    good = {hashlib.sha256(bytes([65 + i]) * (3 << 20)).hexdigest() for i in range(2)}
    seen = set()
    trials = TRIALS if mode == "bytes" else max(5, TRIALS // 3)
    complete = 0
    for _ in range(trials):
        _kill_at_random(dest, mode, r, () if mode == "bytes" else (str(FIXTURES / "tiny-v1.smask"),))
        if not dest.exists():
            continue  # killed before the first rename: nothing was promised yet
        data = dest.read_bytes()
        if mode == "bytes":
            digest = hashlib.sha256(data).hexdigest()
            assert digest in good, f"partial file of {len(data)} bytes"
            seen.add(digest)
        else:
            from supermask import decode_ticket

            decode_ticket(data)  # complete and valid, or this raises
            seen.add(hashlib.sha256(data).hexdigest())
        complete += 1
    assert seen, "the writer never completed a file; the test proved nothing"
    print(f"{mode}: {trials} kills, {complete} left a complete file, {trials - complete} before the first "
          f"rename, {len(seen)} distinct versions seen, 0 partial")
