"""BFGS seeded with a cheap potential's Hessian: same minimum, fewer steps, its own settings hash."""

import numpy as np
import pytest
import torch

from helpers.relax.engine import RelaxSettings, relax, wrap_cell
from helpers.relax.hessian_seed import finite_difference_hessian, floored, seed_hessian
from helpers.relax.potentials.registry import get_potential
from helpers.relax.stage import runs_side_by_side
from helpers.vocabulary import Status

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
