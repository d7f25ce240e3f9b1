"""The study's method as the fast path's fallback: what the fast path leaves at the step cap is relaxed again
one crystal at a time in float64 from ASE's default Hessian, so a result no longer depends on which crystals
shared a pass."""

import numpy as np
import pandas as pd
import pytest

from helpers.analysis.stage import row_errors, status_counts
from helpers.relax import fallback
from helpers.relax.engine import RelaxSettings, relax
from helpers.relax.fallback import awaits_fallback, is_final, study_method
from helpers.relax.potentials.registry import get_potential
from helpers.relax.stage import finished_ids, relax_input, run_batch
from helpers.store import db as dbmod

#: a step cap the four small crystals all reach on both paths (the fallback's mechanics, not its verdict)
CAPPED = RelaxSettings(max_steps_base=12, steps_per_atom=0)


def rows_by_id(path):
    return {row.structure_id: row for row in dbmod.connect(path).select()}


def test_which_rows_are_final():
    side_by_side = {"status": "step_cap", "strategy": "fast", "draft_calls": 12}
    assert not is_final(side_by_side) and awaits_fallback(side_by_side)
    assert not is_final({**side_by_side, "draft_calls": 0})  # side by side without a draft
    assert not is_final({"status": "step_cap", "strategy": "fast", "hessian_seeded": 1})  # a seeded BFGS
    assert not is_final({"status": "step_cap", "strategy": "study", "hessian_seeded": 1})
    assert is_final({**side_by_side, "fallback": "study"})
    # one crystal at a time from ASE's start (xTB, AIMNet2; a seed that did not cover the elements): the
    # study's method whatever the strategy
    assert is_final({"status": "step_cap", "strategy": "fast"})
    assert is_final({"status": "step_cap", "strategy": "fast", "hessian_seeded": 0})
    assert is_final({"status": "step_cap"})  # rows from before the strategy field
    assert is_final({"status": "converged", "strategy": "fast", "draft_calls": 40})
    assert is_final({"status": "exploded", "strategy": "fast", "draft_calls": 40})
    assert not is_final({"status": "error", "strategy": "fast"})


def test_the_studys_method_keeps_what_defines_the_minimum():
    fast = RelaxSettings(potential="sevennet0-d3", fmax=1e-3, steps_per_atom=4, hessian_seed="ani2x",
                         pressure="experimental")
    study = study_method(fast)
    assert (study.strategy, study.draft, study.hessian_seed) == ("study", None, None)
    assert (study.fmax, study.steps_per_atom, study.pressure, study.cell_filter) == (1e-3, 4, "experimental",
                                                                                    "frechet")
    assert fallback.is_study_method(study) and not fallback.is_study_method(fast)
    assert study.hash() == RelaxSettings(potential="sevennet0-d3", fmax=1e-3, steps_per_atom=4,
                                         pressure="experimental", strategy="study").hash()


def test_a_fast_step_cap_is_relaxed_again_the_studys_way(small_clean_db, tmp_path, model_dir):
    """Every crystal the fast path caps is redone with the study's method: its row is that relaxation (the
    same atoms, to 1e-10 Å, as relax() alone with the study's settings), keeps the fast settings' hash and
    costs both relaxations; a rerun redoes nothing."""
    out = str(tmp_path / "relaxed.db")
    settings = CAPPED.resolved(6)
    report = run_batch(small_clean_db, out, settings=settings, progress=False, n_threads=1)
    rows = rows_by_id(out)
    assert len(rows) == len(report.rows) == 4 and report.time_split["draft_passes"] == 12  # the fast pass ran
    calc, study = get_potential("ani1x").calculator(), study_method(settings)
    clean = dbmod.connect(small_clean_db)
    for sid, row in rows.items():
        assert (row.status, row.fallback, row.fast_steps, row.steps) == ("step_cap", "study", 12, 12)
        assert row.strategy == "fast" and row.settings_hash == report.settings_hash
        assert row.get("draft_calls") is None and row.force_calls == 13  # the study's: no draft, one call a step
        assert row.cost_time > row.wall_time > 0  # the fast relaxation's share of its passes added
        assert "relaxed again with the study's method" in row.message
        alone = relax(relax_input(clean.get(structure_id=sid), study), calc, study)
        assert np.abs(row.positions - alone.atoms.positions).max() < 1e-10
        assert np.abs(row.cell - alone.atoms.cell).max() < 1e-10
        assert row.e_final == pytest.approx(alone.e_final, abs=1e-9)
    assert finished_ids(dbmod.connect(out), report.settings_hash) == set(rows)
    assert set(report.table()["fallback"]) == {"study"}  # 03_relax's batch table says so too
    # 04_analysis: errors.csv's `fallback`, counted in the status table
    errors = pd.DataFrame([row_errors(row) for row in rows.values()]).rename(columns={"potential_name": "potential"})
    assert set(errors["fallback"]) == {"study"}
    counts = status_counts(errors)
    assert (counts.loc["ani1x", "step_cap"], counts.loc["ani1x", "study_fallback"]) == (4, 4)
    again = run_batch(small_clean_db, out, settings=settings, progress=False, n_threads=1)
    assert again.skipped_done == 4 and not again.rows


@pytest.mark.parametrize("shortcut", [False, True], ids=["from ASE's start", "seeded"])
def test_one_crystal_at_a_time_falls_back_only_from_a_seeded_start(small_clean_db, tmp_path, model_dir, shortcut):
    """One crystal at a time (trajectories asked for): from ASE's start Hessian the relaxation is the study's
    method already, so its step cap stands (no second run); from a seeded Hessian it is redone the study's way."""
    settings = RelaxSettings(max_steps_base=12, steps_per_atom=0, hessian_seed="ani2x" if shortcut else None)
    out = str(tmp_path / "relaxed.db")
    report = run_batch(small_clean_db, out, settings=settings.resolved(6), trajectory_dir=str(tmp_path / "traj"),
                       progress=False, n_threads=1, limit=2)
    rows = rows_by_id(out)
    assert len(rows) == len(report.rows) == 2 and report.time_split is None
    for sid, row in rows.items():
        assert row.status == "step_cap" and row.force_calls == 13
        assert row.get("fallback") == ("study" if shortcut else None)
        assert (tmp_path / "traj" / f"{sid}.study.traj").exists() == shortcut
    assert list(report.table()["fallback"]) == (["study"] * 2 if shortcut else [None] * 2)
    assert finished_ids(dbmod.connect(out), report.settings_hash) == set(rows)


def test_a_capped_crystals_answer_does_not_depend_on_its_batch(small_clean_db, tmp_path, model_dir):
    """The same crystals relaxed in one batch of four and in four batches of one end in the same atoms."""
    settings = CAPPED.resolved(6)
    together = str(tmp_path / "together.db")
    run_batch(small_clean_db, together, settings=settings, progress=False, n_threads=1)
    apart = str(tmp_path / "apart.db")
    for batch in range(4):
        run_batch(small_clean_db, apart, settings=settings, batch=batch, n_batches=4, progress=False, n_threads=1)
    merged = {}
    for shard in sorted(tmp_path.glob("apart.batch*.db")):
        merged.update(rows_by_id(str(shard)))
    one = rows_by_id(together)
    assert set(one) == set(merged) and len(one) == 4
    for sid, row in one.items():
        assert np.abs(row.positions - merged[sid].positions).max() < 1e-10
        assert row.e_final == pytest.approx(merged[sid].e_final, abs=1e-9)


def test_a_rerun_gives_a_waiting_fast_row_the_studys_method_only(small_clean_db, tmp_path, model_dir, monkeypatch):
    """Rows the fast path capped before the fallback existed (or before a stop) are redone the study's way,
    without relaxing them fast again; until then a campaign does not count them finished."""
    out = str(tmp_path / "relaxed.db")
    settings = CAPPED.resolved(6)
    with monkeypatch.context() as old_code:  # the fast rows as a run before the fallback wrote them
        old_code.setattr("helpers.relax.stage.needs_study_fallback", lambda result, settings: False)
        first = run_batch(small_clean_db, out, settings=settings, progress=False, n_threads=1)
    waiting = rows_by_id(out)
    assert {r.status for r in waiting.values()} == {"step_cap"} and not any(r.get("fallback") for r in waiting.values())
    assert finished_ids(dbmod.connect(out), first.settings_hash) == set()
    report = run_batch(small_clean_db, out, settings=settings, progress=False, n_threads=1)
    assert report.time_split is None and len(report.rows) == 4  # no fast pass: the study's method alone
    for sid, row in rows_by_id(out).items():
        assert row.fallback == "study" and row.fast_steps == waiting[sid].steps
        assert row.cost_time == pytest.approx(waiting[sid].cost_time + row.wall_time, abs=0.05)
    assert len(rows_by_id(out)) == 4  # replaced, not added


@pytest.mark.slow
def test_a_crystal_the_study_converges_converges(tmp_path, shared_data, model_dir):
    """cod-7214418 (40 atoms), ANI-1x, the study's settings: the fast path relaxing it alone ends at the step cap
    (540 steps; in the campaign too), the study's method converges it in 477 steps at ΔV = −17.20 %
    (docs/reliability.md). Converged is what is recorded."""
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    fetch(source=str(shared_data / "cod-sample"), raw_db=str(tmp_path / "raw.db"), cod_ids=[7214418], progress=False)
    run_filter(str(tmp_path / "raw.db"), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"), progress=False)
    out = str(tmp_path / "relaxed.db")
    run_batch(str(tmp_path / "clean.db"), out, progress=False, n_threads=1)
    row = rows_by_id(out)["cod-7214418"]
    assert row.status == "converged" and row.fmax_final <= 5e-4
    assert 100 * (row.V_relaxed / row.V_exp - 1) == pytest.approx(-17.20, abs=0.02)
