"""`supermask baseline`: the baseline files, their numpy reader, resumable runs and the CLI,
on the bundled digits data set with tiny widths and epochs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_python

from supermask import datasets
from supermask.baseline import artifact
from supermask.baseline.artifact import BaselineError
from supermask.errors import RunError

torch = pytest.importorskip("torch")
from supermask.baseline import train as bt  # noqa: E402
from supermask.train.data import to_tensors  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(widths=(8, 16), seeds=(0,), epochs=3, finetune_epochs=2, progress=False)
# The numpy reader and torch sum the same float32 products in different orders, so a logit may
# differ in its last bits; the rule: the correct counts differ by at most this many examples.
ORDER_SLACK = 2


def _tensors(ds):
    x, y = to_tensors(ds, ds.preprocess, "cpu")
    return x.reshape(len(x), -1), y


@pytest.fixture(scope="module")
def digits():
    train, test = datasets.load("digits", "train"), datasets.load("digits", "test")
    return train, test, *_tensors(train), *_tensors(test)


@pytest.fixture(scope="module")
def float_state(digits):
    train, _, x, y, _, _ = digits
    torch.manual_seed(0)
    model = bt.mlp(x.shape[1], 16, len(train.classes))
    bt.train(model, x, y, epochs=4, lr=1e-2, seed=0, label="", progress=False)
    return model.state_dict()


@pytest.fixture(scope="module")
def made(digits, float_state):
    """method -> (file bytes, torch weights, tensors), each from the same float net."""
    train, test, x, y, _, _ = digits
    header = {"input_shape": list(test.input_shape), "preprocess": test.preprocess.to_dict(),
              "classes": list(test.classes)}
    out = {}
    for method in bt.METHODS:
        model = bt.mlp(x.shape[1], 16, len(train.classes))
        model.load_state_dict(float_state)
        tensors, weights = bt.quantize(method, model, x, y, finetune_epochs=2, dc_density=0.1)
        out[method] = (artifact.encode({"method": method, **header}, tensors), weights, tensors)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    rows = bt.run_baselines("digits", methods=bt.METHODS, out=out, **SMALL)
    return out, rows


@pytest.mark.parametrize("method", bt.METHODS)
def test_decoded_weights_equal_the_quantized_weights(made, method):
    data, weights, tensors = made[method]
    header, layers = artifact.read(data)
    assert header["method"] == method
    for (w, b), (tw, tb), t in zip(layers, weights, tensors):
        assert w.dtype == np.float32 and np.array_equal(w, tw.numpy())
        assert np.array_equal(b, tb.numpy())
        if t["coding"] in ("int4", "int8"):
            qmax = bt.QMAX[t["coding"]]
            assert -qmax <= t["codes"].min() and t["codes"].max() <= qmax
        if t["coding"] == "ternary":
            for row, alpha in zip(w, t["scale"]):
                assert set(np.unique(row)) <= {-alpha, np.float32(0), alpha}
    if method != "float":  # the quantized weights are not the float weights
        float_w = made["float"][1][0][0].numpy()
        assert not np.array_equal(layers[0][0], float_w)


def test_int4_uses_at_most_15_levels_per_row(made):
    for method in ("int4-ptq", "int4-qat"):
        for w, _ in artifact.read(made[method][0])[1]:
            assert max(len(np.unique(row)) for row in w) <= 15


@pytest.mark.parametrize("method", bt.METHODS)
def test_numpy_accuracy_matches_torch(made, digits, tmp_path, method):
    data, weights, _ = made[method]
    _, test, _, _, xt, yt = digits
    path = tmp_path / "b.smbl"
    path.write_bytes(data)
    correct, total = artifact.evaluate(path, test)
    assert total == len(test)
    assert abs(correct - bt.torch_correct(weights, xt, yt)) <= ORDER_SLACK
    assert correct > 0.2 * total  # a trained net, not chance (10 classes)


def test_deep_compression_prunes_gradually_to_its_density(monkeypatch):
    """The density falls on a cubic over the first DC_RAMP of the fine-tune epochs and ends at
    the target; each step prunes among the weights still kept (a pruned weight stays pruned)."""
    import torch

    seen = []
    real = bt.train

    def spy(model, x, y, *, before_epoch=None, **kw):
        def step(epoch):
            before_epoch(epoch)
            seen.append([fc.weight_mask.clone() for fc in bt.linears(model)])
        real(model, x, y, before_epoch=step, **kw)

    monkeypatch.setattr(bt, "train", spy)
    torch.manual_seed(0)
    model = bt.mlp(64, 16, 10)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    bt.quantize("deep-compression", model, x, y, finetune_epochs=5, dc_density=0.2)
    ramp = round(bt.DC_RAMP * 5)
    densities = [float(m[0].mean()) for m in seen]
    assert densities == sorted(densities, reverse=True) and len(set(densities[:ramp])) == ramp
    assert densities[ramp - 1:] == [pytest.approx(0.2, abs=1e-3)] * (5 - ramp + 1)
    for before, after in zip(seen, seen[1:]):
        assert all(bool(((a > 0) <= (b > 0)).all()) for b, a in zip(before, after))


def test_deep_compression_density_and_shared_values(made):
    for mask_t, (w, _) in zip(made["deep-compression"][2], artifact.read(made["deep-compression"][0])[1]):
        n = w.size
        assert mask_t["mask"].sum() == n - round(0.9 * n)
        assert np.count_nonzero(w) <= mask_t["mask"].sum()
        assert np.all(w[~mask_t["mask"]] == 0)
        assert len(np.unique(w[mask_t["mask"]])) <= 16


def test_smaller_codings_give_smaller_files(made):
    size = {m: len(made[m][0]) for m in bt.METHODS}
    assert size["float"] > size["int8-ptq"] > size["int4-ptq"] > size["ternary-qat"]
    assert size["deep-compression"] < size["int4-ptq"]


def test_nibble_and_ternary_packing_round_trip():
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 100):
        v = rng.integers(-8, 8, n)
        assert np.array_equal(artifact.unpack_nibbles(artifact.pack_nibbles(v), n, signed=True), v)
        u = rng.integers(0, 16, n)
        assert np.array_equal(artifact.unpack_nibbles(artifact.pack_nibbles(u), n, signed=False), u)
        t = rng.integers(-1, 2, n)
        assert np.array_equal(artifact.unpack_ternary(artifact.pack_ternary(t), n), t)
    assert len(artifact.pack_nibbles(np.zeros(7))) == 4 and len(artifact.pack_ternary(np.zeros(9))) == 3


@pytest.mark.parametrize("damage", ["truncate", "cut_header", "flip", "magic", "empty", "format"])
def test_damaged_files_raise_a_clear_error(made, tmp_path, damage):
    data = bytearray(made["int4-qat"][0])
    if damage == "truncate":
        data = data[:-1]
    elif damage == "cut_header":
        data = data[:20]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "magic":
        data[:4] = b"SMSK"
    elif damage == "empty":
        data = bytearray()
    else:
        data[4] = 9
    with pytest.raises(BaselineError, match="baseline file|truncated or damaged|format"):
        artifact.read(bytes(data))
    path = tmp_path / "bad.smbl"
    path.write_bytes(bytes(data))
    with pytest.raises(BaselineError, match=str(path) if damage != "empty" else "not a baseline"):
        artifact.evaluate(path, datasets.load("digits", "test"))


def test_run_rows_sizes_and_files(run):
    out, rows = run
    assert len(rows) == (len(bt.METHODS) - 1 + len(bt.DC_DENSITIES)) * 2  # one DC network per density
    assert sorted(r["density"] for r in rows if "density" in r) == sorted(bt.DC_DENSITIES * 2)
    assert json.loads((out / "results.json").read_text()) == rows
    for r in rows:
        path = out / r["artifact"]
        data = path.read_bytes()
        assert r["bytes"] == len(data) == os.path.getsize(path)
        assert (r["correct"], r["total"]) == artifact.evaluate(path, datasets.load("digits", "test"))
        assert r["params"] == (64 * r["width"] + r["width"]) + (r["width"] * 10 + 10)
        assert r["epochs"] == 3 + (2 if r["method"] in bt.FINETUNED else 0)
        d = f"-d{r['density']:g}" if "density" in r else ""
        assert json.loads((out / "rows" / f"{r['method']}{d}-h{r['width']}-s0.json").read_text()) == r
    assert sorted((out / "float").iterdir()) == [out / "float" / "h16-s0.npz", out / "float" / "h8-s0.npz"]


def test_a_second_run_trains_nothing(run, monkeypatch):
    out, rows = run
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "artifacts").iterdir()}

    def refuse(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(bt, "train", refuse)
    assert bt.run_baselines("digits", methods=bt.METHODS, out=out, **SMALL) == rows
    assert {p: p.stat().st_mtime_ns for p in (out / "artifacts").iterdir()} == mtimes
    # a row lost in a kill is remade from the stored float net, without training, to the same bytes
    lost = out / "rows" / "int4-ptq-h8-s0.json"
    before = (out / "artifacts" / "int4-ptq-h8-s0.smbl").read_bytes()
    lost.unlink()
    again = bt.run_baselines("digits", methods=("int4-ptq",), out=out, **{**SMALL, "widths": (8,)})
    assert again == [r for r in rows if r["method"] == "int4-ptq" and r["width"] == 8]
    assert lost.exists() and (out / "artifacts" / "int4-ptq-h8-s0.smbl").read_bytes() == before


def test_another_config_in_the_same_folder_is_refused(run):
    out, _ = run
    with pytest.raises(RunError, match="other settings.*epochs: 3 there, 4 now"):
        bt.run_baselines("digits", methods=("float",), out=out, **{**SMALL, "epochs": 4})
    with pytest.raises(RunError, match="finetune_lr: 0.001 there, 0.0001 now"):
        bt.run_baselines("digits", methods=("float",), out=out, finetune_lr=1e-4, **SMALL)


def test_cli_help_and_bad_values():
    from supermask.cli import main

    res = CliRunner().invoke(main, ["baseline", "--help"])
    assert res.exit_code == 0 and "--finetune-lr" in res.output and "deep-compression" in res.output
    res = CliRunner().invoke(main, ["baseline", "--dataset", "digits", "--methods", "int3-ptq", "-o", "x"])
    assert res.exit_code == 2 and "unknown method int3-ptq" in res.output
    res = CliRunner().invoke(main, ["baseline", "--dataset", "digits", "--widths", "8,zero", "-o", "x"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output


def test_cli_end_to_end(tmp_path):
    from supermask.cli import main

    args = ["baseline", "--dataset", "digits", "--widths", "8", "--methods", "int8-ptq,ternary-qat",
            "--epochs", "2", "--finetune-epochs", "1", "-o", str(tmp_path / "b"), "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "int8-ptq" in res.output and "ternary-qat" in res.output and "max bytes" in res.output
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())) == 2
    res = CliRunner().invoke(main, args[:-3] + ["--epochs", "3", "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and "other settings" in res.output and "Traceback" not in res.output


def test_cli_damaged_data_set_path_is_an_error_not_a_traceback(tmp_path):
    from supermask.cli import main

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    res = CliRunner().invoke(main, ["baseline", "--dataset", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Error:" in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)  # click's clean exit, not a raised library error


def test_artifact_reader_is_torch_free():
    res = run_python("import sys, supermask.baseline.artifact\nprint('torch' in sys.modules)", block_torch=True)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr
