"""`pack --max-bytes`: the most accurate evaluated supermask whose ticket file fits a byte budget."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from supermask.cli import main  # noqa: E402
from supermask.errors import RunError  # noqa: E402
from supermask.train import config as C  # noqa: E402
from supermask.train.find import find  # noqa: E402
from supermask.train.pack import pack  # noqa: E402
from supermask.train.runs import load_run, ranked_rows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    find(C.FindConfig(model="lenet-300-100", dataset="digits", iterations=60, keeps=(0.5, 0.1, 0.02),
                      criteria=("large_final_same_sign", "random")), out, progress=False)
    return out


@pytest.fixture(scope="module")
def sizes(run, tmp_path_factory):
    """Every supermask of the run packed on its own: (criterion, keep, init) -> file bytes."""
    d = tmp_path_factory.mktemp("each")
    found = {}
    for r in ranked_rows(load_run(run)[2]):
        key = (r["criterion"], r["keep"], r["init"])
        path = d / f"{len(found)}.smask"
        pack(run, path, criterion=r["criterion"], keep=r["keep"], init=r["init"])
        found[key] = path.stat().st_size
    return found


def _expected(run, sizes, budget):
    """The most accurate row whose ticket fits, by the run's own ranking; None if none fits."""
    return next(((r["criterion"], r["keep"], r["init"]) for r in ranked_rows(load_run(run)[2])
                 if sizes[r["criterion"], r["keep"], r["init"]] <= budget), None)


def _packed(t):
    return t.criterion, t.keep, t.metadata.get("init_variant", "original")


def test_the_budget_picks_the_most_accurate_ticket_that_fits(run, sizes, tmp_path):
    assert len(set(sizes.values())) > 2  # the keeps give tickets of different sizes
    best = _expected(run, sizes, float("inf"))
    # a budget exactly at the best ticket's size takes it; one byte less does not
    t = pack(run, tmp_path / "a.smask", max_bytes=sizes[best])
    assert _packed(t) == best and (tmp_path / "a.smask").stat().st_size == sizes[best]
    below = sizes[best] - 1
    want = _expected(run, sizes, below)
    assert want is not None and want != best
    t = pack(run, tmp_path / "b.smask", max_bytes=below)
    assert _packed(t) == want and (tmp_path / "b.smask").stat().st_size <= below
    # every budget between the smallest and the largest ticket: the fitting row the ranking prefers
    for budget in sorted(set(sizes.values())):
        t = pack(run, tmp_path / "c.smask", max_bytes=budget)
        assert _packed(t) == _expected(run, sizes, budget)
        assert (tmp_path / "c.smask").stat().st_size <= budget


def test_the_budget_narrows_with_the_other_choices(run, sizes, tmp_path):
    budget = max(sizes.values())
    t = pack(run, tmp_path / "r.smask", criterion="random", init="signed-constant", max_bytes=budget)
    assert t.criterion == "random" and t.metadata.get("init_variant") == "signed-constant"


def test_a_budget_that_nothing_fits_is_an_error_and_writes_nothing(run, sizes, tmp_path):
    smallest = min(sizes.values())
    with pytest.raises(RunError, match=f"fits in {smallest - 1:,} bytes: the smallest of the 12 evaluated .* packs "
                                       f"to {smallest:,} bytes"):
        pack(run, tmp_path / "x.smask", max_bytes=smallest - 1)
    assert not (tmp_path / "x.smask").exists()
    r = CliRunner().invoke(main, ["pack", "--run", str(run), "--max-bytes", "1KiB", "-o", str(tmp_path / "y")])
    assert r.exit_code == 1 and "no supermask of" in r.output and not (tmp_path / "y").exists()
    r = CliRunner().invoke(main, ["pack", "--run", str(run), "--max-bytes", "lots", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "cannot read 'lots' as a size" in r.output


def test_the_cli_reads_sizes_with_units(run, sizes, tmp_path):
    budget = max(sizes.values())
    r = CliRunner().invoke(main, ["pack", "--run", str(run), "--max-bytes", f"{budget / 1000}KB", "-o",
                                  str(tmp_path / "z.smask")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "z.smask").stat().st_size <= budget
