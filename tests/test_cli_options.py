"""One spelling for the same thing on every command: -o/--out for what a command writes,
--keep parsed by one function, --threads wherever a command computes."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from supermask.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _option(command: str, name: str) -> click.Option | None:
    return next((p for p in main.commands[command].params if p.name == name), None)


# ----------------------------------------------------------------------------------- -o/--out

WRITERS = ["find", "sweep", "report", "export", "pack"]


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_takes_o_and_out(command):
    out = _option(command, "out")
    assert out is not None and set(out.opts) == {"-o", "--out"} and not out.hidden
    help_text = invoke(command, "--help").output
    assert "-o, --out" in help_text


def test_find_and_sweep_accept_the_short_form(tmp_path, monkeypatch):
    # parsed, not run: the library functions are replaced by stand-ins that record the folder
    import supermask.train.find as tf
    import supermask.train.sweep as ts

    seen = {}
    monkeypatch.setattr(tf, "find", lambda cfg, out, **kw: seen.setdefault("find", out) and {"rows": []})
    monkeypatch.setattr(ts, "sweep", lambda *a, **kw: seen.setdefault("sweep", a[3]) and {"runs": []})
    r = invoke("find", "--model", "lenet-300-100", "--dataset", "digits", "-o", tmp_path / "run", "-q",
               "--threads", "1")
    assert r.exit_code == 0, r.output
    r = invoke("sweep", "--models", "lenet-300-100", "--datasets", "digits", "--seeds", "0", "-o", tmp_path / "sw",
               "-q", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert seen == {"find": str(tmp_path / "run"), "sweep": str(tmp_path / "sw")}


def test_pack_output_is_given_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = invoke("pack", "--run", run)
    assert r.exit_code == 2 and "give the ticket file to write once" in r.output and "-o/--out" in r.output
    r = invoke("pack", tmp_path / "a.smask", "-o", tmp_path / "b.smask", "--run", run)
    assert r.exit_code == 2 and "given twice" in r.output
    assert not (tmp_path / "a.smask").exists() and not (tmp_path / "b.smask").exists()
    assert "[TICKET]" in invoke("pack", "--help").output  # the old positional form still parses


# ------------------------------------------------------------------------------------ --keep


def test_keep_is_parsed_by_one_function():
    from supermask.cli_train import parse_keeps

    assert parse_keeps("0.5") == (0.5,)
    assert parse_keeps(" 0.5, 0.2,0.1 ,") == (0.5, 0.2, 0.1)
    assert parse_keeps("1e-1") == (0.1,) and parse_keeps("1") == (1.0,)
    for bad in ("0", "1.5", "-0.1", "nan", "inf", "", ",", "half", "0.5;0.2"):
        with pytest.raises(click.BadParameter):
            parse_keeps(bad)


@pytest.mark.parametrize("command", ["find", "pack"])
def test_keep_help_says_fraction_in_0_1(command):
    text = " ".join(invoke(command, "--help").output.split())
    assert "fraction in (0, 1]" in text


@pytest.mark.parametrize("value, fragment", [("1.5", "fraction in (0, 1]"), ("0", "fraction in (0, 1]"),
                                             ("x", "fraction in (0, 1]"),
                                             ("0.5,0.2", "pack writes one ticket: give one keep")])
def test_pack_rejects_bad_keeps_before_reading_the_run(tmp_path, value, fragment):
    run = tmp_path / "run"
    run.mkdir()
    r = invoke("pack", "-o", tmp_path / "t.smask", "--run", run, "--keep", value)
    assert r.exit_code == 2 and "Invalid value for '--keep'" in r.output
    assert fragment in " ".join(r.output.split())


def test_find_rejects_the_same_keeps(tmp_path):
    for value in ("1.5", "0", "x"):
        r = invoke("find", "--model", "lenet-300-100", "--dataset", "digits", "-o", tmp_path / "r", "--keep", value)
        assert r.exit_code == 2 and "fraction in (0, 1]" in " ".join(r.output.split()), r.output


# ----------------------------------------------------------------------------------- --threads


@pytest.mark.parametrize("command", ["find", "sweep", "pack", "eval", "predict", "report"])
def test_threads_wherever_a_command_computes(command):
    opt = _option(command, "threads")
    assert opt is not None and opt.opts == ["--threads"]
    assert invoke(command, "--help").output.count("--threads") == 1


def test_export_runs_no_session_and_has_no_threads():
    # export writes the ONNX file without running it: there is nothing for --threads to cap
    assert _option("export", "threads") is None


# ----------------------------------------------------------------------- a real run, packed


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    pytest.importorskip("torch")
    from supermask.train.config import FindConfig
    from supermask.train.find import find

    out = tmp_path_factory.mktemp("opts") / "run"
    cfg = FindConfig(model="lenet-300-100", dataset="digits", iterations=60, criteria=("large_final_same_sign",),
                     keeps=(0.5, 0.2))
    find(cfg, out, progress=False, device="cpu", threads=1)
    return out


def test_pack_writes_with_o_or_the_positional_argument(tmp_path, small_run):
    import torch

    from supermask import read_ticket

    before = torch.get_num_threads()
    try:
        r = invoke("pack", "--run", small_run, "--keep", "0.2", "-o", tmp_path / "a.smask", "--threads", "1")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        assert r.output.startswith(f"wrote {tmp_path / 'a.smask'}:")
        r = invoke("pack", tmp_path / "b.smask", "--run", small_run, "--keep", "0.2")
        assert r.exit_code == 0, r.output
        r = invoke("pack", "--out", tmp_path / "c.smask", "--run", small_run, "--keep", "2e-1")  # same syntax as find
        assert r.exit_code == 0, r.output
    finally:
        torch.set_num_threads(before)
    a, b, c = (read_ticket(tmp_path / f"{n}.smask") for n in "abc")
    assert a.keep == b.keep == c.keep == 0.2
    assert a.sha256 == b.sha256 == c.sha256  # the same ticket, however the file was named
    r = invoke("pack", "-o", tmp_path / "d.smask", "--run", small_run, "--keep", "0.5,0.2")
    assert r.exit_code == 2 and "pack writes one ticket: give one keep" in " ".join(r.output.split())
    assert not (tmp_path / "d.smask").exists()
