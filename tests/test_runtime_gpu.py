"""The CUDA path: onnxruntime-gpu with a CUDA device. Marked `gpu`; skipped (with the reason
shown by `pytest -ra`) where onnxruntime has no CUDA provider or cannot start it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import supermask.runtime as smr
from supermask.errors import RuntimeUnavailableError

from deploy_helpers import fashion_test, make_ticket, torch_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime has no CUDA provider (install onnxruntime-gpu on a CUDA machine)"),
]

# cuDNN/cuBLAS may use TF32 or other reduced-precision paths; the CPU path is the one held to 1e-5.
GPU_TOL = 2e-3


@pytest.fixture
def cuda_model(tmp_path):
    path, t = make_ticket(tmp_path / "c.smask", "conv4", (1, 28, 28), density=0.5, seed=2)
    try:
        model = smr.load(path, device="cuda")
    except RuntimeUnavailableError as e:
        pytest.skip(f"CUDA provider present but unusable here: {e}")
    return model, t


def test_strict_cuda_runs_on_the_cuda_provider(cuda_model):
    model, _ = cuda_model
    assert model.provider == "CUDAExecutionProvider" and model.note is None


def test_cuda_logits_match_torch(cuda_model):
    model, t = cuda_model
    x = fashion_test()[0][:64]
    assert np.abs(model.logits(x) - torch_logits(t, x)).max() <= GPU_TOL


def test_batched_evaluation_uses_io_binding_and_agrees_with_cpu(cuda_model, tmp_path):
    model, t = cuda_model
    images, labels = fashion_test()
    images, labels = images[:3000], labels[:3000]
    gpu = model.evaluate(images, labels, batch_size=512)
    cpu = smr.load(t, device="cpu").evaluate(images, labels, batch_size=512)
    assert gpu.io_binding and gpu.provider == "CUDAExecutionProvider"
    assert not cpu.io_binding
    # reduced-precision GPU kernels may flip a near-tie; allow a handful out of 3000
    assert abs(gpu.correct - cpu.correct) <= 3


def test_auto_picks_cuda(tmp_path):
    path, _ = make_ticket(tmp_path / "l.smask")
    model = smr.load(path)
    if model.note:
        pytest.skip(f"CUDA provider present but unusable here: {model.note}")
    assert model.provider == "CUDAExecutionProvider"
