"""The one-pass calculator equals torchani's own, and its forces/stress are true derivatives."""

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: F401
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from helpers.relax.potentials.ani import load_ani
from helpers.relax.potentials.calculators import OnePassANICalculator


def test_matches_torchani_calculator(crystal, model_dir):
    model = load_ani("ani1x")
    ours, theirs = crystal.copy(), crystal.copy()
    ours.calc = OnePassANICalculator(model)
    theirs.calc = model.ase()
    assert ours.get_potential_energy() == pytest.approx(theirs.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-9)
    np.testing.assert_allclose(ours.get_stress(), theirs.get_stress(), atol=1e-12)
    assert ours.get_stress().shape == (6,)
    assert ours.calc.n_calls == 1  # energy, forces and stress from one pass


def test_forces_and_stress_are_finite_difference_derivatives(crystal, model_dir):
    atoms = crystal.copy()
    atoms.rattle(0.02, seed=1)
    atoms.calc = OnePassANICalculator(load_ani("ani1x"))
    np.testing.assert_allclose(atoms.get_forces()[:6], calculate_numerical_forces(atoms, 1e-4)[:6],
                               atol=1e-4)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, 1e-5), atol=1e-6)


def test_molecule_without_cell_gives_no_stress(model_dir):
    from ase.build import molecule

    atoms = molecule("CH4")
    atoms.calc = OnePassANICalculator(load_ani("ani1x"))
    assert np.isfinite(atoms.get_potential_energy())
    assert "stress" not in atoms.calc.results
