"""Hostile tickets: only the project's typed errors may come out, with bounded time and memory.

CI runs a bounded budget; a long run is `python benchmarks/fuzz_tickets.py --cases 200000`.
"""

from __future__ import annotations

import os
import random
import sys
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzlib
from supermask import ticket
from supermask.errors import TicketFormatError

from helpers import FIXTURES

CASES = int(os.environ.get("SUPERMASK_FUZZ_CASES", "5000"))


def test_every_single_bit_flip_of_the_fixture_is_detected():
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    tried, detected = fuzzlib.all_single_bit_flips(data)
    assert tried == 8 * len(data) and detected == tried


def test_every_truncation_is_rejected():
    for data in fuzzlib.sample_tickets():
        n, rejected = fuzzlib.all_truncations(data) if len(data) < 5000 else (1, 1)
        assert rejected == n


def test_random_mutation_campaign_raises_only_typed_errors():
    start = time.perf_counter()
    counts = fuzzlib.random_campaign(seed=1, cases=CASES)  # re-raises any untyped exception
    assert sum(counts.values()) == CASES
    # Damage the checksum sees must never load.
    assert all(outcome != "ok" for (family, outcome) in counts if family in ("flips", "truncate-resigned"))
    assert time.perf_counter() - start < 120


@given(st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes(blob):
    assert fuzzlib.outcome(blob) != "ok"


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_header_mutations_with_valid_checksum(seed):
    r = random.Random(seed)
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    fuzzlib.outcome(fuzzlib.mutate_header(data, r))  # raises if an untyped error escapes


def test_a_trillion_weight_header_is_rejected_before_allocation():
    data = (FIXTURES / "tiny-v1.smask").read_bytes()
    prefix, header, payload = fuzzlib.split(data)
    header["architecture"]["layers"][1].update({"in": 16, "out": 1_000_000})
    header["architecture"]["layers"][3].update({"in": 1_000_000, "out": 1_000_000})
    header["architecture"]["layers"][5].update({"in": 1_000_000})
    header["tensors"][0]["shape"] = [1_000_000, 16]
    header["tensors"][1]["shape"] = [1_000_000]
    header["tensors"][2]["shape"] = [1_000_000, 1_000_000]
    header["tensors"][3]["shape"] = [3, 1_000_000]
    import json

    bad = fuzzlib.join(prefix, json.dumps(header).encode(), payload)
    tracemalloc.start()
    with pytest.raises(TicketFormatError, match="elements|limit"):
        ticket.decode_ticket(bad)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 << 20  # far below the 4 TB the header asks for


MEANING_CASES = int(os.environ.get("SUPERMASK_FUZZ_MEANING_CASES", "400"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS caps the address space on Linux only")
def test_meaning_mutations_regenerate_and_run_under_a_memory_cap():
    # Shapes, counts, scales and preprocessing changed, the file repaired so that it passes the
    # integrity checks, then read, regenerated and run in a child limited to 3 GiB of address
    # space: only typed errors or success, never MemoryError or another untyped exception.
    status, counts, stderr = fuzzlib.meaning_campaign_capped(seed=3, cases=MEANING_CASES)
    assert status == 0, stderr[-3000:]
    assert sum(counts.values()) == MEANING_CASES
    outcomes = {o for (_, o) in counts}
    assert "ok" in outcomes  # the mutations reach the runtime, not only the reader
    if MEANING_CASES >= 400:
        assert {"MemoryLimitError", "NonFiniteError", "TicketFormatError"} <= outcomes, counts


def test_meaning_mutations_pass_the_integrity_checks():
    r = random.Random(5)
    for data in fuzzlib.meaning_samples():
        for kind in fuzzlib.MEANINGS:
            m = fuzzlib.mutate_meaning(data, r, kind)
            assert m != data
            try:
                ticket.decode_ticket(m)
            except TicketFormatError as e:
                assert "checksum" not in str(e)
