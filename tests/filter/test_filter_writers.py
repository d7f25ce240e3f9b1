"""02_filter's writers: concurrent runs never duplicate, an interrupted rerun never leaves a structure in
both databases, copies of one structure are counted once, and a foreign raw database is refused."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from ase import Atoms

from helpers.fetch.stage import fetch
from helpers.filter.stage import run_filter
from helpers.store import db as dbmod

IDS = (2007300, 4021477, 2000642, 1011063, 2100348, 2102163, 2103187, 7103889, 2010442, 1000001, 2003398,
       4100752)


@pytest.fixture(scope="module")
def raw_db(tmp_path_factory, cod_dir):
    path = tmp_path_factory.mktemp("writers") / "raw.db"
    fetch(str(cod_dir), str(path), cod_ids=IDS, progress=False)
    return path


def structure_ids(path) -> list[str]:
    return sorted(str(r.structure_id) for r in dbmod.connect(path).select())


def _filter(raw, clean, rejects, start) -> None:
    start.wait()
    run_filter(raw, clean, rejects, progress=False, chunk_size=3)


def test_two_filter_runs_at_once_write_each_structure_once(raw_db, tmp_path):
    out = [str(tmp_path / name) for name in ("clean.db", "rejects.db")]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_filter, args=(str(raw_db), *out, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    clean, rejects = structure_ids(out[0]), structure_ids(out[1])
    assert len(clean) == len(set(clean)) and len(rejects) == len(set(rejects))
    assert sorted(clean + rejects) == structure_ids(raw_db)


def test_a_writer_locks_the_clean_database_before_the_rejects(raw_db, tmp_path, monkeypatch):
    """Two writers that each hold one database and wait for the other both fail ("database is locked"):
    whenever a filter run touches the rejects, it already holds the clean database's write lock."""
    import sqlite3

    clean, rejects = str(tmp_path / "clean.db"), str(tmp_path / "rejects.db")

    def clean_is_locked() -> bool:
        con = sqlite3.connect(clean, timeout=0, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            con.close()

    seen = []

    def watched(write):
        def call(db, *args, **kwargs):
            if db.filename == rejects:
                seen.append(clean_is_locked())
            return write(db, *args, **kwargs)
        return call

    monkeypatch.setattr(dbmod, "upsert_in_transaction", watched(dbmod.upsert_in_transaction))
    monkeypatch.setattr(dbmod, "delete_in_transaction", watched(dbmod.delete_in_transaction))
    report = run_filter(str(raw_db), clean, rejects, progress=False, chunk_size=4)
    n_rejected = len(structure_ids(rejects))
    assert 0 < n_rejected < len(report.results)  # both databases written in the same run
    assert len(seen) >= n_rejected and all(seen)


DRIVER = """
import sys
from helpers.filter.stage import run_filter
run_filter(sys.argv[1], sys.argv[2], sys.argv[3], min_distance=float(sys.argv[4]), progress=False, chunk_size=1)
"""


@pytest.mark.slow
def test_an_interrupted_rerun_never_leaves_a_structure_in_both(tmp_path, cod_dir):
    """A stricter rerun moves clean structures to the rejects; killed (SIGKILL) after 1, 4 and 9 of its
    writes, no structure is ever in both databases, and the next run completes the move."""
    raw = str(tmp_path / "raw.db")
    fetch(str(cod_dir), raw, progress=False)
    clean, rejects = str(tmp_path / "clean.db"), str(tmp_path / "rejects.db")
    every = structure_ids(raw)
    for writes in (1, 4, 9):
        run_filter(raw, clean, rejects, progress=False)  # the lenient verdicts again
        before = len(structure_ids(rejects))
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, raw, clean, rejects, "1.3"],
                                env={**os.environ, "PYTHONPATH": os.getcwd()})
        deadline = time.monotonic() + 120
        while len(structure_ids(rejects)) < before + writes and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the rerun finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        in_clean, in_rejects = set(structure_ids(clean)), set(structure_ids(rejects))
        assert not in_clean & in_rejects, f"in both after {writes} writes: {in_clean & in_rejects}"
        assert len(in_rejects) >= before + writes
    run_filter(raw, clean, rejects, min_distance=1.3, progress=False)
    assert sorted(structure_ids(clean) + structure_ids(rejects)) == every


def test_the_same_structure_under_two_names_is_clean_once(tmp_path, cod_dir):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("2007300.cif", "copy-of-a-crystal.cif"):
        (src / name).write_bytes((cod_dir / "2007300.cif").read_bytes())
    fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    report = run_filter(str(tmp_path / "raw.db"), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"),
                        progress=False)
    assert structure_ids(tmp_path / "clean.db") == ["cod-2007300"]
    row = dbmod.connect(tmp_path / "rejects.db").get(structure_id="file-copy-of-a-crystal")
    assert row.checks == "duplicate_entry" and "cod-2007300" in row.reason
    assert report.counts().loc["duplicate_entry", "n"] == 1


def test_another_projects_database_as_raw_db_is_refused(tmp_path):
    foreign = dbmod.connect(tmp_path / "theirs.db")
    foreign.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), energy_label=1)
    with pytest.raises(ValueError, match="not a raw database written by 01_fetch"):
        run_filter(str(tmp_path / "theirs.db"), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"),
                   progress=False)
