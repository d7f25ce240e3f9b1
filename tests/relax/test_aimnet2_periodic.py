"""AIMNet2 in a crystal: the neutral-molecules variant (charge conserved per molecule) and the binding analysis
of docs/aimnet2.md, on real cells (CO2 COD 1010060; naphthalene, X23's experimental cell)."""

from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from helpers.analysis.periodic_binding import (
    cluster,
    cluster_embedding,
    crystal_binding,
    molecule_charges,
)

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # every test loads AIMNet2 (a few s each)


def _read(path) -> Atoms:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(path)




@pytest.fixture(scope="module")
def naphthalene(shared_data) -> Atoms:
    return _read(shared_data.parent / "reference" / "lattice-energy" / "x23" / "expt" / "naphthalene.cif")


def _charges(calc) -> np.ndarray:
    return np.asarray(calc.members[0].results["charges"], dtype=float)


def test_neutral_molecules_keeps_every_molecule_neutral_where_aimnet2_moves_charge(naphthalene):
    """A 7-molecule naphthalene cluster cut from the crystal: plain AIMNet2 moves ~0.1 e onto the central
    molecule; with the per-molecule constraint every molecule sums to zero and the total stays zero."""
    from helpers.relax.potentials.factories import make_aimnet2, make_aimnet2_molq

    parts, _ = cluster(naphthalene, 6.0)
    whole = parts[0].copy()
    for p in parts[1:]:
        whole += p
    plain, neutral = whole.copy(), whole.copy()
    plain.calc = make_aimnet2(coulomb="simple")
    neutral.calc = make_aimnet2_molq(coulomb="simple")
    e_plain, e_neutral = plain.get_potential_energy(), neutral.get_potential_energy()
    q_plain = molecule_charges(whole, _charges(plain.calc))
    q_neutral = molecule_charges(whole, _charges(neutral.calc))
    assert len(q_plain) == len(parts) >= 5
    assert np.abs(q_plain).max() > 0.03  # charge flows between molecules in the plain model
    assert np.abs(q_neutral).max() < 1e-4
    assert q_plain.sum() == pytest.approx(0, abs=1e-4) and q_neutral.sum() == pytest.approx(0, abs=1e-4)
    assert e_neutral > e_plain  # the constraint removes a degree of freedom: the energy can only go up
    assert e_neutral - e_plain < 0.5  # ... and little (measured on the 9 A cluster: 0.04 eV)


def test_neutral_molecules_changes_nothing_for_one_molecule(naphthalene):
    """One molecule alone: the constraint is the model's own (total charge 0), energies agree to float32."""
    from helpers.filter.molecules import find_molecules
    from helpers.relax.potentials.factories import make_aimnet2, make_aimnet2_molq

    mol = find_molecules(naphthalene)[0]
    a, b = Atoms(mol.symbols, mol.positions), Atoms(mol.symbols, mol.positions)
    a.calc, b.calc = make_aimnet2(coulomb="simple"), make_aimnet2_molq(coulomb="simple")
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=2e-4)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=2e-4)


def test_neutral_molecules_stress_matches_finite_differences_and_molecules_stay_neutral(co2):
    """CO2 (4 molecules, rattled so that they differ): analytic stress vs central differences under strain, and
    the per-molecule charges sum to zero, while plain AIMNet2 moves up to 0.09 e between the rattled molecules."""
    from helpers.relax.potentials.factories import make_aimnet2, make_aimnet2_molq

    calc = make_aimnet2_molq()
    atoms = co2.copy()
    atoms.rattle(0.05, seed=3)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    q = molecule_charges(atoms, _charges(calc))
    assert len(q) == 4 and np.abs(q).max() < 1e-4  # float32 sums
    plain = atoms.copy()
    plain.calc = make_aimnet2()
    plain.get_potential_energy()
    assert np.abs(molecule_charges(plain, _charges(plain.calc))).max() > 0.05  # measured 0.095 e

    volume = atoms.get_volume()
    tolerance = 2e-3 * float(np.abs(stress).max()) + 1e-6

    from helpers.relax.potentials.contract import strained_energy

    def strained(i: int, j: int, d: float) -> float:
        return strained_energy(calc, atoms, i, j, d)

    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2)]:
        fd = (strained(i, j, 1e-3) - strained(i, j, -1e-3)) / (2e-3 * volume) / (2 if i != j else 1)
        assert stress[i, j] == pytest.approx(fd, abs=tolerance), (i, j)


def test_aimnet2_binds_a_molecule_in_a_cluster_as_badly_as_in_the_crystal(naphthalene):
    """The finding of docs/aimnet2.md on naphthalene: the periodic cell and a non-periodic 9 Å cluster give the
    same repulsive interaction per molecule (measured +0.71 and +0.72 eV), with zero molecular charges in the
    cell (all molecules are symmetry-equivalent); ANI-2x binds both (measured about -0.5 eV without D3)."""
    from helpers.relax.potentials.factories import make_aimnet2
    from helpers.relax.potentials.registry import get_potential

    aimnet = crystal_binding(naphthalene, make_aimnet2, lambda: make_aimnet2(coulomb="simple"))
    assert aimnet.n_molecules == 2 and aimnet.max_abs_charge < 1e-3
    assert aimnet.per_molecule > 0.3
    in_cluster = cluster_embedding(naphthalene, lambda: make_aimnet2(coulomb="simple"))
    assert in_cluster.per_molecule == pytest.approx(aimnet.per_molecule, abs=0.15)
    ani = crystal_binding(naphthalene, lambda: get_potential("ani2x").calculator())
    assert ani.per_molecule < -0.2
