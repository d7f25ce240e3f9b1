"""The fast relax path: its answer comes from the full model at full tolerance, and matches the study's."""

from dataclasses import replace

import ase.io
import numpy as np
import pytest
from ase.filters import FrechetCellFilter

from helpers import db as dbmod
from helpers.batch import run_batch
from helpers.fastrelax import Stage, relax_fast, stage_calculator
from helpers.potentials import get_potential
from helpers.relax import RelaxSettings, relax


@pytest.fixture(scope="module")
def small_crystal(cod_dir):
    return ase.io.read(cod_dir / "2007300.cif")  # C11 H12 N2 O5, P1, 30 atoms


def full_model_fmax(atoms) -> float:
    """fmax (atoms + cell rows) recomputed from scratch with a fresh full float64 ensemble."""
    probe = atoms.copy()
    probe.calc = get_potential("ani1x").calculator()
    forces = FrechetCellFilter(probe).get_forces()
    return float(np.sqrt((forces**2).sum(axis=1).max()))


def test_strategy_is_validated_and_study_hash_unchanged():
    with pytest.raises(ValueError, match="strategy"):
        RelaxSettings(strategy="turbo")
    study, fast = RelaxSettings().resolved(6), RelaxSettings(strategy="fast").resolved(6)
    assert study.hash() != fast.hash()
    # finished work recorded before the strategy field existed keeps its hash
    assert study.hash() == RelaxSettings().resolved(6).hash()


def test_stages_add_up_and_result_is_from_the_final_stage(small_crystal, model_dir):
    settings = RelaxSettings(max_steps_base=4, steps_per_atom=0)
    result = relax_fast(small_crystal, "ani1x", settings, stages=(Stage("BFGS", 0.01, max_steps=3),))
    cheap, final = result.extra["stages"]
    assert (cheap["steps"], cheap["model_index"], cheap["dtype"]) == (3, 0, "float32")
    assert (final["steps"], final["model_index"], final["dtype"]) == (4, None, "float64")
    assert result.steps == 7 and result.extra["final_steps"] == 4
    assert result.force_calls == cheap["force_calls"] + final["force_calls"] + 1
    assert result.status == "step_cap" and result.fmax_final == final["fmax_final"]
    probe = small_crystal.copy()
    probe.calc = stage_calculator("ani1x", None, "float64")
    assert result.e_initial == pytest.approx(probe.get_potential_energy(), abs=1e-9)
    probe = result.atoms.copy()
    probe.calc = get_potential("ani1x").calculator()
    assert result.e_final == pytest.approx(probe.get_potential_energy(), abs=1e-6)


def test_a_cheap_stage_that_explodes_is_discarded(small_crystal, model_dir):
    """The final stage restarts from the input when the cheap stage leaves physical territory."""
    settings = RelaxSettings(max_steps_base=2, steps_per_atom=0, max_volume_ratio=1.0000001,
                             min_volume_ratio=0.9999999)
    result = relax_fast(small_crystal, "ani1x", replace(settings), stages=(Stage("BFGS", 0.01),))
    assert result.extra["stages"][0]["status"] == "exploded"
    assert len(result.extra["stages"]) == 2


@pytest.mark.slow
def test_fast_path_reaches_full_model_fmax_and_matches_study_volume(small_crystal, model_dir):
    settings = RelaxSettings(strategy="fast").resolved(6)
    fast = relax_fast(small_crystal, "ani1x", settings)
    assert fast.status == "converged"
    assert full_model_fmax(fast.atoms) <= settings.fmax * 1.001
    study = relax(small_crystal, get_potential("ani1x").calculator(), RelaxSettings().resolved(6))
    assert study.status == "converged"
    v_fast, v_study = fast.atoms.get_volume(), study.atoms.get_volume()
    assert abs(v_fast - v_study) / v_study < 0.005


def test_run_batch_dispatches_the_fast_strategy(small_clean_db, tmp_path, model_dir):
    out = str(tmp_path / "relaxed.db")
    settings = RelaxSettings(strategy="fast", max_steps_base=3, steps_per_atom=0)
    report = run_batch(small_clean_db, out, settings=settings, limit=1, progress=False, n_threads=1)
    row = next(dbmod.connect(out).select())
    assert row.strategy == "fast" and row.status == report.rows[0]["status"] == "step_cap"
    assert row.steps == 3 and row.force_calls == 4  # no cheap stage by default: the start + 3 steps
