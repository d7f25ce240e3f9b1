"""Parsing and checking on several processes: same rows as one process, order kept, crashes pinned."""

from __future__ import annotations

import os

import pytest

from helpers.fetch.stage import fetch
from helpers.filter.stage import run_filter
from helpers.process.parallel import ordered_map, worker_count
from helpers.store import db as dbmod


def _square(x: int) -> int:
    return x * x


def _die_on_13(x: int) -> int:
    if x == 13:
        os._exit(1)  # what a segfault or the OOM killer does to a worker
    return x


def _raise_on_5(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


def test_order_kept_and_equal_to_map():
    items = list(range(60))
    assert list(ordered_map(_square, items, n_workers=2)) == [(x, x * x) for x in items]
    assert list(ordered_map(_square, items, n_workers=1)) == [(x, x * x) for x in items]
    assert list(ordered_map(_square, range(5), n_workers=2)) == [(x, x * x) for x in range(5)]  # serial: few


def test_source_is_read_lazily():
    """A lazy source (downloads) is not drained ahead of the results: a few items per worker at most."""
    pulled = []

    def source():
        for x in range(100):
            pulled.append(x)
            yield x

    results = ordered_map(_square, source(), n_workers=2)
    assert next(results) == (0, 0)
    assert len(pulled) <= 16 + 4 * 2 + 1
    results.close()


def test_a_dying_worker_is_pinned_on_its_item_and_the_rest_go_on():
    items = list(range(30))
    out = list(ordered_map(_die_on_13, items, n_workers=2, on_crash=lambda x, exc: -1))
    assert [x for x, _ in out] == items
    assert dict(out)[13] == -1
    assert all(r == x for x, r in out if x != 13)


def test_exceptions_propagate_like_map():
    with pytest.raises(ValueError, match="five"):
        list(ordered_map(_raise_on_5, range(30), n_workers=2))


def test_worker_count():
    assert worker_count(3) == 3
    assert worker_count(None) >= 1
    with pytest.raises(ValueError):
        worker_count(0)


def _rows(path) -> list[tuple]:
    return sorted((r.structure_id, r.get("sha256"), r.get("readable"), r.get("read_error"), r.get("checks"),
                   r.get("reason"), r.get("V_exp"), len(r.toatoms()), r.toatoms().positions.round(8).tobytes())
                  for r in dbmod.connect(str(path)).select())


def test_fetch_and_filter_on_two_processes_equal_one(tmp_path, cod_dir):
    """All 67 real COD files: raw, clean and rejects databases identical with 1 and 2 worker processes."""
    reports = {}
    for n in (1, 2):
        folder = tmp_path / f"w{n}"
        folder.mkdir()
        fetched = fetch(source=str(cod_dir), raw_db=str(folder / "raw.db"), progress=False, n_workers=n)
        filtered = run_filter(folder / "raw.db", folder / "clean.db", folder / "rejects.db", progress=False,
                              n_workers=n)
        reports[n] = (fetched.load.as_dict(), filtered.counts().to_dict())
    assert reports[1] == reports[2]
    assert reports[2][0]["files"] == 67 and reports[2][0]["unreadable"] > 0
    for name in ("raw.db", "clean.db", "rejects.db"):
        one, two = _rows(tmp_path / "w1" / name), _rows(tmp_path / "w2" / name)
        assert one == two and one, name
