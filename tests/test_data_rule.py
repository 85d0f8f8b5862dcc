"""The rule for tests that read ../shared/data (README, "Run the tests"): where the data is
missing they skip and say why, unless SUPERMASK_REQUIRE_DATA=1, when they fail and say where
they looked. Shown on a copy of the test helpers in a folder with no ../shared beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import REPO

PROBE = '''
from helpers import needs_data, SHARED_DATA
from deploy_helpers import fashion_test

@needs_data("fashion-mnist")
def test_marked():
    assert (SHARED_DATA / "fashion-mnist").is_dir()

def test_through_the_loader():  # data read by a helper, not marked: the conftest hook decides
    fashion_test()
'''


def _run(tmp_path, require: bool):
    tests = tmp_path / "clone" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    for name in ("conftest.py", "helpers.py", "deploy_helpers.py"):
        shutil.copy(REPO / "tests" / name, tests / name)
    (tests / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "SUPERMASK_REQUIRE_DATA"}
    if require:
        env["SUPERMASK_REQUIRE_DATA"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o",
                           "addopts=--import-mode=importlib", "-o", "pythonpath=tests", str(tests)],
                          cwd=tmp_path / "clone", env=env, capture_output=True, text=True, timeout=300)


def test_missing_data_skips_with_the_reason(tmp_path):
    assert not (tmp_path / "shared").exists()
    r = _run(tmp_path, require=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 skipped" in r.stdout and "not present" in r.stdout
    assert str(tmp_path / "shared" / "data" / "fashion-mnist") in r.stdout  # says where it looked


def test_missing_data_fails_when_it_is_required(tmp_path):
    r = _run(tmp_path, require=True)
    assert r.returncode == 1 and "2 failed" in r.stdout, r.stdout + r.stderr
    assert str(tmp_path / "shared" / "data") in r.stdout
