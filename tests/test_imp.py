"""Iterative magnitude pruning (`find --method imp`): the schedule, nested masks, exact
rewinding, the controls, resuming, tickets of a round's mask and the retrained export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from supermask.cli import main  # noqa: E402
from supermask.errors import RunError  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train import imp  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.masks import kept_count, mask_key  # noqa: E402
from supermask.train.pack import export_retrained, pack  # noqa: E402
from supermask.train.runs import load_npz, load_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMP = dict(model="lenet-300-100", dataset="digits", method="imp", rounds=3, iterations=120, controls=("all",),
           eval_every=30)
MASKED = ("fc1.weight", "fc2.weight", "fc3.weight")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp")
    find(C.FindConfig(**IMP), out, progress=False)
    return out


def _masks(out, cfg):
    _, info, _ = load_run(out)
    shapes = {t["name"]: tuple(t["shape"]) for t in info["tensors"] if t["fate"] == "masked"}
    stored = load_npz(out / "masks.npz")
    return {r: {n: np.unpackbits(stored[mask_key(cfg.criteria[0], k, n)], count=math.prod(s),
                                 bitorder="little").astype(bool).reshape(s) for n, s in shapes.items()}
            for r, k in enumerate(cfg.imp_keeps()) if r > 0}


def test_schedule_from_any_two_of_rounds_rate_and_keep():
    c = C.FindConfig("lenet-300-100", "digits", method="imp", keeps=(0.07,))
    assert (c.rounds, c.prune_rate) == (12, 0.2) and c.imp_keeps()[7] == pytest.approx(0.2097152)
    assert c.imp_keeps()[-1] == pytest.approx(0.0687, abs=1e-4)  # the papers' 21 % and 7 %
    c = C.FindConfig("lenet-300-100", "digits", method="imp", keeps=(0.25,), rounds=2)
    assert c.prune_rate == pytest.approx(0.5) and c.imp_keeps() == [1.0, 0.5, 0.25]
    c = C.FindConfig("lenet-300-100", "digits", method="imp", rounds=3, prune_rate=0.5)
    assert c.imp_keeps() == [1.0, 0.5, 0.25, 0.125] and c.criteria == ("large_final",)
    # the pruning criterion changes what is trained: it is part of the training identity
    other = C.FindConfig("lenet-300-100", "digits", method="imp", rounds=3, prune_rate=0.5, criteria=("movement",))
    assert other.train_hash != c.train_hash
    # a config rebuilt from its dict (as a run folder stores it) is the same config
    for cfg in (c, C.FindConfig("lenet-300-100", "digits"), C.FindConfig(**IMP)):
        assert C.FindConfig(**cfg.to_dict()) == cfg == C.FindConfig.from_dict(cfg.to_dict())
    # criteria runs keep their pinned identity
    assert C.FindConfig("lenet-300-100", "fashion-mnist").train_hash == C.FindConfig(
        "lenet-300-100", "fashion-mnist", controls=()).train_hash


@pytest.mark.parametrize("kwargs, message", [
    (dict(rounds=0), "--rounds must be a whole number of at least 1"),
    (dict(keeps=(1.0,)), "not below the current density 1"),
    (dict(rewind=500, iterations=100), "--rewind 500 is past the training length"),
    (dict(rounds=3, prune_rate=0.2, keeps=(0.5,)), "give two of --rounds, --prune-rate and --keep"),
    (dict(criteria=("large_final", "random")), "one criterion"),
    (dict(controls=("nope",)), "unknown control nope"),
])
def test_bad_imp_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        C.FindConfig("lenet-300-100", "digits", method="imp", **kwargs)


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds must be a whole number of at least 1"),
    (["--keep", "1"], "not below the current density 1"),
    (["--rewind", "5000", "--iterations", "100"], "past the training length"),
    (["--rewind", "100000", "--epochs", "1"], "--rewind 100000 is past the training length"),
    (["--controls", "nope"], "unknown control"),
    (["--rounds", "2", "--method", "criteria"], "rounds applies to --method imp only"),
])
def test_bad_imp_options_on_the_command_line(tmp_path, args, message):
    r = cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--method", "imp", *args, "-o", tmp_path / "r",
            "-q")
    assert r.exit_code in (1, 2) and message in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()


def test_every_round_keeps_what_the_schedule_says_and_nests(imp_run):
    cfg, _, res = load_run(imp_run)
    masks = _masks(imp_run, cfg)
    sizes = {n: m.size for n, m in masks[1].items()}
    for r, m in masks.items():
        hidden = kept_count(0.8 ** r, sizes["fc1.weight"]), kept_count(0.8 ** r, sizes["fc2.weight"])
        assert (int(m["fc1.weight"].sum()), int(m["fc2.weight"].sum())) == hidden
        assert int(m["fc3.weight"].sum()) == kept_count(0.9 ** r, sizes["fc3.weight"])  # output at half the rate
        if r > 1:
            assert all(not (m[n] & ~masks[r - 1][n]).any() for n in m), f"round {r} is not within round {r - 1}"
    rows = res["rows"]
    assert [r["keep"] for r in rows if r["init"] == "retrained-original" and r["round"] > 0] == cfg.imp_keeps()[1:]
    for r in rows:
        if r["round"] > 0:
            m = (masks[r["round"]] if r.get("variant") != "random-mask" else None)
            if m is not None:
                assert r["density"] == sum(int(x.sum()) for x in m.values()) / sum(x.size for x in m.values())
    variants = {r["init"] for r in rows if r["round"] == 2}
    assert variants == {f"retrained-{v}" for v in C.IMP_VARIANTS} | set(C.INIT_VARIANTS)
    for r in rows:
        if r.get("retrained"):
            assert 0 < r["early_stop_iteration"] <= 120 and r["early_stop_iteration"] % 30 == 0
            assert 0 <= r["accuracy"] <= 1 and r["final_accuracy"] is not None


def test_rewinding_restores_the_exact_initial_weights(imp_run, tmp_path, monkeypatch):
    cfg, info, _ = load_run(imp_run)
    from supermask.train.data import load_model
    from supermask.train.subject import Subject

    subject = Subject.from_module(load_model(cfg.model, info["input_shape"], len(info["classes"])))
    w0 = subject.initial_state(cfg.seed, cfg.init_spec)
    saved = load_npz(imp_run / "imp" / "r00-original.npz")
    for n, v in w0.items():  # bit for bit, as the seeded generator makes them
        assert np.array_equal(saved[f"rewind/{n}"].view(np.uint32), v.view(np.uint32)), n
    # and a pruning round starts training from exactly those weights times its mask
    starts = {}
    real = imp.train_stage

    def spy(subject, start, masks, frozen, data, **kw):
        starts[kw["label"]] = ({n: np.array(v) for n, v in start.items()}, masks, frozen)
        return real(subject, start, masks, frozen, data, **kw)

    monkeypatch.setattr(imp, "train_stage", spy)
    find(C.FindConfig(**{**IMP, "rounds": 1}), tmp_path / "one", progress=False)
    start, masks, frozen = starts["imp round 1/1 original"]
    for n in MASKED:
        want = np.multiply(w0[n], masks[n], dtype=np.float32) + np.float32(0)
        assert np.array_equal(start[n].view(np.uint32), want.view(np.uint32)), n
    assert frozen is None
    # controls: reinit draws other weights, reshuffle permutes the kept ones, signed constants keep the signs
    re_start = starts["imp round 1/1 reinit"][0]["fc1.weight"]
    sh_start = starts["imp round 1/1 reshuffle"][0]["fc1.weight"]
    sc_start = starts["imp round 1/1 signed-constant"][0]["fc1.weight"]
    m = masks["fc1.weight"]
    assert not np.array_equal(re_start[m], w0["fc1.weight"][m]) and not re_start[~m].any()
    assert np.array_equal(np.sort(sh_start[m]), np.sort(w0["fc1.weight"][m]))
    assert not np.array_equal(sh_start[m], w0["fc1.weight"][m])
    assert len(np.unique(np.abs(sc_start[m]))) == 1 and np.array_equal(np.sign(sc_start[m]),
                                                                        np.sign(w0["fc1.weight"][m]))
    fz_start, _, fz_frozen = starts["imp round 1/1 freeze"]
    assert np.array_equal(fz_start["fc1.weight"], w0["fc1.weight"]) and np.array_equal(fz_frozen["fc1.weight"],
                                                                                       w0["fc1.weight"])
    rm = starts["imp round 1/1 random-mask"][1]
    assert all(int(rm[n].sum()) == int(masks[n].sum()) and not np.array_equal(rm[n], masks[n]) for n in MASKED)


def test_late_rewinding_keeps_the_weights_of_that_iteration(tmp_path):
    out = tmp_path / "late"
    find(C.FindConfig(**{**IMP, "rounds": 1, "controls": (), "rewind": 40}), out, progress=False)
    saved = load_npz(out / "imp" / "r00-original.npz")
    cfg, _, _ = load_run(out)
    from supermask.train.find import prepare

    w0 = prepare(cfg)[1].subject.initial_state(cfg.seed, cfg.init_spec)
    assert not np.array_equal(saved["rewind/fc1.weight"], w0["fc1.weight"])  # trained for 40 steps
    assert not np.array_equal(saved["rewind/fc1.weight"], saved["final/fc1.weight"])  # not the end of training


def test_a_run_killed_between_rounds_resumes_to_the_same_results(imp_run, tmp_path, monkeypatch):
    real = imp.train_stage
    calls = []

    def killed_at_round_two(*a, **kw):
        if kw["label"].startswith("imp round 2/"):
            raise KeyboardInterrupt
        calls.append(kw["label"])
        return real(*a, **kw)

    out = tmp_path / "r"
    monkeypatch.setattr(imp, "train_stage", killed_at_round_two)
    with pytest.raises(KeyboardInterrupt):
        find(C.FindConfig(**IMP), out, progress=False)
    assert (out / "imp" / "r01-original.json").exists() and not (out / "imp" / "r02-original.json").exists()
    assert not (out / "results.json").exists()
    monkeypatch.setattr(imp, "train_stage", real)
    done = {p.name: p.stat().st_mtime_ns for p in (out / "imp").glob("r01-*.json")}
    find(C.FindConfig(**IMP), out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "imp").glob("r01-*.json")} == done  # not trained again
    for name in ("results.json", "masks.npz"):
        assert (out / name).read_bytes() == (imp_run / name).read_bytes(), name


def test_a_round_packs_into_a_ticket_of_untrained_weights(imp_run, tmp_path):
    from supermask import runtime as smr
    from supermask import datasets

    res = json.loads((imp_run / "results.json").read_text())
    t = pack(imp_run, tmp_path / "r2.smask", round=2, init="original")
    row = next(r for r in res["rows"] if r["round"] == 2 and r["init"] == "original")
    assert not row["retrained"] and t.metadata["round"] == 2 and t.metadata["untrained"] is True
    assert t.metadata["accuracy"] == row["accuracy"] and t.keep == row["keep"]
    d = datasets.load("digits", "test")
    assert smr.load(tmp_path / "r2.smask", device="cpu").evaluate(d.images, d.labels).correct == row["correct"]
    # the default is the best supermask row, never a retrained one
    best = max((r for r in res["rows"] if not r["retrained"]), key=lambda r: (r["correct"], -r["keep"]))
    t = pack(imp_run, tmp_path / "best.smask")
    assert t.metadata["accuracy"] == best["accuracy"]
    r = cli("pack", "--run", imp_run, "--round", 9, "-o", tmp_path / "x.smask")
    assert r.exit_code == 1 and "has rounds 1 to 3" in r.output
    r = cli("pack", "--run", imp_run, "--round", 1, "--keep", 0.8, "-o", tmp_path / "x.smask")
    assert r.exit_code == 1 and "give --round or --keep" in r.output
    assert not (tmp_path / "x.smask").exists()


def test_retrained_weights_export_to_onnx_not_to_a_ticket(imp_run, tmp_path):
    import onnxruntime as ort

    from supermask import datasets

    res = json.loads((imp_run / "results.json").read_text())
    d = datasets.load("digits", "test")
    x, y = np.asarray(d.images, np.float32), np.asarray(d.labels)
    for rnd, variant in ((0, "original"), (2, "original"), (3, "reinit")):
        w = export_retrained(imp_run, tmp_path / f"{rnd}{variant}.onnx", round=rnd, variant=variant)
        s = ort.InferenceSession(w["path"])
        meta = s.get_modelmeta().custom_metadata_map
        assert "not a seed-regenerable ticket" in meta["supermask.retrained"]
        z = s.run(None, {s.get_inputs()[0].name: x})[0]
        row = next(r for r in res["rows"] if r["round"] == rnd and r.get("retrained")
                   and r["init"] in ("trained", f"retrained-{variant}"))
        assert int((z.argmax(1) == y).sum()) == row["correct"] == round(w["accuracy"] * row["total"])
    with pytest.raises(RunError, match="has rounds 0 to 3"):
        export_retrained(imp_run, tmp_path / "x.onnx", round=4)
    with pytest.raises(RunError, match="no 'reinit' training at round 0"):
        export_retrained(imp_run, tmp_path / "x.onnx", round=0, variant="reinit")


def test_report_draws_the_lottery_figure_and_table(imp_run, tmp_path):
    pytest.importorskip("matplotlib")
    from supermask.report import read_rows, report, write_report

    written = report([imp_run], tmp_path / "rep", progress=False)
    assert "lottery_lenet-300-100_digits_imp.png" in written
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "iterative pruning by large_final" in md and "retrained: reinit" in md and "early-stop iteration" in md
    rows = read_rows(tmp_path / "rep" / "results.csv")
    trained = [r for r in rows if r.get("retrained") and r["criterion"] != "dense"]
    untrained = [r for r in rows if r.get("retrained") is False]
    assert len(trained) == 3 * 6 and len(untrained) == 3 * 2
    assert all(r["ticket_entropy_bytes"] is None for r in trained)  # trained weights are never a ticket
    assert all(r["ticket_entropy_bytes"] > 0 and "early_stop_iteration" not in r for r in untrained)
    assert all(r["early_stop_iteration"] % 30 == 0 for r in trained)
    # the best-ticket table holds only tickets of untrained masks
    budget = md.split("## Best ticket per size budget")[1].split("##")[0]
    assert "retrained" not in budget
    write_report(rows, tmp_path / "again")  # drawn again from its CSV: the same rows and tables
    assert (tmp_path / "again" / "results.csv").read_text() == (tmp_path / "rep" / "results.csv").read_text()
    assert "lottery_lenet-300-100_digits_imp.png" in {p.name for p in (tmp_path / "again").iterdir()}


def test_export_command_writes_a_round_and_refuses_mixups(imp_run, tmp_path):
    r = cli("export", "--run", imp_run, "--round", 1, "--variant", "freeze", "-o", tmp_path / "f.onnx")
    assert r.exit_code == 0 and "round 1 (freeze)" in r.output and "not a ticket" in r.output, r.output
    assert (tmp_path / "f.onnx").stat().st_size > 0
    for args, message in ((["--run", imp_run], "--run needs --round"),
                          ([str(tmp_path / "f.onnx"), "--round", 1], "--round goes with --run"),
                          (["--run", imp_run, "--round", 1, "--format", "lowbit"], "lowbit is for tickets"),
                          (["--run", imp_run, "--round", 1, "--variant", "nope"], "no 'nope' training")):
        r = cli("export", *args, "-o", tmp_path / "x.onnx")
        assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.onnx").exists()
