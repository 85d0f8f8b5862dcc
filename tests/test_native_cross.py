"""The C99 ticket reader (runtime/c) cross-compiled for other architectures and run under
qemu-user: 32-bit ARM (`armhf`: 32-bit size_t, little-endian), `s390x` (64-bit big-endian)
and `mips` (32-bit big-endian).

Each target's static `smask-c` must give, on every ticket of a corpus (the committed
tickets, tickets of every init scheme x codec x version (version 3: the exact schemes),
the golden init vectors of conv1.weight, corrupt files and mutated ones):

* `selftest`: ok;
* `info`: the same text as the native build;
* `digest` (exact schemes): the same lines as the native build and the Python reader;
* `weights` (normal schemes): within 2 float32 ulps of the Python reader (docs/format.md
  3.5), signs and zeros exact;
* `check`: the same verdict lines (code and message) as the native build, and accept/reject
  as the Python reader;
* `run` (every version; version 3 when the onnx package is there to read the input shape):
  logits within 1e-5 relative of the native build, same classes.

Without a target's cross compiler or qemu the test for that target is skipped with the
reason. SUPERMASK_CROSS_SRC=DIR builds the C sources in DIR instead of runtime/c.
`runtime/c/cross-test.sh` runs the same comparison from the shell (and can install
the Debian packages); it calls this file as a script:

    python tests/test_native_cross.py --native NATIVE_EXE --target NAME=QEMU:EXE ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, REPO
from supermask import Architecture, InitSpec, Layer, Preprocess, ticket
from test_native import EXACT_SCHEMES, SCHEMES, make_v3, make_v12, ulps

SRC = Path(os.environ.get("SUPERMASK_CROSS_SRC") or REPO / "runtime" / "c")  # another copy of the C sources
# name: (C compiler, qemu-user binary, Debian packages that provide them). powerpc is not in the
# test: Debian 12's static powerpc libm executes mffsl (a POWER9 instruction that older CPUs run
# as mffs), which qemu-ppc 7.2 has no CPU model for (SIGILL in every normal-init ticket).
TARGETS = {
    "armhf": ("arm-linux-gnueabihf-gcc", "qemu-arm", ["gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross"]),
    "s390x": ("s390x-linux-gnu-gcc", "qemu-s390x", ["gcc-s390x-linux-gnu", "libc6-dev-s390x-cross"]),
    "powerpc": ("powerpc-linux-gnu-gcc", "qemu-ppc", ["gcc-powerpc-linux-gnu", "libc6-dev-powerpc-cross"]),
    "mips": ("mips-linux-gnu-gcc", "qemu-mips", ["gcc-mips-linux-gnu", "libc6-dev-mips-cross"]),
}
ULP_TOLERANCE = 2  # docs/format.md 3.5: normal-init values within 2 float32 ulps
RUN_RTOL = 1e-5


# ------------------------------------------------------------------------------- corpus


@dataclass
class Ticket:
    path: Path
    exact: bool | None  # None: the Python reader rejects it
    digest: dict[str, str] = field(default_factory=dict)  # exact: Python's sha256 per tensor
    weights: np.ndarray | None = None  # normal: Python's weights, table order
    runnable: bool = False  # a version 1/2 ticket with an input: `run` is compared


@dataclass
class Corpus:
    root: Path
    tickets: list[Ticket]  # tickets the Python reader accepts
    corrupt: list[tuple[Path, str]]  # (file, Python outcome): truncated, bit-flipped, mutated
    inputs: dict[str, Path]  # ticket path -> float32 input file for `run`


def _sha(w: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(w, dtype="<f4").tobytes()).hexdigest()


def make_corpus(root: Path, mutations: int = 120) -> Corpus:
    """Write the tickets and corrupt files under root, with the Python reader's answers."""
    import fuzzlib

    root.mkdir(parents=True, exist_ok=True)
    sources: dict[str, bytes] = {}
    listed = subprocess.run(["git", "ls-files", "*.smask"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for rel in sorted(set(listed) | {str(p.relative_to(REPO)) for p in FIXTURES.glob("*.smask")}):
        if (REPO / rel).is_file():
            sources["repo-" + rel.replace("/", "_")] = (REPO / rel).read_bytes()
    for scheme in SCHEMES:
        for codec in ("bitpack", "entropy"):
            for version in (1, 2):
                sources[f"gen-{scheme}-{codec}-v{version}.smask"] = make_v12(scheme, codec, version, seed=11 + version)
            if scheme in EXACT_SCHEMES:  # version 3 takes bit-exact inits only
                sources[f"gen-{scheme}-{codec}-v3.smask"] = make_v3(scheme, codec, seed=2**64 - 5)

    # the golden init vectors (docs/format.md 3.4) of conv1.weight: every scheme and seed, one of
    # them with a key word of 2^63 or more; exact ones must also give golden_init.json's digest
    golden = json.loads((FIXTURES / "golden_init.json").read_text())
    conv1 = Layer("conv2d", "conv1", {"in": 3, "out": 64, "kernel": 3, "padding": 0, "stride": 1, "bias": False})
    conv = Architecture("g-conv", (3, 3, 3), (conv1, Layer("flatten")), tuple(str(i) for i in range(64)),
                        Preprocess(1.0, (0.0,) * 3, (1.0,) * 3))
    golden_digest = {}
    for key, entry in golden.items():
        scheme, seed, tensor = key.split("/")
        if tensor == "conv1.weight":
            name = f"golden-{scheme}-{seed}.smask"
            sources[name] = ticket.encode_ticket(conv, int(seed), InitSpec(scheme), {})
            golden_digest[name] = entry["sha256"]

    tickets, inputs = [], {}
    g = np.random.default_rng(5)
    for name, data in sources.items():
        path = root / name
        path.write_bytes(data)
        t = ticket.decode_ticket(data)
        w = t.weights(verify=True)
        entry = Ticket(path, exact=t.init.exact)
        if t.init.exact:
            entry.digest = {k: _sha(v) for k, v in w.items()}
            if name in golden_digest:
                assert entry.digest["conv1.weight"] == golden_digest[name], f"Python reader vs golden_init.json: {name}"
        else:
            entry.weights = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in w.values()])
        shape = tuple(t.input_shape) if t.version in (1, 2) and getattr(t, "input_shape", None) else _v3_input_shape(t)
        if shape:
            x = g.integers(0, 256, size=(3,) + shape).astype("<f4")
            inputs[str(path)] = root / (name + ".input")
            x.tofile(inputs[str(path)])
            entry.runnable = True
        tickets.append(entry)

    corrupt: list[tuple[Path, str]] = []
    bad = root / "corrupt"
    bad.mkdir(exist_ok=True)
    r = random.Random(20261203)
    for src in ("repo-tests_fixtures_tiny-v1.smask", "repo-tests_fixtures_tiny-v3.smask",
                "gen-glorot_normal-entropy-v2.smask"):
        data = sources[src]
        cuts = sorted({0, 1, 15, 16, 17, len(data) // 2, len(data) - 33, len(data) - 32, len(data) - 1,
                       *(r.randrange(len(data)) for _ in range(6))})
        variants = [(f"cut{n}", data[:n]) for n in cuts]
        for k in range(12):
            i = r.randrange(8 * len(data))
            variants.append((f"flip{k}", data[:i // 8] + bytes([data[i // 8] ^ (1 << (i % 8))]) + data[i // 8 + 1:]))
        for k in range(6):  # re-signed: the checksum passes, the parser and fingerprints must catch it
            variants.append((f"resigned{k}", fuzzlib.resign(fuzzlib.flip_bits(data[:-32], r, r.randint(1, 4)))))
        for tag, m in variants:
            p = bad / f"{src}-{tag}"
            p.write_bytes(m)
            corrupt.append((p, fuzzlib.outcome(m)))
    samples = fuzzlib.meaning_samples()  # mutations that keep the file well formed: meaning checks
    k = 0
    while k < mutations:
        try:
            m = fuzzlib.mutate_meaning(samples[k % len(samples)], r)
        except Exception:  # a mutation the helper cannot build (e.g. without onnx)
            m = fuzzlib.mutate_header(samples[k % len(samples)], r)
        p = bad / f"meaning{k:04d}"
        p.write_bytes(m)
        corrupt.append((p, fuzzlib.outcome(m)))
        k += 1
    return Corpus(root, tickets, corrupt, inputs)


# ------------------------------------------------------------------------------- running


def _run(cmd: list[str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


def _must(cmd: list[str], *args: str) -> str:
    p = _run(cmd, *args)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p.stdout


def _v3_input_shape(t) -> tuple[int, ...] | None:
    """A version-3 ticket's input shape without the batch (streamed by `smask-c run`), or None
    without the onnx package."""
    if getattr(t, "graph", None) is None:
        return None
    try:
        import onnx
    except ImportError:
        return None
    dims = onnx.load_from_string(t.graph).graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(int(d.dim_value) for d in dims)


def _digest(cmd: list[str], path: Path) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in _must(cmd, "digest", str(path)).splitlines())


def _weights(cmd: list[str], path: Path, out: Path) -> np.ndarray:
    _must(cmd, "weights", str(path), str(out))
    return np.fromfile(out, dtype="<f4")


def _logits(cmd: list[str], path: Path, x: Path) -> np.ndarray:
    out = _must(cmd, "run", str(path), str(x))
    return np.array([[float.fromhex(v) for v in line.split()] for line in out.splitlines()], dtype=np.float64)


def _verdicts(cmd: list[str], paths: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in range(0, len(paths), 100):
        batch = [str(p) for p in paths[a:a + 100]]
        p = _run(cmd, "check", *batch)
        if p.returncode not in (0, 2):
            raise AssertionError(f"{' '.join(cmd)} check crashed (exit {p.returncode}): {p.stderr[-2000:]}")
        lines = p.stdout.splitlines()
        if len(lines) != len(batch):
            raise AssertionError(f"{' '.join(cmd)} check gave {len(lines)} verdicts for {len(batch)} files")
        out.update(zip(batch, lines))
    return out


def compare(target_cmd: list[str], native_cmd: list[str], corpus: Corpus, work: Path) -> dict:
    """Every comparison on every file; returns a summary with the list of mismatches."""
    work.mkdir(parents=True, exist_ok=True)
    mismatches: list[str] = []
    stats = {"tickets": len(corpus.tickets), "digest_exact": 0, "weights_normal": 0, "normal_bit_identical": 0,
             "max_ulps": 0, "info": 0, "run": 0, "max_run_rel": 0.0, "check_files": 0, "check_ok": 0,
             "check_reject": 0}

    st = _run(target_cmd, "selftest")
    if st.returncode != 0 or "selftest ok" not in st.stdout:
        mismatches.append(f"selftest: exit {st.returncode}: {(st.stdout + st.stderr).strip()[-500:]}")

    for t in corpus.tickets:
        name = t.path.name
        try:
            info_t, info_n = _run(target_cmd, "info", str(t.path)), _run(native_cmd, "info", str(t.path))
            if (info_t.returncode, info_t.stdout) != (info_n.returncode, info_n.stdout):
                mismatches.append(f"{name}: info differs from the native build")
            stats["info"] += 1
            if t.exact:
                got, nat = _digest(target_cmd, t.path), _digest(native_cmd, t.path)
                if got != t.digest:
                    bad = sorted(k for k in set(got) | set(t.digest) if got.get(k) != t.digest.get(k))
                    mismatches.append(f"{name}: digest differs from the Python reader for {bad}")
                if got != nat:
                    mismatches.append(f"{name}: digest differs from the native build")
                stats["digest_exact"] += 1
            else:
                got = _weights(target_cmd, t.path, work / (name + ".bin"))
                ref = t.weights
                if got.shape != ref.shape:
                    mismatches.append(f"{name}: {got.size} weights, the Python reader has {ref.size}")
                else:
                    d = int(ulps(got, ref).max()) if got.size else 0
                    stats["max_ulps"] = max(stats["max_ulps"], d)
                    if d > ULP_TOLERANCE:
                        mismatches.append(f"{name}: weights {d} ulps from the Python reader (allowed {ULP_TOLERANCE})")
                    if not (np.signbit(got) == np.signbit(ref)).all() or not ((got == 0) == (ref == 0)).all():
                        mismatches.append(f"{name}: signs or zeros (the masks) differ from the Python reader")
                    nat = _weights(native_cmd, t.path, work / (name + ".native.bin"))
                    stats["normal_bit_identical"] += int(nat.tobytes() == got.tobytes())
                stats["weights_normal"] += 1
            if t.runnable:
                x = corpus.inputs[str(t.path)]
                got, nat = _logits(target_cmd, t.path, x), _logits(native_cmd, t.path, x)
                if got.shape != nat.shape:
                    mismatches.append(f"{name}: run gave shape {got.shape}, native {nat.shape}")
                else:
                    rel = float(np.abs(got - nat).max() / max(1.0, float(np.abs(nat).max())))
                    stats["max_run_rel"] = max(stats["max_run_rel"], rel)
                    if rel > RUN_RTOL or not (got.argmax(1) == nat.argmax(1)).all():
                        mismatches.append(f"{name}: run logits differ from the native build (relative {rel:.3g})")
                stats["run"] += 1
        except (AssertionError, subprocess.TimeoutExpired, ValueError) as e:
            mismatches.append(f"{name}: {e}")

    files = [t.path for t in corpus.tickets] + [p for p, _ in corpus.corrupt]
    python = {str(t.path): "ok" for t in corpus.tickets} | {str(p): o for p, o in corpus.corrupt}
    try:
        vt, vn = _verdicts(target_cmd, files), _verdicts(native_cmd, files)
        for f in map(str, files):
            if vt[f] != vn[f]:
                mismatches.append(f"check {Path(f).name}: {vt[f]!r}, native {vn[f]!r}")
            if vt[f].startswith("ok ") != (python[f] == "ok"):
                mismatches.append(f"check {Path(f).name}: {vt[f]!r}, Python reader {python[f]!r}")
        stats["check_files"] = len(files)
        stats["check_ok"] = sum(v.startswith("ok ") for v in vt.values())
        stats["check_reject"] = sum(v.startswith("reject ") for v in vt.values())
    except (AssertionError, subprocess.TimeoutExpired) as e:
        mismatches.append(f"check: {e}")
    stats["mismatches"] = mismatches
    return stats


def build(target: str, out_dir: Path, src: Path = SRC) -> Path:
    """Static cross build with runtime/c/Makefile (its warning flags, -Werror included)."""
    cc = TARGETS[target][0]
    p = subprocess.run(["make", "-s", "-C", str(src), f"CC={cc}", f"BUILD={out_dir}", "EXTRA=-static"],
                       capture_output=True, text=True)
    errors = [line for line in p.stderr.splitlines() if "error" in line or "warning" in line]
    assert p.returncode == 0, f"{target} build failed ({cc}, -Werror):\n" + "\n".join(errors or [p.stderr[-4000:]])
    return out_dir / "smask-c"


def missing(target: str) -> str | None:
    cc, qemu, pkgs = TARGETS[target]
    absent = [x for x in (cc, qemu) if shutil.which(x) is None]
    if absent:
        return f"{' and '.join(absent)} not found (Debian: apt-get install qemu-user {' '.join(pkgs)})"
    return None


# ------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("cross-corpus"))


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no make or native C compiler")
    out = tmp_path_factory.mktemp("smask-c-native")
    p = subprocess.run(["make", "-s", "-C", str(SRC), f"BUILD={out}"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    return out / "smask-c"


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(t, marks=pytest.mark.skipif(bool(missing(t)), reason=f"{missing(t)}"))
                                    for t in ("armhf", "s390x", "mips")])  # powerpc: see TARGETS
def test_cross_target_reads_tickets_like_the_native_build(target, native, corpus, tmp_path):
    exe = build(target, tmp_path / "build")
    start = time.perf_counter()
    stats = compare([TARGETS[target][1], str(exe)], [str(native)], corpus, tmp_path / "work")
    print(f"{target}: {json.dumps({k: v for k, v in stats.items() if k != 'mismatches'})} "
          f"in {time.perf_counter() - start:.1f} s")
    assert not stats["mismatches"], "\n".join(stats["mismatches"][:40])
    assert stats["digest_exact"] > 0 and stats["weights_normal"] > 0 and stats["run"] > 0
    assert stats["check_ok"] > 0 and stats["check_reject"] > 0  # both kinds of verdict exercised


# ------------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--native", required=True, help="the native smask-c")
    ap.add_argument("--target", action="append", default=[], metavar="NAME=QEMU:EXE",
                    help="a cross build and the qemu-user binary that runs it (repeatable)")
    ap.add_argument("--work", help="folder for the corpus and outputs (default: a temporary one)")
    ap.add_argument("--mutations", type=int, default=120, help="well-formed mutated tickets in the corpus")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="smask-cross-"))
    t0 = time.perf_counter()
    corpus = make_corpus(work / "corpus", a.mutations)
    print(f"corpus: {len(corpus.tickets)} tickets, {len(corpus.corrupt)} corrupt or mutated files "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    failed = 0
    for spec in a.target:
        name, rest = spec.split("=", 1)
        qemu, exe = rest.split(":", 1)
        t = time.perf_counter()
        stats = compare([qemu, exe] if qemu else [exe], [a.native], corpus, work / name)
        bad = stats.pop("mismatches")
        failed += bool(bad)
        print(f"{name}: {'PASS' if not bad else 'FAIL'} in {time.perf_counter() - t:.1f} s: "
              f"{stats['tickets']} tickets ({stats['digest_exact']} exact digests, {stats['weights_normal']} normal "
              f"within {stats['max_ulps']} ulps, {stats['normal_bit_identical']} of them bit-identical to native; "
              f"{stats['info']} info; {stats['run']} run, max rel {stats['max_run_rel']:.2g}); check on "
              f"{stats['check_files']} files ({stats['check_ok']} ok, {stats['check_reject']} reject); "
              f"{len(bad)} mismatches", flush=True)
        for m in bad[:40]:
            print(f"  {name}: {m}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
