"""`supermask sweep --backend ray` on a local Ray cluster (127.0.0.1, 2 CPUs).

One worker is killed (SIGKILL) in the middle of a run; Ray runs the task again, the run
resumes from its checkpoint, and the sweep ends with every run complete, once, and with the
same masks as the local backend gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ray", reason="Ray is the optional extra supermask[cluster]")

from supermask.train.sweep import sweep  # noqa: E402

BIN = os.path.dirname(sys.executable)
RAY = shutil.which("ray", path=BIN) or shutil.which("ray")
SUPERMASK = shutil.which("supermask", path=BIN)
RUN = ["--models", "lenet-300-100", "--datasets", "digits", "--method", "edge-popup", "--keep", "0.1",
       "--epochs", "60"]
SEEDS = "0,1,2"
#: a throwaway cluster on loopback: no token (Ray 2.59+ asks for one by default; a real cluster
#: keeps it, and its drivers find it as Ray documents)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                            "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180, env=ENV)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=ENV)


def _kill_a_training_worker(sweep_dir, proc, deadline: float):
    """SIGKILL the worker of the first run that has a checkpoint (its pid is in the run's lock
    file); return that run's name."""
    while time.time() < deadline and proc.poll() is None:
        for ck in sorted(sweep_dir.glob("*/scores/*.ckpt")):
            run = ck.parent.parent
            pid = (run / ".lock").read_text().strip()
            if pid and not (run / "results.json").exists():
                os.kill(int(pid), signal.SIGKILL)
                return run.name
        time.sleep(0.05)
    pytest.fail("no run reached its first checkpoint while the sweep ran")


def test_a_sweep_survives_a_killed_worker_and_writes_every_run_once(tmp_path, cluster):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([SUPERMASK, "sweep", *RUN, "--seeds", SEEDS, "--backend", "ray", "--address", cluster,
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    killed = _kill_a_training_worker(out, proc, time.time() + 120)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "sweep: 3 of 3 runs done" in stderr
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["state"] for r in manifest["runs"]] == ["done"] * 3
    assert sorted(r["run"] for r in manifest["runs"]) == sorted(p.name for p in out.iterdir() if p.is_dir())
    # nothing half-written: no temporaries, no checkpoints left, every run complete
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.ckpt"))
    for r in manifest["runs"]:
        res = json.loads((out / r["run"] / "results.json").read_text())
        assert res["run_hash"] == r["run_hash"]
    # the killed run was retried and resumed from its checkpoint ...
    stage = json.loads((out / killed / "scores" / "keep-0.1.json").read_text())
    assert stage["resumed_at"], stage
    # ... to the masks an unbroken run on the local backend gets
    seed = int(killed.rsplit("-s", 1)[1])
    local = tmp_path / "local"
    sweep(["lenet-300-100"], ["digits"], [seed], local, method="edge-popup", keeps=(0.1,), epochs=60, progress=False,
          threads=1)
    a, b = np.load(local / killed / "masks.npz"), np.load(out / killed / "masks.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_failing_run_stops_the_sweep_with_its_error(tmp_path, cluster):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz file")
    done = subprocess.run([SUPERMASK, "sweep", "--models", "lenet-300-100", "--datasets", str(bad), "--seeds", "0",
                           "--iterations", "2", "--backend", "ray", "--address", cluster, "-o", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 1
    assert "Error:" in done.stderr and "Traceback" not in done.stderr


def test_ray_options_belong_to_the_ray_backend(tmp_path):
    done = subprocess.run([SUPERMASK, "sweep", *RUN, "--seeds", "0", "--cpus-per-run", "2", "-o", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--cpus-per-run applies to --backend ray only" in done.stderr
