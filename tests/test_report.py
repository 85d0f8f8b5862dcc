"""Sweeps and size-vs-accuracy reports on a tiny real sweep (the bundled digits data)."""

from __future__ import annotations

import csv
import json
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
