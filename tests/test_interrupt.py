"""Interrupted and concurrent runs: `find` killed with SIGKILL at moments spread over a whole run
(training, evaluation, writing) and started again ends with the same results as an
uninterrupted run, without redoing finished stages; a second process on a locked run folder
stops at once with a clear error.

CI runs a handful of kill points; more: `SUPERMASK_KILL_TRIALS=60 pytest tests/test_interrupt.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from supermask.lock import folder_lock

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
    # Even trials: kill times spread over 10 % .. 95 % of the reference run (interpreter start
    # included). Odd trials: kill 0, 50, 100 ... ms after training finished, so evaluation
    # and the final writes are hit too (start-up and training dominate a short run).
    fractions = [0.1 + 0.85 * i / (TRIALS - 1) for i in range(TRIALS)]
    interrupted = {"before training finished": 0, "after training": 0}
    too_late = 0
    for trial, frac in enumerate(fractions):
        out = tmp_path / f"t{trial}"
        p = subprocess.Popen(_cmd(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if trial % 2:  # anchored to the end of training: kills during evaluation and its writes
            deadline = time.perf_counter() + 2 * full + 30
            while not (out / "train.json").exists() and p.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.002)
            time.sleep(0.05 * (trial // 2))
        else:
            time.sleep(frac * full)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (out / "results.json").exists():  # the run had already finished: nothing was interrupted
            too_late += 1
            continue
        trained = (out / "train.json").exists()
        interrupted["after training" if trained else "before training finished"] += 1
        stamp = (out / "train.json").stat().st_mtime_ns if trained else None
        r = _run(out)
        assert r.returncode == 0, r.stderr
        assert _outcome(out) == expected, f"trial {trial} (killed at {frac:.0%}): results differ after a kill"
        if trained:  # finished stages are not redone
            assert (out / "train.json").stat().st_mtime_ns == stamp
        assert not [f.name for f in out.iterdir() if f.name.endswith(".tmp")], "stale temporary files left"
    print(f"kills that interrupted a run: {interrupted}; kills after the run had finished: {too_late}")
    assert interrupted["before training finished"] >= 1 and interrupted["after training"] >= 1, interrupted


def test_two_processes_on_one_run_folder(tmp_path):
    out = tmp_path / "shared-run"
    out.mkdir()
    with folder_lock(out, "run folder"):  # this process plays the first `find`
        held = _run(out)
        assert held.returncode == 1, held.stderr
        assert "another supermask process" in held.stderr and f"pid {os.getpid()}" in held.stderr
        assert "Traceback" not in held.stderr and held.stderr.startswith("Error: ")
        assert not (out / "results.json").exists() and not (out / "config.json").exists()
    free = _run(out)
    assert free.returncode == 0, free.stderr
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == 1 + 3 * 3 * 2
