"""The COD client (search, selection, download) against a fake COD on 127.0.0.1 serving real CIFs."""

from __future__ import annotations

import email.utils
import os
import time

import pytest
import requests
from cod_server import serve_cod
from test_formula import TRICKY

from helpers.fetch.cod import select
from helpers.fetch.cod_search import ask
from helpers.fetch.download import (
    FetchError,
    RateLimiter,
    RetryPolicy,
    cache_path,
    cif_problem,
    download_cifs,
    get_text,
    retry_after_seconds,
)
from helpers.process.atomic import write_atomic

CHNO = ("C", "H", "N", "O")
FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, connect_timeout=2.0, read_timeout=0.5)
WATER = {1011023, 1011063}  # H2 O: no carbon, so outside a "must contain C and H" search
#: one broad COD query (C and H, at most 4 elements): lets through rows the client must still drop
BROAD = {"el1": "C", "el2": "H", "strictmax": "4", "format": "json"}


def search(base_url, params, policy):
    """The rows of one COD search, retried like the fetch stage's queries."""
    return ask(base_url, params, policy=policy, limiter=RateLimiter(None), heartbeat=None).rows


def all_ids(cod_dir):
    return sorted(int(p.stem) for p in cod_dir.glob("*.cif"))


def test_search_json_and_csv_agree_and_select_chno(cod_dir):
    with serve_cod(cod_dir) as cod:
        json_rows = search(cod.url, BROAD, FAST)
        csv_rows = search(cod.url, BROAD | {"format": "csv"}, FAST)
        water = search(cod.url, {"el1": "H", "strictmax": "4", "format": "json"}, FAST)
    from_json, from_csv = select(json_rows, CHNO), select(csv_rows, CHNO)
    expected = set(all_ids(cod_dir)) - WATER
    assert {e.cod_id for e in from_json.entries} == {e.cod_id for e in from_csv.entries} == expected
    assert [e.meta for e in from_json.entries] == [e.meta for e in from_csv.entries]
    # 2003003 ('?') and 1506182 (no formula): COD's calcformula (from the atoms) gives the elements
    assert from_json.unknown_formula == 0
    assert {e.cod_id for e in select(water, CHNO).entries} == set(all_ids(cod_dir))
    metas = {e.cod_id: e.meta for e in from_json.entries}
    meta = metas[2100348]
    assert meta["cod_formula"] == "C6 H6" and meta["cod_vol"] > 0 and "cod_sg" in meta
    assert "cod_formula" not in metas[2003003] and metas[2003003]["cod_calcformula"].startswith("C48 H56 O")


def test_strict_filter_through_the_server(cod_dir):
    """COD's search lets through C,H + up to 2 other elements; the client must drop non-CHNO rows."""
    extra = [{"file": str(9000001 + i), "formula": f"- {f} -"} for i, (f, _) in enumerate(TRICKY)]
    extra.append({"file": "9000100", "formula": "- C5 H5 N O S -"})  # 5 elements: server drops it
    with serve_cod(cod_dir, extra_rows=extra) as cod:
        rows = search(cod.url, BROAD, FAST)
    got = {int(r["file"]) for r in rows}
    selected = {e.cod_id for e in select(rows, CHNO).entries}
    tricky_ok = {9000001 + i for i, (f, inside) in enumerate(TRICKY) if inside and "C" in f}
    # COD's strictmax=4 already drops the 5-element ones; the rest must be caught by the client
    tricky_bad = {9000001 + i for i, (f, inside) in enumerate(TRICKY) if not inside and len(f.split()) <= 4}
    assert tricky_bad <= got, "the server's broad search should pass the tricky non-CHNO rows"
    assert 9000100 not in got and 9000002 not in got  # strictmax=4; H2 O lacks C
    assert selected == (set(all_ids(cod_dir)) - WATER) | tricky_ok


def test_search_retries_transient_faults(cod_dir):
    with serve_cod(cod_dir, faults={"search": ["503", "html", "truncate", "429"]}, retry_after="0") as cod:
        rows = search(cod.url, BROAD, RetryPolicy(attempts=5, backoff=0.01))
        assert cod.hits["search"] == 5 and cod.served["search"] == 1
    assert len(rows) == len(all_ids(cod_dir)) - len(WATER)


def test_search_gives_up_with_history(cod_dir):
    with serve_cod(cod_dir, always={"search": "500"}) as cod, pytest.raises(FetchError) as info:
        search(cod.url, BROAD, RetryPolicy(attempts=3, backoff=0.01))
    assert info.value.reason == "HTTP 500" and info.value.history == ["HTTP 500"] * 3
    assert cod.hits["search"] == 3


FAULTS = {  # id -> faults served before the real file
    1000001: ["timeout"], 1100914: ["500", "503"], 1544173: ["429"], 2000334: ["truncate"],
    2000642: ["html"], 2001174: ["slow"], 2001925: ["reset"], 2006465: ["empty"],
    2007008: ["wrong_id", "502"], 2100348: [],
}


def test_download_survives_every_fault(cod_dir, tmp_path):
    with serve_cod(cod_dir, faults=FAULTS, hang=1.5, slow=0.2, retry_after="1") as cod:
        results = download_cifs(list(FAULTS), cod.url, tmp_path, concurrency=4, rate=None, policy=FAST,
                                progress=False)
        hits, served = dict(cod.hits), dict(cod.served)
    for result in results:
        expected_attempts = 1 + len([f for f in FAULTS[result.cod_id] if f != "slow"])
        assert (result.status, result.attempts) == ("downloaded", expected_attempts), result
        assert result.path == cache_path(tmp_path, result.cod_id)
        assert result.path.read_bytes() == (cod_dir / f"{result.cod_id}.cif").read_bytes()
        assert hits[result.cod_id] == expected_attempts and served[result.cod_id] == 1
    assert not list(tmp_path.rglob("*.part"))


def test_persistent_failures_are_reported(cod_dir, tmp_path):
    always = {1000001: "404", 1100914: "500", 1544173: "html", 2000334: "wrong_id", 2000642: "timeout"}
    ids = [*always, 9999999, 2100348]
    policy = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02, read_timeout=0.3)
    with serve_cod(cod_dir, always=always, hang=0.6) as cod:
        results = {r.cod_id: r for r in download_cifs(ids, cod.url, tmp_path, concurrency=4, rate=None,
                                                       policy=policy, progress=False)}
        hits = dict(cod.hits)
    reasons = {i: r.reason for i, r in results.items() if r.status == "failed"}
    assert reasons == {1000001: "HTTP 404", 1100914: "HTTP 500", 1544173: "HTML page instead of CIF",
                       2000334: "COD id mismatch (file is 1000001)", 2000642: "timeout",
                       9999999: "HTTP 404"}
    assert hits[1000001] == 1 and hits[9999999] == 1  # 404 is final, not retried
    assert hits[1100914] == 3 and results[1100914].history == ["HTTP 500"] * 3
    assert results[2100348].status == "downloaded"
    assert [p.stem for p in tmp_path.rglob("*.cif")] == ["2100348"]


def test_retry_after_is_honoured(cod_dir, tmp_path):
    with serve_cod(cod_dir, faults={2100348: ["429"]}, retry_after="1") as cod:
        download_cifs([2100348], cod.url, tmp_path, rate=None, policy=FAST, progress=False)
        (t429, _, first), (t_ok, _, second) = [e for e in cod.log if e[1] == 2100348]
    assert (first, second) == ("429", "ok")
    assert t_ok - t429 >= 0.95  # waited for Retry-After, not the 0.01 s backoff


def test_rerun_downloads_only_missing_or_broken(cod_dir, tmp_path):
    ids = [1000001, 1100914, 2000334, 2100348, 4021067]
    with serve_cod(cod_dir) as cod:
        first = download_cifs(ids, cod.url, tmp_path, rate=None, policy=FAST, progress=False)
        assert {r.status for r in first} == {"downloaded"}
        cache_path(tmp_path, 1100914).unlink()                                        # missing
        cache_path(tmp_path, 2000334).write_text("<html><body>502 Bad Gateway</body></html>")  # broken
        cache_path(tmp_path, 2100348).write_bytes(b"")                                # empty
        stale = cache_path(tmp_path, 4021067).parent / ".4021067.cif.abc123.part"     # killed run
        stale.write_text("data_4021067\n_cell_length_a 1")
        second = download_cifs(ids, cod.url, tmp_path, rate=None, policy=FAST, progress=False)
        hits = dict(cod.hits)
    assert {r.cod_id: r.status for r in second} == {
        1000001: "cached", 1100914: "downloaded", 2000334: "downloaded", 2100348: "downloaded",
        4021067: "cached"}
    assert hits == {1000001: 1, 1100914: 2, 2000334: 2, 2100348: 2, 4021067: 1}
    assert not stale.exists()
    for i in ids:
        assert cache_path(tmp_path, i).read_bytes() == (cod_dir / f"{i}.cif").read_bytes()


def test_get_text_does_not_retry_client_errors(cod_dir):
    with serve_cod(cod_dir) as cod, pytest.raises(FetchError) as info:
        get_text(requests.Session(), cod.url + "nothing-here", policy=FAST, limiter=RateLimiter(None))
    assert info.value.reason == "HTTP 404" and info.value.attempts == 1


def test_rate_limiter_spaces_and_defers():
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.5, 0.5] and now[0] == pytest.approx(1.0)
    limiter.defer(5.0)  # a 429 said "come back in 5 s"
    limiter.wait()
    assert slept[-1] == pytest.approx(5.0)
    unlimited = RateLimiter(None, clock=lambda: now[0], sleep=sleep)
    unlimited.wait()
    unlimited.wait()
    assert len(slept) == 3


def test_retry_after_parsing():
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds(future) <= 30
    assert retry_after_seconds(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_cif_problem(cod_dir):
    text = (cod_dir / "2100348.cif").read_text()
    assert cif_problem(text, 2100348) is None
    assert cif_problem(text, 2100349) == "COD id mismatch (file is 2100348)"
    assert cif_problem("   \n", 1) == "empty body"
    assert cif_problem("<!DOCTYPE html><html>error</html>", 1) == "HTML page instead of CIF"
    assert cif_problem("loop_\n_a\n1\n", 1) == "no data_ block"
    # no id stated in the file (block name not a COD id, no _cod_database_code): accepted
    assert cif_problem((cod_dir / "4021477.cif").read_text(), 4021477) is None
    assert cif_problem("data_x\n_note\n;\nunterminated text field\n", 1).startswith("CIF parse error")
    cut = text[: text.index("_atom_site_fract_z") + 200]  # cut inside the atom loop
    assert cif_problem(cut, 2100348).startswith("CIF parse error (RuntimeError: CIF loop ended")


def test_write_atomic_leaves_old_or_new(tmp_path, monkeypatch):
    target = tmp_path / "a" / "1000001.cif"
    write_atomic(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and not list(target.parent.glob("*.part"))
