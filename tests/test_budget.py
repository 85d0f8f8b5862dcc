"""`find --budget` (the most accurate ticket per byte budget, searched over widths), the
`mlp-...` model family it scales, and `supermask frontier` (best ticket beside best baseline)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from supermask import frontier as F  # noqa: E402
from supermask import models  # noqa: E402
from supermask.cli import main  # noqa: E402
from supermask.errors import ReportError, RunError  # noqa: E402
from supermask.ticket import read_ticket  # noqa: E402
from supermask.train import budget as B  # noqa: E402
from supermask.train import config as C  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = C.FindConfig(model="lenet-300-100", dataset="digits", method="edge-popup", iterations=30)
BUDGETS = (2048, 4096)
WIDTHS = (0.5, 1.0)


# ----------------------------------------------------------------------------- the mlp family


@pytest.mark.parametrize("name, widths", [("mlp-64", (64,)), ("mlp-300-100", (300, 100)), ("mlp-1-2-3", (1, 2, 3))])
def test_mlp_names(name, widths):
    assert models.mlp_widths(name) == widths and models.known(name) and models.mlp_name(widths) == name


@pytest.mark.parametrize("name", ["mlp", "mlp-", "mlp-0", "mlp-064", "mlp-3x", "mlp-99999", "MLP-64", "mlp-1-2-3-4-5-6-7-8-9"])
def test_not_mlp_names(name):
    assert models.mlp_widths(name) is None and not models.known(name)
    with pytest.raises(ValueError, match="unknown model"):
        C.FindConfig(model=name, dataset="digits")


def test_mlp_300_100_is_lenet_300_100():
    """The width-1 member of lenet's family is the same network: same tensors, same weights
    from the same seed, so a budget search at width 1 measures lenet-300-100 itself."""
    from supermask.train.data import load_model
    from supermask.train.subject import Subject

    a, b = (Subject.from_module(load_model(m, (1, 8, 8), 10)) for m in ("lenet-300-100", "mlp-300-100"))
    assert {n: (p.shape, p.fate) for n, p in a.plans.items()} == {n: (p.shape, p.fate) for n, p in b.plans.items()}
    spec = CFG.init_for(0.1)
    wa, wb = a.initial_weights(3, spec), b.initial_weights(3, spec)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_scaled_widths():
    assert B.scaled("lenet-300-100", 0.5) == "mlp-150-50"
    assert B.scaled("mlp-64", 2) == "mlp-128"
    assert B.scaled("mlp-3", 0.1) == "mlp-1"  # never zero wide
    with pytest.raises(RunError, match="fully connected"):
        B.scaled("conv2", 2)


# ----------------------------------------------------------------------------- the search


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    return out, B.find_budget(BUDGETS, CFG, out, widths=WIDTHS, progress=False)


def test_predicted_sizes_grow_with_keep_and_width():
    small = B.predicted_bytes(replace(CFG, model="mlp-150-50"), [0.5, 0.1, 0.01])
    large = B.predicted_bytes(replace(CFG, model="mlp-300-100"), [0.5, 0.1, 0.01])
    assert small[0.5] > small[0.1] > small[0.01] and all(large[k] > small[k] for k in small)


def test_each_budget_gets_the_best_fitting_ticket(search):
    out, res = search
    assert res["budgets"] == list(BUDGETS)
    for b in BUDGETS:
        best = res["best"][str(b)]
        data = (out / best["ticket"]).read_bytes()
        assert len(data) == best["bytes"] <= b
        fitting = [c for c in res["candidates"] if b in c["budgets"] and c["bytes"] is not None and c["bytes"] <= b]
        assert best["correct"] == max(c["correct"] for c in fitting)
        t = read_ticket(out / best["ticket"])
        assert t.keep == pytest.approx(best["keep"]) and t.metadata["model"] == best["model"]


def test_candidates_take_the_largest_keep_that_fits(search):
    """Per width and budget the keep is the ladder's largest whose predicted ticket fits the
    budget less the margin, and the trained ticket lands within a few bytes of the prediction."""
    _, res = search
    for c in res["candidates"]:
        cfg = replace(CFG, model=c["model"])
        ladder = B.KEEP_LADDER
        i = ladder.index(c["keep"])
        pred = B.predicted_bytes(cfg, ladder[max(0, i - 1):i + 1])
        limit = min(c["budgets"]) * (1 - B.MARGIN)
        assert pred[c["keep"]] == c["predicted_bytes"] <= limit
        if i > 0:  # the next larger keep would not have fit one of the budgets it serves
            assert pred[ladder[i - 1]] > min(c["budgets"]) * (1 - B.MARGIN) or len(c["budgets"]) > 1
        assert abs(c["bytes"] - c["predicted_bytes"]) <= 16


def test_rerun_resumes_without_training(search):
    """A finished search runs again without touching its runs (find rewrites results.json
    whenever it trains or evaluates)."""
    out, res = search
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    again = B.find_budget(BUDGETS, CFG, out, widths=WIDTHS, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps
    assert again["best"] == res["best"]


def test_a_budget_nothing_fits(tmp_path):
    with pytest.raises(RunError, match="no width fits a ticket in 200 bytes"):
        B.find_budget([200], CFG, tmp_path, widths=WIDTHS, progress=False)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_refused_methods_and_models(tmp_path):
    with pytest.raises(RunError, match="learns its own density"):
        B.find_budget([4096], C.FindConfig(model="lenet-300-100", dataset="digits", method="bernoulli"), tmp_path)
    with pytest.raises(RunError, match="fully connected"):
        B.find_budget([4096], C.FindConfig(model="conv2", dataset="digits", method="edge-popup"), tmp_path)


def test_cli_budget(tmp_path):
    r = CliRunner().invoke(main, ["find", "--model", "mlp-40", "--dataset", "digits", "--method", "edge-popup",
                                  "--iterations", "20", "--budget", "1KiB", "--widths", "1,2", "-q",
                                  "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "budget 1,024 bytes: mlp-" in r.output
    summary = json.loads((tmp_path / "s" / "budget.json").read_text())
    assert (tmp_path / "s" / "best-1024.smask").stat().st_size == summary["best"]["1024"]["bytes"] <= 1024


@pytest.mark.parametrize("args, message", [
    (["--budget", "4KiB", "--keep", "0.1"], "leave out --keep"),
    (["--widths", "1,2"], "--widths applies to --budget"),
    (["--budget", "4 parsecs"], "cannot read"),
    (["--budget", "4KiB", "--widths", "0,1"], "width multipliers"),
])
def test_cli_budget_bad_options(tmp_path, args, message):
    r = CliRunner().invoke(main, ["find", "--model", "lenet-300-100", "--dataset", "digits", "--method",
                                  "edge-popup", "--out", str(tmp_path / "x"), *args])
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "x").exists()


def test_cli_budget_too_small(tmp_path):
    r = CliRunner().invoke(main, ["find", "--model", "lenet-300-100", "--dataset", "digits", "--method",
                                  "edge-popup", "--budget", "100", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no width fits a ticket in 100 bytes" in r.output and r.exception is not None
    assert not isinstance(r.exception, (TypeError, KeyError, AttributeError))


# ----------------------------------------------------------------------------- the frontier table


def _search(path, seed, cands):
    path.mkdir(parents=True)
    over = {"model": "mlp-9", "keep": 0.5, "bytes": None, "error": "over its budget"}  # never a ticket
    (path / "budget.json").write_text(json.dumps({"method": "edge-popup", "seed": seed, "candidates": [
        {"model": m, "keep": k, "bytes": b, "accuracy": a} for m, k, b, a in cands] + [over]}))
    return path


def _baselines(path, rows):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"rows": [
        {"method": m, "width": w, "seed": s, "bytes": b, "accuracy": a} for m, w, s, b, a in rows]}))
    return path


@pytest.fixture
def measured(tmp_path):
    _search(tmp_path / "t" / "s0", 0, [("mlp-300-100", 0.1, 4000, 0.80), ("mlp-600-200", 0.05, 4096, 0.84),
                                       ("mlp-150-50", 0.5, 9000, 0.90)])
    _search(tmp_path / "t" / "s1", 1, [("mlp-300-100", 0.1, 3990, 0.82), ("mlp-600-200", 0.05, 4097, 0.86),
                                       ("mlp-150-50", 0.5, 9000, 0.88)])
    _baselines(tmp_path / "b", [("int8-ptq", 8, 0, 3000, 0.81), ("int8-ptq", 8, 1, 3000, 0.79),
                                ("ternary-qat", 64, 0, 8000, 0.87), ("ternary-qat", 64, 1, 8100, 0.87),
                                ("ternary-qat", 128, 0, 2000, 0.99)])  # one seed only: never counts
    return [tmp_path / "t", tmp_path / "b"]


def test_frontier_rules(measured):
    rows = F.table(F.aggregate(F.collect(measured)), [4096, 8192, 16384])
    r4, r8, r16 = rows
    # mlp-600-200 fits 4096 on seed 0 but is 4097 bytes on seed 1: it does not count at 4 KiB
    assert r4["ticket"]["config"] == "mlp-300-100 keep 0.1" and r4["ticket"]["accuracy"] == pytest.approx(0.81)
    assert r4["ticket"]["bytes"] == 4000 and r4["ticket"]["sd"] == pytest.approx(np.std([0.8, 0.82], ddof=1))
    assert r4["baseline"]["method"] == "int8-ptq" and r4["margin"] == pytest.approx(0.01)
    assert r8["ticket"]["config"] == "mlp-600-200 keep 0.05" and r8["baseline"]["config"] == "width 64"
    assert r8["margin"] == pytest.approx(0.85 - 0.87)  # a ticket that loses shows a negative margin
    assert r8["per_method"]["int8-ptq"]["config"] == "width 8"
    assert r16["ticket"]["config"] == "mlp-150-50 keep 0.5" and r16["baseline"]["method"] == "ternary-qat"
    assert r16["margin"] == pytest.approx(0.89 - 0.87)


def test_frontier_files_and_cli(measured, tmp_path):
    r = CliRunner().invoke(main, ["frontier", *map(str, measured), "--budgets", "4KiB,16KiB", "-o",
                                  str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "frontier.md").read_text()
    assert "| 4.0 KiB | 81.00 ± 1.41 (ticket, mlp-300-100 keep 0.1, 4,000 B) | 80.00 ± 1.41 (int8-ptq, width 8" in md
    assert (tmp_path / "rep" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (tmp_path / "rep" / "frontier.csv").read_text()
    assert "width 128" not in csv and "mlp-9" not in csv


def test_frontier_bad_input(tmp_path):
    with pytest.raises(ReportError, match="no find --budget search"):
        F.collect([tmp_path])
    _search(tmp_path / "a", 0, [("mlp-1", 0.5, 10, 0.5)])
    _search(tmp_path / "b", 0, [("mlp-1", 0.5, 10, 0.5)])
    with pytest.raises(ReportError, match="seed 0 twice"):
        F.aggregate(F.collect([tmp_path / "a", tmp_path / "b"]))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{not json")
    r = CliRunner().invoke(main, ["frontier", str(tmp_path / "c"), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "cannot read" in r.output
