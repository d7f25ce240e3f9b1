"""ASE databases: foreign files are refused untouched, and concurrent writers never duplicate a row."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3

import pytest
from ase import Atoms

from helpers.store import db as dbmod
from helpers.store.paths import file_in


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.execute("INSERT INTO notes VALUES ('keep me')")
    con.commit()
    con.close()
    before = _digest(path)
    for must_exist in (False, True):
        with pytest.raises(dbmod.NotAnASEDatabase, match="notes.db.*not an ASE database"):
            dbmod.connect(path, must_exist=must_exist)
    assert _digest(path) == before


def test_non_sqlite_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "structure.cif"
    path.write_text("data_x\n_cell_length_a 5\n")
    with pytest.raises(dbmod.NotAnASEDatabase, match="structure.cif is not an SQLite database"):
        dbmod.connect(path)
    assert path.read_text() == "data_x\n_cell_length_a 5\n"


def test_existing_ase_database_and_empty_file_open(tmp_path):
    db = dbmod.connect(tmp_path / "a.db")
    dbmod.upsert(db, Atoms("H"), {"structure_id": "x"})
    assert dbmod.connect(tmp_path / "a.db", must_exist=True).count() == 1
    (tmp_path / "empty.db").touch()  # e.g. created by a killed first writer
    assert dbmod.connect(tmp_path / "empty.db").count() == 0


def _upsert_many(path: str, start_event, n: int) -> None:
    db = dbmod.connect(path)
    start_event.wait()
    for i in range(n):
        dbmod.upsert(db, Atoms("H"), {"structure_id": f"s{i:03d}"}, step=i)


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_upserting_the_same_keys_never_duplicate(tmp_path, round_):
    """Two real processes write the same 300 structure ids at once: one row per id.

    Without the write lock taken before the look-up, 3 rounds out of 4 produced 1-4 duplicate rows.
    """
    path = str(tmp_path / "shared.db")
    dbmod.connect(path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_upsert_many, args=(path, start, 300)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ids = [r.structure_id for r in dbmod.connect(path).select()]
    assert len(ids) == len(set(ids)) == 300


@pytest.mark.parametrize("name", ["x/../../../../elsewhere", "../up", "/abs/path", "..", ".hidden", "a b:c*?"])
def test_file_in_stays_inside_its_folder(tmp_path, name):
    folder = tmp_path / "traj"
    path = file_in(folder, name, ".traj")
    assert path.parent == folder and path.suffix == ".traj"
    assert not path.name.startswith(".") and "/" not in path.name


def test_file_in_keeps_distinct_names_distinct(tmp_path):
    names = ["a/b", "a_b", "a:b", "A_b"]
    assert len({file_in(tmp_path, n, ".traj") for n in names}) == len(names)
    assert file_in(tmp_path, "cod-2100348", ".traj").name == "cod-2100348.traj"  # a safe name is kept


def test_a_full_disk_names_the_database(tmp_path, monkeypatch):
    import sqlite3

    db = dbmod.connect(tmp_path / "raw.db")

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "write", full)
    with pytest.raises(sqlite3.OperationalError, match=r"raw\.db: database or disk is full"):
        dbmod.upsert(db, Atoms("H"), {"structure_id": "x"})
