"""`supermask export`, `eval` and `predict` through click's CliRunner: outputs, JSON fields,
and a one-line `Error:` with exit status 1 for every kind of bad input."""

from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import supermask.runtime as smr
from supermask import read_ticket
from supermask.cli import main

from deploy_helpers import FASHION_CLASSES, fashion_test, make_ticket
from helpers import needs_data
from test_runtime_inputs import encode_png, png_file

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
DIGITS = [str(i) for i in range(10)]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(r, *fragments):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), r.output
    for f in fragments:
        assert f in lines[-1], lines[-1]
    assert "Traceback" not in r.output


@pytest.fixture
def ticket(tmp_path):
    return make_ticket(tmp_path / "model.smask", density=0.2, seed=9)[0]


@pytest.fixture
def bad_tickets(tmp_path, ticket):
    junk = tmp_path / "junk.smask"
    junk.write_bytes(b"PK\x03\x04 a zip file, not a ticket" * 3)
    data = bytearray(ticket.read_bytes())
    data[100] ^= 0x01
    corrupt = tmp_path / "corrupt.smask"
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.smask"
    truncated.write_bytes(ticket.read_bytes()[:200])
    return {"junk": (junk, "not a supermask ticket"), "corrupt": (corrupt, "checksum mismatch"),
            "truncated": (truncated, "truncated"), "missing": (tmp_path / "nope.smask", "no such file")}


# --------------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_export(tmp_path, ticket, fmt):
    out = tmp_path / f"m-{fmt}.onnx"
    r = invoke("export", ticket, "-o", out, "--format", fmt, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == fmt and info["file_bytes"] == out.stat().st_size
    assert info["ticket_bytes"] == ticket.stat().st_size and info["ir_version"] == 8
    onnx.checker.check_model(onnx.load(str(out)))
    x = fashion_test()[0][:16]
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = s.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_array_equal(got, smr.load(ticket, device="cpu").logits(x))
    if fmt == "sparse":
        assert len(info["sparse_tensors"]) == 6 and info["dense_tensors"] == []


def test_export_out_option_and_its_old_name(tmp_path, ticket):
    # -o/--out as on every command that writes; --output still works, hidden from --help
    for flag in ("-o", "--out", "--output"):
        out = tmp_path / f"m{flag.strip('-')}.onnx"
        r = invoke("export", ticket, flag, out)
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 0
    assert invoke("export", ticket, "-o", tmp_path / "same.onnx", "--output", tmp_path / "same.onnx").exit_code == 0
    help_text = invoke("export", "--help").output
    assert "-o, --out" in help_text and "--output" not in help_text


def test_export_text_output(tmp_path, ticket):
    r = invoke("export", ticket, "-o", tmp_path / "m.onnx", "--format", "sparse")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"wrote {tmp_path / 'm.onnx'}:") and "6 sparse and 0 dense tensors," in r.stdout
    r = invoke("export", ticket, "-o", tmp_path / "d.onnx")
    assert r.exit_code == 0, r.output
    assert "0 sparse and 6 dense tensors," in r.stdout and "weight" not in r.stdout  # biases count too


@pytest.mark.parametrize("kind", ["junk", "corrupt", "truncated", "missing"])
def test_export_bad_tickets(tmp_path, bad_tickets, kind):
    path, msg = bad_tickets[kind]
    r = invoke("export", path, "-o", tmp_path / "x.onnx")
    assert_error(r, msg)
    assert not (tmp_path / "x.onnx").exists()


def test_export_usage_errors(tmp_path, ticket):
    assert invoke("export", ticket, "-o", tmp_path / "x.onnx", "--format", "zip").exit_code == 2
    r = invoke("export", ticket)
    assert r.exit_code == 2 and "Missing option '-o' / '--out'" in r.output  # -o is required
    r = invoke("export", ticket, "-o", tmp_path / "a.onnx", "--output", tmp_path / "b.onnx")
    assert r.exit_code == 2 and "given twice" in r.output
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    assert_error(invoke("export", ticket, "-o", tmp_path / "no" / "x.onnx"), "does not exist")
    before = ticket.read_bytes()
    assert_error(invoke("export", ticket, "-o", ticket), "is the ticket itself")
    assert ticket.read_bytes() == before


# -------------------------------------------------------------------------------- predict


def test_predict_help_says_how_inputs_are_shaped():
    text = " ".join(invoke("predict", "--help").output.split())
    for words in ("supermask inspect TICKET", "(N, *input_shape)", "input_shape", "image file", ".npy"):
        assert words in text, words


def test_predict_and_eval_take_threads(tmp_path, ticket, monkeypatch):
    import supermask.runtime.model as rtm

    seen = []
    real = rtm._session_options
    monkeypatch.setattr(rtm, "_session_options", lambda ort_, threads: seen.append(threads) or real(ort_, threads))
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    r = invoke("predict", "--threads", "1", "--device", "cpu", ticket, tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert seen == [1]
    assert invoke("predict", "--threads", "0", ticket, tmp_path / "x.npy").exit_code == 2
    dticket = make_ticket(tmp_path / "d.smask", input_shape=(1, 8, 8), classes=DIGITS)[0]
    r = invoke("eval", dticket, "--dataset", "digits", "--threads", "2", "--device", "cpu", "--limit", "10")
    assert r.exit_code == 0, r.output
    assert seen == [1, 2]


def test_predict_npy_and_images(tmp_path, ticket):
    images, _ = fashion_test()
    x = images[:5]
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "one.npy", x[0, 0].astype(np.float32))  # one example, no channel axis
    (tmp_path / "img.png").write_bytes(encode_png(x[1, 0]))
    (tmp_path / "img.pgm").write_bytes(b"P5 28 28 255\n" + x[2, 0].tobytes())
    want = smr.load(ticket, device="cpu").predict(x).tolist()
    r = invoke("predict", "--json", "--device", "cpu", "--top-k", "3", ticket, tmp_path / "batch.npy",
               tmp_path / "one.npy", tmp_path / "img.png", tmp_path / "img.pgm")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rows = out["predictions"]
    assert out["provider"] == "CPUExecutionProvider" and out["note"] is None
    assert [row["class"] for row in rows] == want + [want[0], want[1], want[2]]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4, 0, 0, 0]
    for row in rows:
        assert row["label"] == FASHION_CLASSES[row["class"]]
        assert 0 < row["probability"] <= 1 and len(row["top"]) == 3
        assert row["top"][0] == [row["label"], row["probability"]]
        assert row["top"][1][1] <= row["top"][0][1]


def test_predict_text_output(tmp_path, ticket):
    x = fashion_test()[0][:2]
    np.save(tmp_path / "b.npy", x)
    (tmp_path / "a.png").write_bytes(encode_png(x[0, 0]))
    want = smr.load(ticket, device="cpu").predict(x)
    r = invoke("predict", "--device", "cpu", ticket, tmp_path / "b.npy", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'b.npy'}[0]\t{FASHION_CLASSES[want[0]]}\t(class {want[0]}, p=")
    assert lines[1].startswith(f"{tmp_path / 'b.npy'}[1]\t{FASHION_CLASSES[want[1]]}")
    assert lines[2].startswith(f"{tmp_path / 'a.png'}\t{FASHION_CLASSES[want[0]]}")


def test_predict_bad_inputs(tmp_path, ticket):
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 28, 28), np.uint8))
    # the error names the shape the ticket expects, for a batch and for one example
    assert_error(invoke("predict", ticket, tmp_path / "shape.npy"), "shape.npy", "input has shape (2, 3, 28, 28)",
                 "expects (N, 1, 28, 28)", "(1, 28, 28)")
    np.save(tmp_path / "small.npy", np.zeros((8, 8), np.float32))
    assert_error(invoke("predict", ticket, tmp_path / "small.npy"), "small.npy", "(8, 8)", "(N, 1, 28, 28)")
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    assert_error(invoke("predict", ticket, tmp_path / "str.npy"), "dtype")
    np.save(tmp_path / "obj.npy", np.array([None], dtype=object), allow_pickle=True)
    assert_error(invoke("predict", ticket, tmp_path / "obj.npy"), "obj.npy", "Python objects", "never loaded")
    assert_error(invoke("predict", ticket, tmp_path / "missing.npy"), "no such file")
    (tmp_path / "tiny.npy").write_bytes(b"\x93")  # the true reason, not "pickled data"
    assert_error(invoke("predict", ticket, tmp_path / "tiny.npy"), "tiny.npy: not a valid .npy file", "truncated")
    # a small file whose header declares a 292 GiB array: refused before anything is allocated
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (100_000_000, 1, 28, 28)})
        f.write(bytes(65))
    assert_error(invoke("predict", ticket, tmp_path / "huge.npy"), "huge.npy", "(100000000, 1, 28, 28)",
                 "313,600,000,000 bytes", "holds only")
    (tmp_path / "big.png").write_bytes(encode_png(np.zeros((32, 32), np.uint8)))
    assert_error(invoke("predict", ticket, tmp_path / "big.png"), "resize")
    (tmp_path / "a.txt").write_text("hello")
    assert_error(invoke("predict", ticket, tmp_path / "a.txt"), "unknown input type")
    nan = np.zeros((3, 1, 28, 28), np.float32)
    nan[1, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert_error(invoke("predict", ticket, tmp_path / "nan.npy"), "nan.npy", "1 non-finite value")
    np.save(tmp_path / "inf.npy", np.full((28, 28), np.inf))
    assert_error(invoke("predict", ticket, tmp_path / "inf.npy"), "inf.npy", "784 non-finite values")
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 28, 28), np.uint8))
    assert_error(invoke("predict", ticket, tmp_path / "empty.npy"), "empty.npy", "no examples")
    np.save(tmp_path / "empty2.npy", np.zeros((0, 28, 28), np.float32))
    assert_error(invoke("predict", "--json", ticket, tmp_path / "empty2.npy"), "empty2.npy", "no examples")
    # a file declaring a huge image is refused from its header, before it is decoded
    for side, words in ((9000, "9000x9000"), (30000, "far too large")):
        (tmp_path / "bomb.png").write_bytes(png_file(side, side, zlib.compress(bytes(100))))
        assert_error(invoke("predict", ticket, tmp_path / "bomb.png"), "bomb.png", words, "expects 28x28")
    assert invoke("predict", ticket).exit_code == 2  # no inputs: usage error


def test_predict_image_without_pillow(tmp_path, ticket, monkeypatch):
    import sys

    (tmp_path / "a.png").write_bytes(encode_png(np.zeros((28, 28), np.uint8)))
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` fails, as without the [images] extra
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    r = invoke("predict", ticket, tmp_path / "a.png")
    assert_error(r, "a.png: reading images needs Pillow", 'pip install "supermask[images]"')
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["junk", "corrupt", "truncated", "missing"])
def test_predict_bad_tickets(tmp_path, bad_tickets, kind):
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    path, msg = bad_tickets[kind]
    assert_error(invoke("predict", path, tmp_path / "x.npy"), msg)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider; the GPU tests cover it")
def test_device_cuda_without_cuda_fails_and_auto_is_quiet_on_a_cpu_build(tmp_path, ticket, monkeypatch):
    # the CPU build is what a [cpu] install chose: running on the CPU is no news there
    import supermask.runtime.model as rtm

    monkeypatch.setattr(rtm, "onnxruntime_distributions", lambda: ["onnxruntime"])
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    r = invoke("predict", "--device", "cuda", ticket, tmp_path / "x.npy")
    assert_error(r, "CUDA was requested")
    assert len(r.stderr.strip().splitlines()) == 1
    dticket = make_ticket(tmp_path / "d.smask", input_shape=(1, 8, 8), classes=DIGITS)[0]
    for args in (["predict", "--json", ticket, tmp_path / "x.npy"], ["predict", ticket, tmp_path / "x.npy"],
                 ["eval", dticket, "--dataset", "digits", "--limit", "5"]):  # auto
        r = invoke(*args)
        assert r.exit_code == 0, r.output
        assert "CUDA" not in r.stderr, r.stderr
    out = json.loads(invoke("predict", "--json", ticket, tmp_path / "x.npy").stdout)
    assert out["provider"] == "CPUExecutionProvider"
    assert "CUDA not available" in out["note"]  # the JSON still says why CUDA was not used


def test_auto_notes_the_fallback_when_the_gpu_build_cannot_use_cuda(tmp_path, ticket, monkeypatch):
    # onnxruntime-gpu on a machine where CUDA cannot start: the build lists the CUDA provider,
    # the session quietly falls back to the CPU. A CPU build given the CUDA provider does the same.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider"] + [p for p in real if p != "CUDAExecutionProvider"])
    if HAS_CUDA:
        pytest.skip("a real CUDA provider would start here")
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    r = invoke("predict", "--json", ticket, tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("note: the CUDA provider could not start")
    assert json.loads(r.stdout)["provider"] == "CPUExecutionProvider"


def test_auto_notes_a_gpu_build_without_the_cuda_provider(tmp_path, ticket, monkeypatch):
    # onnxruntime-gpu installed, yet the module in use has no CUDA provider (e.g. a CPU build
    # installed over it): the user meant to run on the GPU, so the fallback is worth a note
    import supermask.runtime.model as rtm

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(rtm, "onnxruntime_distributions", lambda: ["onnxruntime-gpu"])
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    r = invoke("predict", ticket, tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("note: CUDA not available")
    r = invoke("predict", "--device", "cpu", ticket, tmp_path / "x.npy")  # asked for the CPU: nothing to say
    assert r.exit_code == 0 and "CUDA" not in r.stderr


# ----------------------------------------------------------------------------------- eval


@needs_data("fashion-mnist")
def test_eval_fashion_mnist_matches_torch_accuracy(ticket):
    from deploy_helpers import torch_logits

    from supermask import read_ticket
    from helpers import SHARED_DATA

    r = invoke("eval", ticket, "--dataset", "fashion-mnist", "--data-dir", SHARED_DATA, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    images, labels = fashion_test()
    want = int((torch_logits(read_ticket(ticket), images).argmax(axis=1) == labels).sum())
    assert out["num_examples"] == 10_000 and out["correct"] == want
    assert out["accuracy"] == want / 10_000
    assert out["provider"] == "CPUExecutionProvider" and out["providers"] == ["CPUExecutionProvider"]
    assert out["dataset"] == "fashion-mnist" and out["split"] == "test" and out["note"] is None
    assert out["seconds"] > 0 and out["load_seconds"] > 0 and out["io_binding"] is False
    assert out["ticket_accuracy"] is None  # a hand-made ticket has no accuracy recorded by find


@needs_data("fashion-mnist")
def test_eval_text_output_and_limit(ticket):
    from helpers import SHARED_DATA

    r = invoke("eval", ticket, "--dataset", "fashion-mnist", "--data-dir", SHARED_DATA, "--device", "cpu",
               "--limit", "500", "--batch-size", "64")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("accuracy ") and "/ 500)  fashion-mnist test" in lines[0]
    assert lines[1] == "provider    CPUExecutionProvider"
    assert "batch 64" in lines[2] and "ticket -> session" in lines[2]


@pytest.mark.parametrize("model", ["lenet-300-100", "conv2"])
@pytest.mark.parametrize("variant", ["original", "signed-constant"])
def test_eval_accuracy_equals_what_find_reported(tmp_path, model, variant):
    # find (torch) measures each mask's test accuracy; pack records it in the ticket; eval
    # (onnxruntime, no torch) must get the same number on the same test set.
    pytest.importorskip("torch")
    from supermask.train.config import FindConfig
    from supermask.train.find import find
    from supermask.train.pack import pack

    cfg = FindConfig(model=model, dataset="digits", epochs=3, lr=1e-3, criteria=("large_final_same_sign",),
                     keeps=(0.3,))
    res = find(cfg, tmp_path / "run", progress=False, device="cpu")
    row = next(r for r in res["rows"] if r["init"] == variant and r["criterion"] == "large_final_same_sign")
    pack(tmp_path / "run", tmp_path / "t.smask", criterion="large_final_same_sign", keep=0.3, init=variant)
    r = invoke("eval", tmp_path / "t.smask", "--dataset", "digits", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["num_examples"] == row["total"] == 364
    assert out["correct"] == row["correct"] and out["accuracy"] == row["accuracy"]
    assert out["ticket_accuracy"] == row["accuracy"] and out["ticket_dataset"] == "digits"
    assert read_ticket(tmp_path / "t.smask").version == 3  # the graph travels in the ticket
    assert row["accuracy"] > 0.3  # a real mask, not chance


def test_eval_errors(tmp_path, ticket, bad_tickets):
    from helpers import SHARED_DATA

    # the ticket takes 28x28 inputs; digits are 8x8
    assert_error(invoke("eval", ticket, "--dataset", "digits"), "digits", "(1, 8, 8)", "(1, 28, 28)")
    assert_error(invoke("eval", ticket, "--dataset", "fashion-mnist", "--data-dir", tmp_path / "empty"),
                 "not found")
    for path, msg in bad_tickets.values():
        assert_error(invoke("eval", path, "--dataset", "fashion-mnist", "--data-dir", SHARED_DATA), msg)
    assert invoke("eval", ticket).exit_code == 2  # --dataset is required
    assert invoke("eval", ticket, "--dataset", "digits", "--device", "tpu").exit_code == 2
    assert invoke("eval", ticket, "--dataset", "digits", "--batch-size", "0").exit_code == 2


def test_eval_dataset_and_split_are_choices(ticket):
    # like `find`: --dataset is a name or a path now (.npz file, image folder), so a data set that
    # does not exist is a one-line error (exit 1) naming the choices; a bad split is a usage error (exit 2)
    from supermask import datasets

    r = invoke("eval", ticket, "--dataset", "imagenet")
    assert_error(r, "unknown dataset 'imagenet'", ".npz file", "image folder")
    assert all(name in r.stderr for name in datasets.DATASETS)
    assert_error(invoke("eval", ticket, "--dataset", "no/such/folder"), "no/such/folder does not exist")
    r = invoke("eval", ticket, "--dataset", "digits", "--split", "dev")
    assert r.exit_code == 2 and "Invalid value for '--split'" in r.output and "'train', 'test'" in r.output
    help_text = invoke("eval", "--help").output
    assert "[train|test]" in help_text and "digits" in help_text


def test_device_choices_come_from_the_runtime():
    from supermask import cli_deploy

    for command in cli_deploy.COMMANDS:
        for p in command.params:
            if p.name == "device":
                assert tuple(p.type.choices) == smr.DEVICES


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider; the GPU tests cover it")
def test_eval_strict_cuda_without_cuda(ticket):
    r = invoke("eval", ticket, "--dataset", "digits", "--device", "cuda")
    assert_error(r, "CUDA was requested", "onnxruntime-gpu")
