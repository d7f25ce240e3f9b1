"""01_fetch true to the real COD service (issue 17): exact element sets, no silent empty answers,
saved answers per server + query said out loud, CIFs cross-checked against the search row, a
slow search waited for, redirects to other servers refused, unusable rows recorded — against a
fake COD on 127.0.0.1 that speaks COD's real answer format and serves the real files."""

from __future__ import annotations

import json

import pytest
import requests
from cod_server import COLUMNS, cut_in_atom_loop, serve_cod
from conftest import subset_dir

from helpers.fetch import fetch
from helpers.fetch.cod_search import ask, element_sets, exact_params, search_all
from helpers.fetch.cod_verify import row_mismatch
from helpers.fetch.download import FetchError, RateLimiter, RetryPolicy, cache_path, download_cifs
from helpers.store import db as dbmod

CHNO = ("C", "H", "N", "O")
FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02, connect_timeout=2.0, read_timeout=0.5,
                   search_read_timeout=0.5)
NO_WAIT = RateLimiter(None)


@pytest.fixture(autouse=True)
def no_cod_source(monkeypatch):
    monkeypatch.delenv("COD_SOURCE", raising=False)


def port_of(url):
    return int(url.split(":")[2].split("/")[0])


def meta_of(cod_url, ids):
    """The search rows of ``ids`` as the client keeps them (``cod_*``), from the fake COD's answer."""
    from helpers.fetch.cod import entry_from_row

    rows = ask(cod_url, {"strictmax": "4", "format": "json"}, policy=FAST, limiter=NO_WAIT, heartbeat=None).rows
    return {e.cod_id: e.meta for e in map(entry_from_row, rows) if e.cod_id in ids}


def test_fake_cod_speaks_the_real_format(cod_dir):
    """Top-level array, 73 keys in COD's order, every value a string or null, '?' formula, html default."""
    with serve_cod(cod_dir) as cod:
        answer = requests.get(cod.url + "result", params={"el1": "C", "strictmax": "4", "format": "json"},
                              timeout=10)
        default = requests.get(cod.url + "result", params={"el1": "C", "strictmax": "4"}, timeout=10)
    rows = json.loads(answer.text)
    assert isinstance(rows, list) and rows
    assert all(list(r) == COLUMNS for r in rows) and len(COLUMNS) == 73
    assert all(v is None or isinstance(v, str) for r in rows for v in r.values())
    by_id = {r["file"]: r for r in rows}
    assert by_id["2100348"]["formula"] == "- C6 H6 -" and by_id["2100348"]["Z"] == "4"
    assert by_id["2003003"]["formula"] == "?" and by_id["2003003"]["calcformula"].startswith("- C48 H56 O")
    assert by_id["1100914"]["duplicateof"] == "2000169"  # _cod_duplicate_entry
    assert "has coordinates" in by_id["2100348"]["flags"]
    assert default.headers["Content-Type"].startswith("text/html")


def test_exact_element_sets():
    assert len(element_sets(CHNO)) == 15 and element_sets(CHNO)[0] == CHNO and ("H", "O") in element_sets(CHNO)
    assert element_sets(CHNO, must_contain=("C",)) == [s for s in element_sets(CHNO) if "C" in s]
    assert exact_params(("H", "O")) == {"el1": "H", "el2": "O", "strictmin": "2", "strictmax": "2",
                                        "format": "json"}
    with pytest.raises(ValueError, match="at most 8"):
        element_sets(("C", "H", "N", "O", "S", "F", "Cl", "Br", "I"))


def test_web_and_folder_give_the_same_raw_database(tmp_path, cod_dir):
    """Entries without C or H (water here) are asked for: the web run equals the folder run."""
    with serve_cod(cod_dir) as cod:
        web = fetch(cod.url, str(tmp_path / "web.db"), cache_dir=tmp_path / "cache", rate=None, retry=FAST,
                    progress=False)
    fetch(str(cod_dir), str(tmp_path / "folder.db"), progress=False)
    a = {r.structure_id: r for r in dbmod.connect(str(tmp_path / "web.db")).select()}
    b = {r.structure_id: r for r in dbmod.connect(str(tmp_path / "folder.db")).select()}
    assert len(a) == len(b) == 67 and set(a) == set(b)
    for sid, row in a.items():
        assert row.toatoms() == b[sid].toatoms(), sid
        assert row.sha256 == b[sid].sha256 and row.readable == b[sid].readable
    assert a["cod-1011023"].cod_formula == "H2 O"
    assert a["cod-1100914"].cod_duplicateof == b["cod-1100914"].cod_duplicateof == 2000169
    assert sum(q.rows for q in web.searches) == 67 and len(web.searches) == 15


def test_empty_or_malformed_search_answer_is_a_fault(cod_dir):
    for fault in ("empty", "garbage", "html"):
        with serve_cod(cod_dir, always={"search": fault}) as cod, pytest.raises(FetchError):
            ask(cod.url, exact_params(CHNO), policy=FAST, limiter=NO_WAIT, heartbeat=None)
        assert cod.hits["search"] == FAST.attempts
    with serve_cod(cod_dir, faults={"search": ["empty", "garbage"]}) as cod:
        rows = ask(cod.url, exact_params(CHNO), policy=FAST, limiter=NO_WAIT, heartbeat=None).rows
    assert len(rows) == 32 and cod.hits["search"] == 3


def test_empty_or_short_answer_never_replaces_a_good_saved_one(tmp_path, cod_dir):
    saved = tmp_path / "search"
    messages = []
    with serve_cod(cod_dir) as cod:
        first = search_all(cod.url, CHNO, saved_dir=saved, policy=FAST, limiter=NO_WAIT, say=None)
        port = port_of(cod.url)
    files = {p: p.read_bytes() for p in saved.glob("*.json")}
    # COD now answers {C,H,N,O} with an empty body, then a tenth of the rows (3 of 32), every time
    with serve_cod(cod_dir, port=port, always={"search": "few"}, faults={"search": ["empty"]}) as cod:
        again = search_all(cod.url, CHNO, saved_dir=saved, policy=FAST, limiter=NO_WAIT, say=messages.append)
    assert sorted(map(json.dumps, again.rows)) == sorted(map(json.dumps, first.rows))  # the saved rows
    by_set = {q.elements: q for q in again.queries}
    assert by_set["C,H,N,O"].source == "saved answer" and by_set["C,H,N,O"].rows == 32
    assert "only 3 entries where the saved answer to this query had 32" in by_set["C,H,N,O"].problem
    assert any(m.startswith("WARNING") and "SAVED ANSWER" in m and "old" in m for m in messages)
    for path, content in files.items():
        if path.name.startswith("C-H-N-O."):
            assert path.read_bytes() == content, "a short answer overwrote the saved one"


def test_saved_answer_of_another_server_is_not_used(tmp_path, cod_dir):
    saved = tmp_path / "search"
    with serve_cod(cod_dir) as cod:
        search_all(cod.url, CHNO, saved_dir=saved, policy=FAST, limiter=NO_WAIT, say=None)
    with serve_cod(cod_dir, always={"search": "503"}) as other, pytest.raises(RuntimeError, match="no earlier"):
        search_all(other.url, CHNO, saved_dir=saved, policy=FAST, limiter=NO_WAIT, say=None)


def test_slow_search_is_waited_for_and_said(cod_dir):
    """The first byte after 1.2 s: longer than a CIF's read timeout, within the search's."""
    policy = RetryPolicy(attempts=3, backoff=0.01, read_timeout=0.3, search_read_timeout=5.0)
    messages = []
    with serve_cod(cod_dir, faults={"search": ["slow"]}, slow=1.2) as cod:
        answer = ask(cod.url, exact_params(CHNO), policy=policy, limiter=NO_WAIT, say=messages.append,
                     heartbeat=0.3)
        assert cod.hits["search"] == 1  # answered on the first attempt, not sent again
    assert len(answer.rows) == 32
    assert any("no answer yet after" in m for m in messages)


def test_search_retries_are_said(cod_dir):
    messages = []
    with serve_cod(cod_dir, faults={"search": ["503", "empty"]}) as cod:
        ask(cod.url, exact_params(CHNO), policy=FAST, limiter=NO_WAIT, say=messages.append, heartbeat=None)
    assert [m.split("failed ")[1].split(";")[0] for m in messages] == [
        "(HTTP 503)", "(COD search returned an empty body, not json (no answer is not 'no entries'))"]


CUT_FAULTS = ["truncate_nolength", "chunked_short", "chunked_truncate", "garbage", "stall"]


@pytest.mark.parametrize("fault", CUT_FAULTS)
def test_cut_or_broken_cif_is_downloaded_again(tmp_path, cod_dir, fault):
    ids = [2100348, 1000001, 4021067]  # 48, 1148 atoms in the cell ...
    with serve_cod(cod_dir, faults={i: [fault] for i in ids}, hang=1.0) as cod:
        expected = meta_of(cod.url, ids)
        results = download_cifs(ids, cod.url, tmp_path, rate=None, policy=FAST, progress=False,
                                expected=expected)
    for result in results:
        assert result.status == "downloaded" and result.attempts == 2, result
        assert result.path.read_bytes() == (cod_dir / f"{result.cod_id}.cif").read_bytes()
        assert result.mismatch is None


def test_cut_file_is_seen_by_the_cross_check(cod_dir):
    with serve_cod(cod_dir) as cod:
        meta = meta_of(cod.url, [1000001])[1000001]
    text = (cod_dir / "1000001.cif").read_text()
    assert row_mismatch(text, meta) is None
    cut = cut_in_atom_loop(text.encode()).decode()
    problem = row_mismatch(cut, meta)
    assert problem.startswith("atoms cut short:") and "cellformula" in problem
    assert "_cell_length_a 12 vs COD 48.48" in row_mismatch(text.replace("48.480", "12.0"), meta)


def test_cached_cut_file_is_repaired_on_rerun(tmp_path, cod_dir):
    ids = [1000001, 2100348]
    with serve_cod(cod_dir) as cod:
        expected = meta_of(cod.url, ids)
        for i in ids:  # what an older run left: files cut without Content-Length, stored as complete
            path = cache_path(tmp_path, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cut_in_atom_loop((cod_dir / f"{i}.cif").read_bytes()))
        results = download_cifs(ids, cod.url, tmp_path, rate=None, policy=FAST, progress=False,
                                expected=expected)
        again = download_cifs(ids, cod.url, tmp_path, rate=None, policy=FAST, progress=False,
                              expected=expected)
        assert {i: cod.hits[i] for i in ids} == {1000001: 1, 2100348: 1}
    assert [r.status for r in results] == ["downloaded"] * 2
    assert all(r.redownloaded.startswith("atoms cut short") for r in results)
    assert [r.status for r in again] == ["cached"] * 2
    for i in ids:
        assert cache_path(tmp_path, i).read_bytes() == (cod_dir / f"{i}.cif").read_bytes()


def test_file_that_cod_serves_disagreeing_is_kept_with_the_reason(tmp_path, cod_dir):
    """The same bytes twice: not a cut transfer but what COD has (kept, disagreement recorded)."""
    with serve_cod(cod_dir) as cod:
        meta = meta_of(cod.url, [2100348])
        meta[2100348]["cod_z"] = 8
        [result] = download_cifs([2100348], cod.url, tmp_path, rate=None, policy=FAST, progress=False,
                                 expected=meta)
        assert cod.hits[2100348] == 2
    assert result.status == "downloaded" and result.mismatch == "Z 4 vs COD 8"


def test_redirects(tmp_path, cod_dir):
    ids = [2100348]
    with serve_cod(cod_dir) as other, serve_cod(cod_dir, always={2100348: "redirect"},
                                                  redirect_to=other.url) as cod:
        [refused] = download_cifs(ids, cod.url, tmp_path / "a", rate=None, policy=FAST, progress=False)
        assert other.hits[2100348] == 0  # nothing sent to the other server
        [allowed] = download_cifs(ids, cod.url, tmp_path / "b", rate=None, policy=FAST, progress=False,
                                  allowed_origins=[other.url])
    assert refused.status == "failed" and refused.reason.startswith("redirected to another server")
    assert refused.attempts == 1
    assert allowed.status == "downloaded" and allowed.url == other.url + "2100348.cif"
    with serve_cod(cod_dir, faults={2100348: ["redirect_local"]}) as cod:
        report = fetch(cod.url, str(tmp_path / "raw.db"), cod_ids=ids, cache_dir=tmp_path / "c", rate=None,
                       retry=FAST, progress=False)
    row = next(dbmod.connect(str(tmp_path / "raw.db")).select())
    assert report.downloaded == 1 and row.source == cod.url + "cif/2/10/03/2100348.cif"  # the final URL


def test_unusable_and_retracted_rows_are_recorded(tmp_path, cod_dir):
    served = subset_dir(tmp_path, cod_dir, [2100348, 2000334])
    extra = [{"file": "abc", "formula": "- C6 H6 -"}, {"file": None, "formula": "- C H4 -"}]
    with serve_cod(served, extra_rows=extra, row_overrides={2000334: {"status": "retracted"}}) as cod:
        report = fetch(cod.url, str(tmp_path / "raw.db"), cache_dir=tmp_path / "cache", rate=None, retry=FAST,
                       progress=False)
    assert report.failed == {"abc": "search row whose file 'abc' is not a COD id",
                             "None": "search row whose file None is not a COD id"}
    assert report.skipped == {"search row without a COD id": 2, "retracted by COD (status = retracted)": 1}
    assert report.in_raw_db == 1 and report.failures().shape[0] == 2


def test_fetch_repairs_files_cut_without_content_length(tmp_path, cod_dir):
    ids = [1000001, 2100348, 4021067, 7100406]
    served = subset_dir(tmp_path, cod_dir, ids)
    raw = str(tmp_path / "raw.db")
    with serve_cod(served, faults={i: ["truncate_nolength"] for i in ids}) as cod:
        report = fetch(cod.url, raw, cache_dir=tmp_path / "cache", rate=None, retry=FAST, progress=False)
    assert report.downloaded == 4 and not report.failed
    for row in dbmod.connect(raw).select():
        assert row.data["cif"].encode() == (cod_dir / f"{row.cod_id}.cif").read_bytes()
        assert cache_path(tmp_path / "cache", row.cod_id).read_bytes() == (cod_dir / f"{row.cod_id}.cif").read_bytes()


def test_fetch_waits_for_a_slow_search(tmp_path, cod_dir):
    """Every search answers after 1 s, over a CIF read timeout of 0.3 s: the fetch still gets through."""
    served = subset_dir(tmp_path, cod_dir, [2100348, 1011023])
    with serve_cod(served, always={"search": "slow"}, slow=1.0) as cod:
        report = fetch(cod.url, str(tmp_path / "raw.db"), elements=("C", "H", "O"), cache_dir=tmp_path / "cache",
                       rate=None, retry=RetryPolicy(attempts=2, backoff=0.01, read_timeout=0.3), progress=False)
        assert cod.hits["search"] == 7
    assert report.in_raw_db == 2


def test_fetch_does_not_reuse_another_servers_answer(tmp_path, cod_dir):
    served = subset_dir(tmp_path, cod_dir, [2100348])
    cache = tmp_path / "cache"
    with serve_cod(served) as cod:
        fetch(cod.url, str(tmp_path / "raw.db"), cache_dir=cache, rate=None, retry=FAST, progress=False)
    with serve_cod(served, always={"search": "503"}) as other, pytest.raises(RuntimeError):
        fetch(other.url, str(tmp_path / "raw2.db"), cache_dir=cache, rate=None, retry=FAST, progress=False)


def test_same_server_means_same_origin():
    from helpers.fetch.download import _upgrade, origin

    assert origin("https://www.crystallography.net/cod/") == origin("https://WWW.crystallography.net:443/x.cif")
    assert origin("http://127.0.0.1:1/cod/") != origin("http://127.0.0.1:2/cod/")  # another port: another server
    assert _upgrade("http://www.crystallography.net/cod/") == origin("https://www.crystallography.net/cod/1.cif")
    assert _upgrade("http://127.0.0.1:8080/cod/") is None


def test_cod_down_falls_back_without_retrying_every_query_in_full(tmp_path, cod_dir):
    saved = tmp_path / "search"
    policy = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.02, read_timeout=0.5)
    with serve_cod(cod_dir) as cod:
        search_all(cod.url, CHNO, saved_dir=saved, policy=policy, limiter=NO_WAIT, say=None)
        port = port_of(cod.url)
    with serve_cod(cod_dir, port=port, always={"search": "503"}) as cod:
        outcome = search_all(cod.url, CHNO, saved_dir=saved, policy=policy, limiter=NO_WAIT, say=None)
        assert cod.hits["search"] == 4 + 14 * 2  # the first query in full, then 2 attempts each
    assert {q.source for q in outcome.queries} == {"saved answer"} and len(outcome.rows) == 67
