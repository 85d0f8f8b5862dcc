"""`find` under torchrun: 2 processes (gloo, CPU) on the bundled digits set.

Each distributed run is compared with one process at the same global batch (2 x 32 = 64).
Every rank's file changes are recorded by tests/dist_worker.py (an audit hook), so "only rank 0
wrote" is checked, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from supermask import ticket  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train import distributed  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.resume import batches  # noqa: E402

from helpers import REPO  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun (part of torch) is not on the PATH")
WORKER = str(REPO / "tests" / "dist_worker.py")
#: how far a 2-process run's accuracy may lie from one process at the same global batch: the
#: float sums of the gradients are taken in another order, which can move a mask's borderline
#: weights (docs/scaling.md). Measured: identical on these runs.
TOLERANCE = 0.03
METHODS = {
    "criteria": ["--keep", "0.1", "--criteria", "large_final_same_sign"],
    "edge-popup": ["--keep", "0.1"],
    "bernoulli": [],
}


def _env(tmp_path, watch, **extra) -> dict:
    env = {**os.environ, "AUDIT_DIR": str(tmp_path), "AUDIT_WATCH": str(watch), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "tests"), **extra}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(tmp_path, out, method, *args, fault=None, timeout=240) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "logs"),
           "--redirects", "3", WORKER, "find", "--model", "lenet-300-100", "--dataset", "digits", "--method",
           method, "--batch-size", "32", "--threads", "1", "-o", str(out), *args]
    extra = {"FAULT": fault} if fault else {}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env=_env(tmp_path, out, **extra))


def rank_output(tmp_path, rank: int, stream: str = "stderr") -> str:
    found = sorted((tmp_path / "logs").rglob(f"{rank}/{stream}.log"), key=lambda p: p.stat().st_mtime)
    assert found, f"torchrun kept no {stream} of rank {rank}"  # the latest launch's
    return found[-1].read_text()


def changes(tmp_path, rank: int) -> list[str]:
    return (tmp_path / f"rank{rank}.txt").read_text().splitlines()


def single(method, out, epochs=2):
    cfg = C.FindConfig(model="lenet-300-100", dataset="digits", method=method, batch_size=64, epochs=epochs,
                       **_keeps(method))
    return find(cfg, out, progress=False, threads=1)


def _keeps(method):
    if method == "bernoulli":
        return {}
    extra = {"keeps": (0.1,)}
    if method == "criteria":
        extra["criteria"] = ("large_final_same_sign",)
    return extra


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, method):
    out = tmp_path / "run"
    done = torchrun(tmp_path, out, method, "--epochs", "2", *METHODS[method])
    assert done.returncode == 0, done.stdout + done.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["processes"] == 2
    # rank 0 wrote the run folder; rank 1 wrote nothing at all there
    assert any("results.json" in c for c in changes(tmp_path, 0))
    assert changes(tmp_path, 1) == []
    # the ranks exchanged the digests of their masks, and they agreed
    log0 = rank_output(tmp_path, 0)
    assert "masks agree on all 2 processes" in log0
    assert "Traceback" not in log0 + rank_output(tmp_path, 1)
    # rank 0 alone reports: the result line once, on rank 0's stdout
    assert "results:" in rank_output(tmp_path, 0, "stdout")
    assert rank_output(tmp_path, 1, "stdout") == ""

    ref = single(method, tmp_path / "one")
    for a, b in zip(ref["rows"], res["rows"]):
        assert (a["criterion"], a["keep"], a["init"]) == (b["criterion"], b["keep"], b["init"])
        assert abs(a["accuracy"] - b["accuracy"]) <= TOLERANCE, (a, b)

    # the ticket regenerates from the seed, and says how many processes trained it
    from supermask.train.pack import pack

    path = tmp_path / "t.smask"
    pack(out, path)
    t = ticket.read_ticket(path)
    t.verify()
    assert t.metadata["processes"] == 2
    masks = np.load(out / "masks.npz")
    assert sum(int(np.unpackbits(masks[k]).sum()) for k in masks.files) > 0


def test_the_plain_torchrun_command_runs_supermask_itself(tmp_path):
    """The documented form: torchrun --no-python supermask find ..."""
    supermask = shutil.which("supermask", path=os.path.dirname(sys.executable))
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", supermask, "find", "--model",
           "lenet-300-100", "--dataset", "digits", "--method", "edge-popup", "--keep", "0.1", "--epochs", "1",
           "--batch-size", "32", "-o", str(out), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env=_env(tmp_path, out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("learned supermasks (edge-popup)") == 1  # one table, from rank 0
    assert json.loads((out / "results.json").read_text())["config"]["processes"] == 2


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tmp_path):
    out = tmp_path / "run"
    done = torchrun(tmp_path, out, "edge-popup", "--keep", "0.1", "--epochs", "3", fault="exit:1:10", timeout=120)
    assert done.returncode != 0
    log0 = rank_output(tmp_path, 0)
    assert "lost contact with the other processes" in log0, log0
    assert "Traceback" not in log0
    assert not (out / "results.json").exists()


def test_an_interrupted_distributed_run_resumes_to_the_same_masks(tmp_path):
    # digits at 2 x 32: 22 steps an epoch; Ctrl-C reaches torchrun at step 30 (mid-epoch)
    args = ["--keep", "0.1", "--epochs", "3"]
    unbroken = tmp_path / "unbroken"
    (tmp_path / "u").mkdir()
    assert torchrun(tmp_path / "u", unbroken, "edge-popup", *args).returncode == 0

    out = tmp_path / "run"
    stopped = torchrun(tmp_path, out, "edge-popup", *args, fault="sigint:1:30")
    assert stopped.returncode != 0
    assert "interrupted at step" in rank_output(tmp_path, 0)
    assert (out / "scores" / "keep-0.1.ckpt").exists()
    assert not (out / "results.json").exists()
    assert changes(tmp_path, 1) == []

    again = torchrun(tmp_path, out, "edge-popup", *args)
    assert again.returncode == 0, again.stderr
    assert "resuming at step" in rank_output(tmp_path, 0)
    a, b = np.load(unbroken / "masks.npz"), np.load(out / "masks.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


AGREE = textwrap.dedent("""
    import numpy as np, os, sys
    from supermask.train import distributed
    with distributed.joined("cpu") as (group, _):
        try:
            distributed.agree("masks", {"m": np.array([group.rank if os.environ["DIFFER"] == "1" else 0])})
            print("agreed")
        except distributed.DistributedError as e:
            print("refused:", e)
""")


@pytest.mark.parametrize("differ", [False, True], ids=["same", "different"])
def test_ranks_that_computed_different_masks_refuse_to_write(tmp_path, differ):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", AGREE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                              "DIFFER": "1" if differ else "0"})
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for text in outs:
        if differ:
            assert "refused: the ranks computed different masks (rank 0 " in text, text
        else:
            assert "agreed" in text, text


def test_the_global_batch_is_the_per_process_batch_times_the_processes(monkeypatch):
    assert batches(1437, 64) == (64, 22)
    monkeypatch.setattr(distributed, "_current", distributed.Group(rank=1, world=2))
    assert batches(1437, 32) == (32, 22)  # the same steps as one process at batch 64
    assert batches(10, 32) == (5, 1)  # fewer examples than one global batch: the batch shrinks
    with pytest.raises(ValueError, match="cannot be shared by 2 processes"):
        batches(1, 32)


def test_a_config_for_another_number_of_processes_or_imp_is_refused(tmp_path, monkeypatch):
    from supermask.errors import RunError

    cfg = C.FindConfig(model="lenet-300-100", dataset="digits", processes=2, iterations=2)
    with pytest.raises(RunError, match="says 2 processes, but this run has 1; start it with torchrun"):
        find(cfg, tmp_path / "a", progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunError, match="imp does not run data-parallel"):
        find(C.FindConfig(model="lenet-300-100", dataset="digits", method="imp", iterations=2), tmp_path / "b",
             progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (one per process, NCCL)")
def test_two_gpus_train_like_one(tmp_path):
    out = tmp_path / "run"
    done = torchrun(tmp_path, out, "edge-popup", "--keep", "0.1", "--epochs", "2", "--device", "cuda")
    assert done.returncode == 0, done.stderr
    assert "masks agree on all 2 processes" in rank_output(tmp_path, 0)
    assert json.loads((out / "results.json").read_text())["rows"][0]["accuracy"] > 0.5
