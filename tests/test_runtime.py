"""supermask.runtime: loading, inputs, providers and the strict CUDA mode, evaluation, and
the torch-free guarantee (checked in a subprocess where `import torch` fails)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import supermask.runtime as smr
from supermask import read_ticket
from supermask.errors import InputError, RuntimeUnavailableError, SupermaskError, TicketFormatError

from deploy_helpers import FASHION_CLASSES, fashion_test, make_ticket, torch_logits
from helpers import FIXTURES, run_python

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def lenet(tmp_path):
    return make_ticket(tmp_path / "lenet.smask", density=0.3, seed=21)


def test_load_and_predict(lenet):
    path, t = lenet
    model = smr.load(path, device="cpu")
    assert model.provider == "CPUExecutionProvider" and model.providers == ["CPUExecutionProvider"]
    assert model.note is None
    assert model.classes == FASHION_CLASSES and model.input_shape == (1, 28, 28)
    images, _ = fashion_test()
    x = images[:32]
    logits = model.logits(x)
    assert logits.shape == (32, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(model.predict(x), logits.argmax(axis=1))
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
    assert np.abs(logits - torch_logits(t, x)).max() <= 1e-5


def test_input_forms_and_dtypes_give_the_same_logits(lenet):
    model = smr.load(lenet[0], device="cpu")
    x = fashion_test()[0][:4]
    want = model.logits(x)
    np.testing.assert_array_equal(model.logits(x.astype(np.float32)), want)
    np.testing.assert_array_equal(model.logits(x.astype(np.float64)), want)
    np.testing.assert_array_equal(model.logits(x.astype(np.int32)), want)
    np.testing.assert_array_equal(model.logits(x[:, 0]), want)  # (N, H, W): no channel axis
    np.testing.assert_array_equal(model.logits(x[1]), want[1:2])  # one example
    np.testing.assert_array_equal(model.logits(x[1, 0]), want[1:2])  # one (H, W) image
    np.testing.assert_array_equal(model.predict(list(x[:2].tolist())), want[:2].argmax(axis=1))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 28, 28), np.uint8), r"shape \(2, 3, 28, 28\); this model expects \(N, 1, 28, 28\)"),
    (np.zeros((2, 784), np.float32), "expects"),
    (np.zeros((28, 29), np.uint8), "expects"),
    (np.zeros((1, 1, 1, 28, 28), np.uint8), "expects"),
    (np.array(["a", "b"]), "dtype"),
    (np.zeros((1, 1, 28, 28), np.complex64), "dtype"),
    (np.zeros((1, 1, 28, 28), bool), "dtype"),
    (np.array([{"a": 1}], dtype=object), "dtype"),
    (np.zeros((0, 1, 28, 28), np.uint8), "no examples"),
    (np.zeros((0, 28, 28), np.float32), "no examples"),
    ([], "expects"),
    (np.full((2, 1, 28, 28), np.nan, np.float32), "1,568 non-finite values"),
    (np.where(np.arange(784).reshape(1, 28, 28) == 5, np.inf, 0.0), "1 non-finite value "),
    (np.full((28, 28), -np.inf, np.float16), "784 non-finite"),
    (np.full((1, 1, 28, 28), 1e300), "beyond the float32 range"),  # finite float64, inf as float32
])
def test_bad_inputs_raise_input_error(lenet, bad, match):
    model = smr.load(lenet[0], device="cpu")
    with pytest.raises(InputError, match=match):
        model.predict(bad)


def test_evaluate_matches_torch_accuracy_on_fashion_mnist(lenet):
    path, t = lenet
    images, labels = fashion_test()
    images, labels = images[:2000], labels[:2000]
    model = smr.load(path, device="cpu")
    r = model.evaluate(images, labels, batch_size=300)
    ref = (torch_logits(t, images).argmax(axis=1) == labels).mean()
    assert r.num_examples == 2000 and r.correct == round(ref * 2000)
    assert r.accuracy == pytest.approx(ref, abs=0)
    assert r.provider == "CPUExecutionProvider" and not r.io_binding and r.seconds > 0
    assert model.evaluate(images, labels, batch_size=7).correct == r.correct  # batching cannot matter
    bound = model.evaluate(images, labels, batch_size=256, io_binding=True)  # the CUDA code path, on the CPU
    assert bound.io_binding and bound.correct == r.correct
    d = r.to_dict()
    assert {"accuracy", "provider", "num_examples", "seconds", "examples_per_second"} <= set(d)


def test_evaluate_rejects_bad_labels(lenet):
    model = smr.load(lenet[0], device="cpu")
    x = np.zeros((4, 1, 28, 28), np.uint8)
    with pytest.raises(InputError, match="labels"):
        model.evaluate(x, np.zeros(3, np.int64))
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        model.evaluate(x, np.array([0, 1, 2, 10]))
    with pytest.raises(InputError, match="images have shape"):
        model.evaluate(np.zeros((4, 28, 28)), np.zeros(4, np.int64))
    with pytest.raises(InputError, match="batch size"):
        model.evaluate(x, np.zeros(4, np.int64), batch_size=0)
    with pytest.raises(InputError, match="no images"):
        model.evaluate(x[:0], np.zeros(0, np.int64))
    bad = x.astype(np.float32)
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(InputError, match="1 non-finite value"):
        model.evaluate(bad, np.zeros(4, np.int64), batch_size=2)


def test_to_batch_rejects_non_finite_and_empty_inputs():
    x = np.zeros((3, 1, 28, 28), np.float64)
    assert smr.to_batch(x, (1, 28, 28)).dtype == np.float32
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        smr.to_batch(x, (1, 28, 28))
    with pytest.raises(InputError, match="no examples"):
        smr.to_batch(np.zeros((0, 784), np.uint8), (784,))
    np.testing.assert_array_equal(smr.to_batch(np.full((1, 784), 255, np.uint64), (784,)), 255.0)


def test_load_accepts_a_ticket_object_and_the_committed_fixture():
    t = read_ticket(FIXTURES / "tiny-v1.smask")
    model = smr.load(t, device="cpu")
    x = np.zeros((2, *model.input_shape), np.float32)
    assert model.logits(x).shape == (2, t.architecture.num_classes)


def test_load_errors(tmp_path):
    with pytest.raises(SupermaskError, match="no such file"):
        smr.load(tmp_path / "missing.smask")
    (tmp_path / "junk.smask").write_bytes(b"this is not a ticket at all, just some bytes" * 4)
    with pytest.raises(TicketFormatError, match="not a supermask ticket"):
        smr.load(tmp_path / "junk.smask")
    path, _ = make_ticket(tmp_path / "m.smask")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "corrupt.smask").write_bytes(bytes(data))
    with pytest.raises(TicketFormatError, match="checksum"):
        smr.load(tmp_path / "corrupt.smask")
    with pytest.raises(SupermaskError, match="unknown device"):
        smr.load(path, device="tpu")


# ----------------------------------------------------------------------------- providers


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider; the GPU tests cover it")
def test_strict_cuda_without_cuda_is_a_clear_one_line_error(lenet):
    with pytest.raises(RuntimeUnavailableError) as e:
        smr.load(lenet[0], device="cuda")
    msg = str(e.value)
    assert "\n" not in msg and "CUDA was requested" in msg and "onnxruntime-gpu" in msg


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider; the GPU tests cover it")
def test_auto_without_cuda_runs_on_cpu_with_a_note(lenet):
    model = smr.load(lenet[0])
    assert model.device == "auto" and model.provider == "CPUExecutionProvider"
    assert "CUDA not available" in model.note


def test_silent_gpu_fallback_is_detected(lenet, monkeypatch):
    # onnxruntime-gpu on a machine where CUDA cannot start lists the CUDA provider but the
    # session quietly runs on the CPU. Simulate that listing on any build: a CPU build given
    # the CUDA provider also drops it silently.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider"] + [p for p in real if p != "CUDAExecutionProvider"])
    if HAS_CUDA:
        pytest.skip("a real CUDA provider would start here")
    model = smr.load(lenet[0], device="auto")
    assert model.provider == "CPUExecutionProvider"
    assert "CUDA provider could not start" in model.note
    with pytest.raises(RuntimeUnavailableError, match="CUDA was requested but the CUDA provider could not start"):
        smr.load(lenet[0], device="cuda")


def test_missing_onnxruntime_is_a_clear_error(lenet):
    code = (
        "import sys\n"
        "class _NoOrt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'onnxruntime' or name.startswith('onnxruntime.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, _NoOrt())\n"
        "import supermask.runtime as smr\n"
        "from supermask.errors import RuntimeUnavailableError\n"
        f"try:\n    smr.load({str(lenet[0])!r})\n"
        "except RuntimeUnavailableError as e:\n    print('ERR', e)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert "ERR onnxruntime is not installed" in r.stdout and "supermask[cpu]" in r.stdout


# ----------------------------------------------------------------------------- no torch


def test_runtime_works_where_torch_cannot_be_imported(tmp_path, lenet):
    path = lenet[0]
    x = fashion_test()[0][:8]
    np.save(tmp_path / "x.npy", x)
    want = smr.load(path, device="cpu").predict(x).tolist()
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "try:\n    import torch\n    print('torch importable'); sys.exit(3)\n"
        "except ImportError:\n    pass\n"
        "import supermask, supermask.runtime as smr, supermask.export as ex\n"
        "from click.testing import CliRunner\n"
        "from supermask.cli import main\n"
        f"m = smr.load({str(path)!r}, device='cpu')\n"
        f"pred = m.predict(np.load({str(tmp_path / 'x.npy')!r})).tolist()\n"
        f"acc = m.evaluate(np.load({str(tmp_path / 'x.npy')!r}), np.zeros(8, np.int64)).num_examples\n"
        f"ex.export_ticket({str(path)!r}, {str(tmp_path / 'm.onnx')!r}, 'sparse')\n"
        f"r = CliRunner().invoke(main, ['predict', '--json', '--device', 'cpu', {str(path)!r}, "
        f"{str(tmp_path / 'x.npy')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "cli = [row['class'] for row in json.loads(r.stdout)['predictions']]\n"
        "print(json.dumps({'pred': pred, 'cli': cli, 'n': acc,\n"
        "                  'torch_loaded': any(k == 'torch' or k.startswith('torch.') for k in sys.modules)}))\n"
    )
    r = run_python(code, block_torch=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"pred": want, "cli": want, "n": 8, "torch_loaded": False}
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_runtime_without_constriction_reads_entropy_coded_tickets(tmp_path):
    # constriction has no wheels for Linux on ARM; the runtime then decodes entropy-coded
    # masks with the pure-Python reference decoder, and must give the same model.
    path, t = make_ticket(tmp_path / "e.smask", density=0.1, seed=8)
    assert {e.codec for e in t.tensors if e.role == "masked"} == {"entropy"}
    x = fashion_test()[0][:16]
    np.save(tmp_path / "x.npy", x)
    want = smr.load(path, device="cpu").logits(x)
    np.save(tmp_path / "want.npy", want)
    code = (
        "import sys\n"
        "class _NoConstriction:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'constriction' or name.startswith('constriction.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, _NoConstriction())\n"
        "import numpy as np, supermask.runtime as smr\n"
        f"got = smr.load({str(path)!r}, device='cpu').logits(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}))\n"
        "assert 'constriction' not in sys.modules and 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    r = run_python(code, block_torch=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_both_onnxruntime_builds_installed_is_reported(monkeypatch, caplog):
    from supermask.runtime import model as rm

    monkeypatch.setattr(rm, "onnxruntime_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(rm, "_WARNED_BOTH", False)
    with caplog.at_level("WARNING", logger=rm.__name__):
        rm._ort()
    assert "both onnxruntime and onnxruntime-gpu are installed" in caplog.text


def test_only_one_onnxruntime_build_in_this_environment():
    from supermask.runtime import model as rm

    assert len(rm.onnxruntime_distributions()) == 1


def test_missing_test_data_is_reported_with_the_folder_looked_in(tmp_path):
    # The deployment tests read Fashion-MNIST from shared/data beside the clone; without it they
    # must say so and where they looked, not fail with a bare FileNotFoundError.
    from deploy_helpers import FASHION, MissingTestData, fashion_file

    missing = tmp_path / "shared" / "data" / "fashion-mnist"
    with pytest.raises(MissingTestData, match="folder is missing") as e:
        fashion_file("t10k-images-idx3-ubyte.gz", missing)
    assert str(missing / "t10k-images-idx3-ubyte.gz") in str(e.value)
    missing.mkdir(parents=True)
    with pytest.raises(MissingTestData, match="folder has no t10k-labels-idx1-ubyte.gz"):
        fashion_file("t10k-labels-idx1-ubyte.gz", missing)
    assert fashion_file("t10k-images-idx3-ubyte.gz") == FASHION / "t10k-images-idx3-ubyte.gz"
