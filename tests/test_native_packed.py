"""The C reader on tickets made the way users make them: `find` on real data, then `pack`.

`smask-c digest` (runtime/c) must give, tensor for tensor, the SHA-256 of the float32 weights
the Python reader regenerates: for learned and criteria masks, both codecs, multipliers
(bernoulli), convolutions, and a lenet-300-100 ticket of Fashion-MNIST (the real data set,
../shared/data).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("torch")

from helpers import REPO, SHARED_DATA, needs_data  # noqa: E402
from supermask import ticket  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.pack import pack  # noqa: E402

SRC = REPO / "runtime" / "c"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def smask_c(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC") or "cc")
    if cc is None:
        if os.environ.get("SUPERMASK_REQUIRE_CC") == "1":
            pytest.fail("no C compiler (cc or $CC) found and SUPERMASK_REQUIRE_CC=1")
        pytest.skip("no C compiler (cc or $CC) found; set SUPERMASK_REQUIRE_CC=1 to fail instead")
    out = tmp_path_factory.mktemp("smask-c")
    done = subprocess.run(["make", "-s", "-C", str(SRC), f"BUILD={out}", "all"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out / "smask-c"


def _same_digests(exe, path):
    got = subprocess.run([str(exe), "digest", str(path)], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    c = dict(line.rsplit(" ", 1) for line in got.stdout.splitlines())
    t = ticket.read_ticket(path)
    py = {n: hashlib.sha256(np.ascontiguousarray(w, dtype="<f4").tobytes()).hexdigest()
          for n, w in t.weights(verify=True).items()}
    assert c == py, path
    return t


RUNS = {
    "edge-popup-lenet": dict(model="lenet-300-100", method="edge-popup", keeps=(0.1,), epochs=1),
    "criteria-conv2": dict(model="conv2", keeps=(0.5,), criteria=("large_final_same_sign",), iterations=20),
    "bernoulli-lenet": dict(model="lenet-300-100", method="bernoulli", epochs=1),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_packed_tickets_of_digits_runs_read_the_same_in_c(smask_c, tmp_path, name):
    run = tmp_path / "run"
    find(C.FindConfig(dataset="digits", **RUNS[name]), run, progress=False)
    inits = ("original", "signed-constant") if name.startswith("criteria") else ("original",)
    for codec in ("auto", "bitpack"):
        for init in inits:
            path = tmp_path / f"{codec}-{init}.smask"
            pack(run, path, codec=codec, init=init)
            t = _same_digests(smask_c, path)
            assert t.version == 3
    if name.startswith("bernoulli"):
        assert any(e.multiplier not in (None, 1.0) for e in t.tensors)


@needs_data("fashion-mnist")
def test_a_fashion_mnist_ticket_reads_the_same_in_c(smask_c, tmp_path):
    run = tmp_path / "run"
    find(C.FindConfig(model="lenet-300-100", dataset="fashion-mnist", method="edge-popup", keeps=(0.05,),
                      iterations=30), run, data_dir=str(SHARED_DATA), progress=False)
    path = tmp_path / "fm.smask"
    pack(run, path)
    t = _same_digests(smask_c, path)
    assert t.metadata["dataset"] == "fashion-mnist"
