"""Tickets built to hurt (issue: hostile input): a few hundred bytes that describe a
billion-weight layer, preprocessing that overflows float32, and logits that are not finite.
Each must end in a typed error (one "Error: ..." line from the CLI), never a MemoryError."""

from __future__ import annotations

import hashlib
import json
import resource
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from supermask import InitSpec, rng, ticket
from supermask.arch import Architecture, Layer, Preprocess
from supermask.errors import MemoryLimitError, NonFiniteError, SupermaskError, TicketFormatError

from helpers import FIXTURES, REPO

ZERO_MASK = struct.pack("<I", 1)  # entropy payload q = 1 and no words: all zeros, of any size


def wide_ticket(width: int, height: int, *, real_fingerprints: bool = False, version: int = 1) -> bytes:
    """A version-1 ticket of a (width -> height -> 2) network whose masks are 4-byte entropy
    payloads of zeros: a few hundred bytes whatever the size, written by hand (the writer
    would regenerate every weight)."""
    arch = Architecture(name="wide", input_shape=(1, width), layers=(
        Layer("flatten"), Layer("linear", "fc1", {"in": width, "out": height, "bias": False}), Layer("relu"),
        Layer("linear", "fc2", {"in": height, "out": 2, "bias": False})), classes=("a", "b"),
        preprocess=Preprocess(1.0, (0.0,), (1.0,)))
    init = InitSpec("kaiming_uniform")
    rows, payload = [], b""
    for p in arch.params():
        scale = init.scale(p.fan_in, p.fan_out)
        fp = (rng.stream_fingerprint(0, p.name, p.shape, "uniform", scale) if real_fingerprints
              else {"sha256": "0" * 16})
        rows.append({"name": p.name, "shape": list(p.shape), "role": "masked",
                     "init": {"distribution": "uniform", "scale": scale.hex()}, "fingerprint": fp,
                     "codec": "entropy", "offset": len(payload), "length": 4, "num_kept": 0})
        payload += ZERO_MASK
    header = {"architecture": arch.to_dict(), "seed": 0, "generator": {"name": rng.GENERATOR_NAME, "version": 1},
              "init": init.to_dict(), "criterion": None, "keep": None, "tensors": rows, "metadata": {}}
    raw = json.dumps(header).encode()
    body = ticket.MAGIC + struct.pack("<HHI", version, 0, len(raw)) + raw + payload
    return body + hashlib.sha256(body).digest()


def run_cli(args: list[str], address_space: int = 3 << 30) -> subprocess.CompletedProcess:
    """The CLI in a child process whose address space is capped (a small device)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = "import sys; from supermask.cli import main; sys.argv[0] = 'supermask'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=cap, timeout=300)


# ------------------------------------------------------------------------------- memory cap


def test_parse_size_units():
    assert ticket.parse_size("512MiB") == 512 << 20
    assert ticket.parse_size("2GiB") == ticket.parse_size("2G") == ticket.parse_size("2 gib") == 2 << 30
    assert ticket.parse_size("4GB") == 4 * 10**9
    assert ticket.parse_size("1.5KiB") == 1536
    assert ticket.parse_size("123456") == ticket.parse_size(123456) == 123456
    for bad in ("", "12x", "GiB", "-1", "0", "1iB", "2 GiBs"):
        with pytest.raises(SupermaskError):
            ticket.parse_size(bad)


def test_cap_default_environment_and_block(monkeypatch):
    monkeypatch.delenv(ticket.MEMORY_ENV, raising=False)
    assert ticket.resolve_max_memory() == ticket.DEFAULT_MAX_MEMORY == 4 << 30
    monkeypatch.setenv(ticket.MEMORY_ENV, "1GiB")
    assert ticket.resolve_max_memory() == 1 << 30
    with ticket.memory_cap("5MiB"):
        assert ticket.resolve_max_memory() == 5 << 20
        assert ticket.resolve_max_memory(7) == 7
    assert ticket.resolve_max_memory() == 1 << 30
    monkeypatch.setenv(ticket.MEMORY_ENV, "lots")
    with pytest.raises(SupermaskError, match=ticket.MEMORY_ENV):
        ticket.resolve_max_memory()


def test_a_small_ticket_for_a_huge_layer_is_refused_before_allocating():
    data = wide_ticket(8192, 8192)  # 67 million weights: 256 MiB of float32, in about 1 KB
    assert len(data) < 1200
    t = ticket.decode_ticket(data)
    tracemalloc.start()
    with pytest.raises(MemoryLimitError) as e:
        t.weights(max_memory="64MiB")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20
    msg = str(e.value)
    assert "256.1 MiB" in msg and "64.0 MiB" in msg and "--max-memory" in msg and ticket.MEMORY_ENV in msg
    with pytest.raises(MemoryLimitError, match="masks"):
        ticket.decode_ticket(data, max_memory="32MiB")  # the reader's own cap: 64 MiB of decoded masks


def test_load_counts_the_session_too():
    import supermask.runtime as smr

    t = ticket.decode_ticket(wide_ticket(2048, 2048))  # 16 MiB of weights
    with pytest.raises(MemoryLimitError, match="onnxruntime session"):
        smr.load(t, "cpu", max_memory="40MiB")  # enough to regenerate, not to run


def test_export_counts_the_onnx_model_too(tmp_path):
    pytest.importorskip("onnx")
    from supermask.export import export_ticket, ticket_model

    t = ticket.decode_ticket(wide_ticket(2048, 2048))  # 16 MiB of weights
    with ticket.memory_cap("40MiB"):  # enough to regenerate, not to build and write the model
        with pytest.raises(MemoryLimitError, match="ONNX model"):
            ticket_model(t)
        with pytest.raises(MemoryLimitError, match="exporting this ticket"):
            export_ticket(t, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_streaming_verify_holds_one_piece_at_a_time():
    data = wide_ticket(4096, 8192, real_fingerprints=True)  # 33.6 million weights, 128 MiB
    t = ticket.decode_ticket(data)
    tracemalloc.start()
    t.verify()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 48 << 20  # pieces of 16 MiB, not the 128 MiB tensor
    with pytest.raises(SupermaskError, match="do not match"):
        ticket.decode_ticket(wide_ticket(64, 64)).verify()


def test_verify_agrees_with_weights_on_the_fixtures():
    import dataclasses

    from supermask.errors import VerificationError

    for name in ("tiny-v1.smask", "tiny-v3.smask"):
        t = ticket.read_ticket(FIXTURES / name)
        t.verify()
        t.weights(verify=True)
        other = dataclasses.replace(t, seed=t.seed + 1)  # other weights, the same fingerprints
        with pytest.raises(VerificationError):
            other.verify()
        with pytest.raises(VerificationError):
            other.weights(verify=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS caps the address space on Linux only")
def test_billion_weight_ticket_under_a_3_gib_cap_gives_one_line_errors(tmp_path):
    path = tmp_path / "huge.smask"
    path.write_bytes(wide_ticket(32768, 32766))  # 1.07 billion weights in about 1 KB
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32768), np.float32))
    r = run_cli(["inspect", str(path)])
    assert r.returncode == 0 and "1,073,741,820" in r.stdout, r.stderr
    r = run_cli(["predict", str(path), str(x)])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("Error: loading this ticket would need about") and "4.0 GiB" in r.stderr
    r = run_cli(["predict", "--max-memory", "1GiB", str(path), str(x)])
    assert r.returncode == 1 and "cap of 1.0 GiB" in r.stderr and "Traceback" not in r.stderr
    # Verification streams: a billion weights checked in bounded memory (this ticket's
    # fingerprints are made up, so the check ends in a clean mismatch).
    r = run_cli(["inspect", "--verify", str(path)])
    assert r.returncode == 1 and "Traceback" not in r.stderr and "do not match" in r.stderr, r.stderr


def test_cli_max_memory_option(tmp_path):
    from click.testing import CliRunner

    from supermask.cli import main

    path = tmp_path / "w.smask"
    path.write_bytes(wide_ticket(1024, 1024))
    r = CliRunner().invoke(main, ["inspect", str(path), "--max-memory", "100KiB"])
    assert r.exit_code == 1 and "cap of 100.0 KiB" in r.output
    r = CliRunner().invoke(main, ["inspect", str(path), "--max-memory", "lots"])
    assert r.exit_code == 2 and "--max-memory" in r.output
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1024), np.float32))
    r = CliRunner().invoke(main, ["predict", str(path), str(x), "--max-memory", "1MiB"])
    assert r.exit_code == 1 and "cap of 1.0 MiB" in r.output
    r = CliRunner().invoke(main, ["predict", str(path), str(x), "--max-memory", "1GiB", "--json"])
    assert r.exit_code == 1 and "do not match" in r.output  # got past the cap, to the (made-up) fingerprints


# ------------------------------------------------------------------------------- float32 range


def _tiny(preprocess: Preprocess) -> bytes:
    from fixtures.make_fixtures import tiny_architecture, tiny_masks

    arch = tiny_architecture()
    arch = Architecture(arch.name, arch.input_shape, arch.layers, arch.classes, preprocess)
    return ticket.encode_ticket(arch, 42, InitSpec("kaiming_uniform"), tiny_masks())


@pytest.mark.parametrize("pre", [
    Preprocess(1e300, (0.5,), (0.25,)), Preprocess(1 / 255, (1e300,), (0.25,)), Preprocess(1 / 255, (0.5,), (1e300,)),
    Preprocess(1 / 255, (-3.5e38,), (0.25,)), Preprocess(1 / 255, (0.5,), (1e-300,)),
])
def test_preprocessing_outside_float32_is_refused_at_read_time(pre):
    with pytest.raises(TicketFormatError, match="preprocess .* float32"):
        ticket.decode_ticket(_tiny(pre))


def test_non_finite_logits_are_an_error():
    import supermask.runtime as smr

    # Every value is a finite float32, but (255 * 1e30 - 0) / 1e-30 is not.
    model = smr.load(ticket.decode_ticket(_tiny(Preprocess(1e30, (0.0,), (1e-30,)))), "cpu")
    x = np.full((2, 1, 4, 4), 255, np.uint8)
    for call in (model.logits, model.predict, model.predict_proba):
        with pytest.raises(NonFiniteError, match="NaN or infinite logits for 2 of 2 inputs"):
            call(x)
    with pytest.raises(NonFiniteError):
        model.evaluate(x, np.zeros(2, np.int64))
    assert np.isfinite(model.logits(np.zeros((1, 1, 4, 4), np.uint8))).all()  # 0 * 1e30 stays finite
