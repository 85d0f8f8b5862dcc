"""Dense training (the criteria method) stops cleanly on SIGINT/SIGTERM and resumes exactly.

The same guarantee as the learned methods (tests/test_learned.py): a stopped run, run again,
ends with the same weights, masks and results as an unbroken one. Stops are sent as real
signals to this process at chosen steps (mid-epoch and at an epoch boundary), and once to a
`supermask find` subprocess, as a user's Ctrl-C would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from supermask.cli import main  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train import loop, resume  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.meter import TrainMeter  # noqa: E402
from supermask.train.runs import load_npz  # noqa: E402

from helpers import REPO  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread", "signals_delivered")


@pytest.fixture
def signals_delivered():
    """Default SIGINT/SIGTERM handling for the test, whatever the test runner inherited (a
    background job ignores SIGINT, and supermask then leaves it ignored)."""
    saved = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                                  (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for s, h in saved.items():
        signal.signal(s, h)

# digits: 1,437 training images at batch 60 -> 23 steps an epoch; 80 steps cross three epochs
SMALL = dict(model="lenet-300-100", dataset="digits", iterations=80, batch_size=60, keeps=(0.5, 0.1),
             criteria=("large_final_same_sign", "random"))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    find(C.FindConfig(**SMALL), out, progress=False)
    return out


def _outcome(out):
    res = json.loads((out / "results.json").read_text())
    return res["rows"], (out / "masks.npz").read_bytes(), load_npz(out / "weights.npz")


def _signal_at(monkeypatch, step: int, signum=signal.SIGINT):
    """Make dense training receive ``signum`` while it runs step ``step`` (0-based)."""

    class Signalling(TrainMeter):
        def record(self, it, loss, correct, examples):
            super().record(it, loss, correct, examples)
            if it == step:
                os.kill(os.getpid(), signum)

    monkeypatch.setattr(loop, "TrainMeter", Signalling)


@pytest.mark.parametrize("step, signum", [(30, signal.SIGINT), (45, signal.SIGTERM), (22, signal.SIGINT)],
                         ids=["mid-epoch-sigint", "mid-epoch-sigterm", "epoch-boundary"])
def test_a_stopped_dense_training_resumes_to_the_same_run(tmp_path, unbroken, monkeypatch, capsys, step, signum):
    out = tmp_path / "r"
    _signal_at(monkeypatch, step, signum)
    with pytest.raises(resume.TrainingInterrupted, match=f"interrupted at step {step + 1} of 80"):
        find(C.FindConfig(**SMALL), out, progress=False)
    assert (out / "train.ckpt").is_file()
    assert not (out / "train.json").exists() and not (out / "results.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back
    monkeypatch.setattr(loop, "TrainMeter", TrainMeter)
    capsys.readouterr()
    find(C.FindConfig(**SMALL), out, progress=False)
    assert f"train: resuming at step {step + 1} of 80" in capsys.readouterr().err
    rows, masks, weights = _outcome(out)
    ref_rows, ref_masks, ref_weights = _outcome(unbroken)
    assert rows == ref_rows and masks == ref_masks
    assert all(np.array_equal(weights[k], ref_weights[k]) for k in ref_weights)
    summary = json.loads((out / "train.json").read_text())
    ref = json.loads((unbroken / "train.json").read_text())
    assert summary["resumed_at"] == step + 1 and summary["history"] == ref["history"]
    assert not (out / "train.ckpt").exists()  # the checkpoint goes once the stage is done


def test_the_cli_exits_130_with_what_to_do(tmp_path, monkeypatch):
    _signal_at(monkeypatch, 10)
    r = CliRunner().invoke(main, ["find", "--model", "lenet-300-100", "--dataset", "digits", "--iterations", "80",
                                  "--batch-size", "60", "--keep", "0.5", "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 130, r.output
    assert "interrupted at step 11 of 80" in r.output and "Run the same command again" in r.output
    assert "Traceback" not in r.output


def test_a_damaged_dense_checkpoint_is_ignored_without_unsafe_advice(tmp_path, unbroken, caplog):
    out = tmp_path / "r"
    out.mkdir()
    (out / "train.ckpt").write_bytes(b"PK\x03\x04 damaged")
    find(C.FindConfig(**SMALL), out, progress=False)
    assert "ignoring unreadable checkpoint" in caplog.text
    assert "weights_only=False" not in caplog.text and "weights_only" not in caplog.text
    assert _outcome(out)[:2] == _outcome(unbroken)[:2]


def test_ctrl_c_to_a_find_process_then_a_rerun(tmp_path):
    """A real Ctrl-C (SIGINT to the process) while `supermask find` trains."""
    out = tmp_path / "r"
    args = [sys.executable, "-m", "supermask.cli", "find", "--model", "lenet-300-100", "--dataset", "digits",
            "--iterations", "4000", "--batch-size", "60", "--keep", "0.5", "--criteria", "random",
            "--threads", "1", "--out", str(out)]
    p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in p.stderr:  # without a terminal, progress comes as a line per tenth of the steps
        seen.append(line)
        if line.startswith("train 400/4000"):
            break
    assert seen and seen[-1].startswith("train 400/4000"), "".join(seen)
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    err = "".join(seen) + rest
    assert p.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    stopped_at = int(err.split("interrupted at step ")[1].split(" ")[0].replace(",", ""))
    assert 0 < stopped_at < 4000 and (out / "train.ckpt").is_file()
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming at step {stopped_at:,} of 4,000" in r.stderr
    assert json.loads((out / "train.json").read_text())["resumed_at"] == stopped_at


def test_a_signal_the_process_ignores_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job or nohup
    with resume.StopRequests() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
