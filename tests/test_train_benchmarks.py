"""The training benchmark and the reproduction script run, and the reproduction checks judge
rows correctly (tiny settings on the bundled digits, so they stay fast)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from click.testing import CliRunner

from helpers import REPO

pytest.importorskip("torch")


def load_script(name: str):
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def test_bench_training_compares_both_loops(tmp_path):
    mod = load_script("bench_training")
    out = tmp_path / "b.json"
    r = CliRunner().invoke(mod.main, ["--dataset", "digits", "--iterations", "30", "--repeats", "1",
                                      "--json-out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["ratio"] == pytest.approx(res["find_seconds_median"] / res["hand_loop_seconds_median"])
    assert res["iterations"] == 30 and "ratio find / hand" in r.output


def _rows(seed, lfss, lf, rnd, sc, dense=0.9):
    rows = [{"criterion": "dense", "init": "trained", "keep": 1.0, "accuracy": dense}]
    for i, k in enumerate((0.5, 0.3, 0.2, 0.1, 0.05)):
        rows += [{"criterion": "large_final_same_sign", "init": "original", "keep": k, "accuracy": lfss[i]},
                 {"criterion": "large_final_same_sign", "init": "signed-constant", "keep": k, "accuracy": sc[i]},
                 {"criterion": "large_final", "init": "original", "keep": k, "accuracy": lf[i]},
                 {"criterion": "random", "init": "original", "keep": k, "accuracy": rnd[i]}]
    return rows


def test_reproduction_checks_and_table():
    mod = load_script("reproduce_supermasks")
    good = _rows(0, [0.7, 0.6, 0.6, 0.5, 0.3], [0.4, 0.4, 0.4, 0.4, 0.2], [0.1] * 5, [0.75, 0.7, 0.6, 0.5, 0.4])
    assert all(ok for _, ok in mod.checks({0: good}))
    # dense 87 % (under the 88 % threshold) and large_final tying large_final_same_sign at
    # keep 0.05 -> exactly those two checks fail, the rest pass
    bad = _rows(1, [0.7, 0.6, 0.6, 0.5, 0.3], [0.4, 0.4, 0.4, 0.4, 0.3], [0.1] * 5, [0.75] * 5, dense=0.87)
    failed = [c for c, ok in mod.checks({1: bad}) if not ok]
    assert len(failed) == 2 and "dense 87.00 %" in failed[0] and "keep 0.05" in failed[1]
    md = mod.table({0: good, 1: bad})
    assert "| large_final_same_sign | original | 70.0 ± 0.0 |" in md and "88.5 ± 1.5" in md
