"""Pytest fixtures shared by the test modules; plain helpers live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import FIXTURES


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread: tiny models on a shared 2-core machine run
    several times faster that way. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# One rule for tests that read the real data sets in ../shared/data (see README, "Tests"):
# where the files are missing such a test is skipped with the reason, unless
# SUPERMASK_REQUIRE_DATA=1 (which .ci/run sets), when it fails and says where it looked.
REQUIRE_DATA = os.environ.get("SUPERMASK_REQUIRE_DATA") == "1"


def _missing_data(e: Exception):
    if REQUIRE_DATA:
        raise e
    pytest.skip(f"real data not present ({e}); set SUPERMASK_REQUIRE_DATA=1 to make this a failure")


def _skip_where_data_is_missing(item):
    from deploy_helpers import MissingTestData

    try:
        return (yield)
    except MissingTestData as e:
        _missing_data(e)


# The same wrapper around fixture setup and around the test itself.
pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_skip_where_data_is_missing)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_skip_where_data_is_missing)
