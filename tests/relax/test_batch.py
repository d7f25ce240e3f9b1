"""Batches: deterministic cost-balanced split, per-structure commits, resume, idempotent merge."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers.analysis.stage import collect_errors
from helpers.relax.engine import RelaxSettings
from helpers.relax.stage import merge_shards, relax_cost, run_batch, split_batches
from helpers.store import db as dbmod
from helpers.store.shards import output_path, shard_paths

FAST = {"fmax": 0.05}  # loose tolerance: these tests check bookkeeping, not physics


def test_split_is_deterministic_complete_and_balanced():
    items = [(f"cod-{i}", n) for i, n in enumerate([24, 30, 36, 48, 80, 120, 200, 29, 31, 300, 60, 64])]
    batches = split_batches(items, 3)
    assert split_batches(list(reversed(items)), 3) == batches  # input order does not matter
    flat = sorted(s for b in batches for s in b)
    assert flat == sorted(s for s, _ in items)  # every structure exactly once
    natoms = dict(items)
    loads = [sum(relax_cost(natoms[s]) for s in b) for b in batches]
    assert max(loads) - min(loads) <= relax_cost(max(natoms.values()))  # LPT bound
    row_counts = [len(b) for b in batches]
    assert max(row_counts) > min(row_counts)  # balanced by cost, not by row count
    with pytest.raises(ValueError):
        split_batches(items, 0)


def test_output_path_shards_only_when_split():
    assert output_path("data/relaxed_{potential}.db", "ani1x", 0, 1) == "data/relaxed_ani1x.db"
    assert output_path("data/relaxed_{potential}.db", "ani1x", 2, 8) == "data/relaxed_ani1x.batch0002of0008.db"
    url = "postgresql://u:p@127.0.0.1:5432/relaxed"
    assert output_path(url, "ani1x", 2, 8) == url


def test_run_batch_resumes_and_retries_errors(small_clean_db, tmp_path, model_dir):
    out = str(tmp_path / "relaxed_{potential}.db")
    settings = RelaxSettings(**FAST)
    first = run_batch(small_clean_db, out, "ani1x", settings=settings, progress=False, n_threads=1)
    assert len(first.rows) == 4 and first.skipped_done == 0
    db = dbmod.connect(out.format(potential="ani1x"))
    assert db.count() == 4
    ids_before = {row.structure_id: row.id for row in db.select()}
    # a crashed structure is retried, finished ones are not redone
    victim = sorted(ids_before)[0]
    row = db.get(structure_id=victim)
    db.update(row.id, status="error")
    second = run_batch(small_clean_db, out, "ani1x", settings=settings, progress=False, n_threads=1)
    assert second.skipped_done == 3 and [r["structure_id"] for r in second.rows] == [victim]
    assert db.count() == 4
    after = {row.structure_id: row.id for row in db.select()}
    assert all(after[s] == ids_before[s] for s in ids_before if s != victim)
    # other settings are other work
    third = run_batch(small_clean_db, out, "ani1x", settings=RelaxSettings(fmax=0.04), limit=1,
                      progress=False, n_threads=1)
    assert len(third.rows) == 1 and db.count() == 5


def test_d3_rows_store_the_dispersion_energy(small_clean_db, tmp_path, model_dir):
    """A -d3 batch row carries e_dispersion(_initial); a plain ANI row does not."""
    out = str(tmp_path / "relaxed_{potential}.db")
    for potential in ("ani1x-d3", "ani1x"):
        settings = RelaxSettings(potential=potential, max_steps_base=2, steps_per_atom=0)
        run_batch(small_clean_db, out, potential, settings=settings, limit=1, progress=False, n_threads=1)
    d3_row = next(dbmod.connect(out.format(potential="ani1x-d3")).select())
    plain_row = next(dbmod.connect(out.format(potential="ani1x")).select())
    assert d3_row.e_dispersion < 0 and d3_row.e_dispersion_initial < 0
    assert "e_dispersion" not in plain_row.key_value_pairs
    # same geometry at the start: the D3 row's initial energy is the plain one plus its dispersion part
    assert d3_row.e_initial == pytest.approx(plain_row.e_initial + d3_row.e_dispersion_initial, abs=1e-6)
    errors = collect_errors([out.format(potential=p) for p in ("ani1x-d3", "ani1x")], small_clean_db)
    by_potential = errors.set_index("potential_name").e_dispersion
    assert by_potential["ani1x-d3"] == pytest.approx(d3_row.e_dispersion) and np.isnan(by_potential["ani1x"])


def test_shards_merge_idempotently(small_clean_db, tmp_path, model_dir):
    out = str(tmp_path / "relaxed_{potential}.db")
    for batch in range(2):
        run_batch(small_clean_db, out, "ani1x", batch=batch, n_batches=2, settings=RelaxSettings(**FAST),
                  progress=False, n_threads=1)
    assert len(shard_paths(out, "ani1x")) == 2
    assert merge_shards(out, "ani1x") == 4
    assert merge_shards(out, "ani1x") == 4
    merged = dbmod.connect(out.format(potential="ani1x"))
    assert sorted(r.structure_id for r in merged.select()) == sorted(
        r.structure_id for r in dbmod.connect(small_clean_db).select())
    assert all(r.status in ("converged", "step_cap") for r in merged.select())


def test_another_batch_split_recomputes_nothing(small_clean_db, tmp_path, model_dir):
    """Resuming on a machine with more cores (n_batches 2 -> 3) or with a wider subset (max_atoms) finds
    the structures the earlier split finished, in its shards or the merged database."""
    out = str(tmp_path / "relaxed_{potential}.db")
    settings = RelaxSettings(**FAST)
    for batch in range(2):
        run_batch(small_clean_db, out, "ani1x", batch=batch, n_batches=2, settings=settings, max_atoms=30,
                  progress=False, n_threads=1)
    first = {r.structure_id: r.wall_time for path in shard_paths(out, "ani1x") for r in dbmod.connect(path).select()}
    assert len(first) == 3  # the 36-atom crystal is outside max_atoms = 30
    reports = [run_batch(small_clean_db, out, "ani1x", batch=batch, n_batches=3, settings=settings, progress=False,
                         n_threads=1) for batch in range(3)]
    assert sum(r.skipped_done for r in reports) == 3 and sum(len(r.rows) for r in reports) == 1
    assert merge_shards(out, "ani1x") == 4
    merged = {r.structure_id: r.wall_time for r in dbmod.connect(out.format(potential="ani1x")).select()}
    assert all(merged[sid] == wall for sid, wall in first.items())  # the first split's rows, not redone
    again = run_batch(small_clean_db, out, "ani1x", settings=settings, progress=False, n_threads=1)  # one batch
    assert again.skipped_done == 4 and not again.rows


def test_unsupported_element_is_skipped_with_reason(tmp_path, cod_dir, model_dir):
    """A structure with an element the potential lacks is recorded as skipped, never crashes."""
    from ase import Atoms

    clean = dbmod.connect(tmp_path / "clean.db")
    atoms = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]], cell=[8, 8, 8], pbc=True)
    clean.write(atoms, structure_id="file-h2s", V_exp=512.0)
    report = run_batch(str(tmp_path / "clean.db"), str(tmp_path / "out.db"), "ani1x", progress=False)
    assert report.rows[0]["status"] == "skipped"
    assert "does not cover S" in report.rows[0]["message"]


@pytest.mark.slow
def test_sigkill_of_papermill_relax_then_resume(small_clean_db, tmp_path, model_dir):
    """Kill -9 the papermill process mid-batch; the rerun completes without duplicates or losses."""
    out = str(tmp_path / "relaxed_{potential}.db")
    target = out.format(potential="ani1x")
    cmd = [sys.executable, "-m", "papermill", "notebooks/03_relax.ipynb", str(tmp_path / "run1.ipynb"),
           "-p", "clean_db", small_clean_db, "-p", "out_db", out, "-p", "fmax", 0.01, "-p", "n_threads", 1]
    cmd = [str(c) for c in cmd]
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.Popen(cmd, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    done_before = 0
    while time.time() < deadline:
        if os.path.exists(target):
            try:
                done_before = dbmod.connect(target).count()
            except Exception:  # noqa: BLE001 - the file may be mid-creation
                done_before = 0
        if done_before >= 1 or proc.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done_before < 4, "the kill should land mid-batch"
    first_ids = {r.structure_id: r.id for r in dbmod.connect(target).select()}
    cmd[4] = str(tmp_path / "run2.ipynb")
    subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    final = dbmod.connect(target)
    sids = [r.structure_id for r in final.select()]
    assert len(sids) == len(set(sids)) == 4
    for sid, row_id in first_ids.items():  # finished work was kept, not redone
        assert final.get(structure_id=sid).id == row_id


def test_max_atoms_selects_the_small_structures_for_every_batch(small_clean_db):
    from helpers.relax.stage import batch_ids

    clean = dbmod.connect(small_clean_db)
    natoms = {r.structure_id: r.natoms for r in clean.select()}
    small = sorted(sid for sid, n in natoms.items() if n <= 30)
    assert 0 < len(small) < len(natoms)
    assert sorted(batch_ids(clean, 0, 1, max_atoms=30)) == small
    assert sorted(batch_ids(clean, 0, 2, max_atoms=30) + batch_ids(clean, 1, 2, max_atoms=30)) == small


def test_a_structure_id_cannot_write_its_trajectory_outside_trajectory_dir(small_clean_db, tmp_path):
    """A CIF block named ``x/../../../../elsewhere`` becomes part of a structure id; 03_relax's trajectory
    for it stays inside trajectory_dir."""
    clean = dbmod.connect(small_clean_db)
    row = next(r for r in clean.select() if r.natoms <= 30)
    evil = str(tmp_path / "evil_clean.db")
    dbmod.connect(evil).write(row.toatoms(), key_value_pairs={**row.key_value_pairs,
                                                            "structure_id": "x/../../../../elsewhere"},
                              data=dict(row.data))
    traj = tmp_path / "deep" / "er" / "traj"
    settings = RelaxSettings(potential="ani1x", strategy="study", max_steps_base=2, steps_per_atom=0)
    report = run_batch(evil, str(tmp_path / "out.db"), settings=settings, trajectory_dir=str(traj), progress=False)
    assert [r["status"] for r in report.rows] == ["step_cap"]
    written = [p for p in tmp_path.rglob("*.traj")]
    assert len(written) == 1 and written[0].parent == traj, written
    assert not (tmp_path / "elsewhere.traj").exists() and not list(tmp_path.parent.glob("elsewhere*"))
