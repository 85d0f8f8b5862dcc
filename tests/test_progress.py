"""Progress and log output: a tqdm bar on a terminal, sparse plain lines elsewhere, and log
levels that mean what they say (progress is info, not a warning)."""

from __future__ import annotations

import io
import logging
import re

import pytest
from click.testing import CliRunner

from supermask.cli import _LogFormat, main
from supermask.train import meter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_shows_elapsed_eta_rate_and_stats():
    stream = _Terminal()
    bar = meter.Progress(50, "train", stream=stream)
    for i in range(1, 51):
        bar.update(i, loss=0.25)
    bar.close()
    text = stream.getvalue()
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("train: 100%") and "50/50" in last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", last), last  # elapsed < remaining
    assert "it/s" in last and "loss=0.2500" in last


def test_without_a_terminal_one_line_per_tenth_with_elapsed_and_eta():
    stream = io.StringIO()
    bar = meter.Progress(100, "train", stream=stream)
    for i in range(1, 101):
        bar.update(i, **({"loss": 0.5} if i % 7 == 0 else {}))  # stats arrive now and then
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("train 100/100 (100 %)  loss 0.5000") and lines[-1].endswith("elapsed")
    assert re.search(r"train 50/100 \(50 %\)  loss 0\.5000  [\d,.]+ it/s  \d\d:\d\d elapsed, \d\d:\d\d left$",
                     lines[5]), lines[5]
    silent = io.StringIO()
    meter.Progress(10, "x", enabled=False, stream=silent).update(10)
    assert silent.getvalue() == ""


def test_a_slow_loop_shows_its_rate_with_decimals():
    slow = io.StringIO()
    bar = meter.Progress(10, "x", stream=slow)
    bar.start -= 8.0
    bar.update(10)
    assert " 1.2" in slow.getvalue() and "it/s" in slow.getvalue(), slow.getvalue()


@pytest.mark.parametrize("total, every", [(60, 3), (400, 20), (20_000, 200), (5, 1)])
def test_short_runs_read_their_stats_often_enough_to_show(total, every):
    assert meter.stats_every(total) == every


def test_log_lines_say_what_they_are():
    fmt = _LogFormat()

    def line(level, msg="m"):
        return fmt.format(logging.LogRecord("supermask.x", level, __file__, 1, msg, None, None))

    assert line(logging.INFO, "sweep: run 1 of 2") == "sweep: run 1 of 2"
    assert line(logging.WARNING) == "warning: m" and line(logging.DEBUG) == "debug supermask.x: m"


def test_sweep_says_run_i_of_n_as_info_not_warning(tmp_path, caplog):
    pytest.importorskip("torch")
    caplog.set_level(logging.INFO, logger="supermask")
    r = CliRunner().invoke(main, ["sweep", "--models", "lenet-300-100", "--datasets", "digits", "--seeds", "0,1",
                                  "--iterations", "20", "--keep", "0.5", "--criteria", "random",
                                  "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    runs = [rec for rec in caplog.records if "sweep: run" in rec.getMessage()]
    assert [rec.levelno for rec in runs] == [logging.INFO, logging.INFO]
    assert "run 1 of 2" in runs[0].getMessage() and "run 2 of 2" in runs[1].getMessage()
