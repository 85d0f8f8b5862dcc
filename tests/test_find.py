"""`supermask find` / `supermask pack`: config, run directory, resume, determinism, tickets that
reproduce the run's accuracy, real-data and conv smoke runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from supermask import datasets, models  # noqa: E402
from supermask.cli import main  # noqa: E402
from supermask.errors import LockedError, RunError, SupermaskError, SweepError  # noqa: E402
from supermask.ticket import read_ticket  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train import criteria as crit  # noqa: E402
from supermask.train import find as TF  # noqa: E402
from supermask.train import loop, masks as M  # noqa: E402
from supermask.train.data import to_tensors  # noqa: E402
from supermask.train.pack import pack  # noqa: E402
from supermask.train.runs import is_complete, load_npz, load_run, pick_row, run_masks  # noqa: E402
from supermask.train.subject import Subject  # noqa: E402

from helpers import SHARED_DATA, cuda_available, needs_data  # noqa: E402

FASHION = SHARED_DATA / "fashion-mnist"
needs_fashion = needs_data("fashion-mnist")
SMALL = dict(model="lenet-300-100", dataset="digits", iterations=150, keeps=(0.5, 0.2, 0.05))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)
    return r


def _subject(cfg, info) -> Subject:
    """The plan of a run's (built-in) network, rebuilt from its config and model.json."""
    return Subject.from_module(models.create(cfg.model, info["input_shape"], len(info["classes"])),
                               include=cfg.include, exclude=cfg.exclude, affine=cfg.affine)


def _preprocess(info):
    from supermask.arch import Preprocess

    return Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in info["preprocess"].items()})


# ------------------------------------------------------------------------------- config


def test_config_defaults_follow_the_papers():
    c = C.FindConfig("lenet-300-100", "fashion-mnist")
    assert c.lr == 1.2e-3 and c.batch_size == 60 and c.keeps == (0.5, 0.3, 0.2, 0.1, 0.05)
    assert c.criteria == tuple(crit.CRITERIA) and c.selection == "layerwise"
    assert C.FindConfig("conv2", "cifar10").lr == 2e-4
    assert C.FindConfig("conv4", "cifar10").lr == 3e-4 == C.FindConfig("conv6", "cifar10").lr


def test_config_hashes_are_pinned_and_split_by_stage():
    c = C.FindConfig("lenet-300-100", "fashion-mnist")
    # Pinned: changing the canonical form would silently rename existing runs.
    assert c.train_hash == "f537f6a1e791597d"
    assert c.run_hash == "a2a02059f0636ebd"
    # evaluation-only changes keep the training identity
    e = C.FindConfig("lenet-300-100", "fashion-mnist", keeps=(0.1,), criteria=("random",))
    assert e.train_hash == c.train_hash and e.run_hash != c.run_hash
    assert C.FindConfig("lenet-300-100", "fashion-mnist", seed=1).train_hash != c.train_hash
    assert C.FindConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_iterations_make_epochs_irrelevant_to_the_run_identity():
    it = C.FindConfig("lenet-300-100", "fashion-mnist", iterations=400)
    both = C.FindConfig("lenet-300-100", "fashion-mnist", epochs=5, iterations=400)
    assert it == both and it.epochs is None and both.to_dict() == it.to_dict()
    # Pinned. These changed once, when epochs stopped counting for runs with --iterations
    # (it used to hold 20 or whatever --epochs said); find still reuses a folder written
    # under the old rule, because it compares configs, not hash strings.
    assert it.train_hash == "653e28f2cd16e0a7" and it.run_hash == "97a2931ccc12b32d"
    assert C.FindConfig("lenet-300-100", "fashion-mnist", epochs=None).epochs == C.DEFAULT_EPOCHS
    assert C.FindConfig("lenet-300-100", "fashion-mnist", epochs=5).train_hash != \
        C.FindConfig("lenet-300-100", "fashion-mnist").train_hash


def test_find_and_sweep_share_their_options():
    from supermask.cli_report import sweep
    from supermask.cli_train import find

    def opts(cmd):
        return {p.name: (p.default, p.help) for p in cmd.params}

    f, s = opts(find), opts(sweep)
    # a budget search (--budget, --widths) is find's own: a sweep runs plain finds
    assert set(f) - set(s) == {"model", "dataset", "seed", "budgets", "widths"}
    # what to sweep over, and where the runs go (the backend and its resources)
    assert set(s) - set(f) == {"models", "dataset_names", "seeds", "backend", "address", "cpus_per_run",
                               "gpus_per_run"}
    for name in set(f) & set(s) - {"out"}:
        assert f[name] == s[name], name
    assert {"lr", "batch_size", "epochs", "iterations", "device"} <= set(s)
    assert ",".join(map(str, C.DEFAULT_KEEPS)) in f["keeps"][1]
    assert list(next(p for p in find.params if p.name == "device").type.choices) == list(C.DEVICES)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="resnet"), "choose one of lenet-300-100"),
    (dict(dataset="svhn"), "choose one of mnist"),
    (dict(lr=2.0), "learning rate"),
    (dict(keeps=(0.5, 1.5)), "fraction"),
    (dict(keeps=()), "empty"),
    (dict(criteria=("largest",)), "unknown criterion"),
    (dict(init="kaiming_normal"), "not bit-exact"),
    (dict(batch_size=0), "positive integer"),
    (dict(seed=-1), "seed"),
    (dict(selection="random"), "layerwise, global"),
])
def test_config_rejects_bad_values(kwargs, match):
    base = dict(model="lenet-300-100", dataset="mnist")
    with pytest.raises(ValueError, match=match):
        C.FindConfig(**{**base, **kwargs})


@pytest.mark.parametrize("args, match", [
    (["--keep", "0.5,1.5"], "fraction in \\(0, 1\\]"),
    (["--criteria", "large_final,biggest"], "unknown criterion 'biggest'"),
    # --model is a free string now (a built-in name or a module:factory spec): the config names the choices
    (["--model", "vgg"], "unknown model 'vgg'; choose one of lenet-300-100"),
    (["--device", "tpu"], "'tpu' is not one of"),
    (["--lr", "0"], "0<x<1"),
])
def test_cli_rejects_bad_values(tmp_path, args, match):
    base = {"--model": "lenet-300-100", "--dataset": "digits", "--out": tmp_path / "r"}
    for a, v in zip(args[::2], args[1::2]):
        base[a] = v
    r = run_cli("find", *[x for kv in base.items() for x in kv])
    assert r.exit_code == 2, r.output
    assert re.search(match, r.output), r.output


def test_cli_missing_data_is_a_clear_error(tmp_path):
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "mnist", "--data-dir", tmp_path,
                "--out", tmp_path / "r", "-q")
    assert r.exit_code == 1
    assert r.output.startswith("Error: dataset 'mnist' (test) not found; looked in: ")


# ------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", 150,
                "--keep", "0.5,0.2,0.05", "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    assert "dense trained accuracy" in r.output and "large_final_same_sign" in r.output
    return out


def test_run_directory_layout_and_rows(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert names == {"config.json", "model.json", "weights.npz", "train.json", "masks.npz", "extras.npz",
                     "results.json", ".lock"}
    res = json.loads((digits_run / "results.json").read_text())
    rows = res["rows"]
    assert len(rows) == 1 + len(crit.CRITERIA) * 3 * 2
    dense = rows[0]
    assert dense["criterion"] == "dense" and dense["init"] == "trained" and dense["density"] == 1.0
    assert dense["accuracy"] > 0.8  # 150 steps on 8x8 digits
    for r in rows:
        assert {"model", "dataset", "seed", "criterion", "keep", "init", "accuracy", "density",
                "layer_densities"} <= set(r)
        assert r["accuracy"] == r["correct"] / r["total"] and r["total"] == 364
    r = next(r for r in rows if r["criterion"] == "large_final_same_sign" and r["keep"] == 0.2)
    # hidden layers keep 20 %, the output layer 60 % (half the pruning rate)
    assert r["layer_densities"]["fc1.weight"] == pytest.approx(0.2, abs=1e-3)
    assert r["layer_densities"]["fc3.weight"] == pytest.approx(0.6, abs=1e-3)
    sizes = {"fc1.weight": 64 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}
    kept = sum(r["layer_densities"][n] * s for n, s in sizes.items())
    assert r["density"] == pytest.approx(kept / sum(sizes.values()))
    # weights are a plain npz (no pickle) holding every trained tensor
    with np.load(digits_run / "weights.npz", allow_pickle=False) as z:
        assert set(z.files) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
        assert z["fc1.weight"].dtype == np.float32
    # lenet-300-100 with fixed biases stores no tensors beside its masks (no BatchNorm statistics)
    with np.load(digits_run / "extras.npz", allow_pickle=False) as z:
        assert z.files == []
    info = json.loads((digits_run / "model.json").read_text())
    assert info["model"] == "lenet-300-100" and info["input_shape"] == [1, 8, 8] and info["dataset"] == "digits"
    assert [(t["name"], t["fate"]) for t in info["tensors"]] == [
        ("fc1.weight", "masked"), ("fc1.bias", "bias"), ("fc2.weight", "masked"), ("fc2.bias", "bias"),
        ("fc3.weight", "masked"), ("fc3.bias", "bias")]


def test_training_starts_from_the_generator_weights(digits_run):
    cfg, info, _ = load_run(digits_run)
    subject = _subject(cfg, info)
    w0 = subject.initial_weights(cfg.seed, cfg.init_spec)
    wf = load_npz(digits_run / "weights.npz")
    # trained weights moved from the init, but only a little relative to their scale: the
    # correlation shows which init they came from; a different seed's init does not match.
    other = subject.initial_weights(cfg.seed + 1, cfg.init_spec)
    c_same = np.corrcoef(w0["fc2.weight"].ravel(), wf["fc2.weight"].ravel())[0, 1]
    c_other = np.corrcoef(other["fc2.weight"].ravel(), wf["fc2.weight"].ravel())[0, 1]
    assert c_same > 0.5 and abs(c_other) < 0.1
    assert not np.array_equal(w0["fc2.weight"], wf["fc2.weight"])


def test_rerun_reuses_finished_stages(digits_run):
    stamps = {p.name: p.stat().st_mtime_ns for p in digits_run.iterdir() if p.name != ".lock"}
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", 150,
                "--keep", "0.5,0.2,0.05", "--device", "cpu", "--out", digits_run, "-q")
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime_ns for p in digits_run.iterdir() if p.name != ".lock"} == stamps


def test_interrupted_evaluation_resumes_without_retraining(tmp_path):
    out = tmp_path / "r"
    cfg = C.FindConfig(**SMALL, criteria=("large_final_same_sign", "random"))
    first = TF.find(cfg, out, device="cpu", progress=False)
    train_stamp = (out / "train.json").stat().st_mtime_ns
    weights = (out / "weights.npz").read_bytes()
    (out / "results.json").unlink()  # as if killed during evaluation
    again = TF.find(cfg, out, device="cpu", progress=False)
    assert again == first
    assert (out / "train.json").stat().st_mtime_ns == train_stamp and (out / "weights.npz").read_bytes() == weights
    # a new evaluation config reuses the training too
    more = TF.find(C.FindConfig(**{**SMALL, "keeps": (0.3,)}, criteria=("large_final",)), out, device="cpu",
                   progress=False)
    assert [r["keep"] for r in more["rows"][1:]] == [0.3, 0.3]
    assert (out / "train.json").stat().st_mtime_ns == train_stamp
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # a different training config must not overwrite this run
    with pytest.raises(RunError, match="different run"):
        TF.find(C.FindConfig(**{**SMALL, "seed": 5}), out, device="cpu", progress=False)
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--seed", 5, "--out", out, "-q")
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "different run" in r.output


def _killed_during(monkeypatch, step: str):
    """Make ``step`` (a function supermask.train.find calls) die as a SIGKILL would (nothing after it runs)."""

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TF, step, die)


def test_pack_refuses_a_run_killed_during_a_new_evaluation(tmp_path, digits_run, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    cfg, _, _ = load_run(run)
    other = C.FindConfig(**{**cfg.to_dict(), "selection": "global"})
    with monkeypatch.context() as m:
        _killed_during(m, "compute_masks")  # the first step of evaluating a mask
        with pytest.raises(KeyboardInterrupt):
            TF.find(other, run, device="cpu", progress=False)
    # config.json already names the global-selection run; the layerwise masks must not be packed
    assert json.loads((run / "config.json").read_text())["run_hash"] == other.run_hash
    with pytest.raises(RunError, match="not a finished find run"):
        pack(run, tmp_path / "t.smask", keep=0.2)
    # the original config is not "complete" either until it is evaluated again
    assert not is_complete(run, cfg) and not is_complete(run, other)
    TF.find(cfg, run, device="cpu", progress=False)
    assert is_complete(run, cfg)
    assert (run / "results.json").read_bytes() == (digits_run / "results.json").read_bytes()
    pack(run, tmp_path / "t.smask", keep=0.2)


def test_a_run_written_under_the_old_epochs_rule_is_reused(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    # as written before epochs was dropped for runs with --iterations: other hash strings
    conf = json.loads((run / "config.json").read_text())
    conf["config"]["epochs"], conf["train_hash"], conf["run_hash"] = 20, "a796e1adf2f2c0cf", "c7c65b5cf36e80b2"
    (run / "config.json").write_text(json.dumps(conf))
    for name, key in (("train.json", "train_hash"), ("results.json", "run_hash")):
        d = json.loads((run / name).read_text())
        d[key] = conf[key]
        (run / name).write_text(json.dumps(d))
    stamp = (run / "weights.npz").stat().st_mtime_ns
    cfg, _, _ = load_run(digits_run)
    TF.find(cfg, run, device="cpu", progress=False)  # neither refused as "a different run" nor retrained
    assert (run / "weights.npz").stat().st_mtime_ns == stamp
    assert json.loads((run / "train.json").read_text())["train_hash"] == cfg.train_hash
    assert (run / "results.json").read_bytes() == (digits_run / "results.json").read_bytes()


def test_load_run_refuses_results_of_another_config(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    conf = json.loads((run / "config.json").read_text())
    conf["run_hash"] = "0123456789abcdef"  # as left by a run killed before results.json was replaced
    (run / "config.json").write_text(json.dumps(conf))
    with pytest.raises(RunError, match="run is incomplete or from another config .*; re-run supermask find --out"):
        load_run(run)
    r = run_cli("pack", tmp_path / "x.smask", "--run", run)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output


@pytest.mark.parametrize("name, text, match", [
    ("results.json", "[]", "results.json is malformed: expected a JSON object, found list"),
    ("results.json", '{"run_hash": "HASH", "rows": [{"criterion": "dense"}]}', "row 0 has no valid 'keep'"),
    ("results.json", '{"run_hash": "HASH", "rows": []}', "'rows' must be a non-empty list"),
    ("results.json", '{"run_hash": "HASH", "rows": [1]}', "row 0 is not an object"),
    ("config.json", '"text"', "config.json is malformed: expected a JSON object, found str"),
])
def test_malformed_run_files_are_run_errors(tmp_path, digits_run, name, text, match):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    run_hash = json.loads((run / "config.json").read_text())["run_hash"]
    (run / name).write_text(text.replace("HASH", run_hash))
    with pytest.raises(RunError, match=match):
        pack(run, tmp_path / "t.smask", keep=0.2)
    if name == "config.json":  # find cannot tell whose folder it is: a clear error, not a traceback
        r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--out", run, "-q")
        assert r.exit_code == 1 and "config.json is malformed" in r.output and "Traceback" not in r.output


def test_find_removes_stale_temporary_files(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    stale = [".weights.npz.k2_9abxy.tmp", ".results.json.00000000.tmp"]
    kept = [".notes.tmp", "draft.tmp", ".weights.npz.tmp", ".x.abc.tmp"]
    for n in stale + kept:
        (run / n).write_bytes(b"partial")
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", 150,
                "--keep", "0.5,0.2,0.05", "--device", "cpu", "--out", run, "-q")
    assert r.exit_code == 0, r.output
    assert not any((run / n).exists() for n in stale)
    assert all((run / n).exists() for n in kept)  # only names supermask.atomic gives are touched


def test_unusable_run_folders_are_clear_errors(tmp_path):
    from supermask.lock import folder_lock

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SupermaskError, match="cannot lock the run folder .*afile"):
        with folder_lock(afile, "run folder"):
            pass
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--out", afile / "run", "-q")
    assert r.exit_code == 1 and r.output.startswith("Error: cannot create the run folder")
    # the typed errors live in supermask.errors and stay importable where they were
    from supermask import lock
    from supermask.train import sweep

    assert lock.LockedError is LockedError and sweep.SweepError is SweepError
    assert issubclass(LockedError, SupermaskError) and issubclass(SweepError, SupermaskError)


def test_same_seed_gives_byte_identical_results_and_masks(tmp_path, digits_run):
    out = tmp_path / "again"
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", 150,
                "--keep", "0.5,0.2,0.05", "--device", "cpu", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert (out / "results.json").read_bytes() == (digits_run / "results.json").read_bytes()
    a, b = load_npz(out / "masks.npz"), load_npz(digits_run / "masks.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    wa, wb = load_npz(out / "weights.npz"), load_npz(digits_run / "weights.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def _ticket_predictions(path: Path, ds, preprocess) -> np.ndarray:
    """Predictions of the torch model of a version-3 ticket: the built-in model it names, with
    the ticket's tensors (the ticket carries a graph, not an architecture)."""
    from supermask.prediction import predict_classes
    from supermask.train.subject import forward, state_to_torch

    t = read_ticket(path)
    assert t.version == 3 and t.architecture is None
    net = models.create(t.model_name, t.input_shape, len(t.classes)).eval()
    x = to_tensors(ds, preprocess, "cpu")[0]
    with torch.inference_mode():
        out = forward(net, state_to_torch(t.weights(verify=True), "cpu"), x).numpy()
    return predict_classes(out)


@pytest.mark.parametrize("init", ["original", "signed-constant"])
def test_packed_ticket_reproduces_the_run_accuracy_exactly(tmp_path, digits_run, init):
    ticket = tmp_path / "m.smask"
    r = run_cli("pack", ticket, "--run", digits_run, "--keep", 0.2, "--init", init,
                "--criterion", "large_final_same_sign")
    assert r.exit_code == 0, r.output
    scheme = "kaiming_uniform" if init == "original" else "signed_kaiming_constant"
    assert f"keep 0.2 (init {scheme})" in r.output
    t = read_ticket(ticket)
    res = json.loads((digits_run / "results.json").read_text())
    row = pick_row(res, "large_final_same_sign", 0.2, init)
    assert t.criterion == "large_final_same_sign" and t.keep == 0.2
    assert t.metadata["dataset"] == "digits" and t.metadata["accuracy"] == row["accuracy"]
    assert t.metadata["model"] == "lenet-300-100" and t.metadata["test_examples"] == row["total"] == 364
    assert t.metadata.get("init_variant") == (None if init == "original" else init)  # recorded when not the default
    assert t.init.scheme == ("kaiming_uniform" if init == "original" else "signed_kaiming_constant")
    # the same predictions on the whole test set as the run's own evaluation
    cfg, info, _ = load_run(digits_run)
    subject = _subject(cfg, info)
    ds = datasets.load("digits", "test")
    masks = run_masks(digits_run, "large_final_same_sign", 0.2, info)
    w = M.masked_state(subject.initial_weights(cfg.seed, M.variant_init(cfg, init)), masks, subject.fixed_values())
    assert all(not w[n].any() for n in ("fc1.bias", "fc2.bias", "fc3.bias"))  # biases are fixed at zero
    x = to_tensors(ds, _preprocess(info), "cpu")[0]
    correct, pred = loop.accuracy(subject, w, x, ds.labels, "cpu")
    assert correct == row["correct"]
    np.testing.assert_array_equal(_ticket_predictions(ticket, ds, _preprocess(info)), pred)
    for name, m in masks.items():
        np.testing.assert_array_equal(t.masks[name], m)
    # the evaluation's masked weights and the ticket's are the same bits (pruned ones +0.0)
    tw = t.weights(verify=True)
    for name in masks:
        np.testing.assert_array_equal(w[name].view(np.uint32), tw[name].view(np.uint32))
    # the fixed zero biases travel as role "zero"
    assert {e.name: e.role for e in t.tensors if e.name.endswith(".bias")} == {
        "fc1.bias": "zero", "fc2.bias": "zero", "fc3.bias": "zero"}


def test_apply_mask_gives_positive_zeros():
    w = np.array([-0.0, -1.5, 2.0, -3.0], dtype=np.float32)
    out = M.apply_mask(w, np.array([True, False, True, False]))
    assert out.dtype == np.float32 and out.view(np.uint32).tolist() == \
        np.array([0.0, 0.0, 2.0, 0.0], dtype=np.float32).view(np.uint32).tolist()
    assert w[1] == -1.5  # the input is not changed


def test_signed_constant_ticket_weights_are_sign_of_init_times_constant(tmp_path, digits_run):
    pack(digits_run, tmp_path / "o.smask", keep=0.5, init="original")
    pack(digits_run, tmp_path / "s.smask", keep=0.5, init="signed-constant")
    o, s = read_ticket(tmp_path / "o.smask"), read_ticket(tmp_path / "s.smask")
    for name in ("fc1.weight", "fc3.weight"):
        wo, ws = o.init_weights(name), s.init_weights(name)
        np.testing.assert_array_equal(np.signbit(wo), np.signbit(ws))
        assert len(np.unique(np.abs(ws))) == 1


def test_pack_defaults_to_the_best_keep_and_checks_the_run(tmp_path, digits_run):
    res = json.loads((digits_run / "results.json").read_text())
    # by default: the run's most accurate supermask over every criterion, keep and init variant
    best = max((r for r in res["rows"] if r["criterion"] != "dense"), key=lambda r: (r["correct"], -r["keep"]))
    t = pack(digits_run, tmp_path / "best.smask", codec="entropy")
    assert (t.criterion, t.keep, t.metadata.get("init_variant", "original")) == (best["criterion"], best["keep"],
                                                                                 best["init"])
    assert t.metadata["accuracy"] == best["accuracy"] and {e.codec for e in t.tensors if e.role == "masked"} == {
        "entropy"}
    assert (best["criterion"], best["init"]) != ("large_final_same_sign", "original"), \
        "this run's best row is another criterion or init, so the test shows that pack looks at all of them"
    # narrowing: the best keep of one criterion and init
    lfss = max((r for r in res["rows"] if r["criterion"] == "large_final_same_sign" and r["init"] == "original"),
               key=lambda r: (r["correct"], -r["keep"]))
    t = pack(digits_run, tmp_path / "lfss.smask", criterion="large_final_same_sign", init="original")
    assert (t.criterion, t.keep) == ("large_final_same_sign", lfss["keep"])
    assert "init_variant" not in t.metadata and t.metadata["accuracy"] == lfss["accuracy"]
    # another evaluated criterion and keep packs with that row's accuracy
    row = pick_row(res, "movement", 0.05, "original")
    t = pack(digits_run, tmp_path / "m.smask", keep=0.05, criterion="movement")
    assert t.criterion == "movement" and t.keep == 0.05 and t.metadata["accuracy"] == row["accuracy"]
    # a keep that was not evaluated is an error now that lists the keeps the run has (docs/training.md;
    # a ticket needs the values the evaluation stored for its mask); it used to be recomputed from
    # the saved weights, without an accuracy
    with pytest.raises(RunError, match=r"no results for criterion 'movement', keep 0\.3") as e:
        pack(digits_run, tmp_path / "k.smask", keep=0.3, criterion="movement")
    assert not (tmp_path / "k.smask").exists()
    r = run_cli("pack", tmp_path / "x.smask", "--run", tmp_path)
    assert r.exit_code == 1 and "is not a finished find run" in r.output
    r = run_cli("pack", tmp_path / "x.smask", "--run", digits_run, "--keep", 2)
    assert r.exit_code == 2
    assert all(k in str(e.value) for k in ("0.5", "0.2", "0.05")), str(e.value)  # the keeps the run has


@needs_fashion
def test_short_fashion_mnist_run(tmp_path):
    """A few hundred steps on the real data: the supermask effect is already visible."""
    cfg = C.FindConfig("lenet-300-100", "fashion-mnist", iterations=400, keeps=(0.5, 0.2),
                       criteria=("large_final_same_sign", "large_final", "random"))
    res = TF.find(cfg, tmp_path / "fm", data_dir=str(SHARED_DATA), device="cpu", progress=False)
    by = {(r["criterion"], r["init"], r["keep"]): r["accuracy"] for r in res["rows"]}
    assert res["test_examples"] == 10000
    assert by["dense", "trained", 1.0] > 0.78
    for k in (0.5, 0.2):
        assert by["large_final_same_sign", "original", k] > by["random", "original", k] + 0.2
    assert max(by["large_final_same_sign", v, k] for v in C.INIT_VARIANTS for k in (0.5, 0.2)) > 0.5


@needs_fashion
@pytest.mark.parametrize("model", ["conv2", "conv4", "conv6"])
def test_conv_models_train_and_evaluate_end_to_end(tmp_path, model):
    cfg = C.FindConfig(model, "fashion-mnist", iterations=15, train_limit=600, test_limit=120, keeps=(0.5, 0.1),
                       criteria=("large_final_same_sign", "random"))
    res = TF.find(cfg, tmp_path / model, data_dir=str(SHARED_DATA), device="cpu", progress=False)
    rows = res["rows"]
    assert len(rows) == 1 + 2 * 2 * 2 and all(r["total"] == 120 for r in rows)
    r = next(r for r in rows if r["criterion"] == "random" and r["keep"] == 0.1)
    convs = [n for n in r["layer_densities"] if n.startswith("conv")]
    assert len(convs) == {"conv2": 2, "conv4": 4, "conv6": 6}[model]
    assert all(r["layer_densities"][n] == pytest.approx(0.1, abs=2e-3) for n in convs)
    assert r["layer_densities"]["fc3.weight"] == pytest.approx(0.55, abs=2e-3)
    t = pack(tmp_path / model, tmp_path / f"{model}.smask", keep=0.1, criterion="large_final_same_sign",
             init="original")
    assert t.model_name == model and t.metadata["model"] == model and t.metadata["accuracy"] == next(
        x["accuracy"] for x in rows if x["criterion"] == "large_final_same_sign" and x["keep"] == 0.1
        and x["init"] == "original")


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_reproduction_one_seed(tmp_path):
    """The docs/results.md thresholds for seed 0 with the default settings."""
    cfg = C.FindConfig("lenet-300-100", "fashion-mnist", seed=0,
                       criteria=("large_final_same_sign", "large_final", "random"))
    res = TF.find(cfg, tmp_path / "fm", data_dir=str(SHARED_DATA), device="cpu", progress=False)
    by = {(r["criterion"], r["init"], r["keep"]): r["accuracy"] for r in res["rows"]}
    assert by["dense", "trained", 1.0] >= 0.88
    lfss = [by["large_final_same_sign", "original", k] for k in cfg.keeps]
    assert max(lfss) >= 0.65
    for k in cfg.keeps:
        assert by["large_final_same_sign", "original", k] > max(by["large_final", "original", k],
                                                                 by["random", "original", k])
    assert max(by["large_final_same_sign", "signed-constant", k] for k in cfg.keeps) >= 0.70


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_cuda_training_gives_a_ticket_that_regenerates_on_cpu(tmp_path):
    cfg = C.FindConfig(**SMALL, criteria=("large_final_same_sign",))
    res = TF.find(cfg, tmp_path / "gpu", device="cuda", progress=False)
    assert json.loads((tmp_path / "gpu" / "train.json").read_text())["device"] == "cuda"
    t = pack(tmp_path / "gpu", tmp_path / "g.smask", keep=0.2, init="original")
    cfg2, info, _ = load_run(tmp_path / "gpu")
    subject = _subject(cfg2, info)
    w0 = subject.initial_weights(cfg.seed, cfg.init_spec)
    masks = run_masks(tmp_path / "gpu", "large_final_same_sign", 0.2, info)
    w = t.weights(verify=True)  # regenerated on the CPU
    for name, m in masks.items():
        np.testing.assert_array_equal(w[name], np.where(m, w0[name], np.float32(0)))
    # and the weights the GPU trained from are those same bits
    from supermask.torch_rng import generate_torch

    p = subject.plans["fc1.weight"]
    g = generate_torch(cfg.seed, p.name, p.shape, "uniform", cfg.init_spec.scale(*p.fans), "cuda")
    np.testing.assert_array_equal(g.cpu().numpy(), w0["fc1.weight"])
    dense = next(r for r in res["rows"] if r["criterion"] == "dense")
    assert dense["accuracy"] > 0.8


@pytest.mark.skipif(cuda_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--device", "cuda",
                "--out", tmp_path / "r", "-q")
    assert r.exit_code == 1 and "--device cuda" in r.output and "no CUDA GPU" in r.output


def test_a_find_that_fails_before_writing_leaves_no_folder(tmp_path, monkeypatch):
    from supermask.train import find as find_module

    def no_device(device):
        raise SupermaskError("no such device")

    monkeypatch.setattr(find_module, "resolve_device", no_device)
    out = tmp_path / "new" / "run"
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", "5", "--out", out, "-q")
    assert r.exit_code == 1 and "no such device" in r.output
    assert not out.exists()
    # a folder that was there before stays, lock file and all
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    r = run_cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", "5", "--out", out, "-q")
    assert r.exit_code == 1 and (out / "notes.txt").exists()


def test_the_ray_backend_without_ray_fails_before_the_folder_is_made(tmp_path, monkeypatch):
    import sys

    from supermask.errors import SweepError
    from supermask.train.sweep import sweep

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SweepError, match=r"--backend ray needs Ray: pip install 'supermask\[cluster\]'"):
        sweep(["lenet-300-100"], ["digits"], [0], tmp_path / "s", backend="ray", iterations=2)
    assert not (tmp_path / "s").exists()
    with pytest.raises(SweepError, match="apply to --backend ray only"):
        sweep(["lenet-300-100"], ["digits"], [0], tmp_path / "s", cpus_per_run=2, iterations=2)
