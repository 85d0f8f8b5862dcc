"""`supermask inspect`: summary text, JSON fields, and clear errors on bad files."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np

from click.testing import CliRunner

from supermask.cli import main

from helpers import FIXTURES

TINY = str(FIXTURES / "tiny-v1.smask")


def test_inspect_text():
    r = CliRunner().invoke(main, ["inspect", TINY])
    assert r.exit_code == 0, r.output
    assert "tiny-mlp" in r.output and "seed        42" in r.output
    assert "large_final_same_sign" in r.output
    assert "fc1.weight" in r.output and "entropy" in r.output and "regenerated" in r.output


def test_inspect_json_fields():
    r = CliRunner().invoke(main, ["inspect", "--json", TINY])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["file_bytes"] == (FIXTURES / "tiny-v1.smask").stat().st_size
    assert s["num_weights"] == 12 * 16 + 6 * 12 + 3 * 6
    kept = {t["name"]: t["num_kept"] for t in s["tensors"]}
    assert s["num_kept"] == kept["fc1.weight"] + kept["fc2.weight"] + kept["fc3.weight"] == 99
    assert abs(s["bits_per_weight"] - 8 * s["file_bytes"] / s["num_weights"]) < 1e-12
    assert s["dense_float32_bytes"] == 4 * (282 + 12 + 3)
    rows = {t["name"]: t for t in s["tensors"]}
    assert rows["fc1.weight"]["codec"] == "entropy"
    assert rows["fc1.weight"]["bits_per_weight"] == 8 * rows["fc1.weight"]["payload_bytes"] / 192
    assert rows["fc2.weight"]["role"] == "regenerated" and rows["fc2.weight"]["density"] == 1.0


def test_inspect_verify():
    r = CliRunner().invoke(main, ["inspect", "--verify", "--json", TINY])
    assert r.exit_code == 0 and json.loads(r.output)["verified"] is True


def _err(args):
    r = CliRunner().invoke(main, args)
    return r.exit_code, r.output


def test_inspect_errors_are_one_line_and_nonzero(tmp_path):
    code, out = _err(["inspect", str(tmp_path / "missing.smask")])
    assert code != 0 and "Traceback" not in out

    trunc = tmp_path / "trunc.smask"
    trunc.write_bytes((FIXTURES / "tiny-v1.smask").read_bytes()[:200])
    code, out = _err(["inspect", str(trunc)])
    assert code == 1 and "Error:" in out and "truncated" in out

    corrupt = tmp_path / "corrupt.smask"
    data = bytearray((FIXTURES / "tiny-v1.smask").read_bytes())
    data[500] ^= 4
    corrupt.write_bytes(bytes(data))
    code, out = _err(["inspect", str(corrupt)])
    assert code == 1 and "checksum" in out

    newer = tmp_path / "newer.smask"
    data = bytearray((FIXTURES / "tiny-v1.smask").read_bytes())
    data[8:10] = struct.pack("<H", 9)
    newer.write_bytes(bytes(data))
    code, out = _err(["inspect", str(newer)])
    assert code == 1 and "version 9" in out

    text = tmp_path / "notes.smask"
    text.write_text("hello")
    code, out = _err(["inspect", str(text)])
    assert code == 1 and "not a supermask ticket" in out
    assert all(o.count("\n") <= 2 for o in [out])


def test_unknown_option_is_a_usage_error(tmp_path):
    shutil.copy(TINY, tmp_path / "t.smask")
    r = CliRunner().invoke(main, ["inspect", "--colour", str(tmp_path / "t.smask")])
    assert r.exit_code == 2 and "No such option" in r.output


def test_writing_into_a_missing_folder_is_a_clear_error(tmp_path):
    from supermask import ticket
    from supermask.atomic import atomic_write
    from supermask.errors import SupermaskError

    import pytest

    with pytest.raises(SupermaskError, match="does not exist"):
        atomic_write(tmp_path / "no" / "such" / "file.bin", b"x")
    with pytest.raises(SupermaskError, match="is a folder"):
        atomic_write(tmp_path, b"x")
    t = ticket.read_ticket(TINY)
    with pytest.raises(SupermaskError, match="does not exist"):
        ticket.write_ticket(tmp_path / "missing" / "t.smask", t.architecture, t.seed, t.init, dict(t.masks))
    assert list(tmp_path.iterdir()) == []


def _metadata_ticket(tmp_path):
    from supermask import models
    from supermask.rng import InitSpec
    from supermask.ticket import write_ticket

    arch = models.build("lenet-300-100", (1, 8, 8), [str(i) for i in range(10)], None)
    masks = {p.name: (np.arange(int(np.prod(p.shape))).reshape(p.shape) % 3 == 0)
             for p in arch.params() if p.kind == "weight"}
    path = tmp_path / "meta.smask"
    write_ticket(path, arch, 3, InitSpec(), masks, criterion="large_final_same_sign", keep=0.3,
                 metadata={"dataset": "digits", "accuracy": 0.876374, "init_variant": "signed-constant",
                           "test_examples": 364})
    return path


def test_inspect_aligns_every_key_value_line_and_shows_accuracy_in_percent(tmp_path):
    # keys longer than the built-in labels (init_variant) used to push their value one space
    # off; every "key value" line now starts its value in one computed column
    path = _metadata_ticket(tmp_path)
    r = CliRunner().invoke(main, ["inspect", "--verify", str(path)])
    assert r.exit_code == 0, r.output
    head = r.output.split("\n\n")[0].splitlines()
    keys = [line.split()[0] for line in head]
    assert keys[:7] == ["ticket", "model", "seed", "criterion", "weights", "vs", "bytes"]
    assert sorted(keys[7:-1]) == ["accuracy", "dataset", "init_variant", "test_examples"] and keys[-1] == "verified"
    column = len("test_examples") + 2
    for line in head:
        key = "vs float32" if line.startswith("vs float32") else line.split()[0]
        assert line[:column] == key.ljust(column) and line[column] != " ", line
    assert "accuracy       87.64 %" in r.output and "0.876374" not in r.output
    # JSON keeps the fraction
    s = json.loads(CliRunner().invoke(main, ["inspect", "--json", str(path)]).output)
    assert s["metadata"]["accuracy"] == 0.876374


def test_format_summary_widths_follow_the_longest_key():
    from supermask import read_ticket
    from supermask.cli import format_summary

    s = read_ticket(TINY).summary()
    short = format_summary("t", s).splitlines()
    assert short[0].startswith("ticket      t") and short[2].startswith("seed        42")
    s["metadata"] = {"a_rather_long_key": "x", "dense_accuracy": 0.5}
    lines = format_summary("t", s).splitlines()
    assert lines[0].startswith("ticket" + " " * 13 + "t")
    assert "a_rather_long_key  x" in lines and "dense_accuracy     50.00 %" in lines
