"""PostgreSQL databases: a real server (tests/store/pg_server.py), concurrent writers lose no row and make no
duplicate, and the notebooks run end to end with postgresql:// URLs."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from pg_server import pg_server, pg_url  # noqa: F401 - fixtures

from helpers.store import db as dbmod

N_WRITERS = 4
N_IDS = 40  # shared id space: every writer writes 25 ids, overlapping its neighbours'
PER_WRITER = 25


def _atoms_for(sid: str) -> Atoms:
    """A structure whose content follows from its id, so any mix-up between rows is visible."""
    n = 1 + int(sid[1:]) % 5
    atoms = Atoms("H" * n + "O", positions=np.arange(3 * (n + 1)).reshape(-1, 3) * 0.9,
                  cell=[6, 6, 6], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-float(n), forces=np.zeros((n + 1, 3)),
                                       stress=np.full(6, 0.01 * n))
    return atoms


def _writer(url: str, k: int, barrier) -> None:
    db = dbmod.connect(url)  # several processes may also be the first to create the tables
    barrier.wait()
    for i in range(PER_WRITER):
        sid = f"s{(i + 10 * k) % N_IDS:03d}"
        dbmod.upsert(db, _atoms_for(sid), {"structure_id": sid, "settings_hash": "abc"},
                     data={"writer": k}, writer=k, n_h=int(sid[1:]) % 5 + 1)


def test_concurrent_writers_lose_no_row_and_make_no_duplicate(pg_url):  # noqa: F811
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(N_WRITERS)
    procs = [ctx.Process(target=_writer, args=(pg_url, k, barrier)) for k in range(N_WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    written = {f"s{(i + 10 * k) % N_IDS:03d}" for k in range(N_WRITERS) for i in range(PER_WRITER)}
    db = dbmod.connect(pg_url, must_exist=True)
    rows = list(db.select())
    assert len(rows) == len(written) == db.count()
    assert sorted(r.structure_id for r in rows) == sorted(written)  # no duplicate, none lost
    for row in rows:  # each row's parts (atoms, keys, species, data) belong together
        expected = _atoms_for(row.structure_id)
        assert row.formula == expected.get_chemical_formula()
        assert row.n_h == len(expected) - 1 and row.energy == expected.get_potential_energy()
        assert row.data["writer"] == row.writer
        np.testing.assert_allclose(row.toatoms().get_stress(), expected.get_stress())
    for n in range(1, 6):  # element-count queries go through the species table
        assert db.count(f"H={n}") == sum(1 for s in written if int(s[1:]) % 5 + 1 == n)


def test_upsert_replaces_in_place_and_errors_roll_back(pg_url):  # noqa: F811
    db = dbmod.connect(pg_url)
    first = dbmod.upsert(db, _atoms_for("s001"), {"structure_id": "cod-1000001"},
                         **dbmod.clean_kvp({"cod_id": "1000001", "energy": 1.0, "formula": "x", "temperature": 100}))
    again = dbmod.upsert(db, _atoms_for("s002"), {"structure_id": "cod-1000001"}, temperature=120.0)
    assert first == again and db.count() == 1
    row = db.get(structure_id="cod-1000001")
    assert row.temperature == 120.0 and row.natoms == 4 and "cod_id" not in row.key_value_pairs
    with pytest.raises(ValueError):  # a bad key: the backend's own error, not a masking AttributeError
        dbmod.upsert(db, _atoms_for("s003"), {"structure_id": "cod-2"}, **{"bad key": 1})
    assert db.count() == 1
    dbmod.upsert(db, _atoms_for("s003"), {"structure_id": "cod-2"})  # the connection is usable again
    assert db.count() == 2


def test_connect_creates_missing_database_unless_it_must_exist(pg_server):  # noqa: F811
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="does not exist"):
        dbmod.connect(pg_server.url("never_made"), must_exist=True)
    url = pg_server.url("relaxed_{potential}").format(potential="ani1x")
    db = dbmod.connect(url)
    db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), structure_id="x")
    assert dbmod.connect(url, must_exist=True).count() == 1


@pytest.mark.slow
def test_notebooks_end_to_end_with_postgresql_urls(pg_server, cod_dir, tmp_path, model_dir):  # noqa: F811
    """01 into SQLite, then 02 -> 03 (two batches writing one database) -> 04 on PostgreSQL URLs."""
    from helpers.run.notebooks import execute, run_job

    logs = tmp_path / "executed"
    raw = str(tmp_path / "raw.db")
    clean, rejects = pg_server.url("e2e_clean"), pg_server.url("e2e_rejects")
    relaxed = pg_server.url("e2e_relaxed_{potential}")
    execute("01_fetch", {"source": str(cod_dir), "raw_db": raw, "cod_ids": [2007300, 4021477]}, logs)
    execute("02_filter", {"raw_db": raw, "clean_db": clean, "rejects_db": rejects}, logs)
    assert dbmod.connect(clean, must_exist=True).count() == 2
    for batch in range(2):
        run_job({"potential": "ani1x", "batch": batch, "n_batches": 2, "clean_db": clean,
                 "out_db": relaxed, "fmax": 0.05, "n_threads": 1}, logs)
    out = dbmod.connect(relaxed.format(potential="ani1x"), must_exist=True)
    assert sorted(r.structure_id for r in out.select()) == ["cod-2007300", "cod-4021477"]
    assert all(r.status == "converged" for r in out.select())
    # where it stands, read from the server as from SQLite (one database, no shards)
    from helpers.run import CampaignConfig, campaign_status

    config = CampaignConfig(work_dir=str(tmp_path), potentials=["ani1x"], n_batches=2, clean_db=clean,
                            out_db=relaxed, relax_parameters={"fmax": 0.05, "n_threads": 1})
    row = campaign_status(config).set_index("potential").loc["ani1x"]
    assert (row["to relax"], row["finished"], row["in flight"]) == (2, 2, "–") and row["core-hours spent"] > 0
    analysis = tmp_path / "analysis"
    executed = execute("04_analysis", {"relaxed_dbs": [relaxed.format(potential="ani1x")], "clean_db": clean,
                                       "out_dir": str(analysis), "structure": False}, logs)
    assert executed.is_file() and any(analysis.glob("*.png"))
