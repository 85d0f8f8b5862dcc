"""Interrupted and concurrent runs: `find` killed with SIGKILL at random moments (training,
evaluation, writing) and started again ends with the same results as an uninterrupted run,
without redoing finished stages; two processes on one run folder never both write it.

CI runs a handful of kill points; more: `SUPERMASK_KILL_TRIALS=60 pytest tests/test_interrupt.py`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO

TRIALS = max(3, int(os.environ.get("SUPERMASK_KILL_TRIALS", "30")) // 5)
ARGS = ["find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", "400", "--device", "cpu",
        "--threads", "1", "--criteria", "large_final_same_sign,random,movement", "--keep", "0.5,0.2,0.1", "-q"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "supermask.cli", *ARGS, "--out", str(out)]


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out), cwd=REPO, capture_output=True, text=True, timeout=300)


def _outcome(out: Path) -> tuple[str, bytes]:
    res = json.loads((out / "results.json").read_text())
    rows = [(r["criterion"], r["keep"], r["init"], r["correct"]) for r in res["rows"]]
    return json.dumps(rows), (out / "masks.npz").read_bytes()


def test_find_killed_anywhere_resumes_to_the_same_results(tmp_path):
    ref = tmp_path / "reference"
    start = time.perf_counter()
    r = _run(ref)
    assert r.returncode == 0, r.stderr
    full = time.perf_counter() - start
    expected = _outcome(ref)
    rng = random.Random(3)
    kills = {"before training finished": 0, "after training": 0}
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        p = subprocess.Popen(_cmd(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, full))
        p.send_signal(signal.SIGKILL)
        p.wait()
        trained = (out / "train.json").exists()
        kills["after training" if trained else "before training finished"] += 1
        stamp = (out / "train.json").stat().st_mtime_ns if trained else None
        r = _run(out)
        assert r.returncode == 0, r.stderr
        assert _outcome(out) == expected, f"trial {trial}: results differ after a kill"
        if trained:  # finished stages are not redone
            assert (out / "train.json").stat().st_mtime_ns == stamp
        leftovers = [f.name for f in out.iterdir() if f.name.endswith(".tmp")]
        assert not leftovers or r.returncode == 0  # stray temporaries never shadow real files
    assert sum(kills.values()) == TRIALS
    print(f"kill points: {kills}")


def test_two_processes_on_one_run_folder(tmp_path):
    out = tmp_path / "shared-run"
    first = subprocess.Popen(_cmd(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    second = _run(out)
    first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err
    if second.returncode == 0:  # the first one had already finished: then the second reused it
        assert "results:" in second.stdout
    else:
        assert second.returncode == 1
        assert "another supermask process" in second.stderr and "Traceback" not in second.stderr
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == 1 + 3 * 3 * 2
