"""Bring your own model and data: a network from a file, trained through the CLI on a .npz data
set, packed into a ticket that a device runs with numpy and onnxruntime alone; the library API
with torch datasets and numpy arrays; every method through the same path; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

import supermask  # noqa: E402
from supermask import datasets, ticket  # noqa: E402
from supermask.cli import main  # noqa: E402
from supermask.errors import ModelError  # noqa: E402
from supermask.prediction import predict_classes  # noqa: E402
from supermask.train.subject import Subject, forward  # noqa: E402

from helpers import BLOCK_TORCH_AND_ONNX, run_python  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "user_models" / "residual_net.py"
SPEC = f"{MODEL_FILE}:make"


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_npz(path: Path, **overrides) -> Path:
    tr, te = datasets.load("digits", "train"), datasets.load("digits", "test")
    arrays = {"x_train": tr.images[:, 0], "y_train": tr.labels, "x_test": te.images[:, 0], "y_test": te.labels,
              "classes": np.array([f"digit {i}" for i in range(10)])}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def reference_logits(t: ticket.Ticket, x_raw: np.ndarray, model=None) -> np.ndarray:
    """Logits of the masked torch model: the user's module with the ticket's tensors swapped in."""
    from supermask.arch import Preprocess
    from supermask.train.data import preprocess_tensor

    module = (model or __import__("supermask.train.data", fromlist=["load_model"]).load_model(
        SPEC, t.input_shape, len(t.classes))).eval()
    p = Preprocess(1 / 255, (0.0,), (1.0,))
    tensors = {n: torch.from_numpy(w) for n, w in t.weights().items()}
    with torch.inference_mode():
        return forward(module, tensors, preprocess_tensor(torch.from_numpy(x_raw), p)).numpy()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """find --model FILE.py:factory on an .npz set (edge-popup, BatchNorm, "+BN"), then pack."""
    d = tmp_path_factory.mktemp("byo")
    npz = write_npz(d / "digits.npz")
    r = cli("find", "--model", SPEC, "--dataset", npz, "--method", "edge-popup", "--keep", "0.5",
            "--epochs", "3", "--affine", "trained", "--out", d / "run", "-q")
    assert r.exit_code == 0, r.output
    r = cli("pack", d / "model.smask", "--run", d / "run")
    assert r.exit_code == 0, r.output
    assert "graph checked in onnxruntime" in r.output
    return d, npz, json.loads((d / "run" / "results.json").read_text())


def test_cli_ticket_carries_graph_and_stored_tensors(cli_run):
    d, _, res = cli_run
    t = ticket.read_ticket(d / "model.smask")
    assert t.version == 3 and t.graph and t.architecture is None
    roles = {e.name: e.role for e in t.tensors}
    for n in ("stem.weight", "depthwise.weight", "pointwise.weight", "fc.weight"):
        assert roles[n] == "masked"
    for n in ("bn0.running_mean", "bn1.running_var", "bn0.weight", "bn1.bias", "pointwise.bias", "fc.bias"):
        assert roles[n] == "stored"  # statistics, and the trained ("+BN") biases and affine values
    assert t.classes == tuple(f"digit {i}" for i in range(10))
    assert t.metadata["accuracy"] == res["rows"][0]["accuracy"] and t.metadata["affine"] == "trained"
    s = t.summary()
    assert s["stored_bytes"] == 4 * sum(e.size for e in t.tensors if e.role == "stored") > 0


def test_device_without_torch_or_onnx_predicts_like_the_masked_torch_model(cli_run, tmp_path):
    d, _, _ = cli_run
    t = ticket.read_ticket(d / "model.smask")
    tr, te = datasets.load("digits", "train"), datasets.load("digits", "test")
    x = np.concatenate([tr.images, te.images]).astype(np.float32)  # 1797 inputs
    assert x.shape[0] >= 1000
    np.save(tmp_path / "x.npy", x)
    ref = reference_logits(t, x)
    np.save(tmp_path / "ref.npy", ref)
    code = BLOCK_TORCH_AND_ONNX + (
        "import sys, numpy as np\n"
        "import supermask.runtime as smr\n"
        f"m = smr.load({str(d / 'model.smask')!r}, 'cpu')\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); ref = np.load({str(tmp_path / 'ref.npy')!r})\n"
        "z = m.logits(x)\n"
        "from supermask.prediction import predict_classes\n"
        "assert (m.predict(x) == predict_classes(ref)).all(), 'predictions differ'\n"
        "diff = float(np.abs(z - ref).max())\n"
        "assert diff <= 1e-5, diff\n"
        "assert not any(k.split('.')[0] in ('torch', 'onnx') for k in sys.modules)\n"
        "print('OK', diff, len(x))\n")
    r = run_python(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_eval_reproduces_finds_accuracy_exactly(cli_run):
    d, npz, res = cli_run
    r = cli("eval", d / "model.smask", "--dataset", npz, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["correct"] == res["rows"][0]["correct"] and out["num_examples"] == res["rows"][0]["total"]


def test_batchnorm_stays_apart_from_the_masked_convolutions(cli_run):
    onnx = pytest.importorskip("onnx")
    d, _, _ = cli_run
    t = ticket.read_ticket(d / "model.smask")
    g = onnx.load_from_string(t.graph).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("BatchNormalization") == 2  # not folded into the convolutions
    conv_weights = {n.input[1] for n in g.node if n.op_type == "Conv"}
    assert conv_weights == {"stem.weight", "depthwise.weight", "pointwise.weight"}  # seed tensors, untouched
    bn_inputs = {i for n in g.node if n.op_type == "BatchNormalization" for i in n.input[1:]}
    assert {"bn0.running_mean", "bn0.running_var", "bn1.weight", "bn1.bias"} <= bn_inputs
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in g.initializer)  # no weight in the graph
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 8 for a in n.attribute) for n in g.node)
    assert "AveragePool" in ops and "Add" in ops


def test_pack_rebuilds_the_model_and_refuses_a_changed_one(cli_run, tmp_path):
    d, _, _ = cli_run
    conf = json.loads((d / "run" / "model.json").read_text())
    assert conf["model"] == SPEC and conf["tensors"][0]["fate"] in ("masked", "statistic", "norm_weight")
    run2 = tmp_path / "run"
    import shutil

    shutil.copytree(d / "run", run2)
    cfg = json.loads((run2 / "config.json").read_text())
    cfg["config"]["model"] = f"{MODEL_FILE}:unexportable"  # another network under the same run
    (run2 / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["pack", str(tmp_path / "x.smask"), "--run", str(run2)])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.smask").exists()


# ------------------------------------------------------------------------------- library API


def _arrays():
    tr, te = datasets.load("digits", "train"), datasets.load("digits", "test")
    return (np.array(tr.images), np.array(tr.labels)), (np.array(te.images), np.array(te.labels))


@pytest.mark.parametrize("form", ["numpy", "torch-dataset", "dataloader"])
def test_library_api_takes_a_module_and_data_objects(form, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from supermask.train.data import load_model

    (x, y), (xt, yt) = _arrays()
    if form == "numpy":
        train, test = (x, y), (xt, yt)
    else:
        train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        test = TensorDataset(torch.from_numpy(xt), torch.from_numpy(yt))
        if form == "dataloader":
            train, test = DataLoader(train, batch_size=100), DataLoader(test, batch_size=64)
    model = load_model(SPEC, (1, 8, 8), 10)
    run = supermask.find(model, train, test, method="edge-popup", keep=0.5, epochs=1, out=tmp_path / "run",
                         progress=False)
    assert run.rows[0]["total"] == len(yt)
    t = run.pack(tmp_path / "m.smask")
    import supermask.runtime as smr

    m = smr.load(tmp_path / "m.smask", "cpu")
    pred = m.predict(xt)
    assert int((pred == yt).sum()) == run.rows[0]["correct"]  # the device agrees with find exactly
    np.testing.assert_array_equal(pred, predict_classes(reference_logits(t, xt.astype(np.float32), model)))
    with pytest.raises(supermask.errors.RunError, match="pass it to pack too"):
        supermask.pack(tmp_path / "run", tmp_path / "n.smask")


@pytest.mark.parametrize("method", ["criteria", "bernoulli"])
def test_every_method_runs_through_the_same_path(method, tmp_path):
    (x, y), (xt, yt) = _arrays()
    extra = {"criteria": ("large_final_same_sign",), "keep": 0.3} if method == "criteria" else {}
    run = supermask.find(SPEC, (x, y), (xt, yt), method=method, iterations=30, out=tmp_path / "r", progress=False,
                         **extra)
    t = run.pack(tmp_path / "m.smask")
    import supermask.runtime as smr

    correct = int((smr.load(t, "cpu").predict(xt) == yt).sum())
    assert correct == run.best()["correct"]
    if method == "bernoulli":
        assert any(e.multiplier != 1.0 for e in t.tensors if e.role == "masked")
    else:
        roles = {e.name: e.role for e in t.tensors}
        assert roles["bn0.weight"] == "one" and roles["bn0.bias"] == "zero" and roles["fc.bias"] == "zero"


def test_builtin_models_are_ordinary_users_of_the_path():
    from supermask import models

    for name in models.REGISTRY:
        m = models.create(name, (1, 28, 28), 10)
        s = Subject.from_module(m)
        assert s.masked and s.masked[-1].startswith("fc")  # the classifier is the output layer
    s = Subject.from_module(models.create("resnet20", (3, 32, 32), 10))
    fates = {p.fate for p in s.plans.values()}
    assert fates == {"masked", "norm_weight", "norm_bias", "statistic", "bias"}
    assert len(s.masked) == 22  # 19 convolutions + 2 shortcut convolutions + the classifier
    dw = Subject.from_module(models.create("dwnet", (1, 28, 28), 10)).plans["blocks.1.dw.weight"]
    assert dw.shape == (64, 1, 3, 3) and dw.fans == (9, 576)  # depthwise: fan_in counts one group


def test_include_and_exclude_patterns():
    from supermask.train.data import load_model

    m = load_model(SPEC, (1, 8, 8), 10)
    s = Subject.from_module(m, exclude=("fc",))
    assert s.plans["fc.weight"].fate == "regenerated" and s.plans["stem.weight"].fate == "masked"
    s = Subject.from_module(m, include=("*wise",))
    assert s.masked == ["depthwise.weight", "pointwise.weight"]
    with pytest.raises(ModelError, match="matches no Linear"):
        Subject.from_module(m, include=("layer9*",))


# ------------------------------------------------------------------------------- bad input


def _fails(*args, match: str):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    assert match in r.output, r.output
    return r


def test_bad_models_and_data_give_clear_errors(tmp_path):
    npz = write_npz(tmp_path / "d.npz")
    common = ["--dataset", npz, "--method", "edge-popup", "--keep", "0.5", "--iterations", "2", "-q"]
    _fails("find", "--model", f"{HERE / 'user_models' / 'broken.py'}:make", *common, "--out", tmp_path / "a",
           match="importing")
    _fails("find", "--model", "no_such_package_xyz.models:make", *common, "--out", tmp_path / "b",
           match="ModuleNotFoundError")
    _fails("find", "--model", f"{MODEL_FILE}:not_a_module", *common, "--out", tmp_path / "c",
           match="not a torch.nn.Module")
    _fails("find", "--model", f"{MODEL_FILE}:raises", *common, "--out", tmp_path / "c2",
           match="cannot build this network today")
    _fails("find", "--model", f"{MODEL_FILE}:missing", *common, "--out", tmp_path / "c3", match="no attribute")
    _fails("find", "--model", f"{MODEL_FILE}:nothing_to_mask", *common, "--out", tmp_path / "d",
           match="nothing to mask")
    _fails("find", "--model", "no-such-model", *common, "--out", tmp_path / "e", match="unknown model")
    bad = write_npz(tmp_path / "missing.npz", y_test=None)
    _fails("find", "--model", SPEC, "--dataset", bad, "--out", tmp_path / "f", match="y_test")
    x = datasets.load("digits", "test").images[:, 0]
    bad = write_npz(tmp_path / "len.npz", x_test=x[:10])
    _fails("find", "--model", SPEC, "--dataset", bad, "--out", tmp_path / "g", match="same length")
    y = datasets.load("digits", "test").labels.copy()
    y[3] = 12
    bad = write_npz(tmp_path / "labels.npz", y_test=y)
    _fails("find", "--model", SPEC, "--dataset", bad, "--out", tmp_path / "h", match="outside the 10 classes")
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "test" / "cat").mkdir(parents=True)
    _fails("find", "--model", SPEC, "--dataset", tmp_path / "imgs", "--out", tmp_path / "i", match="no images")
    _fails("find", "--model", SPEC, "--dataset", tmp_path / "nowhere.npz", "--out", tmp_path / "j",
           match="does not exist")
    assert not any((tmp_path / n / "results.json").exists() for n in "abcdefghij")


def test_an_unexportable_model_is_refused_before_training_naming_the_layer(tmp_path):
    npz = write_npz(tmp_path / "d.npz")
    r = _fails("find", "--model", f"{MODEL_FILE}:unexportable", "--dataset", npz, "--method", "edge-popup", "--keep",
               "0.5", "--iterations", "3", "-q", "--out", tmp_path / "run", match="cannot export")
    assert "odd (OddLayer)" in r.output
    assert not (tmp_path / "run" / "train.json").exists()


@pytest.mark.parametrize("factory,match", [
    ("wrong_input", "fails on inputs of shape (2, 1, 8, 8)"),
    ("three_d_output", "returned (2, 10, 1)"),
    ("too_many_outputs", "returned (2, 20)"),
    ("tuple_output", "returned tuple"),
    ("padded", "is not allowed in a ticket"),
])
def test_models_that_do_not_fit_the_data_are_refused_before_training(tmp_path, factory, match):
    npz = write_npz(tmp_path / "d.npz")
    _fails("find", "--model", f"{MODEL_FILE}:{factory}", "--dataset", npz, "--iterations", "2", "-q",
           "--out", tmp_path / "run", match=match)
    assert not (tmp_path / "run" / "train.json").exists()


def test_a_changed_forward_is_a_changed_model(tmp_path):
    """Modules without tensors and the forward code are part of the model's identity."""
    from supermask.train.data import load_model

    a = Subject.from_module(load_model(SPEC, (1, 8, 8), 10))
    b = Subject.from_module(load_model(f"{MODEL_FILE}:make_sigmoid", (1, 8, 8), 10))
    assert [p.name for p in a.plans.values()] == [p.name for p in b.plans.values()]  # same tensors
    assert a.digest() != b.digest()
    src = MODEL_FILE.read_text()
    f = tmp_path / "net.py"
    f.write_text(src)
    d1 = Subject.from_module(load_model(f"{f}:make", (1, 8, 8), 10)).digest()
    f.write_text(src.replace("F.relu(y + z)", "F.relu(y - z)"))
    d2 = Subject.from_module(load_model(f"{f}:make", (1, 8, 8), 10)).digest()
    assert d1 != d2


def test_batchnorm_statistics_use_equal_batches_and_any_count(tmp_path):
    """251 calibration examples: no batch of one (which BatchNorm refuses); and the statistics are
    the mean over all examples, whatever the split."""
    from supermask.train.data import load_model
    from supermask.train.loop import batchnorm_statistics

    s = Subject.from_module(load_model(SPEC, (1, 8, 8), 10))
    g = np.random.default_rng(0)
    state = {n: g.normal(size=p.shape).astype(np.float32) for n, p in s.plans.items()}
    x = torch.from_numpy(g.normal(size=(251, 1, 8, 8)).astype(np.float32))
    stats = batchnorm_statistics(s, state, x, "cpu")
    w = torch.from_numpy(state["stem.weight"])
    mean = torch.nn.functional.conv2d(x, w, padding=1).mean(dim=(0, 2, 3)).numpy()
    # batches of 126 and 125 weigh each example within 1 % of equally: close to the exact mean
    np.testing.assert_allclose(stats["bn0.running_mean"], mean, rtol=0, atol=2e-3)


def test_dropout_is_seeded_so_runs_repeat(tmp_path):
    (x, y), (xt, yt) = _arrays()
    rows = []
    for i in range(2):
        run = supermask.find(f"{MODEL_FILE}:with_dropout", (x, y), (xt, yt), method="edge-popup", keep=0.5,
                             iterations=30, out=tmp_path / f"r{i}", progress=False)
        rows.append(run.rows[0]["correct"])
        masks = np.load(tmp_path / f"r{i}" / "masks.npz")
        rows.append(tuple(masks[k].tobytes() for k in sorted(masks.files)))
    assert rows[0] == rows[2] and rows[1] == rows[3]


def test_validation_catches_a_graph_that_computes_something_else(monkeypatch):
    from supermask.arch import Preprocess
    from supermask.export.torch_graph import ExportValidationError, export_graph, validate
    from supermask.runtime import model as rm
    from supermask.train.data import load_model

    m = load_model(SPEC, (1, 8, 8), 10)
    s = Subject.from_module(m)
    g = np.random.default_rng(1)
    tensors = {n: g.normal(size=p.shape).astype(np.float32) for n, p in s.plans.items()}
    for n in ("bn0.running_var", "bn1.running_var"):
        tensors[n] = np.abs(tensors[n]) + 0.5
    p = Preprocess(1 / 255, (0.0,), (1.0,))
    graph = export_graph(m, tensors, (1, 8, 8), p)
    x = g.integers(0, 17, (32, 1, 8, 8)).astype(np.float32)
    v = validate(graph, m, tensors, p, x)
    assert v.max_abs_diff <= v.tolerance and v.same_predictions
    # onnxruntime gets a bias off by one while torch gets the right one: the check must notice
    real = rm.graph_session
    shifted = dict(tensors, **{"fc.bias": tensors["fc.bias"] + 1.0})
    monkeypatch.setattr(rm, "graph_session", lambda gr, w, d, t=None: real(gr, {n: shifted[n] for n in w}, d, t))
    with pytest.raises(ExportValidationError, match="does not match the torch model"):
        validate(graph, m, tensors, p, x)


def test_model_file_factory_without_keyword_arguments(tmp_path):
    from supermask.train.data import load_model

    m = load_model(f"{MODEL_FILE}:make_fixed", (1, 8, 8), 10)
    assert isinstance(m, torch.nn.Module)


def test_report_and_sweep_work_on_a_user_model(cli_run, tmp_path):
    from supermask import report

    d, npz, res = cli_run
    rows = report.measure([d / "run"], progress=False)
    assert len(rows) == 1 and rows[0]["model"] == SPEC and rows[0]["accuracy"] == res["rows"][0]["accuracy"]
    assert rows[0]["ticket_entropy_bytes"] > 0 and rows[0]["num_weights"] == 8 * 9 + 8 * 9 + 64 + 1280
    r = cli("sweep", "--models", SPEC, "--datasets", npz, "--seeds", "0,1", "--method", "edge-popup", "--keep", "0.5",
            "--iterations", "3", "--out", tmp_path / "sweep", "-q")
    assert r.exit_code == 0, r.output
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["make-digits-s0", "make-digits-s1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_user_model_trains_on_the_gpu_and_runs_on_the_cpu(tmp_path):
    (x, y), (xt, yt) = _arrays()
    run = supermask.find(SPEC, (x, y), (xt, yt), method="edge-popup", keep=0.5, epochs=2, out=tmp_path / "r",
                         device="cuda", progress=False, affine="trained")
    t = run.pack(tmp_path / "m.smask")
    import supermask.runtime as smr

    assert int((smr.load(t, "cpu").predict(xt) == yt).sum()) == run.rows[0]["correct"]
