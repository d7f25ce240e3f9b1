"""BFGS seeded with a cheap potential's Hessian: same minimum, fewer steps, its own settings hash."""

import numpy as np
import pytest
import torch

from helpers.relax.engine import RelaxSettings, relax, wrap_cell
from helpers.relax.hessian_seed import finite_difference_hessian, floored, seed_hessian, side_by_side_evaluator
from helpers.relax.potentials.registry import REGISTRY, get_potential
from helpers.relax.stage import hessian_seed_for, job_settings, runs_side_by_side
from helpers.run.parameters import ParameterError, checked
from helpers.vocabulary import NO_HESSIAN_SEED, Status

torch.set_num_threads(1)


def test_the_seed_is_named_in_the_hash_and_only_then():
    plain = RelaxSettings(potential="gfn-ff", strategy="study")
    seeded = RelaxSettings(potential="gfn-ff", strategy="study", hessian_seed="ani2x")
    assert plain.hash() == RelaxSettings(potential="gfn-ff", strategy="study", hessian_seed_floor=9.0).hash()
    assert seeded.hash() != plain.hash()
    assert seeded.hash() != RelaxSettings(potential="gfn-ff", strategy="study", hessian_seed="ani2x",
                                          hessian_seed_floor=2.0).hash()
    with pytest.raises(ValueError, match="seeds BFGS"):
        RelaxSettings(optimizer="FIRE", hessian_seed="ani2x")


def test_a_seeded_ani_relaxation_runs_one_crystal_at_a_time():
    calc = get_potential("ani1x").calculator()
    assert runs_side_by_side(calc, RelaxSettings(potential="ani1x"))
    assert not runs_side_by_side(calc, RelaxSettings(potential="ani1x", hessian_seed="ani2x"))


def test_seed_hessian_is_symmetric_positive_and_in_the_filters_coordinates(co2):
    settings = RelaxSettings(potential="gfn-ff", hessian_seed="ani2x")
    work = co2.copy()
    work.calc = get_potential("ani2x").calculator()
    seed = seed_hessian(wrap_cell(work, settings), settings.hessian_seed_floor)
    assert seed.shape == (3 * (len(co2) + 3),) * 2  # positions and the cell filter's 3 strain rows
    assert np.allclose(seed, seed.T)
    assert np.linalg.eigvalsh(seed).min() >= settings.hessian_seed_floor - 1e-9
    # the raw finite-difference Hessian has C=O stretches far stiffer than BFGS's 70 eV/Å² guess
    raw = finite_difference_hessian(wrap_cell(work, settings))
    assert np.linalg.eigvalsh(raw).max() > 200
    assert np.allclose(work.positions, co2.positions)  # the probe leaves the structure where it was
    assert np.allclose(floored(raw, 1e3), 1e3 * np.eye(len(raw)))  # a floor above every mode: all replaced


@pytest.mark.slow
def test_seeded_bfgs_reaches_the_studys_minimum_in_fewer_steps(co2):
    """GFN-FF (float64) on dry ice at the study's fmax: ASE's default start vs the ANI-2x seed."""
    calc = get_potential("gfn-ff").calculator
    plain = relax(co2, calc(), RelaxSettings(potential="gfn-ff", strategy="study").resolved(6))
    seeded = relax(co2, calc(), RelaxSettings(potential="gfn-ff", strategy="study",
                                              hessian_seed="ani2x").resolved(6))
    assert plain.status == seeded.status == Status.converged
    assert seeded.steps < plain.steps, (seeded.steps, plain.steps)
    v_plain, v_seeded = plain.atoms.get_volume(), seeded.atoms.get_volume()
    assert abs(v_seeded / v_plain - 1) < 0.005  # the rule: within 0.5 %
    assert (seeded.e_final - plain.e_final) / len(co2) < 1e-4  # not higher by more than 0.1 meV/atom
    assert seeded.fmax_final <= 5e-4  # the verdict is the expensive model's own


def test_side_by_side_seed_is_the_one_at_a_time_seed(co2):
    """The displaced geometries evaluated many per torchani pass give the calculator's Hessian to rounding."""
    settings = RelaxSettings(potential="chgnet-d3", hessian_seed="ani2x").resolved(6)
    work = co2.copy()
    work.calc = get_potential("ani2x").calculator()
    one_at_a_time = seed_hessian(wrap_cell(work, settings), settings.hessian_seed_floor)
    evaluate = side_by_side_evaluator("ani2x", batch_atoms=100)  # several passes for 90 geometries
    side_by_side = seed_hessian(wrap_cell(co2.copy(), settings), settings.hessian_seed_floor, evaluate=evaluate)
    assert np.abs(side_by_side - one_at_a_time).max() < 1e-7
    assert np.abs(one_at_a_time).max() > 50  # a real Hessian, not two zeros that agree
    assert side_by_side_evaluator("gfn-ff") is None  # not ANI: its calculator, one geometry at a time


def test_the_graph_potentials_and_gfn_ff_are_seeded_by_default_and_ani_is_not():
    seeded = {name for name, pot in REGISTRY.items() if pot.hessian_seed}
    assert {"chgnet-d3", "sevennet0-d3", "sevennet-l3i5-d3", "sevennet-mf0-r2scan-d3", "gfn-ff"} <= seeded
    assert not {name for name in seeded if name.startswith("ani")}
    for name in seeded:  # a seed is cheap and covers the organic elements
        assert get_potential(name).hessian_seed == "ani2x"
    assert hessian_seed_for("chgnet-d3") == "ani2x"
    assert hessian_seed_for("chgnet-d3", NO_HESSIAN_SEED) is None  # switched off: the study's start
    assert hessian_seed_for("chgnet-d3", optimizer="FIRE") is None  # FIRE keeps no Hessian to seed
    assert hessian_seed_for("ani1x") is None and hessian_seed_for("ani1x", "ani2x") == "ani2x"
    assert job_settings("chgnet-d3").hessian_seed == "ani2x"
    assert job_settings("chgnet-d3", {"hessian_seed": "off"}).hash() != job_settings("chgnet-d3").hash()
    # 03_relax's parameter, as papermill passes it from the command line
    assert checked("03_relax", {"hessian_seed": "off"})["hessian_seed"] == "off"
    assert checked("03_relax", {"hessian_seed": "None"})["hessian_seed"] is None
    with pytest.raises(ParameterError, match="hessian_seed = 'ani9x'"):
        checked("03_relax", {"hessian_seed": "ani9x"})


def test_a_seed_that_does_not_cover_the_crystal_leaves_ases_start(co2, monkeypatch):
    """Every crystal of the shared data is C/H/N/O, which ANI-2x covers; a seed card without carbon stands in
    for a bromide: dry ice is then relaxed from ASE's start, and the result says so."""
    from dataclasses import replace

    monkeypatch.setitem(REGISTRY, "ani2x-no-carbon", replace(get_potential("ani2x"), name="ani2x-no-carbon",
                                                             elements=frozenset({"H", "N", "O"})))
    calc = get_potential("gfn-ff").calculator
    capped = {"potential": "gfn-ff", "strategy": "study", "max_steps_base": 2, "steps_per_atom": 0}
    unseeded = relax(co2, calc(), RelaxSettings(**capped, hessian_seed="ani2x-no-carbon"))
    assert unseeded.status == Status.step_cap and unseeded.steps == 2
    assert unseeded.extra["hessian_seeded"] == 0 and "hessian_seed_time" not in unseeded.extra
    plain = relax(co2, calc(), RelaxSettings(**capped))
    assert np.allclose(unseeded.atoms.positions, plain.atoms.positions)  # ASE's start: the same two steps
    seeded = relax(co2, calc(), RelaxSettings(**capped, hessian_seed="ani2x"))
    assert seeded.extra["hessian_seeded"] == 1 and seeded.extra["hessian_seed_time"] > 0
    assert not np.allclose(seeded.atoms.positions, plain.atoms.positions)
