"""Learned supermasks (`supermask find --method edge-popup|bernoulli`): the config, the mask
rules, the straight-through training, resume, determinism, and tickets (with their per-tensor
multipliers) that the runtime and ONNX reproduce exactly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from supermask import datasets, models, ticket  # noqa: E402
from supermask.cli import main  # noqa: E402
from supermask.errors import RunError, TicketFormatError  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train import learned as learn  # noqa: E402
from supermask.train import resume  # noqa: E402
from supermask.train import loop, masks as M  # noqa: E402
from supermask.train.data import to_tensors  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.pack import pack  # noqa: E402
from supermask.train.runs import load_npz, load_run, pick_row, run_masks, tensor_shapes  # noqa: E402
from supermask.train.subject import Subject  # noqa: E402

from deploy_helpers import run_preprocess, torch_logits  # noqa: E402
from helpers import FIXTURES, SHARED_DATA, cuda_available, needs_data  # noqa: E402

EDGE = dict(model="lenet-300-100", dataset="digits", method="edge-popup", epochs=6, keeps=(0.5, 0.1))
BERN = dict(model="lenet-300-100", dataset="digits", method="bernoulli", epochs=6)
FASHION = SHARED_DATA / "fashion-mnist"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge")
    find(C.FindConfig(**EDGE), out, progress=False)
    return out


@pytest.fixture(scope="module")
def bern_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bern")
    find(C.FindConfig(**BERN), out, progress=False)
    return out


# ------------------------------------------------------------------------------- config


def test_method_defaults_and_criteria_hashes_unchanged():
    e = C.FindConfig("lenet-300-100", "fashion-mnist", method="edge-popup")
    assert (e.init, e.lr, e.momentum, e.weight_decay, e.batch_size) == ("signed_kaiming_constant", 0.1, 0.9, 1e-4, 128)
    assert e.criteria == () and e.keeps == C.DEFAULT_KEEPS and e.rescale is None
    # scaled init: gain^2 = 2 / keep, unless given
    assert e.gain_sq is None and e.init_for(0.25).gain_sq == 8.0
    assert C.FindConfig("lenet-300-100", "digits", method="edge-popup", gain_sq=3.0).init_for(0.25).gain_sq == 3.0
    b = C.FindConfig("lenet-300-100", "fashion-mnist", method="bernoulli")
    assert b.rescale is True and b.keeps == () and b.momentum is None
    # The new fields stay out of the hashes of criteria runs: existing folders keep their names.
    c = C.FindConfig("lenet-300-100", "fashion-mnist")
    assert (c.train_hash, c.run_hash) == ("f537f6a1e791597d", "a2a02059f0636ebd")
    assert len({c.train_hash, e.train_hash, b.train_hash}) == 3
    assert C.FindConfig("lenet-300-100", "fashion-mnist", method="bernoulli", rescale=False).train_hash != b.train_hash


def test_a_keep_too_small_for_the_scaled_init_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="keep 1e-06 is too small for the scaled init"):
        C.FindConfig("lenet-300-100", "digits", method="edge-popup", keeps=(0.5, 1e-6))
    assert C.FindConfig("lenet-300-100", "digits", method="edge-popup", keeps=(1e-6,), gain_sq=2.0).keeps == (1e-6,)
    r = cli("find", "--model", "lenet-300-100", "--dataset", "digits", "--method", "edge-popup",
            "--keep", "0.5,0.000001", "--out", tmp_path / "r", "-q")
    assert r.exit_code == 2 and "too small for the scaled init" in r.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="sgd"), "unknown method"),
    (dict(method="edge-popup", criteria=("random",)), "criteria apply to --method criteria"),
    (dict(method="edge-popup", selection="global"), "selects per layer"),
    (dict(method="bernoulli", keeps=(0.5,)), "learns how much to keep"),
    (dict(momentum=0.9), "momentum applies to --method edge-popup"),
    (dict(method="bernoulli", momentum=0.9), "momentum applies"),
    (dict(method="edge-popup", rescale=True), "rescale applies to --method bernoulli"),
    (dict(method="edge-popup", weight_decay=2.0), "weight_decay must be"),
])
def test_config_rejects_options_of_other_methods(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.FindConfig("lenet-300-100", "digits", **kwargs)


def test_cli_reports_misused_options_without_traceback(tmp_path):
    r = CliRunner().invoke(main, ["find", "--model", "lenet-300-100", "--dataset", "digits", "--method",
                                  "bernoulli", "--keep", "0.3", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "learns how much to keep" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()
    r = CliRunner().invoke(main, ["find", "--help"])
    assert "--method [criteria|edge-popup|bernoulli|imp]" in r.output and "--no-rescale" in r.output


# ------------------------------------------------------------------------------- mask rules


def test_edge_popup_final_mask_keeps_top_k_magnitudes_with_index_tie_break():
    s = np.array([0.5, -0.9, 0.5, 0.1, -0.5, 0.0], dtype=np.float32)
    # k = round(0.5 * 6) = 3: |-0.9| first, then the first two of the three 0.5s by index
    np.testing.assert_array_equal(learn.final_mask("edge-popup", s, 0.5), [True, True, True, False, False, False])
    assert learn.kept_count(0.05, 10) == 1 and learn.kept_count(0.25, 10) == 3 and learn.kept_count(1.0, 7) == 7


def test_bernoulli_final_mask_and_multiplier():
    s = np.array([[0.2, -0.1, 0.0], [3.0, -2.0, 1e-9]], dtype=np.float32)
    m = learn.final_mask("bernoulli", s, None)
    np.testing.assert_array_equal(m, [[True, False, False], [True, False, True]])
    assert learn.multiplier(m) == 2.0 and learn.multiplier(np.zeros(3, bool)) == 1.0
    assert learn.multiplier(np.array([1, 1, 1, 0, 0, 0, 0], bool)) == float(np.float32(7 / 3))


def test_straight_through_gradients_reach_the_scores():
    topk, sample = learn._functions()
    s = torch.tensor([0.3, -0.2, 0.1, 0.05], requires_grad=True)
    m = topk.apply(s.abs(), 2)
    assert m.tolist() == [1.0, 1.0, 0.0, 0.0]
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    # identity through the top-k, then d|s|/ds = sign(s): pruned weights get gradient too
    assert s.grad.tolist() == [1.0, -2.0, 3.0, 4.0]
    p = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    b = sample.apply(p, g)
    assert b[0] == 0 and b[1] == 1 and set(b.tolist()) <= {0.0, 1.0}
    b.sum().backward()
    assert p.grad.tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------- runs


def test_edge_popup_run_layout_rows_and_exact_layer_densities(edge_run):
    for name in ("config.json", "model.json", "train.json", "masks.npz", "extras.npz", "results.json",
                 "scores/keep-0.5.npz", "scores/keep-0.5.json", "scores/keep-0.1.npz"):
        assert (edge_run / name).is_file(), name
    assert not list((edge_run / "scores").glob("*.ckpt"))  # checkpoints go once a stage is done
    rows = json.loads((edge_run / "results.json").read_text())["rows"]
    assert [(r["criterion"], r["keep"], r["init"]) for r in rows] == [("edge-popup", 0.5, "original"),
                                                                       ("edge-popup", 0.1, "original")]
    shapes = tensor_shapes(load_run(edge_run)[1], "masked")
    assert list(shapes) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for r in rows:
        assert set(r["layer_densities"]) == set(shapes)
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            assert r["layer_densities"][name] == learn.kept_count(r["keep"], size) / size
    # learning beats chance (10 classes) by far even in 6 short epochs on 1,433 images
    assert rows[0]["accuracy"] > 0.6
    train = json.loads((edge_run / "train.json").read_text())
    assert set(train["stages"]) == {"keep-0.5", "keep-0.1"} and train["method"] == "edge-popup"


def test_learned_weights_stay_frozen_and_scores_start_from_the_generator(edge_run):
    cfg, info, _ = load_run(edge_run)
    shapes = tensor_shapes(info, "masked")
    s0 = learn.initial_scores(shapes, cfg.seed)
    s1 = load_npz(edge_run / "scores" / "keep-0.5.npz")  # fixed biases: no "trained/<name>" values
    assert set(s0) == set(s1) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(not np.array_equal(s0[n], s1[n]) for n in s0)  # scores trained
    assert np.abs(s0["fc1.weight"]).max() <= 1 / 8  # +-1/sqrt(fan_in) for 64 inputs
    np.testing.assert_array_equal(s0["fc2.weight"], learn.initial_scores(shapes, cfg.seed)["fc2.weight"])


def _logits_torch(t: ticket.Ticket, x: np.ndarray, run: Path) -> np.ndarray:
    """The torch model the ticket names, with the ticket's tensors, on the run's preprocessing."""
    return torch_logits(t, x, run_preprocess(run))


@pytest.mark.parametrize("which", ["edge", "bern"])
def test_learned_ticket_matches_the_run_in_torch_onnx_and_eval(tmp_path, request, which):
    from supermask import runtime

    run = request.getfixturevalue(f"{which}_run")
    path = tmp_path / "m.smask"
    r = cli("pack", path, "--run", run)
    assert r.exit_code == 0, r.output
    t = ticket.read_ticket(path)
    cfg, info, res = load_run(run)
    row = pick_row(res, cfg.method, None, "original")
    assert t.criterion == cfg.method and t.keep == row["keep"] and t.metadata["method"] == cfg.method
    assert t.metadata["accuracy"] == row["accuracy"]
    data = path.read_bytes()
    version = struct.unpack_from("<H", data, 8)[0]
    # pack writes version 3 (the graph travels inside); it holds the multipliers version 2 introduced
    assert version == 3 and t.version == 3
    if which == "bern":
        # dynamic rescaling: n / kept per layer, in the ticket as the tensor's multiplier
        assert {e.name for e in t.tensors if e.role == "masked"} == set(row["multipliers"])
        for e in t.tensors:
            if e.role == "masked":
                assert e.multiplier == float(np.float32(e.size / e.num_kept)) == row["multipliers"][e.name]
    else:
        assert all(e.multiplier == 1.0 for e in t.tensors)
    ds = datasets.load("digits", "test")
    x = np.array(ds.images)
    # the torch figure, from the run's own evaluation path
    subject = Subject.from_module(models.create(cfg.model, info["input_shape"], len(info["classes"])))
    masks = run_masks(run, cfg.method, row["keep"], info)
    w0 = subject.initial_weights(cfg.seed, cfg.init_for(row["keep"] if which == "edge" else None))
    assert t.init == cfg.init_for(row["keep"] if which == "edge" else None)
    factors = M.learned_multipliers(cfg, masks)
    assert bool(factors) == (which == "bern")
    w = {n: learn.scaled_masked(v, masks[n], factors.get(n, 1.0)) for n, v in w0.items()}
    w.update({n: np.zeros(subject.plans[n].shape, np.float32) for n in subject.names("bias")})  # fixed: zero
    tw = t.weights()
    assert set(tw) == set(w)
    for n in w:
        np.testing.assert_array_equal(w[n].view(np.uint32), tw[n].view(np.uint32))
    correct, _ = loop.accuracy(subject, w, to_tensors(ds, run_preprocess(run), "cpu")[0], ds.labels, "cpu")
    assert correct == row["correct"]
    model = runtime.load(path, device="cpu")
    np.testing.assert_allclose(model.logits(x), _logits_torch(t, x, run), rtol=1e-5, atol=1e-5)
    rep = model.evaluate(x, ds.labels)
    assert rep.correct == row["correct"]
    r = cli("eval", path, "--dataset", "digits", "--device", "cpu")
    assert r.exit_code == 0 and f"{100 * row['accuracy']:.2f} %" in r.output


def test_bernoulli_density_is_learned_and_recorded(bern_run):
    rows = json.loads((bern_run / "results.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["criterion"] == "bernoulli"
    r = rows[0]
    assert r["keep"] == r["density"] and 0 < r["density"] < 1
    assert set(r["multipliers"]) == set(r["layer_densities"])
    assert r["accuracy"] > 0.3


def test_learned_runs_are_deterministic_on_the_cpu(tmp_path, bern_run):
    find(C.FindConfig(**BERN), tmp_path / "again", progress=False)
    for name in ("results.json", "masks.npz", "scores/bernoulli.npz"):
        assert (tmp_path / "again" / name).read_bytes() == (bern_run / name).read_bytes(), name


@pytest.mark.parametrize("which", ["edge", "bern"])
def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_scores(tmp_path, request, which, monkeypatch):
    full = request.getfixturevalue(f"{which}_run")
    cfg = C.FindConfig(**({**EDGE, "keeps": (0.5,)} if which == "edge" else BERN))
    tag = "keep-0.5" if which == "edge" else "bernoulli"
    saves = []
    real = resume.write_checkpoint

    def killed_after_two_epochs(path, state):
        real(path, state)
        saves.append(state["iteration"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_checkpoint", killed_after_two_epochs)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        find(cfg, out, progress=False)
    assert (out / "scores" / f"{tag}.ckpt").is_file() and not (out / "scores" / f"{tag}.npz").exists()
    monkeypatch.setattr(resume, "write_checkpoint", real)
    find(cfg, out, progress=False)
    summary = json.loads((out / "scores" / f"{tag}.json").read_text())
    unbroken = json.loads((full / "scores" / f"{tag}.json").read_text())
    assert summary["resumed_at"] == saves[1]
    a, b = load_npz(out / "scores" / f"{tag}.npz"), load_npz(full / "scores" / f"{tag}.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert summary["history"] == unbroken["history"]  # the partial window travels in the checkpoint
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows == [r for r in json.loads((full / "results.json").read_text())["rows"] if r["keep"] == rows[0]["keep"]]
    assert not (out / "scores" / f"{tag}.ckpt").exists()


@pytest.mark.parametrize("damage, message", [
    ({"device": "cuda"}, "written on cuda, this run is on cpu"),  # generator states differ between devices
    ({"shuffle": "state"}, "does not fit this run"),  # loads, but cannot be restored
    ({"meter": [1.0]}, "does not fit this run"),
])
def test_a_checkpoint_that_cannot_be_resumed_starts_the_stage_over(tmp_path, edge_run, monkeypatch, caplog,
                                                                   damage, message):
    cfg = C.FindConfig(**{**EDGE, "keeps": (0.5,)})
    real = resume.write_checkpoint
    damage = {k: torch.zeros(3, dtype=torch.uint8) if v == "state" else v for k, v in damage.items()}

    def killed_with_a_damaged_checkpoint(path, state):
        real(path, {**state, **damage})
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_checkpoint", killed_with_a_damaged_checkpoint)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        find(cfg, out, progress=False)
    monkeypatch.setattr(resume, "write_checkpoint", real)
    find(cfg, out, progress=False)
    assert message in caplog.text
    assert json.loads((out / "scores" / "keep-0.5.json").read_text())["resumed_at"] is None
    a, b = load_npz(out / "scores" / "keep-0.5.npz"), load_npz(edge_run / "scores" / "keep-0.5.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_adding_a_keep_reuses_the_finished_ones(tmp_path, edge_run, monkeypatch):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(edge_run, out)
    trained = []
    real = learn.train_scores
    monkeypatch.setattr(learn, "train_scores", lambda *a, **k: trained.append(k["keep"]) or real(*a, **k))
    res = find(C.FindConfig(**{**EDGE, "keeps": (0.5, 0.1, 0.3)}), out, progress=False)
    assert trained == [0.3] and [r["keep"] for r in res["rows"]] == [0.5, 0.1, 0.3]


def test_pack_errors_for_learned_runs_are_clear(tmp_path, edge_run):
    with pytest.raises(RunError, match="learned its masks with --method edge-popup"):
        pack(edge_run, tmp_path / "a.smask", criterion="random")
    # edge-popup learned over signed constants: their signed constants are the same weights
    assert pack(edge_run, tmp_path / "sc.smask", init="signed-constant", keep=0.5).keep == 0.5
    with pytest.raises(RunError, match="has keep 0.5, 0.1"):
        pack(edge_run, tmp_path / "a.smask", keep=0.3)
    assert not (tmp_path / "a.smask").exists()


def test_a_bernoulli_run_packs_its_one_mask_and_refuses_a_keep(tmp_path, bern_run):
    with pytest.raises(RunError, match="learned its density .* leave out --keep"):
        pack(bern_run, tmp_path / "a.smask", keep=0.5)
    r = cli("pack", tmp_path / "b.smask", "--run", bern_run, "--keep", "0.5")
    assert r.exit_code != 0 and "leave out --keep" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a.smask").exists() and not (tmp_path / "b.smask").exists()
    # the run's own density, as the report and benchmarks/check_tickets.py pass it, is its mask
    density = json.loads((bern_run / "results.json").read_text())["rows"][0]["keep"]
    assert pack(bern_run, tmp_path / "c.smask", keep=density).keep == density
    # and so does the value pack and find print, 6 significant digits
    assert f"{density:.6g}" != repr(density)
    r = cli("pack", tmp_path / "d.smask", "--run", bern_run, "--keep", f"{density:.6g}")
    assert r.exit_code == 0 and f"keep {density:.6g}" in r.output, r.output


def test_pack_refuses_signed_constants_a_learned_run_never_evaluated(tmp_path):
    run = tmp_path / "uniform"
    find(C.FindConfig(**{**EDGE, "keeps": (0.5,), "epochs": 1, "init": "kaiming_uniform"}), run, progress=False)
    # masks learned over Kaiming-uniform weights were never evaluated over their signed constants
    with pytest.raises(RunError, match="learned its masks over kaiming_uniform weights and evaluated only those"):
        pack(run, tmp_path / "a.smask", init="signed-constant")
    assert not (tmp_path / "a.smask").exists()


# ------------------------------------------------------------------------------- ticket version 2 (still read)


def _with_header(data: bytes, edit, version: int | None = None) -> bytes:
    import hashlib

    hlen = struct.unpack_from("<I", data, 12)[0]
    h = json.loads(data[16:16 + hlen])
    edit(h)
    hb = json.dumps(h, sort_keys=True, separators=(",", ":")).encode()
    v = struct.unpack_from("<H", data, 8)[0] if version is None else version
    body = data[:8] + struct.pack("<HHI", v, 0, len(hb)) + hb + data[16 + hlen:-32]
    return body + hashlib.sha256(body).digest()


def _set_multiplier(value):
    def edit(h):
        h["tensors"][0]["multiplier"] = value
    return edit


def test_version_two_multiplier_is_validated():
    v1 = (FIXTURES / "tiny-v1.smask").read_bytes()
    assert ticket.decode_ticket(v1).tensors[0].multiplier == 1.0  # version 1 still reads
    good = _with_header(v1, _set_multiplier(float(np.float32(1.5)).hex()), version=2)
    t = ticket.decode_ticket(good)
    w0 = ticket.decode_ticket(v1).weights()
    name = t.tensors[0].name
    np.testing.assert_array_equal(t.weights()[name], w0[name] * np.float32(1.5))
    bad = {
        "multiplier in a version-1 ticket": (_with_header(v1, _set_multiplier((1.5).hex())), "unknown fields"),
        "version 2 without a multiplier": (_with_header(v1, lambda h: None, version=2), "version-2 field"),
        "multiplier of exactly 1": (_with_header(v1, _set_multiplier((1.0).hex()), version=2), "other than 1"),
        "not a float32": (_with_header(v1, _set_multiplier((1 / 3).hex()), version=2), "hex float32"),
        "negative": (_with_header(v1, _set_multiplier((-2.0).hex()), version=2), "hex float32"),
        "decimal": (_with_header(v1, _set_multiplier(1.5), version=2), "hex float32"),
    }
    for what, (data, match) in bad.items():
        with pytest.raises(TicketFormatError, match=match):
            ticket.decode_ticket(data)
        assert what


def test_encode_writes_the_lowest_version_that_holds_the_ticket():
    from supermask import models, rng

    arch = models.build("lenet-300-100", (1, 8, 8), [str(i) for i in range(10)])
    masks = {p.name: np.ones(p.shape, bool) for p in arch.weight_params()}
    spec = rng.InitSpec("signed_kaiming_constant")
    assert struct.unpack_from("<H", ticket.encode_ticket(arch, 1, spec, masks), 8)[0] == 1
    data = ticket.encode_ticket(arch, 1, spec, masks, multipliers={"fc2.weight": 2.0})
    assert struct.unpack_from("<H", data, 8)[0] == 2
    with pytest.raises(TicketFormatError, match="float32"):
        ticket.encode_ticket(arch, 1, spec, masks, multipliers={"fc2.weight": 0.1})
    with pytest.raises(TicketFormatError, match="no weight for"):
        ticket.encode_ticket(arch, 1, spec, masks, multipliers={"fc2.bias": 2.0})


# ------------------------------------------------------------------------------- report


def test_report_puts_learned_and_heuristic_masks_on_one_plot(tmp_path, edge_run, bern_run):
    pytest.importorskip("matplotlib")
    crit_run = tmp_path / "crit"
    find(C.FindConfig("lenet-300-100", "digits", iterations=30, criteria=("large_final_same_sign", "random"),
                      keeps=(0.5, 0.1)), crit_run, progress=False)
    out = tmp_path / "report"
    r = cli("report", crit_run, edge_run, bern_run, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert (out / "accuracy_vs_ticket_lenet-300-100_digits.png").is_file()
    data = json.loads((out / "results.json").read_text())
    crits = {a["criterion"] for a in data["aggregates"]}
    assert {"edge-popup", "bernoulli", "large_final_same_sign", "dense"} <= crits
    bern = next(a for a in data["aggregates"] if a["criterion"] == "bernoulli")
    assert bern["ticket_bitpack_bytes"] > 0  # packed (with its learned density) and measured
    md = (out / "report.md").read_text()
    assert "edge-popup" in md and "bernoulli" in md and "accuracy_vs_ticket_lenet-300-100_digits.png" in md


# ------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_cuda_learned_masks_pack_into_tickets_that_run_on_cpu(tmp_path):
    from supermask import runtime

    cfg = C.FindConfig(**BERN)
    res = find(cfg, tmp_path / "r", device="cuda", progress=False)
    assert json.loads((tmp_path / "r" / "train.json").read_text())["stages"]["bernoulli"]["device"] == "cuda"
    t = pack(tmp_path / "r", tmp_path / "m.smask")
    ds = datasets.load("digits", "test")
    rep = runtime.load(tmp_path / "m.smask", device="cpu").evaluate(np.array(ds.images), ds.labels)
    assert rep.correct == res["rows"][0]["correct"] and t.criterion == "bernoulli"


@needs_data("fashion-mnist")
def test_edge_popup_on_fashion_mnist_beats_the_heuristic_masks(tmp_path):  # real data in CI: about 20 s
    # Two epochs at keep 0.1 (a ticket of about 17 KB): the default (scaled) init learns a mask
    # far better than the best heuristic one, about 70 % (docs/results.md).
    cfg = C.FindConfig("lenet-300-100", "fashion-mnist", method="edge-popup", keeps=(0.1,), epochs=2)
    res = find(cfg, tmp_path / "r", data_dir=str(SHARED_DATA), progress=False)
    assert res["rows"][0]["accuracy"] > 0.82 and res["rows"][0]["total"] == 10000


def test_conv_edge_popup_ticket_reproduces_in_onnx(tmp_path):
    from supermask import runtime

    cfg = C.FindConfig("conv2", "digits", method="edge-popup", keeps=(0.3,), epochs=2)
    res = find(cfg, tmp_path / "r", progress=False)
    t = pack(tmp_path / "r", tmp_path / "c.smask")
    ds = datasets.load("digits", "test")
    x = np.array(ds.images)
    model = runtime.load(tmp_path / "c.smask", device="cpu")
    np.testing.assert_allclose(model.logits(x), _logits_torch(t, x, tmp_path / "r"), rtol=1e-5, atol=1e-5)
    assert model.evaluate(x, ds.labels).correct == res["rows"][0]["correct"]


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path, edge_run, caplog):
    cfg = C.FindConfig(**{**EDGE, "keeps": (0.5,)})
    out = tmp_path / "r"
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "keep-0.5.ckpt").write_bytes(b"not a checkpoint")
    find(cfg, out, progress=False)
    assert "ignoring unreadable checkpoint" in caplog.text
    a, b = load_npz(out / "scores" / "keep-0.5.npz"), load_npz(edge_run / "scores" / "keep-0.5.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
