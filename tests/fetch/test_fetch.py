"""fetch() from the web: search -> select -> download (faults, kill, resume) -> raw DB, against a fake COD."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from cod_server import serve_cod
from conftest import subset_dir

from helpers.fetch.cif import sha256
from helpers.fetch.download import RetryPolicy, cache_path
from helpers.fetch.stage import fetch
from helpers.store import db as dbmod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, read_timeout=0.5)
SUBSET = [1000001, 1011023, 1100914, 2000334, 2000380, 2003003, 2003398, 2100348, 2103187,
          4021477, 7105573]
FAULTS = {1000001: ["timeout", "503"], 1100914: ["429"], 2000334: ["truncate", "html"],
          2003003: ["reset", "wrong_id"], 7105573: ["empty", "slow"]}


@pytest.fixture(autouse=True)
def no_cod_source(monkeypatch):
    monkeypatch.delenv("COD_SOURCE", raising=False)


def raw_rows(path):
    return list(dbmod.connect(path).select())


def assert_intact_once(raw, cache, cod_dir, ids):
    rows = raw_rows(raw)
    assert Counter(r.structure_id for r in rows) == Counter(f"cod-{i}" for i in ids)
    for row in rows:
        original = (cod_dir / f"{row.cod_id}.cif").read_bytes()
        assert cache_path(cache, row.cod_id).read_bytes() == original
        assert row.data["cif"].encode() == original and row.sha256 == sha256(original)


def test_web_fetch_end_to_end(tmp_path, cod_dir):
    served = subset_dir(tmp_path, cod_dir, SUBSET)
    overrides = {2000380: {"cellpressure": "1800000", "sigcellpressure": "50000"},
                 4021477: {"duplicateof": "2100348"}}
    raw, cache = str(tmp_path / "raw.db"), tmp_path / "cache"
    with serve_cod(served, faults=FAULTS, row_overrides=overrides, hang=1.0, retry_after="1") as cod:
        report = fetch(cod.url, raw, cache_dir=cache, rate=None, concurrency=3, retry=FAST, progress=False,
                       max_pressure_kpa=1000, drop_duplicates=True)
        cif_hits = {k: v for k, v in cod.hits.items() if k != "search"}
        # every selected id requested once per fault plus once more ("slow" is no failure)
        assert cif_hits == {i: 1 + len([f for f in FAULTS.get(i, []) if f != "slow"])
                            for i in SUBSET if i not in (1100914, 2000380, 4021477)}
        assert cod.hits["search"] == 15  # one query per exact element set within C,H,N,O
        again = fetch(cod.url, raw, cache_dir=cache, rate=None, retry=FAST, progress=False,
                      max_pressure_kpa=1000, drop_duplicates=True)
        assert {k: v for k, v in cod.hits.items() if k != "search"} == cif_hits  # nothing re-downloaded
    # 1100914: COD's own duplicateof (from its _cod_duplicate_entry); 2000380: 1.8 GPa; 4021477: duplicate
    selected = [i for i in SUBSET if i not in (1100914, 2000380, 4021477)]
    assert (report.queried, report.selected, report.downloaded, report.cached) == (11, 8, 8, 0)
    assert report.skipped == {"pressure > 1000 kPa": 1, "COD duplicate of another entry": 2}
    assert report.unknown_formula == 0 and report.failed == {}
    assert report.load.written == 8 and report.load.unreadable == 2 and report.in_raw_db == 8
    assert_intact_once(raw, cache, cod_dir, selected)
    rows = {r.cod_id: r for r in raw_rows(raw)}
    assert rows[2100348].cod_formula == "C6 H6" and rows[2100348].cod_vol > 0
    assert rows[2100348].cod_sg and rows[2100348].source == cod.url + "2100348.cif"
    assert rows[1011023].cod_formula == "H2 O"  # water: no carbon, still asked for ({H,O})
    assert isinstance(rows[2100348].cod_svnrevision, int)  # which version of the entry COD had
    assert rows[2003003].cod_calcformula and "cod_formula" not in rows[2003003].key_value_pairs  # formula "?"
    assert rows[2100348].readable and not rows[2103187].readable and rows[2103187].read_error
    assert (again.downloaded, again.cached, again.already_in_raw_db, again.in_raw_db) == (0, 8, 8, 8)
    table = report.table()["count"]
    assert table["queried"] == 11 and table["in_raw_db"] == 8 and table["skipped: pressure > 1000 kPa"] == 1
    assert table["search queries (exact element sets)"] == 15
    searches = report.search_table().set_index("elements")
    assert searches.loc["C,H,N,O", "rows"] == 6 and searches.loc["H,O", "rows"] == 1
    assert set(searches.source) == {"COD"} and searches.rows.sum() == 11
    assert len(list((cache / "search").glob("*.json"))) == 15


def test_fetch_by_ids_records_failures(tmp_path, cod_dir):
    raw, cache = str(tmp_path / "raw.db"), tmp_path / "cache"
    with serve_cod(cod_dir, always={1100914: "503"}) as cod:
        report = fetch(cod.url, raw, cod_ids=[2100348, 1100914, 9999999, 2100348], cache_dir=cache,
                       rate=None, retry=RetryPolicy(attempts=2, backoff=0.01), progress=False)
        assert "search" not in cod.hits
    assert report.failed == {"1100914": "HTTP 503", "9999999": "HTTP 404"}
    assert report.selected == 3 and report.downloaded == 1 and report.in_raw_db == 1
    failures = report.failures()
    assert sorted(failures.entry) == ["1100914", "9999999"]
    assert report.table()["count"]["failed: HTTP 503"] == 1
    assert_intact_once(raw, cache, cod_dir, [2100348])
    row = raw_rows(raw)[0]
    assert not any(k.startswith("cod_") for k in row.key_value_pairs if k != "cod_id")  # no search row


def test_search_down_uses_saved_answer_or_says_why(tmp_path, cod_dir, capsys):
    served = subset_dir(tmp_path, cod_dir, [2100348, 2000334])
    raw, cache = str(tmp_path / "raw.db"), tmp_path / "cache"
    with serve_cod(served) as cod:
        fetch(cod.url, raw, cache_dir=cache, rate=None, retry=FAST, progress=False)
        port = int(cod.url.split(":")[2].split("/")[0])
    with serve_cod(served, port=port, always={"search": "503"}) as cod:  # the same server, now down
        report = fetch(cod.url, raw, cache_dir=cache, rate=None, progress=False,
                       retry=RetryPolicy(attempts=2, backoff=0.01))
        assert report.cached == 2 and len(report.notes) == 15 and "SAVED ANSWER" in report.notes[0]
        assert " old, " in report.notes[0] and "s old" in report.notes[0]  # its age is said
        assert "WARNING" in capsys.readouterr().out  # said in the notebook output, even without progress
        assert set(report.search_table().source) == {"saved answer"}
        assert report.table()["count"]["search queries answered from a saved answer"] == 15
        with pytest.raises(RuntimeError, match=r"COD search .* failed .* no earlier answer"):
            fetch(cod.url, raw, cache_dir=tmp_path / "empty-cache", rate=None, progress=False,
                  retry=RetryPolicy(attempts=2, backoff=0.01))


KILLED_RUN = """
import sys
from helpers.fetch.download import RetryPolicy
from helpers.fetch.stage import fetch
fetch(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3], rate=None, concurrency=2, progress=False,
      retry=RetryPolicy(attempts=3, backoff=0.01))
"""


def test_killed_fetch_resumes_without_redownloading(tmp_path, cod_dir):
    ids = sorted(int(p.stem) for p in cod_dir.glob("*.cif"))[:14]
    served = subset_dir(tmp_path, cod_dir, ids)
    raw, cache = str(tmp_path / "raw.db"), tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1"}
    env.pop("COD_SOURCE", None)
    with serve_cod(served, delay=0.15) as cod:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, cod.url, raw, str(cache)], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(list(cache.rglob("*.cif"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = {int(p.stem) for p in cache.rglob("*.cif")}
        hits_at_kill = Counter(cod.hits)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        expected = set(ids)  # water included: the search asks for {H,O} too
        assert 5 <= len(done) < len(expected), "the kill must land in the middle of the downloads"

        report = fetch(cod.url, raw, cache_dir=cache, rate=None, concurrency=2, retry=FAST, progress=False)
        for i in done:
            assert cod.hits[i] == hits_at_kill[i] == 1, f"{i} was downloaded again after the restart"
        # the rest: requested again only if the kill caught them in flight (at most 2 workers)
        assert sum(cod.hits[i] for i in expected - done) - len(expected - done) <= 2
    assert report.cached == len(done) and report.downloaded == len(expected) - len(done)
    assert not report.failed and not list(cache.rglob("*.part"))
    assert_intact_once(raw, cache, cod_dir, sorted(expected))


@pytest.mark.slow
def test_all_cod_files_intact_exactly_once_under_faults(tmp_path, cod_dir):
    """All 67 real COD files through a server that fails about half of the first requests."""
    ids = sorted(int(p.stem) for p in cod_dir.glob("*.cif"))
    kinds = ["timeout", "500", "503", "429", "truncate", "html", "reset", "empty", "wrong_id", "slow"]
    faults = {i: [kinds[n % len(kinds)]] for n, i in enumerate(ids) if n % 2 == 0}
    raw, cache = str(tmp_path / "raw.db"), tmp_path / "cache"
    with serve_cod(cod_dir, faults=faults, hang=1.0, retry_after="1") as cod:
        report = fetch(cod.url, raw, cod_ids=ids, cache_dir=cache, rate=None, concurrency=4, retry=FAST,
                       progress=False)
        assert all(cod.served[i] == 1 for i in ids)
    assert report.failed == {} and report.downloaded == len(ids) == report.in_raw_db
    assert_intact_once(raw, cache, cod_dir, ids)
