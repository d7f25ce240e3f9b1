"""D3 on top of ANI: derivatives under PBC, the sum calculator, clear errors, effect on volume."""

from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.db import connect
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from helpers.relax.potentials.ani import ANI_MODELS, load_ani
from helpers.relax.potentials.calculators import OnePassANICalculator
from helpers.relax.potentials.dispersion import (
    D3_REFERENCE,
    DispersionCorrectedCalculator,
    DispersionError,
    d3_calculator,
    with_dispersion,
    with_model_dispersion,
)

torch.set_num_threads(1)

PYXTAL = ("more", "MaterSim+PyXtal", "pyxtal", "database", "cifs")


def read_crystal(path) -> Atoms:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(path)


@pytest.fixture(scope="module")
def benzene(cod_dir) -> Atoms:
    """COD 2100348, benzene, 48 atoms, orthorhombic; rattled so that forces are not symmetric zeros."""
    atoms = read_crystal(cod_dir / "2100348.cif")
    atoms.rattle(0.02, seed=7)
    return atoms


@pytest.fixture(scope="module")
def naphthalene(shared_data) -> Atoms:
    """Monoclinic (beta 124 deg) naphthalene, 36 atoms: off-diagonal stress is not zero by symmetry."""
    atoms = read_crystal(shared_data.joinpath(*PYXTAL, "naphthalene.cif"))
    atoms.rattle(0.02, seed=3)
    return atoms


@pytest.fixture(scope="module")
def ani1x():
    return load_ani("ani1x", dtype=torch.float64)


def test_d3_forces_match_finite_differences_under_pbc(benzene):
    atoms = benzene.copy()
    atoms.calc = d3_calculator()
    forces = atoms.get_forces()
    picked = [0, 7, 30]
    numeric = calculate_numerical_forces(atoms, eps=1e-4, iatoms=picked)
    assert np.abs(forces[picked]).max() > 1e-3  # a check on real, non-zero forces
    # smooth pair cutoff: measured agreement 4e-9 eV/Å (sharp cutoff: 2.6e-5)
    np.testing.assert_allclose(forces[picked], numeric, atol=1e-6)


@pytest.mark.parametrize("crystal", ["benzene", "naphthalene"])
def test_d3_stress_matches_finite_differences_under_pbc(crystal, request):
    atoms = request.getfixturevalue(crystal).copy()
    atoms.calc = d3_calculator()
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-4)
    assert stress.shape == (6,)
    assert np.abs(stress[:3]).min() > 5e-3  # D3 pulls the cell in: ~1.6 GPa = 1e-2 eV/Å^3
    # D3's coordination numbers are cut sharply at 40 Bohr (their counting function never decays
    # below 1e-7), so the energy a strain sees has tiny steps: measured FD mismatch 1-4e-6
    # eV/Å^3 (< 1 MPa, < 0.04 %), identical with simple-dftd3's Ewald sum. Tolerance 1.6 MPa.
    np.testing.assert_allclose(stress, numeric, atol=1e-5)


def test_off_diagonal_stress_is_checked_on_monoclinic_cell(naphthalene):
    atoms = naphthalene.copy()
    atoms.calc = d3_calculator()
    assert abs(atoms.get_stress()[4]) > 1e-5  # the xz shear term the FD test above compares


def test_d3_sum_is_converged_against_ewald(naphthalene):
    """The default real-space sum (40 Bohr) agrees with the exact Ewald sum: energy and pressure within
    0.25 %, stress within 0.004 GPa (measured here: 0.19 %, 2.1e-5 eV/Å³; benchmarks/d3_speed.py shows
    what that does to relaxed volumes)."""
    atoms = naphthalene.copy()
    atoms.calc = d3_calculator()
    energy, stress = atoms.get_potential_energy(), atoms.get_stress()
    atoms.calc = d3_calculator(ewald={})
    np.testing.assert_allclose(energy, atoms.get_potential_energy(), rtol=2.5e-3)
    np.testing.assert_allclose(stress, atoms.get_stress(), rtol=0, atol=2.5e-5)
    assert np.mean(stress[:3]) / np.mean(atoms.get_stress()[:3]) == pytest.approx(1, abs=2.5e-3)
    assert abs(atoms.get_stress()[:3]).max() > 5e-3  # the stress compared is D3's full pull, not a residue


def test_ani_plus_d3_is_the_sum_of_its_parts(benzene, ani1x, tmp_path):
    atoms = benzene.copy()
    atoms.calc = with_dispersion(OnePassANICalculator(ani1x), "wb97x", "d3bj")
    total = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
             "stress": atoms.get_stress()}

    parts = []
    for calc in (OnePassANICalculator(ani1x), d3_calculator("wb97x", "d3bj")):
        single = benzene.copy()
        single.calc = calc
        parts.append({"energy": single.get_potential_energy(), "forces": single.get_forces(),
                      "stress": single.get_stress()})
    for key in total:
        np.testing.assert_allclose(total[key], parts[0][key] + parts[1][key], rtol=1e-12, atol=1e-12)
    assert parts[1]["energy"] < -1.0  # D3 of a 48-atom organic cell is several eV: the sum is non-trivial
    contributions = atoms.calc.energy_contributions()
    assert contributions["dispersion"] == pytest.approx(parts[1]["energy"], abs=1e-12)

    with connect(tmp_path / "relaxed.db") as db:
        row_id = db.write(atoms, structure_id="cod-2100348")
    back = connect(tmp_path / "relaxed.db").get(id=row_id).toatoms()
    np.testing.assert_allclose(back.get_stress(), total["stress"], rtol=1e-12)
    np.testing.assert_allclose(back.get_forces(), total["forces"], rtol=1e-12)


def test_one_pass_per_geometry(benzene, ani1x):
    base = OnePassANICalculator(ani1x)
    atoms = benzene.copy()
    atoms.calc = with_dispersion(base)
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    assert base.n_calls == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert base.n_calls == 2


def test_relaxation_records_the_dispersion_part_of_its_energies(benzene, ani1x):
    """A -d3 relaxation says how much of e_initial and e_final is D3, checked against D3 alone."""
    from helpers.relax.engine import RelaxSettings, relax

    settings = RelaxSettings(potential="ani1x-d3", strategy="study", max_steps_base=3, steps_per_atom=0)
    result = relax(benzene, with_model_dispersion(OnePassANICalculator(ani1x), "ani1x"), settings)
    assert result.steps == 3 and result.status == "step_cap"
    for atoms, key in ((benzene, "e_dispersion_initial"), (result.atoms, "e_dispersion")):
        alone = atoms.copy()
        alone.calc = d3_calculator("wb97x", "d3bj")
        assert result.extra[key] == pytest.approx(alone.get_potential_energy(), abs=1e-9)
    assert result.extra["e_dispersion"] < -1.0 and result.e_final < result.e_initial
    plain = relax(benzene, OnePassANICalculator(ani1x), RelaxSettings(max_steps_base=1, steps_per_atom=0))
    assert "e_dispersion" not in plain.extra


def test_reference_table_covers_every_model_and_loads():
    assert set(D3_REFERENCE) == set(ANI_MODELS)
    for name, ref in D3_REFERENCE.items():
        method, damping, justification, citation = ref
        assert damping == "d3bj" and "doi:" in citation and len(justification) > 50, name
        assert isinstance(with_model_dispersion(_ZeroCalculator(), name), DispersionCorrectedCalculator)
        d3_calculator(method, damping)


def test_unknown_parameters_fail_at_construction():
    with pytest.raises(DispersionError, match="no d3bj parameters for 'ccsdt'"):
        d3_calculator("ccsdt", "d3bj")
    with pytest.raises(DispersionError, match="unknown D3 damping"):
        d3_calculator("wb97x", "d3xyz")
    with pytest.raises(KeyError, match="no D3 reference"):
        with_model_dispersion(None, "ani3x")


@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        (Atoms("CC", positions=[[0, 0, 0], [0, 0, 0]], cell=[6, 6, 6], pbc=True), "Too close"),
        (Atoms(numbers=[110, 6], positions=[[0, 0, 0], [0, 0, 1.5]], cell=[6, 6, 6], pbc=True),
         r"no reference data for atomic numbers \[110\]"),
        (Atoms("CC", positions=[[0, 0, 0], [0, 0, 1.5]], cell=[[6, 0, 0], [0, 6, 0], [0, 0, 0]], pbc=True),
         "degenerate cell"),
        (Atoms("CC", positions=[[0, 0, np.nan], [0, 0, 1.5]], cell=[6, 6, 6], pbc=True), "non-finite"),
    ],
    ids=["overlapping-atoms", "unknown-element", "flat-cell", "nan-position"],
)
def test_structures_d3_rejects_give_clear_errors(atoms, message):
    atoms.calc = DispersionCorrectedCalculator(_ZeroCalculator(), d3_calculator())
    with pytest.raises(DispersionError, match=message):
        atoms.get_potential_energy()


class _ZeroCalculator(Calculator):
    """Stands in for ANI so that only the D3 part can fail."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((len(atoms), 3)),
                        "stress": np.zeros(6)}


@pytest.mark.slow
def test_d3_lowers_the_relaxed_volume_of_ice(shared_data, ani1x):
    """Ice (24 atoms) relaxed with ANI-1x and ANI-1x+D3: dispersion must contract the cell."""
    start = read_crystal(shared_data.joinpath(*PYXTAL, "ice.cif"))
    volumes = {}
    for label in ("ani1x", "ani1x-d3"):
        atoms = start.copy()
        base = OnePassANICalculator(ani1x)
        atoms.calc = with_model_dispersion(base, "ani1x") if label.endswith("d3") else base
        converged = BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=300)
        assert converged, label
        volumes[label] = atoms.get_volume()
    # measured: -2.2 % (ANI-1x) vs -7.5 % (ANI-1x+D3) relative to the CIF volume
    assert volumes["ani1x-d3"] < 0.98 * volumes["ani1x"]
