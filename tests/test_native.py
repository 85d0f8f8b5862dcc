"""The C99 ticket reader (runtime/c) against the Python reader: weights bit for bit (normal
inits within one float32 ulp), the tensor table, error exits, and a mutation fuzz run under
AddressSanitizer and UndefinedBehaviorSanitizer in which both readers must give the same
verdict.

The binaries are built with the system C compiler (`cc`, or $CC) into a temporary folder.
Without a compiler the tests are skipped, unless SUPERMASK_REQUIRE_CC=1, when they fail.
SUPERMASK_NATIVE_FUZZ=N sets the number of fuzz cases (default: as many as the Python reader
gives verdicts for in about 20 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, REPO
from supermask import Architecture, InitSpec, Layer, Preprocess, rng, ticket, ticket3

SRC = REPO / "runtime" / "c"
SOURCES = ["smask.c", "smask_json.c", "smask_rng.c", "smask_inflate.c", "smask_onnx.c", "smask_cli.c"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
SAN = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
SCHEMES = list(rng.SCHEMES)
EXACT_SCHEMES = [s for s in SCHEMES if InitSpec(s).exact]


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _build(out_dir: Path, name: str, flags: list[str]) -> Path:
    cc = _compiler()
    if cc is None:
        if os.environ.get("SUPERMASK_REQUIRE_CC") == "1":
            pytest.fail("no C compiler (cc or $CC) found and SUPERMASK_REQUIRE_CC=1")
        pytest.skip("no C compiler (cc or $CC) found; set SUPERMASK_REQUIRE_CC=1 to fail instead")
    exe = out_dir / name
    cmd = [cc, *WARN, *flags, "-o", str(exe), *[str(SRC / s) for s in SOURCES], "-lm"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"build failed: {' '.join(cmd)}\n{p.stderr}"
    return exe


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smask-c")


@pytest.fixture(scope="module")
def smask_c(build_dir) -> Path:
    return _build(build_dir, "smask-c", ["-O2"])


@pytest.fixture(scope="module")
def smask_c_no128(build_dir) -> Path:
    return _build(build_dir, "smask-c-no128", ["-O2", "-DSMASK_NO_INT128"])


@pytest.fixture(scope="module")
def smask_c_san(build_dir) -> Path:
    return _build(build_dir, "smask-c-san", SAN)


def run(exe: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert p.returncode == 0, f"{exe.name} {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p


def c_digest(exe: Path, path: Path) -> dict[str, str]:
    out = run(exe, "digest", str(path)).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def c_weights(exe: Path, path: Path, tmp: Path) -> np.ndarray:
    out = tmp / (path.name + ".bin")
    run(exe, "weights", str(path), str(out))
    return np.fromfile(out, dtype="<f4")


def py_weights(data: bytes) -> dict[str, np.ndarray]:
    return ticket.decode_ticket(data).weights(verify=True)


def sha(w: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(w, dtype="<f4").tobytes()).hexdigest()


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def ordered(x):
        i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(a) - ordered(b))


# ------------------------------------------------------------------------------- tickets


def small_arch() -> Architecture:
    """A conv net with every layer type (fans of convolutions differ from linear ones)."""
    return Architecture(
        name="native-test",
        input_shape=(2, 9, 9),
        layers=(
            Layer("conv2d", "conv1", {"in": 2, "out": 5, "kernel": 3, "padding": 1, "stride": 1, "bias": True}),
            Layer("relu"),
            Layer("maxpool2d", None, {"kernel": 2, "stride": 2}),
            Layer("conv2d", "conv2", {"in": 5, "out": 4, "kernel": 2, "padding": 0, "stride": 2, "bias": False}),
            Layer("flatten"),
            Layer("linear", "fc1", {"in": 16, "out": 33, "bias": True}),
            Layer("relu"),
            Layer("linear", "fc2", {"in": 33, "out": 7, "bias": False}),
        ),
        classes=tuple(f"c{i}" for i in range(7)),
        preprocess=Preprocess(1 / 255, (0.1, 0.2), (0.5, 0.25)),
    )


def make_v12(scheme: str, codec: str, version: int, seed: int) -> bytes:
    arch = small_arch()
    g = np.random.default_rng(seed)
    weights = [p for p in arch.params() if p.kind == "weight"]
    masks = {p.name: g.random(p.shape) < 0.3 for p in weights[:-1]}  # the last one is regenerated
    masks[weights[0].name][...] = g.random(weights[0].shape) < 0.02  # sparse: entropy pays off
    multipliers = {weights[0].name: 2.5, weights[-1].name: 0.75} if version == 2 else None
    data = ticket.encode_ticket(arch, seed, InitSpec(scheme), masks, codec=codec, criterion="test", keep=0.3,
                                metadata={"note": "native test", "n": 3, "x": 1.5, "ok": True, "none": None},
                                multipliers=multipliers)
    assert struct.unpack_from("<H", data, 8)[0] == version
    return data


def make_v3(scheme: str, codec: str, seed: int) -> bytes:
    base = (FIXTURES / "tiny-v3.smask").read_bytes()
    t = ticket.decode_ticket(base)
    section_len = struct.unpack_from("<I", base, 12)[0]
    raw = ticket3.inflate(base[16:16 + section_len], 16 << 20)
    graph = raw[4 + struct.unpack_from("<I", raw, 0)[0]:]
    g = np.random.default_rng(seed)
    roles = {e.name: e.role for e in t.tensors}
    masks = {n: g.random(e.shape) < 0.4 for n, e in ((e.name, e) for e in t.tensors) if roles[n] == "masked"}
    return ticket3.encode_v3(graph, seed=seed, init=InitSpec(scheme), roles=roles, classes=t.classes, masks=masks,
                             stored=dict(t.stored), multipliers={"conv.weight": 3.0, "out.weight": 0.5}, codec=codec,
                             criterion="test", keep=0.5, metadata={"note": "native v3"})


def check_same_weights(exe: Path, data: bytes, tmp: Path, name: str, normal: bool) -> None:
    path = tmp / name
    path.write_bytes(data)
    ref = py_weights(data)
    if not normal:
        assert c_digest(exe, path) == {k: sha(v) for k, v in ref.items()}
        return
    flat = np.concatenate([v.reshape(-1) for v in ref.values()])
    got = c_weights(exe, path, tmp)
    assert got.shape == flat.shape
    assert ulps(got, flat).max() <= 1
    assert (np.signbit(got) == np.signbit(flat)).all()
    assert ((got == 0) == (flat == 0)).all()  # the masks are exact whatever the math library


# ------------------------------------------------------------------------------- tests


def test_selftest_known_answers(smask_c, smask_c_no128):
    assert "selftest ok" in run(smask_c, "selftest").stdout
    assert "selftest ok" in run(smask_c_no128, "selftest").stdout


@pytest.mark.parametrize("name", ["tiny-v1", "tiny-v3"])
def test_committed_fixtures(smask_c, smask_c_no128, name):
    path = FIXTURES / f"{name}.smask"
    expected = json.loads((FIXTURES / f"{name}.json").read_text())["weights_sha256"]
    assert c_digest(smask_c, path) == expected
    assert c_digest(smask_c_no128, path) == expected
    assert {k: sha(v) for k, v in py_weights(path.read_bytes()).items()} == expected


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("codec", ["bitpack", "entropy"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_v1_v2_every_scheme_and_codec(smask_c, tmp_path, scheme, codec, version):
    data = make_v12(scheme, codec, version, seed=11 + version)
    check_same_weights(smask_c, data, tmp_path, f"{scheme}-{codec}-{version}.smask",
                       normal=not InitSpec(scheme).exact)


@pytest.mark.parametrize("codec", ["bitpack", "entropy"])
@pytest.mark.parametrize("scheme", EXACT_SCHEMES)
def test_v3_every_exact_scheme_and_codec(smask_c, smask_c_no128, tmp_path, scheme, codec):
    data = make_v3(scheme, codec, seed=2**64 - 5)
    check_same_weights(smask_c, data, tmp_path, f"{scheme}-{codec}-v3.smask", normal=False)
    assert c_digest(smask_c_no128, tmp_path / f"{scheme}-{codec}-v3.smask") == c_digest(
        smask_c, tmp_path / f"{scheme}-{codec}-v3.smask")


def test_golden_init_vectors(smask_c, smask_c_no128, tmp_path):
    """Every golden_init.json entry (all schemes, four seeds, two tensors) regenerated by the C
    reader from a ticket whose tensors are all `regenerated`."""
    golden = json.loads((FIXTURES / "golden_init.json").read_text())
    archs = {
        "fc1.weight": Architecture("g-fc", (784,), (Layer("linear", "fc1", {"in": 784, "out": 300, "bias": False}),),
                                   tuple(str(i) for i in range(300)), Preprocess(1.0, (0.0,), (1.0,))),
        "conv1.weight": Architecture("g-conv", (3, 3, 3),
                                     (Layer("conv2d", "conv1", {"in": 3, "out": 64, "kernel": 3, "padding": 0, "stride": 1, "bias": False}),
                                      Layer("flatten")),
                                     tuple(str(i) for i in range(64)), Preprocess(1.0, (0.0,) * 3, (1.0,) * 3)),
    }
    checked = 0
    for key, entry in golden.items():
        scheme, seed, name = key.split("/")
        path = tmp_path / f"{scheme}-{seed}-{name}.smask"
        path.write_bytes(ticket.encode_ticket(archs[name], int(seed), InitSpec(scheme), {}))
        first = np.array([float.fromhex(v) for v in entry["first"]], dtype=np.float32)
        if InitSpec(scheme).exact:
            assert c_digest(smask_c, path)[name] == entry["sha256"], key
            assert c_digest(smask_c_no128, path)[name] == entry["sha256"], key
        else:
            got = c_weights(smask_c, path, tmp_path)
            ref = rng.generate(int(seed), name, archs[name].param(name).shape, "normal",
                               InitSpec(scheme).scale(archs[name].param(name).fan_in, archs[name].param(name).fan_out))
            assert ulps(got[:16], first).max() <= 1, key
            assert ulps(got, ref.reshape(-1)).max() <= 1, key
        checked += 1
    assert checked == len(golden) == 48


def test_committed_result_tickets(smask_c):
    """Every ticket committed under docs/ reads the same in C and Python."""
    listed = subprocess.run(["git", "ls-files", "*.smask"], cwd=REPO, capture_output=True, text=True).stdout.split()
    found = [REPO / p for p in listed if p.startswith("docs/")]
    if not found:
        pytest.skip("no .smask tickets are committed under docs/")
    for path in found:
        data = path.read_bytes()
        t = ticket.decode_ticket(data)
        if t.init.exact:
            assert c_digest(smask_c, path) == {k: sha(v) for k, v in t.weights().items()}, path


def test_info_lists_the_tensor_table(smask_c, tmp_path):
    for name, data in (("v1", (FIXTURES / "tiny-v1.smask").read_bytes()), ("v3", (FIXTURES / "tiny-v3.smask").read_bytes()),
                       ("v2", make_v12("glorot_uniform", "entropy", 2, 5))):
        path = tmp_path / f"{name}.smask"
        path.write_bytes(data)
        t = ticket.decode_ticket(data)
        lines = run(smask_c, "info", str(path)).stdout.splitlines()
        assert lines[0] == f"version {t.version}"
        assert lines[1] == f"seed {t.seed}"
        assert lines[2] == f"tensors {len(t.tensors)}"
        for line, e in zip(lines[3:], t.tensors, strict=True):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            assert line.split()[0] == e.name
            assert fields["role"] == e.role
            assert fields["shape"] == ("x".join(map(str, e.shape)) or "scalar")
            assert int(fields["size"]) == e.size
            kept = e.num_kept if e.role == "masked" else (e.size if e.role == "regenerated" else 0)
            assert int(fields["kept"]) == kept
            if e.role == "masked":
                assert fields["codec"] == e.codec and int(fields["bytes"]) == e.length
            if e.role in ("masked", "regenerated"):
                assert float.fromhex(fields["scale"]) == e.scale
                assert float.fromhex(fields.get("multiplier", "0x1p+0")) == e.multiplier


def test_errors_exit_non_zero_with_a_message(smask_c, tmp_path):
    good = (FIXTURES / "tiny-v1.smask").read_bytes()
    cases = {
        "truncated": (good[:100], "truncated"),
        "empty": (b"", "not a supermask ticket"),
        "flipped": (good[:50] + bytes([good[50] ^ 4]) + good[51:], "checksum"),
        "version": (good[:8] + struct.pack("<H", 9) + good[10:], "version 9"),
    }
    for name, (data, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        p = run(smask_c, "digest", str(path), check=False)
        assert p.returncode == 1, name
        assert needle in p.stderr, (name, p.stderr)
        assert p.stdout == ""
    p = run(smask_c, "info", str(tmp_path / "missing.smask"), check=False)
    assert p.returncode == 2 and "cannot read" in p.stderr
    p = run(smask_c, "frobnicate", check=False)
    assert p.returncode == 2


def test_every_truncation_and_bit_flip_of_the_fixtures_is_rejected(smask_c, tmp_path):
    paths = []
    for name in ("tiny-v1", "tiny-v3"):
        data = (FIXTURES / f"{name}.smask").read_bytes()
        for n in range(len(data)):
            p = tmp_path / f"{name}-cut{n}"
            p.write_bytes(data[:n])
            paths.append(p)
        r = random.Random(7)
        for k in range(200):
            i = r.randrange(8 * len(data))
            p = tmp_path / f"{name}-flip{k}"
            p.write_bytes(data[:i // 8] + bytes([data[i // 8] ^ (1 << (i % 8))]) + data[i // 8 + 1:])
            paths.append(p)
    verdicts = check_many(smask_c, paths)
    assert len(verdicts) == len(paths)
    assert all(v.startswith("reject") for v in verdicts.values())


# ------------------------------------------------------------------------------- fuzz


def cap_options() -> list[str]:
    """The Python reader's memory cap (SUPERMASK_MAX_MEMORY or 4 GiB), for the C reader."""
    return ["--max-memory", str(ticket.resolve_max_memory())]


def check_many(exe: Path, paths: list[Path], *options: str) -> dict[str, str]:
    """Verdict line per file from one `smask-c check` process per batch."""
    out: dict[str, str] = {}
    for a in range(0, len(paths), 200):
        batch = paths[a:a + 200]
        p = run(exe, *cap_options(), "check", *options, *map(str, batch), check=False)
        assert p.returncode in (0, 2), f"smask-c check crashed (exit {p.returncode}):\n{p.stderr[-4000:]}"
        assert "runtime error" not in p.stderr and "Sanitizer" not in p.stderr, p.stderr[-4000:]
        for line in p.stdout.splitlines():
            verdict, rest = line.split(" ", 1)
            path = rest.split(": ", 1)[0].split(" ", 1)[-1] if verdict == "reject" else rest
            out[path] = line
    return out


def fuzz_cases(budget_s: float, max_cases: int | None):
    """Mutated tickets (bit flips, truncations, splices, header and meaning mutations) with
    the Python reader's verdict, until the budget or the count runs out."""
    import fuzzlib

    r = random.Random(20261203)
    samples = fuzzlib.meaning_samples()
    families = ("header", "splice", "flips", "resigned-flips", "truncate-resigned", "meaning")
    start, i = time.perf_counter(), 0
    while (max_cases is None and time.perf_counter() - start < budget_s) or (max_cases is not None and i < max_cases):
        data = samples[i % len(samples)]
        family = families[i % len(families)]
        if family == "header":
            m = fuzzlib.mutate_header(data, r) if struct.unpack_from("<H", data, 8)[0] != 3 else fuzzlib.flip_bits(data, r, 3)
        elif family == "splice":
            m = fuzzlib.splice(data, r.choice(samples), r)
        elif family == "flips":
            m = fuzzlib.flip_bits(data, r, r.randint(1, 16))
        elif family == "resigned-flips":
            m = fuzzlib.resign(fuzzlib.flip_bits(data[:-32], r, r.randint(1, 4)))
        elif family == "truncate-resigned":
            m = fuzzlib.resign(data[: r.randrange(len(data) - 32)])
        else:
            try:
                m = fuzzlib.mutate_meaning(data, r)
            except Exception:  # a mutation the helper cannot build (e.g. without onnx): skip it
                i += 1
                continue
        yield family, m, fuzzlib.outcome(m)
        i += 1


def test_fuzz_same_verdicts_under_sanitizers(smask_c_san, tmp_path):
    env_cases = os.environ.get("SUPERMASK_NATIVE_FUZZ")
    cases = list(fuzz_cases(budget_s=20.0, max_cases=int(env_cases) if env_cases else None))
    paths = []
    for k, (family, data, _) in enumerate(cases):
        p = tmp_path / f"case{k:06d}-{family}"
        p.write_bytes(data)
        paths.append(p)
    verdicts = check_many(smask_c_san, paths, "--run")  # small v1/v2 networks also run once
    assert len(verdicts) == len(paths)
    c_accepts_py_rejects, py_accepts_c_rejects = [], []
    for p, (family, data, outcome) in zip(paths, cases):
        c_ok = verdicts[str(p)].startswith("ok ")
        if c_ok and outcome != "ok":
            c_accepts_py_rejects.append((p.name, outcome))
        if outcome == "ok" and not c_ok:
            py_accepts_c_rejects.append((p.name, verdicts[str(p)]))
    summary = {"cases": len(cases), "python_ok": sum(o == "ok" for _, _, o in cases),
               "c_ok": sum(v.startswith("ok ") for v in verdicts.values())}
    print(f"native fuzz: {summary}")
    assert summary["cases"] >= 100
    assert not c_accepts_py_rejects, c_accepts_py_rejects[:10]
    assert not py_accepts_c_rejects, py_accepts_c_rejects[:10]


# ------------------------------------------------------------------------------- edge cases

V1_HEADER_EDITS = [
    ('"seed":42', '"seed":42.0'), ('"seed":42', '"seed":-0'), ('"seed":42', '"seed":18446744073709551615'),
    ('"seed":42', '"seed":18446744073709551616'), ('"version":1}', '"version":true}'), ('"version":1}', '"version":1.0}'),
    ('"version":1}', '"version":10e-1}'), ('"version":1}', '"version":2}'),
    ('"shape":[12,16]', '"shape":[12.0,16]'), ('"shape":[12,16]', '"shape":[1.2e1,16]'), ('"shape":[12,16]', '"shape":[true,16]'),
    ('{"type":"relu"}', '{"type":"relu","name":null}', ), ('{"type":"relu"}', '{"type":"relu","name":"x"}'),
    ('"bias":true,"in":16', '"bias":null,"in":16'), ('"bias":true,"in":16', '"in":16'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":null'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":1e400}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":' + '9'*4300 + '}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":' + '9'*4301 + '}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":-1e-400}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"\\ud800"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"\\ud83d\\ude00","\\u0061":1}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"x","\\u0061":1}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"' + 'é'*64 + '":1}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"' + 'é'*65 + '":1}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"' + '😀'*1024 + '"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"' + '😀'*1025 + '"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"\\u0000"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"\x7f"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":"\x1f"}'),
    ('"metadata":{"note":"format fixture, version 1"}', '"metadata":{"a":[]}'),
    ('"keep":0.3', '"keep":1'), ('"keep":0.3', '"keep":true'), ('"keep":0.3', '"keep":0'), ('"keep":0.3', '"keep":1.0000000000000001'),
    ('"keep":0.3', '"keep":1e-400'), ('"keep":0.3', '"keep":NaN'), ('"keep":0.3', '"keep":Infinity'),
    ('"criterion":"large_final_same_sign"', '"criterion":""'), ('"criterion":"large_final_same_sign"', '"criterion":null'),
    ('"gain_sq":2.0', '"gain_sq":2'), ('"gain_sq":2.0', '"gain_sq":true'), ('"gain_sq":2.0', '"gain_sq":"2"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":" 0x1.3988e2p-1 "'), ('"scale":"0x1.3988e20000000p-1"', '"scale":"1.3988e2p-1"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":"0X1.3988E2P-1"'), ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x9.cc471p-4"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x1.3988e2000000000000000000000000000000000000000000000001p-1"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":"+0x1.3988e2p-1"'), ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x1.3988e2p-1\\n"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x1.3988e2p-1\\u0000"'), ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x0.9cc471p+0"'),
    ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x.9cc471p0"'), ('"scale":"0x1.3988e20000000p-1"', '"scale":"0x1.3988e2p-1p"'),
    ('"sha256":"54168a4bc4b54b02"', '"sha256":"54168A4BC4B54B02"'), ('"sha256":"54168a4bc4b54b02"', '"sha256":"54168a4bc4b54b0é"'),
    ('"name":"tiny-mlp"', '"name":"' + 'x'*128 + '"'), ('"name":"tiny-mlp"', '"name":"' + 'x'*129 + '"'),
    ('"name":"tiny-mlp"', '"name":""'), ('"classes":["zero","one","two"]', '"classes":["zero","one",""]'),
    ('"name":"fc2"', '"name":"fc1"'), ('"name":"fc2"', '"name":"2fc"'), ('"in":16', '"in":16.0'),
    ('"std":[0.25]', '"std":[1e-46]'), ('"std":[0.25]', '"std":[1e-45]'), ('"std":[0.25]', '"std":[-0.0]'), ('"scale":0.00392156862745098', '"scale":3.5e38'),
    ('"scale":0.00392156862745098', '"scale":3.4028235e38'), ('"scale":0.00392156862745098', '"scale":3.40282356779733661637539395458142568448e38'),
    ('"mean":[0.5]', '"mean":[true]'), ('"input_shape":[1,4,4]', '"input_shape":[1,4,4.0]'),
    ('{"architecture"', ' \n{"architecture"'), ('{"architecture"', '\ufeff{"architecture"'),
    ('"num_kept":21', '"num_kept":21.0'), ('"offset":0', '"offset":-0'), ('"length":20', '"length":20.0'),
    ('"codec":"bitpack"', '"codec":"Bitpack"'), ('"role":"zero","shape":[12]', '"role":"zero","shape":[12],"multiplier":"0x1p1"'),

]
V2_MULTIPLIERS = ['0x1.4p+1', '0x1p+0', '0x1.000001p+0', '0x1p-149', '0x1p-150', '0x1.fffffep+127', '0x1.ffffffp+127', ' 0x1.8p1', '0x1.8p1 ', '0x' + '0'*40 + '1p0', 'inf', '-0x1p1', '0x1.8P1', '3']


def same_verdicts(exe: Path, tmp: Path, cases: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    """{case: (python outcome, C verdict line)}; asserts that both accept or both reject."""
    import fuzzlib

    paths = {}
    for k, (name, data) in enumerate(cases.items()):
        p = tmp / f"edge{k:04d}"
        p.write_bytes(data)
        paths[str(p)] = (name, fuzzlib.outcome(data))
    verdicts = check_many(exe, [Path(p) for p in paths])
    out, mismatches = {}, []
    for p, (name, py) in paths.items():
        line = verdicts[p]
        out[name] = (py, line)
        if line.startswith("ok ") != (py == "ok"):
            mismatches.append((name, py, line))
    assert not mismatches, mismatches
    return out


def test_header_edge_cases_same_verdict(smask_c, tmp_path):
    """JSON and field corner cases (escapes, surrogates, big integers, floats where integers
    are expected, hex-float spellings, float32 limits) get the Python reader's verdict."""
    import fuzzlib

    base = (FIXTURES / "tiny-v1.smask").read_bytes()
    hlen = struct.unpack_from("<I", base, 12)[0]
    text, payload = base[16:16 + hlen].decode(), base[16 + hlen:-32]

    def make(t: str, version: int = 1) -> bytes:
        raw = t.encode("utf-8", "surrogatepass")
        return fuzzlib.resign(ticket.MAGIC + struct.pack("<HHI", version, 0, len(raw)) + raw + payload)

    cases = {}
    for old, new in V1_HEADER_EDITS:
        assert old in text, old
        cases[f"{old} -> {new[:60]}"] = make(text.replace(old, new, 1))
    cases["trailing whitespace"] = make(text + " \t\r\n")
    cases["extra data"] = make(text + " 1")
    cases["version 2 without a multiplier"] = make(text, 2)
    for m in V2_MULTIPLIERS:
        t = text.replace('"name":"fc2.weight","role":"regenerated"',
                         '"multiplier":"%s","name":"fc2.weight","role":"regenerated"' % m)
        cases[f"multiplier {m!r}"] = make(t, 2)
    out = same_verdicts(smask_c, tmp_path, cases)
    accepted = sum(py == "ok" for py, _ in out.values())
    assert 10 < accepted < len(out) - 10  # both kinds of verdict are exercised


def test_graph_edge_cases_same_verdict(smask_c, tmp_path):
    """Version-3 graphs changed with the onnx package (operators, domains, placeholders,
    external data, wire-format damage) get the Python reader's verdict."""
    onnx = pytest.importorskip("onnx")
    import copy

    import fuzzlib
    from onnx import TensorProto, helper

    header, graph, payload = fuzzlib.split_v3((FIXTURES / "tiny-v3.smask").read_bytes())
    m0 = onnx.load_from_string(graph)

    def ph(m, name):
        return [t for t in m.graph.initializer if t.name == name][0]

    V = {
     'same': lambda m: None,
     'docstring': lambda m: setattr(m, 'doc_string', 'hello'),
     'bad-utf8-doc': lambda m: m.SerializeToString() + b'\x32\x02\xff\xfe',  # a producer_name that is not UTF-8 (never decoded)
     'unknown-field': lambda m: m.SerializeToString() + b'\xf8\x01\x01',  # field 31 varint
     'opset-dup': lambda m: m.opset_import.append(helper.make_opsetid('', 13)),
     'opset-ms': lambda m: m.opset_import.append(helper.make_opsetid('com.microsoft', 1)),
     'opset-aionnx': lambda m: m.opset_import.append(helper.make_opsetid('ai.onnx', 13)),
     'node-loop': lambda m: m.graph.node.append(helper.make_node('Loop', ['input'], ['zz'])),
     'node-domain': lambda m: m.graph.node.append(helper.make_node('Relu', ['input'], ['zz'], domain='ai.onnx')),
     'node-domain-bad': lambda m: m.graph.node.append(helper.make_node('Relu', ['input'], ['zz'], domain='x')),
     'ph-location': lambda m: setattr(ph(m, 'out.weight').external_data[0], 'value', 'file.bin'),
     'ph-type': lambda m: setattr(ph(m, 'out.weight'), 'data_type', TensorProto.DOUBLE),
     'ph-negdim': lambda m: ph(m, 'out.weight').dims.__setitem__(0, -3),
     'ph-ext-extra': lambda m: ph(m, 'out.weight').external_data.append(onnx.StringStringEntryProto(key='offset', value='0')),
     'ph-ext-dup': lambda m: ph(m, 'out.weight').external_data.append(onnx.StringStringEntryProto(key='location', value='supermask:tensor')),
     'ph-ext-badkey': lambda m: ph(m, 'out.weight').external_data.append(onnx.StringStringEntryProto(key='foo', value='1')),
     'ph-embedded': lambda m: setattr(ph(m, 'out.weight'), 'raw_data', b'\0\0\0\0'),
     'const-init': lambda m: m.graph.initializer.append(helper.make_tensor('c1', TensorProto.FLOAT, [2], [1.0, 2.0])),
     'const-dup': lambda m: m.graph.initializer.append(helper.make_tensor('out.weight', TensorProto.FLOAT, [2], [1.0, 2.0])),
     'const-input': lambda m: m.graph.initializer.append(helper.make_tensor('input', TensorProto.FLOAT, [2], [1.0, 2.0])),
     'sparse': lambda m: m.graph.sparse_initializer.append(onnx.SparseTensorProto()),
     'input2': lambda m: m.graph.input.append(helper.make_tensor_value_info('x2', TensorProto.FLOAT, [1])),
     'output-param': lambda m: m.graph.output[0].type.tensor_type.shape.dim[1].__setattr__('dim_param', 'K'),
     'output-4': lambda m: m.graph.output[0].type.tensor_type.shape.dim[1].__setattr__('dim_value', 4),
     'input-batch-fixed': lambda m: m.graph.input[0].type.tensor_type.shape.dim[0].__setattr__('dim_value', 5),
     'input-big': lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__('dim_value', (1 << 20) + 1),
     'input-double': lambda m: setattr(m.graph.input[0].type.tensor_type, 'elem_type', TensorProto.DOUBLE),
     'training': lambda m: m.training_info.append(onnx.TrainingInfoProto()),
     'functions': lambda m: m.functions.append(onnx.FunctionProto()),
     'metadata': lambda m: m.metadata_props.append(onnx.StringStringEntryProto(key='a', value='b')),
     'no-graph': lambda m: m.ClearField('graph'),
     'valueinfo': lambda m: m.graph.value_info.append(helper.make_tensor_value_info('v', TensorProto.FLOAT, ['a', 3])),
     'valueinfo-badutf8': lambda m: (m.graph.value_info.append(helper.make_tensor_value_info('v', TensorProto.FLOAT, [3])), m.SerializeToString().replace(b'\x0a\x01v', b'\x0a\x01\xff'))[1],
     'attr-tensor': lambda m: m.graph.node[0].attribute.append(helper.make_attribute('t', helper.make_tensor('q', 1, [1], [1.0]))),
     'truncated': lambda m: m.SerializeToString()[:-3],
     'trailing-zero': lambda m: m.SerializeToString() + b'\x00',
     'varint10': lambda m: m.SerializeToString() + b'\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01',
     'varint11': lambda m: m.SerializeToString() + b'\x28\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00',
     'varint-ovf': lambda m: m.SerializeToString() + b'\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02',
     'ir-dup': lambda m: m.SerializeToString() + b'\x08\x07',
     'wire-mismatch': lambda m: m.SerializeToString() + b'\x29' + b'\0'*8,
     'group': lambda m: m.SerializeToString() + b'\x2b',
     'field0': lambda m: m.SerializeToString() + b'\x00\x00',
    }
    cases = {}
    for name, edit in V.items():
        m = copy.deepcopy(m0)
        r = edit(m)
        cases[name] = fuzzlib.join_v3(header, r if isinstance(r, bytes) else m.SerializeToString(), payload)
    out = same_verdicts(smask_c, tmp_path, cases)
    assert out["same"][0] == "ok" and out["node-loop"][0] != "ok" and out["valueinfo-badutf8"][0] != "ok"


# ------------------------------------------------------------------------------- streaming run


@pytest.mark.parametrize("scheme,codec,version", [("kaiming_uniform", "entropy", 1), ("glorot_normal", "bitpack", 2),
                                                  ("signed_kaiming_constant", "entropy", 2), ("fixture", "", 1)])
def test_streaming_run_matches_the_python_runtime(smask_c, tmp_path, scheme, codec, version):
    """`smask-c run` regenerates weights row by row while it computes; its logits agree with
    onnxruntime's (different summation order: a relative tolerance) and pick the same classes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import supermask.runtime as smr

    data = (FIXTURES / "tiny-v1.smask").read_bytes() if scheme == "fixture" else make_v12(scheme, codec, version, 3)
    (tmp_path / "t.smask").write_bytes(data)
    t = ticket.decode_ticket(data)
    x = np.random.default_rng(1).integers(0, 256, size=(6,) + tuple(t.input_shape)).astype(np.float32)
    x.astype("<f4").tofile(tmp_path / "x.bin")
    out = run(smask_c, "run", str(tmp_path / "t.smask"), str(tmp_path / "x.bin")).stdout
    got = np.array([[float.fromhex(v) for v in line.split()] for line in out.splitlines()], dtype=np.float32)
    ref = smr.load(t, "cpu").logits(x)
    assert got.shape == ref.shape == (6, len(t.classes))
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_run_refuses_bad_inputs(smask_c, tmp_path):
    """Inputs that are not a whole number of examples (version-3 streaming: test_native_run.py)."""
    (tmp_path / "x.bin").write_bytes(b"\0" * 12)
    p = run(smask_c, "run", str(FIXTURES / "tiny-v3.smask"), str(tmp_path / "x.bin"), check=False)
    assert p.returncode == 2 and "not a whole number of inputs" in p.stderr
    p = run(smask_c, "run", str(FIXTURES / "tiny-v1.smask"), str(tmp_path / "x.bin"), check=False)
    assert p.returncode == 2 and "not a whole number of inputs" in p.stderr


def test_c_mutation_fuzz_under_sanitizers(smask_c_san):
    """`smask-c fuzz`: mutations of the JSON headers, the inflated version-3 sections (stored
    again as DEFLATE stored blocks) and the payloads, re-signed so the checksum passes, each
    parsed, verified and run under the sanitizers. SUPERMASK_NATIVE_FUZZ scales it too."""
    cases = max(20000, 10 * int(os.environ.get("SUPERMASK_NATIVE_FUZZ", "0")))
    p = run(smask_c_san, "--max-weights", "1000000", "fuzz", "3", str(cases),
            str(FIXTURES / "tiny-v1.smask"), str(FIXTURES / "tiny-v3.smask"))
    assert "runtime error" not in p.stderr and "Sanitizer" not in p.stderr
    counts = dict(zip(p.stdout.split()[3::2], map(int, p.stdout.split()[4::2])))
    assert sum(counts.values()) == cases
    assert counts.get("ok", 0) > 0 and counts.get("format", 0) > cases // 2  # both verdicts are reached


def test_c_mutations_same_verdict_as_python(smask_c, tmp_path):
    """The mutations of `smask-c fuzz` (deep inside JSON headers and version-3 sections, with
    valid checksums) get the same accept/reject verdict from the Python reader."""
    import fuzzlib

    cases = max(5000, int(os.environ.get("SUPERMASK_NATIVE_FUZZ", "0")))
    p = run(smask_c, *cap_options(), "--max-weights", "1000000", "fuzz", "--dump", str(tmp_path), "11", str(cases),
            str(FIXTURES / "tiny-v1.smask"), str(FIXTURES / "tiny-v3.smask"))
    lines = p.stdout.splitlines()[:-1]
    assert len(lines) == cases
    mismatches, accepted = [], 0
    for line in lines:
        name, verdict = line.split()
        py = fuzzlib.outcome((tmp_path / name).read_bytes(), max_weights=1_000_000)
        accepted += py == "ok"
        if (py == "ok") != (verdict == "ok"):
            mismatches.append((name, verdict, py))
    assert not mismatches, mismatches[:10]
    assert 0 < accepted < cases


def test_many_placeholders_are_looked_up_quickly(smask_c, tmp_path):
    """A version-3 table of 20,000 placeholders: names are matched by binary search, so the C
    reader stays far below quadratic time."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    n = 20000
    inits = []
    for i in range(n):
        t = TensorProto(name=f"p{i}", data_type=TensorProto.FLOAT, dims=[1, 1], data_location=TensorProto.EXTERNAL)
        t.external_data.append(onnx.StringStringEntryProto(key="location", value="supermask:tensor"))
        inits.append(t)
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = ticket3.encode_v3(model.SerializeToString(), seed=1, init=InitSpec("kaiming_uniform"),
                             roles={f"p{i}": ("one" if i % 3 else "zero") for i in range(n)}, classes=["a"])
    assert len(ticket.decode_ticket(data).tensors) == n
    (tmp_path / "many.smask").write_bytes(data)
    start = time.perf_counter()
    lines = run(smask_c, "digest", str(tmp_path / "many.smask")).stdout.splitlines()
    assert time.perf_counter() - start < 10
    assert len(lines) == n
    one, zero = sha(np.ones((1, 1), np.float32)), sha(np.zeros((1, 1), np.float32))
    assert all(line == f"p{i} {one if i % 3 else zero}" for i, line in enumerate(lines))
