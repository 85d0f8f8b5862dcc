"""The edge install: a fresh virtual environment with only the runtime side
(``pip install supermask[cpu]``: numpy, click, constriction, onnxruntime; no torch, no onnx)
loads a ticket, evaluates it and predicts, through the library and the command line. The
tickets are format version 3, what ``pack`` writes (their graph travels inside); a version-1
ticket, which holds no graph, needs the onnx package and says so.

This test needs pip to reach a package index (or a local wheel folder with the
dependencies); it takes about 10-60 s depending on pip's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv

import numpy as np
import pytest

import supermask.runtime as smr

from deploy_helpers import fashion_test, make_ticket, make_ticket3
from helpers import REPO
from test_runtime_inputs import encode_png


def _run(args, cwd):
    # cwd matters: run from a folder outside the checkout, or `python -c` would import the
    # source tree instead of the installed package.
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
    bindir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / ("python.exe" if os.name == "nt" else "python")
    r = _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{REPO}[cpu]"], cwd=root)
    assert r.returncode == 0, f"pip install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return py, bindir


def test_edge_env_has_the_runtime_and_no_torch(edge_env):
    py, _ = edge_env
    code = ("import importlib.util as u, json\n"
            "print(json.dumps({m: u.find_spec(m) is not None for m in "
            "('torch', 'onnxruntime', 'onnx', 'numpy', 'supermask')}))")
    r = _run([str(py), "-c", code], py.parent)
    assert r.returncode == 0, r.stderr
    # onnx left the core dependencies: version-3 tickets carry their graph (installed with [export]/[train])
    assert json.loads(r.stdout) == {"torch": False, "onnxruntime": True, "onnx": False, "numpy": True,
                                    "supermask": True}
    r = _run([str(py), "-c", "import supermask, sys; print(supermask.__file__)"], py.parent)
    assert "site-packages" in r.stdout, r.stdout  # the installed copy, not the source tree


def test_edge_env_loads_evaluates_and_predicts(edge_env, tmp_path):
    py, bindir = edge_env
    ticket, t = make_ticket3(tmp_path / "model.smask", density=0.2, seed=4)
    assert t.version == 3
    images, labels = fashion_test()
    x, y = images[:500], labels[:500]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    here = smr.load(ticket, device="cpu")
    want_pred = here.predict(x[:20]).tolist()
    want_acc = here.evaluate(x, y).accuracy

    # library
    code = (
        "import json, numpy as np, supermask.runtime as smr\n"
        f"m = smr.load({str(ticket)!r})\n"
        f"x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})\n"
        "r = m.evaluate(x, y)\n"
        "print(json.dumps({'acc': r.accuracy, 'pred': m.predict(x[:20]).tolist(), 'provider': m.provider}))\n"
    )
    r = _run([str(py), "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"acc": want_acc, "pred": want_pred, "provider": "CPUExecutionProvider"}

    # command line: predict on a .npy batch
    np.save(tmp_path / "batch.npy", x[:20])
    r = _run([str(bindir / "supermask"), "predict", "--json", str(ticket), str(tmp_path / "batch.npy")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert [row["class"] for row in json.loads(r.stdout)["predictions"]] == want_pred

    # command line: eval on the data set bundled with the package, and predict on a PNG
    from supermask import datasets

    digits = datasets.load("digits", "test")
    dticket, _ = make_ticket3(tmp_path / "digits.smask", "lenet-300-100", (1, 8, 8), density=0.5,
                              classes=digits.classes, preprocess=digits.preprocess)
    want = smr.load(dticket, device="cpu").evaluate(digits.images, digits.labels)
    r = _run([str(bindir / "supermask"), "eval", "--json", str(dticket), "--dataset", "digits"], tmp_path)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert (ev["correct"], ev["num_examples"], ev["provider"]) == (want.correct, 364, "CPUExecutionProvider")
    assert "CUDA" not in r.stderr  # the CPU-only build was chosen: no note about CUDA
    (tmp_path / "shoe.png").write_bytes(encode_png(x[0, 0]))
    # images need Pillow (the [images] extra), which a [cpu] install leaves out: a one-line error saying so
    r = _run([str(bindir / "supermask"), "predict", "--json", str(ticket), str(tmp_path / "shoe.png")], tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and 'pip install "supermask[images]"' in last and "Traceback" not in r.stderr, r.stderr

    # command line: bad input gives a one-line error and exit status 1
    r = _run([str(bindir / "supermask"), "predict", str(ticket), str(tmp_path / "missing.npy")], tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("Error: no such file")
    # a version-1 ticket (a layer list, no graph) needs onnx, which the edge install leaves out: a clear error
    old, _ = make_ticket(tmp_path / "v1.smask", density=0.2, seed=4)
    r = _run([str(bindir / "supermask"), "predict", str(old), str(tmp_path / "batch.npy")], tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("Error: ") and "needs the `onnx` package" in last, r.stderr
    assert "Traceback" not in r.stderr


def test_edge_env_runs_what_pack_writes(edge_env, tmp_path):
    # `supermask pack` writes format version 3 (the network's graph travels in the ticket): it
    # runs in the torch-free environment too, without the onnx package, and gets find's accuracy.
    pytest.importorskip("torch")
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    py, bindir = edge_env
    cfg = FindConfig("lenet-300-100", "digits", iterations=60, criteria=("large_final_same_sign",), keeps=(0.3,))
    res = find(cfg, tmp_path / "run", device="cpu", progress=False)
    row = next(r for r in res["rows"] if r["criterion"] == "large_final_same_sign" and r["init"] == "original")
    ticket = tmp_path / "packed.smask"
    assert pack(tmp_path / "run", ticket, init="original").version == 3
    code = (
        "import json, sys, supermask.runtime as smr\n"
        "from supermask import datasets\n"
        f"m = smr.load({str(ticket)!r}, device='cpu')\n"
        "d = datasets.load('digits', 'test')\n"
        "print(json.dumps({'correct': m.evaluate(d.images, d.labels).correct, 'onnx': 'onnx' in sys.modules}))\n"
    )
    r = _run([str(py), "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"correct": row["correct"], "onnx": False}
    r = _run([str(bindir / "supermask"), "eval", "--json", str(ticket), "--dataset", "digits"], tmp_path)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert (ev["correct"], ev["num_examples"], ev["ticket_accuracy"]) == (row["correct"], 364, row["accuracy"])
