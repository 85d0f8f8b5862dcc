"""Sweeps and size-vs-accuracy reports on a tiny real sweep (the bundled digits data)."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from supermask import report as R
from supermask.cli import main
from supermask.errors import ReportError

from helpers import REPO

FAST = ["--iterations", "30", "--criteria", "large_final_same_sign,random", "--keep", "0.5,0.1", "-q"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    r = CliRunner().invoke(main, ["sweep", "--models", "lenet-300-100", "--datasets", "digits", "--seeds", "0,1",
                                  "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def tiny_report(tiny_sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    r = CliRunner().invoke(main, ["report", str(tiny_sweep), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_rows_csv_and_json(tiny_report):
    with open(tiny_report / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # per seed: 1 dense row + 2 criteria x 2 keeps x 2 init variants
    assert len(rows) == 2 * (1 + 2 * 2 * 2)
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert {r["criterion"] for r in rows} == {"dense", "large_final_same_sign", "random"}
    assert {r["init"] for r in rows} == {"trained", "original", "signed-constant"}
    # what a row's group is made of: both seeds share the training config, not the run's train hash
    assert {(r["selection"], r["train_init"]) for r in rows} == {("layerwise", "kaiming_uniform")}
    assert len({r["train_config"] for r in rows}) == 1 and len({r["train_hash"] for r in rows}) == 2
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1
        assert int(r["dense_float32_bytes"]) == 4 * int(r["num_params"])
        if r["criterion"] != "dense":
            assert int(r["ticket_entropy_bytes"]) < int(r["sparse_onnx_bytes"]) <= int(r["dense_onnx_bytes"])
            assert float(r["bits_per_weight_bitpack"]) == 8 * int(r["ticket_bitpack_bytes"]) / int(r["num_weights"])
    data = json.loads((tiny_report / "results.json").read_text())
    assert len(data["rows"]) == len(rows)
    aggs = [a for a in data["aggregates"] if a["criterion"] != "dense"]
    assert len(aggs) == 2 * 2 * 2 and all(a["seeds"] == [0, 1] for a in aggs)
    assert all(a["accuracy_min"] <= a["accuracy_mean"] <= a["accuracy_max"] for a in aggs)


def test_report_plots_and_markdown(tiny_report):
    pngs = sorted(p.name for p in tiny_report.glob("*.png"))
    assert pngs == ["accuracy_vs_keep_lenet-300-100_digits_original.png",
                    "accuracy_vs_keep_lenet-300-100_digits_signed-constant.png",
                    "accuracy_vs_size_lenet-300-100_digits.png",
                    "accuracy_vs_ticket_lenet-300-100_digits.png"]
    for name in pngs:
        assert _png_size(tiny_report / name) == (800, 500)
    md = (tiny_report / "report.md").read_text()
    assert "Best ticket per size budget" in md and "large_final_same_sign" in md
    for name in pngs:
        assert f"]({name})" in md


def test_report_html_is_self_contained(tiny_report):
    page = (tiny_report / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert page.count("<table>") >= 3


def test_report_sizes_match_inspect_and_export(tiny_sweep, tiny_report, tmp_path):
    with open(tiny_report / "results.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["criterion"] == "large_final_same_sign" and r["keep"] == "0.1"
                   and r["init"] == "original" and r["seed"] == "1")
    run = row["run"]
    runner = CliRunner()
    for codec in ("bitpack", "entropy"):
        ticket = tmp_path / f"{codec}.smask"
        r = runner.invoke(main, ["pack", str(ticket), "--run", run, "--keep", "0.1", "--codec", codec])
        assert r.exit_code == 0, r.output
        s = json.loads(runner.invoke(main, ["inspect", "--json", str(ticket)]).output)
        assert s["file_bytes"] == int(row[f"ticket_{codec}_bytes"]) == ticket.stat().st_size
    for fmt in ("dense", "sparse"):
        onnx_path = tmp_path / f"{fmt}.onnx"
        r = runner.invoke(main, ["export", str(tmp_path / "entropy.smask"), "-o", str(onnx_path), "--format", fmt])
        assert r.exit_code == 0, r.output
        assert onnx_path.stat().st_size == int(row[f"{fmt}_onnx_bytes"])


def test_report_errors_are_clear(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "no finished runs" in r.output


def test_report_without_matplotlib_fails_before_writing(tiny_sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    measured = []
    monkeypatch.setattr(R, "measure", lambda *a, **k: measured.append(1) or [])
    r = CliRunner().invoke(main, ["report", str(tiny_sweep), "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "pip install 'supermask[report]'" in r.output
    assert not measured and not (tmp_path / "out").exists()


def test_report_refuses_a_run_given_twice(tiny_sweep, tmp_path):
    run = tiny_sweep / "lenet-300-100-digits-s0"
    r = CliRunner().invoke(main, ["report", str(run), str(tiny_sweep / ".." / tiny_sweep.name / run.name),
                                  "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 1 and "are the same run folder" in r.output and "Traceback" not in r.output
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    r = CliRunner().invoke(main, ["report", str(tiny_sweep), str(copy), "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 1 and "would average one seed twice" in r.output and str(copy) in r.output
    assert not (tmp_path / "out").exists()


def _row(seed, accuracy, **kw):
    base = dict(model="m", dataset="d", method="criteria", selection="layerwise", train_init="kaiming_uniform",
                train_config="c1",
                criterion="random", init="original", keep=0.5, seed=seed, accuracy=accuracy, density=0.5,
                num_weights=10, run=f"r{seed}")
    return {**base, **{k: None for k in R.REPRESENTATIONS}, **kw}


def test_aggregate_never_averages_different_configs():
    rows = [_row(0, 0.5), _row(1, 0.7), _row(0, 0.1, selection="global"), _row(0, 0.2, train_config="c2"),
            _row(0, 0.3, train_init="glorot_uniform")]
    aggs = R.aggregate(rows)
    assert len(aggs) == 4
    same = next(a for a in aggs if a["selection"] == "layerwise" and a["train_config"] == "c1"
                and a["train_init"] == "kaiming_uniform")
    assert same["seeds"] == [0, 1] and same["accuracy_mean"] == pytest.approx(0.6)
    assert sorted(a["accuracy_mean"] for a in aggs if a is not same) == [0.1, 0.2, 0.3]
    with pytest.raises(ReportError, match="seed 0 appears twice"):
        R.aggregate([_row(0, 0.5), _row(0, 0.5, run="elsewhere")])


def test_bernoulli_seeds_are_averaged_although_their_learned_densities_differ():
    bern = dict(method="bernoulli", criterion="bernoulli", train_init="signed_kaiming_constant")
    rows = [_row(0, 0.8, keep=0.506, density=0.506, **bern), _row(1, 0.9, keep=0.504, density=0.504, **bern),
            _row(0, 0.5, keep=0.5), _row(0, 0.4, keep=0.3)]
    aggs = R.aggregate(rows)
    b = [a for a in aggs if a["method"] == "bernoulli"]
    assert len(b) == 1 and b[0]["seeds"] == [0, 1]
    assert b[0]["accuracy_mean"] == pytest.approx(0.85) and b[0]["keep"] == pytest.approx(0.505)
    # criteria rows keep one group per keep
    assert sorted(a["keep"] for a in aggs if a["method"] == "criteria") == [0.3, 0.5]


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "supermask.cli", "sweep", "--models", "lenet-300-100", "--datasets", "digits",
            "--seeds", "0,1,2", "--out", str(out), *FAST]
    p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "lenet-300-100-digits-s0" / "results.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert first.exists(), "the first run never finished"
    stamps = {f: f.stat().st_mtime_ns for f in first.parent.iterdir()}
    stale = out / ".sweep.json.a1b2c3d4.tmp"  # as a kill during the manifest's write leaves it
    stale.write_text("{")
    r = CliRunner().invoke(main, ["sweep", "--models", "lenet-300-100", "--datasets", "digits", "--seeds", "0,1,2",
                                  "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    assert "3 of 3 runs finished" in r.output
    assert not stale.exists()
    assert {f: f.stat().st_mtime_ns for f in first.parent.iterdir()} == stamps  # untouched
    manifest = json.loads((out / "sweep.json").read_text())
    assert [x["state"] for x in manifest["runs"]] == ["done"] * 3


# ----------------------------------------------------------------------------- plots and tables


def _sized(seed, accuracy, ticket=4096, **kw):
    """A row with every representation's size, so it reaches the size and ticket plots."""
    sizes = dict(dense_float32_bytes=40_000, dense_onnx_bytes=41_000, sparse_onnx_bytes=30_000,
                 ticket_bitpack_bytes=ticket + 100, ticket_entropy_bytes=ticket)
    return _row(seed, accuracy, **{**sizes, **kw})


def _dense(seed, accuracy, **kw):
    return _sized(seed, accuracy, criterion="dense", init="trained", keep=1.0, density=1.0,
                  ticket_bitpack_bytes=None, ticket_entropy_bytes=None, **kw)


@pytest.fixture
def figures():
    """The report's matplotlib figures for some rows, by file name; closed afterwards."""
    from matplotlib import pyplot as plt

    def make(rows):
        return dict(R.figures(R.aggregate(rows)))

    yield make
    plt.close("all")


def _dense_lines(ax):
    return [ln for ln in ax.get_lines() if str(ln.get_label()).startswith("dense, trained")]


def test_accuracy_axis_spans_at_least_five_points_and_shows_the_dense_reference(figures):
    # seed noise of 0.3 points must not fill the whole height of the plot
    lo, hi = R.accuracy_limits([88.1, 88.4])
    assert hi - lo >= R.MIN_ACCURACY_SPAN == 5.0 and lo < 88.1 and hi > 88.4
    assert R.accuracy_limits([99.9, 100.0])[1] <= 100.5  # a widened span is not pushed far past 100 %
    assert R.accuracy_limits([10.0, 90.0]) == pytest.approx((6.0, 94.0))  # a wide span is left as it is
    rows = [_dense(0, 0.975), _sized(0, 0.881, keep=0.5), _sized(0, 0.884, keep=0.3),
            _sized(0, 0.883, keep=0.5, method="edge-popup", criterion="edge-popup",
                   train_init="signed_kaiming_constant", train_config="c9")]
    figs = figures(rows)
    ax = figs["accuracy_vs_keep_m_d_original.png"].axes[0]
    y0, y1 = ax.get_ylim()
    assert y1 - y0 >= 5.0 and y0 <= 88.1 and y1 >= 97.5
    (dense,) = _dense_lines(ax)
    assert list(dense.get_ydata()) == [97.5, 97.5] and "97.5 %" in dense.get_label()
    # a learned run trains no dense network: its plots borrow the criteria run's, and say so
    ax = figs["accuracy_vs_keep_m_d_edge-popup_original.png"].axes[0]
    (dense,) = _dense_lines(ax)
    assert list(dense.get_ydata()) == [97.5, 97.5] and "criteria run" in dense.get_label()
    for name in ("accuracy_vs_size_m_d.png", "accuracy_vs_ticket_m_d.png"):
        ax = figs[name].axes[0]
        y0, y1 = ax.get_ylim()
        assert y1 - y0 >= 5.0 and y1 >= 97.5 and _dense_lines(ax) or name.startswith("accuracy_vs_size")


def test_one_seed_shows_the_value_without_a_band(figures):
    one = [_dense(0, 0.975), _sized(0, 0.881, keep=0.5), _sized(0, 0.70, keep=0.3)]
    aggs = R.aggregate(one)
    tables = R._tables(aggs, R.best_per_budget(aggs))
    text = "\n".join(t + "\n" + "\n".join(" ".join(r) for r in body) for t, _, body in tables)
    assert "97.5 (97.5-97.5)" not in text and "88.1 (88.1-88.1)" not in text
    keep_title, _, body = tables[0]
    assert body[0][1] == "97.5" and body[1][1:] == ["88.1", "70.0"]
    assert "seed 0" in keep_title and "min-max" not in keep_title
    assert tables[-1][2][0][-2:] == ["88.1", "1"]  # best per budget: the value and the seed count
    ax = figures(one)["accuracy_vs_keep_m_d_original.png"].axes[0]
    assert "band" not in ax.get_title() and "one seed" in ax.get_title()
    assert not ax.collections  # no min-max band is drawn
    # with several seeds: the mean and its min-max, and how many seeds
    three = one + [_dense(1, 0.97, run="r1"), _sized(1, 0.871, keep=0.5), _sized(1, 0.72, keep=0.3),
                   _dense(2, 0.98, run="r2"), _sized(2, 0.891, keep=0.5), _sized(2, 0.71, keep=0.3)]
    aggs = R.aggregate(three)
    keep_title, _, body = R._tables(aggs, R.best_per_budget(aggs))[0]
    assert "mean (min-max) over 3 seeds (0, 1, 2)" in keep_title
    assert body[1][1] == "88.1 (87.1-89.1)"
    ax = figures(three)["accuracy_vs_keep_m_d_original.png"].axes[0]
    assert "mean over 3 seeds; band: min-max over seeds" in ax.get_title().replace("\n", " ")
    assert ax.collections  # the band


def test_plots_and_tables_name_the_init_scheme_the_run_used(figures):
    assert R.init_label("signed_kaiming_constant", "original") == "signed_kaiming_constant"
    assert R.init_label("kaiming_uniform", "original") == "kaiming_uniform"
    assert R.init_label("kaiming_uniform", "signed-constant") == "signed_kaiming_constant, signs of kaiming_uniform"
    assert R.init_label("glorot_uniform", "signed-constant") == "signed_glorot_constant, signs of glorot_uniform"
    edge = dict(method="edge-popup", criterion="edge-popup", train_init="signed_kaiming_constant")
    rows = [_sized(0, 0.96, keep=0.1, **edge), _sized(0, 0.5, keep=0.1, init="signed-constant")]
    figs = figures(rows)
    title = figs["accuracy_vs_keep_m_d_edge-popup_original.png"].axes[0].get_title().replace("\n", " ")
    assert "init signed_kaiming_constant" in title and "init original" not in title
    title = figs["accuracy_vs_keep_m_d_signed-constant.png"].axes[0].get_title().replace("\n", " ")
    assert "init signed_kaiming_constant, signs of kaiming_uniform" in title
    legend = [t.get_text() for t in figs["accuracy_vs_ticket_m_d.png"].axes[0].get_legend().get_texts()]
    assert "edge-popup (signed_kaiming_constant)" in legend
    aggs = R.aggregate(rows)
    tables = R._tables(aggs, R.best_per_budget(aggs))
    assert any("learned by edge-popup, init signed_kaiming_constant:" in t for t, _, _ in tables)
    assert ["edge-popup", "original (signed_kaiming_constant)"] in [b[:2] for _, _, body in tables for b in body]


def test_size_axes_read_in_bytes(figures):
    assert [R.bytes_label(n) for n in (512, 4096, 1536, 34 * 1024 + 200, 1023 * 1024, 3 << 20)] == [
        "512 B", "4 KiB", "1.5 KiB", "34.2 KiB", "1023 KiB", "3 MiB"]
    assert R.size_ticks(11_000, 36_000) == [12288, 16384, 24576, 32768]  # narrow: 1.5x steps too
    assert R.size_ticks(2000, 1.1e6) == [2048, 8192, 32768, 131072, 524288]  # wide: thinned powers of 2
    rows = [_sized(0, 0.6, keep=0.5, ticket=4096), _sized(0, 0.5, keep=0.1, ticket=2600)]
    for name, fig in figures(rows).items():
        if "_vs_keep_" in name:
            continue
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels and all(re.fullmatch(r"[\d.]+ (B|KiB|MiB)", s) for s in labels), (name, labels)
        assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))  # no 4x10^3 minor labels
        assert ax.xaxis.get_major_formatter()(4096, 0) == "4 KiB"
        assert "KiB = 1024 B" in ax.get_xlabel()


def test_overlapping_markers_get_labels(figures):
    assert R.overlapping([("a", 0, 0), ("b", 3, 4), ("a", 10, 0), ("c", 50, 50)], radius=6) == [1]
    assert R.overlapping([("a", 0, 0), ("a", 1, 0)], radius=6) == []  # one series' own points
    bern = dict(method="bernoulli", criterion="bernoulli", train_init="signed_kaiming_constant", train_config="b")
    edge = dict(method="edge-popup", criterion="edge-popup", train_init="signed_kaiming_constant", train_config="e")
    rows = [_sized(0, 0.881, keep=0.505, density=0.505, ticket=35_000, **bern),
            _sized(0, 0.881, keep=0.5, ticket=35_010, **edge), _sized(0, 0.88, keep=0.3, ticket=30_000, **edge),
            _sized(0, 0.87, keep=0.1, ticket=17_000, **edge)]
    ax = figures(rows)["accuracy_vs_ticket_m_d.png"].axes[0]
    assert [t.get_text() for t in ax.texts] == ["bernoulli"]  # the lone marker is named
    ring = next(ln for ln in ax.get_lines() if str(ln.get_label()).startswith("bernoulli"))
    assert ring.get_markerfacecolor() == "none"  # and drawn as a ring, so the marker below shows
    rows[0] = _sized(0, 0.60, keep=0.505, density=0.505, ticket=35_000, **bern)  # apart: no label
    ax = figures(rows)["accuracy_vs_ticket_m_d.png"].axes[0]
    assert not ax.texts


def test_learned_densities_are_averaged_openly(figures):
    bern = dict(method="bernoulli", criterion="bernoulli", train_init="signed_kaiming_constant")
    rows = [_sized(0, 0.8, keep=0.506, density=0.506, **bern), _sized(1, 0.9, keep=0.504, density=0.504, **bern)]
    (agg,) = R.aggregate(rows)
    assert (agg["keep_min"], agg["keep_max"]) == (0.504, 0.506)
    assert (agg["density_min"], agg["density_max"]) == (0.504, 0.506)
    title, header, body = R._tables([agg], [])[0]
    assert header[1] == "learned keep 0.505 (mean over 2 seeds, 0.504-0.506)"
    assert body == [["bernoulli", "85.0 (80.0-90.0)"]]
    size_row = R._tables([agg], [])[1][2][0]
    assert size_row[2] == "0.505 (learned; mean, 0.504-0.506)"
    fig = figures(rows)["accuracy_vs_keep_m_d_bernoulli_original.png"]
    ax = fig.axes[0]
    assert "keep: mean of the densities the seeds learned" in ax.get_title().replace("\n", " ")
    assert "bars: min-max over seeds" in ax.get_title().replace("\n", " ")
    legend = " ".join(t.get_text() for t in figures(rows)["accuracy_vs_ticket_m_d.png"].axes[0].get_legend().get_texts())
    assert "mean of 2 seeds' learned densities" in legend.replace("\n", " ")


class _Bar:
    """Stands in for supermask.train.meter.Progress and records how it was used."""

    made: list["_Bar"] = []

    def __init__(self, total, label, enabled=True):
        self.total, self.label, self.enabled, self.done, self.closed = total, label, enabled, [], False
        _Bar.made.append(self)

    def update(self, done, **stats):
        self.done.append(done)

    def close(self):
        self.closed = True


def test_report_progress_is_a_bar_not_warnings(tiny_sweep, tmp_path, monkeypatch, caplog):
    from supermask.train import meter

    monkeypatch.setattr(meter, "Progress", _Bar)
    _Bar.made = []
    caplog.set_level(logging.INFO)
    r = CliRunner().invoke(main, ["report", str(tiny_sweep), "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    (bar,) = _Bar.made
    assert bar.enabled and bar.total == 18 and bar.done == list(range(1, 19)) and bar.closed
    assert not [x for x in caplog.records if x.name.startswith("supermask") and x.levelno >= logging.WARNING]
    assert any(x.name == "supermask.report" and x.levelno == logging.INFO for x in caplog.records)
    _Bar.made = []
    r = CliRunner().invoke(main, ["report", str(tiny_sweep), "-o", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert [b.enabled for b in _Bar.made] == [False]


def test_a_report_is_drawn_again_from_its_csv(tmp_path):
    pytest.importorskip("matplotlib")
    from supermask.report import read_rows, write_report

    rows = []
    for seed, accuracy in ((0, 0.81), (1, 0.83)):
        rows.append(dict(model="lenet-300-100", dataset="digits", method="criteria", selection="layerwise",
                         train_init="kaiming_uniform", train_config="abc", criterion="random", init="original",
                         keep=0.5, seed=seed, accuracy=accuracy, density=0.5, num_weights=1000, num_params=1010,
                         dense_float32_bytes=4040, dense_onnx_bytes=5000, sparse_onnx_bytes=3000,
                         ticket_bitpack_bytes=400, ticket_entropy_bytes=380, bits_per_weight_bitpack=3.2,
                         bits_per_weight_entropy=3.04, train_hash=f"h{seed}", run=f"runs/s{seed}"))
    write_report(rows, tmp_path / "a")
    again = read_rows(tmp_path / "a" / "results.csv")
    assert again == [{k: r.get(k) for k in again[0]} for r in rows]
    r = CliRunner().invoke(main, ["report", "--from-csv", str(tmp_path / "a" / "results.csv"), "-o",
                                  str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    for name in ("results.csv", "report.md", "results.json"):  # the same tables and numbers
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    bad = tmp_path / "bad.csv"
    bad.write_text("model,dataset\nx,y\n")
    r = CliRunner().invoke(main, ["report", "--from-csv", str(bad), "-o", str(tmp_path / "c")])
    assert r.exit_code == 1 and "is not a results.csv of `supermask report`" in r.output
    r = CliRunner().invoke(main, ["report", "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "RUNS" in r.output
    text = (tmp_path / "a" / "results.csv").read_text().splitlines()
    for column, value, says in (("accuracy", "nan", "a fraction in [0, 1]"), ("accuracy", "1.5", "a fraction"),
                                ("ticket_bitpack_bytes", "-5", "at least 0")):
        i = text[0].split(",").index(column)
        cells = text[1].split(",")
        cells[i] = value
        (tmp_path / "odd.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
        r = CliRunner().invoke(main, ["report", "--from-csv", str(tmp_path / "odd.csv"), "-o", str(tmp_path / "d")])
        assert r.exit_code == 1 and f"row 1: {column} is '{value}'" in r.output and says in r.output, r.output
        assert "Traceback" not in r.output and not (tmp_path / "d").exists()  # nothing half-written
