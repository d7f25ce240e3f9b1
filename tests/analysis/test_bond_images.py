"""Bonds before and after a relaxation are compared with the periodic image they reach (issue 36): a molecule
across the cell edge, wrapped or unwrapped, is the same molecule; a bond stretched across the edge is broken."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.analysis.structure_compare import bonds_with_images, compare_structures


def _across_the_edge(atoms):
    """The bonds of ``atoms`` that reach another cell: (i, j, shift)."""
    return sorted(b for b in bonds_with_images(atoms) if any(b[2]))


def _stretch(atoms, bond, by: float):
    """Move atom j of ``bond`` (i, j, shift) ``by`` Å further from atom i along the bond, then wrap."""
    i, j, shift = bond
    out = atoms.copy()
    vector = atoms.positions[j] + np.asarray(shift) @ atoms.cell.array - atoms.positions[i]
    out.positions[j] += by * vector / np.linalg.norm(vector)
    out.wrap()
    return out


def test_dry_ice_molecules_straddle_the_cell_edge(co2):
    across = _across_the_edge(co2)
    assert len(across) >= 2  # the molecule at the cell corner: its C–O bonds reach the next cells
    assert {co2.get_chemical_symbols()[k] for b in across for k in b[:2]} == {"C", "O"}
    assert len(bonds_with_images(co2)) == 8  # 4 molecules x 2 C=O


def test_a_molecule_across_the_cell_edge_is_the_same_molecule(co2):
    relaxed = co2.copy()
    relaxed.set_cell(relaxed.cell * 1.04, scale_atoms=True)  # a relaxation's strain
    relaxed.positions += np.array([0.31, 0.17, 0.52]) @ relaxed.cell.array  # the crystal drifts ...
    relaxed.wrap()  # ... and its atoms are wrapped back into the cell: molecules cross the edges differently
    assert _across_the_edge(relaxed) != _across_the_edge(co2)
    out = compare_structures(co2, relaxed, matcher=False)
    assert out["bonds_intact"] is True and out["bonds_broken"] == 0 and out["bonds_formed"] == 0
    assert out["bond_changes"] == ""


def test_a_molecule_moved_or_turned_as_a_whole_keeps_its_bonds(co2):
    """Shifts are compared pair by pair: a molecule slid by 0.4 of a cell and turned by 90° about its carbon
    (one O crossing the cell edge, the other not) is the same molecule, bond for bond. (Per-atom image counts,
    with the crystal's drift removed, would call one of its C=O bonds broken and another formed.)"""
    from helpers.filter.molecules import find_molecules

    molecules = find_molecules(co2)
    assert len(molecules) == 4 and all(m.formula == "CO2" for m in molecules)
    moved = co2.copy()
    turned = molecules[0]
    centre = turned.positions[turned.symbols.index("C")]
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved.positions[turned.indices] = (turned.positions - centre) @ rotation.T + centre + 0.4 * co2.cell.array[0]
    moved.wrap()
    out = compare_structures(co2, moved, matcher=False)
    assert (out["bonds_intact"], out["bonds_broken"], out["bonds_formed"], out["bond_changes"]) == (True, 0, 0, "")


def test_a_bond_stretched_across_the_cell_edge_is_reported(co2):
    bond = _across_the_edge(co2)[0]
    broken = _stretch(co2, bond, 0.8)  # C=O 1.16 Å -> 1.96 Å, beyond 1.2 x (r_C + r_O) = 1.70 Å
    out = compare_structures(co2, broken, matcher=False)
    assert out["bonds_intact"] is False
    assert (out["bonds_broken"], out["bonds_formed"]) == (1, 0)
    assert out["bond_changes"] == "broken C-O x1"


@pytest.mark.slow
def test_a_relaxation_that_breaks_a_bond_is_recorded(co2, model_dir):
    """A real (short) ANI-1x relaxation, its atoms wrapped as an engine may leave them: intact; the same
    relaxed crystal with one C=O stretched across the edge: the broken bond is named, in the errors row too."""
    from helpers.relax.engine import RelaxSettings, relax
    from helpers.relax.potentials.registry import get_potential

    result = relax(co2, get_potential("ani1x").calculator(),
                   RelaxSettings(strategy="study", max_steps_base=5, steps_per_atom=0))
    relaxed = result.atoms.copy()
    relaxed.wrap()
    assert abs(relaxed.get_volume() / co2.get_volume() - 1) > 1e-3  # it did move the cell
    assert compare_structures(co2, relaxed, matcher=False)["bonds_intact"] is True
    broken = _stretch(relaxed, _across_the_edge(relaxed)[-1], 0.8)
    out = compare_structures(co2, broken, matcher=False)
    assert (out["bonds_intact"], out["bonds_broken"], out["bond_changes"]) == (False, 1, "broken C-O x1")


def test_a_break_between_atoms_bonded_through_several_images_is_not_hidden(shared_data):
    """COD's own distance-test input 2100348 (a 2 Å cell: C1 bonds C2 through four images). Moving C2 by
    0.25 Å breaks one of those bonds; the pair (C1, C2) stays bonded through the others, so comparing atom
    pairs alone (what :func:`bonds` gives) hides the break, comparing bonds with their images reports it."""
    import warnings

    import ase.io

    from helpers.analysis.structure_compare import bonds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = ase.io.read(shared_data / "more" / "cod-developers+cod-tools" / "tests" / "inputs"
                          / "2100348-benzene-dist-test.cif")
    assert sum(1 for i, j, _ in bonds_with_images(exp) if (i, j) == (0, 2)) == 4
    moved = exp.copy()
    moved.positions[2] += [0.25, 0.0, 0.0]
    moved.wrap()
    assert bonds(moved) == bonds(exp)  # the pair view: nothing changed
    out = compare_structures(exp, moved, matcher=False)
    assert (out["bonds_intact"], out["bonds_broken"], out["bonds_formed"]) == (False, 1, 0)
    assert out["bond_changes"] == "broken C-C x1"
