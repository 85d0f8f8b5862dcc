"""Shared test helpers (importable as `helpers`: pyproject puts tests/ on the path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"

# A meta-path finder that makes `import torch` fail: used to prove the torch-free layers
# really are torch-free, in a subprocess.
BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


# The same, for `torch` and `onnx` both: what a device that only has numpy and onnxruntime sees.
BLOCK_TORCH_AND_ONNX = BLOCK_TORCH.replace("name == 'torch' or name.startswith('torch.')",
                                           "name.split('.')[0] in ('torch', 'onnx')")


def needs_data(name: str):
    """Mark a test that reads ``SHARED_DATA/<name>``: skipped with the reason where it is missing,
    unless SUPERMASK_REQUIRE_DATA=1 (set by .ci/run), when the test runs and fails on the
    missing files instead of being skipped silently."""
    import pytest

    missing = not (SHARED_DATA / name).is_dir()
    return pytest.mark.skipif(missing and os.environ.get("SUPERMASK_REQUIRE_DATA") != "1",
                              reason=f"{SHARED_DATA / name} not present (set SUPERMASK_REQUIRE_DATA=1 to fail instead)")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_python(code: str, cwd: Path | None = None, block_torch: bool = False):
    """Run ``code`` in a fresh interpreter of this environment; return CompletedProcess."""
    import subprocess

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-c", (BLOCK_TORCH if block_torch else "") + code],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=300,
    )
