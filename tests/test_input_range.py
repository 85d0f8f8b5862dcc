"""The training input range: `find` records the raw training inputs' min and max in the run,
`pack` puts them in the ticket's metadata (`input_min`, `input_max`), and the runtime warns,
without failing, when inputs lie far outside them (0-255 pixels given to a model trained on
values 0-16). Tickets without the range give no warning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from supermask import InitSpec, models, write_ticket
from supermask.cli import main
from supermask.runtime.inputs import InputRangeWarning, range_warning, training_range
from supermask.runtime.tasks import evaluate_dataset, predict_files

from deploy_helpers import random_masks

DIGITS = [str(i) for i in range(10)]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digits_ticket(path, metadata=None):
    """A lenet-300-100 ticket for 8x8 digits with random masks and the given metadata."""
    from supermask import datasets

    arch = models.build("lenet-300-100", (1, 8, 8), DIGITS, datasets.load("digits", "test").preprocess)
    write_ticket(path, arch, 3, InitSpec(), masks=random_masks(arch, 0.5), metadata=metadata)
    return path


@pytest.fixture
def ranged(tmp_path):
    return digits_ticket(tmp_path / "ranged.smask", {"input_min": 0, "input_max": 16})


def test_training_range_from_metadata():
    assert training_range({"input_min": 0, "input_max": 16}) == (0.0, 16.0)
    assert training_range({"input_min": -0.5, "input_max": 2.5}) == (-0.5, 2.5)
    for bad in ({}, {"input_min": 0}, {"input_min": "0", "input_max": 16}, {"input_min": True, "input_max": 16},
                {"input_min": 0, "input_max": float("inf")}, {"input_min": 5, "input_max": 1}):
        assert training_range(bad) is None, bad


def test_the_rule_far_outside_means_beyond_one_range_width():
    meta = {"input_min": 0, "input_max": 16}
    assert range_warning(np.array([-16.0, 32.0]), meta) is None  # within one width (16) either side
    assert range_warning(np.zeros((0, 64)), meta) is None
    msg = range_warning(np.array([0, 255], np.uint8), meta, "x.npy")
    assert msg.startswith("x.npy: values range from 0 to 255, far outside the range the model was trained "
                          "on (0 to 16)")
    assert range_warning(np.array([-16.5]), meta) is not None
    assert range_warning(np.array([32.5]), meta) is not None
    # a single training value: a width of 1
    assert range_warning(np.array([4.0, 6.0]), {"input_min": 5, "input_max": 5}) is None
    assert range_warning(np.array([6.5]), {"input_min": 5, "input_max": 5}) is not None
    assert range_warning(np.array([1e9]), {}) is None  # no recorded range: nothing to say


def test_predict_warns_for_inputs_far_outside_the_training_range(tmp_path, ranged):
    np.save(tmp_path / "pixels.npy", np.full((2, 8, 8), 255, np.uint8))
    np.save(tmp_path / "digits.npy", np.full((2, 8, 8), 16, np.uint8))
    with pytest.warns(InputRangeWarning, match="values range from 255 to 255"):
        r = predict_files(ranged, [tmp_path / "pixels.npy", tmp_path / "digits.npy"], device="cpu")
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith(f"{tmp_path / 'pixels.npy'}: ")
    assert len(r["predictions"]) == 4  # a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predict_files(ranged, [tmp_path / "digits.npy"], device="cpu")["warnings"] == []
        # a ticket without the range (made before it was recorded): no warning
        old = digits_ticket(tmp_path / "old.smask")
        assert predict_files(old, [tmp_path / "pixels.npy"], device="cpu")["warnings"] == []


def test_the_library_model_warns_too(ranged):
    from supermask import runtime as smr

    m = smr.load(ranged, device="cpu")
    with pytest.warns(InputRangeWarning, match="values range from 0 to 252"):
        m.predict(np.tile(np.arange(0, 256, 4, dtype=np.uint8).reshape(1, 8, 8), (3, 1, 1)))
    with pytest.warns(InputRangeWarning, match="images: values range from 200 to 200"):
        m.evaluate(np.full((2, 1, 8, 8), 200, np.uint8), np.zeros(2, np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.predict(np.full((2, 8, 8), 16, np.uint8))


def test_cli_predict_prints_the_warning_on_stderr(tmp_path, ranged):
    np.save(tmp_path / "pixels.npy", np.full((8, 8), 200, np.uint8))
    r = invoke("predict", "--device", "cpu", ranged, tmp_path / "pixels.npy")
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {tmp_path / 'pixels.npy'}: values range from 200 to "
                                                   "200, far outside the range the model was trained on (0 to 16)")
    assert "InputRangeWarning" not in r.stderr  # printed once, as a plain line
    assert r.stdout.startswith(str(tmp_path / "pixels.npy"))
    r = invoke("predict", "--json", "--device", "cpu", ranged, tmp_path / "pixels.npy")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["warnings"]) == 1
    np.save(tmp_path / "ok.npy", np.full((8, 8), 16, np.uint8))
    r = invoke("predict", "--device", "cpu", ranged, tmp_path / "ok.npy")
    assert r.exit_code == 0 and "warning" not in r.stderr


def test_eval_warns_for_a_data_set_far_outside_the_training_range(tmp_path):
    unit = digits_ticket(tmp_path / "unit.smask", {"input_min": 0.0, "input_max": 1.0})  # trained on 0..1
    r = invoke("eval", "--device", "cpu", unit, "--dataset", "digits")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip().splitlines() == [
        "warning: data set digits: values range from 0 to 16, far outside the range the model was trained on "
        "(0 to 1); its predictions are likely meaningless (is the input scaled like the training data?)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = digits_ticket(tmp_path / "ok.smask", {"input_min": 0, "input_max": 16})
        assert evaluate_dataset(ok, "digits", device="cpu")["warnings"] == []


def test_find_records_the_training_range_and_pack_puts_it_in_the_ticket(tmp_path):
    pytest.importorskip("torch")
    from supermask import read_ticket
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    cfg = FindConfig("lenet-300-100", "digits", iterations=30, criteria=("large_final_same_sign",), keeps=(0.3,))
    run = tmp_path / "run"
    find(cfg, run, device="cpu", progress=False)
    info = json.loads((run / "model.json").read_text())
    assert info["train_input_range"] == [0.0, 16.0]  # the raw digits training inputs, before preprocessing
    t = pack(run, tmp_path / "m.smask")
    assert (t.metadata["input_min"], t.metadata["input_max"]) == (0, 16)
    assert read_ticket(tmp_path / "m.smask").metadata["input_max"] == 16
    np.save(tmp_path / "pixels.npy", np.full((8, 8), 255, np.uint8))
    r = invoke("predict", "--device", "cpu", tmp_path / "m.smask", tmp_path / "pixels.npy")
    assert r.exit_code == 0 and r.stderr.startswith("warning: "), r.output
    # a run made before the range was recorded packs a ticket without it, which never warns
    del info["train_input_range"]
    (run / "model.json").write_text(json.dumps(info))
    t = pack(run, tmp_path / "old.smask")
    assert "input_min" not in t.metadata and "input_max" not in t.metadata
    r = invoke("predict", "--device", "cpu", tmp_path / "old.smask", tmp_path / "pixels.npy")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
