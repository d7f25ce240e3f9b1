"""The chemistry read from the atoms (helpers.filter.molecules) and the structural hydrogen check, on real crystals.

Hydrogen-less copies are made from real crystals by deleting their H atoms; the structural check must find
every one of them without a formula, and the number of H it asks for must be the number deleted.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers.filter.checks import Entry, Thresholds, as_bool
from helpers.filter.molecules import analyse_crystal, find_molecules, periodic_bonds
from helpers.filter.stage import evaluate

MORE = "more/MaterSim+PyXtal/pyxtal/database"
#: real crystals of varied chemistry (file under ../shared/data, what it is)
CRYSTALS = {
    f"{MORE}/packing-analysis/HXMTAM.cif": "hexamine: CH2 between N",
    f"{MORE}/cifs/naphthalene.cif": "aromatic CH",
    f"{MORE}/cifs/aspirin-c.cif": "acid, ester, CH3",
    f"{MORE}/packing-analysis/ACETYL02.cif": "acetylene: sp C-H",
    "more/Differentiable-Electron-Crystallography+cif-tools/fixtures/ccdc_paracetamol.cif": "amide N-H, phenol",
    "more/Differentiable-Electron-Crystallography+cif-tools/fixtures/example_cifs/glycine/jana2006_glycine.cif":
        "zwitterion NH3+ ... COO-",
    "cod-sample/4506226.cif": "3-aminobenzoic acid zwitterion (NH3+ on a ring)",
    "cod/2100348.cif": "benzene",
    "cod/2007300.cif": "small COD crystal",
    "cod/4021477.cif": "small COD crystal",
}


def read(shared_data: Path, name: str) -> Atoms:
    return ase.io.read(shared_data / name, format="cif")


def strip_hydrogens(atoms: Atoms) -> tuple[Atoms, dict[int, int], np.ndarray]:
    """The crystal without its H; how many H each remaining atom had (new indices); old index of each."""
    h = np.array(atoms.get_chemical_symbols()) == "H"
    i, j, _ = periodic_bonds(atoms)
    had = Counter(int(a) for a, b in zip(i, j) if h[b] and not h[a])
    keep = np.flatnonzero(~h)
    new_index = {int(old): new for new, old in enumerate(keep)}
    return atoms[keep], {new_index[k]: v for k, v in had.items()}, keep


def structural_verdict(atoms: Atoms):
    """The filter's verdict on ``atoms`` as a raw entry with no formula at all (its CIF: ASE's rendering)."""
    text = io.BytesIO()
    ase.io.write(text, atoms, format="cif")
    entry = Entry(structure_id="x", atoms=atoms, kvp={"readable": True}, data={"cif": text.getvalue().decode()})
    return evaluate(entry, Thresholds(elements=None))


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_real_crystal_is_complete_and_identified(shared_data, name):
    atoms = read(shared_data, name)
    chem = analyse_crystal(atoms)
    assert chem.h_needed == {} and chem.net_charge == 0, CRYSTALS[name]
    assert chem.compound_key and all(m.inchikey for m in chem.molecules)
    result = structural_verdict(atoms)
    assert "hydrogen_missing" not in result.checks and "incomplete_structure" not in result.checks
    assert result.kvp["n_molecules"] == chem.n_molecules and result.kvp["compound_key"] == chem.compound_key


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_hydrogen_less_copy_is_caught_with_the_right_count(shared_data, name):
    atoms = read(shared_data, name)
    stripped, had, _ = strip_hydrogens(atoms)
    n_removed = len(atoms) - len(stripped)
    assert n_removed > 0
    result = structural_verdict(stripped)
    h = next(r for r in result.rejections if r.check == "hydrogen_missing")
    assert h.details["by"] == ["structure"] and h.details["formula_check"] is None  # no formula needed
    assert h.details["h_missing_structure"] == n_removed, CRYSTALS[name]
    # every carbon that lost H is named, with the number it lost (N/O H may sit on another tautomer site)
    needed = {a["i"]: a["h_needed"] for a in h.details["h_needed"]}
    symbols = stripped.get_chemical_symbols()
    assert {k: v for k, v in needed.items() if symbols[k] == "C"} == {k: v for k, v in had.items()
                                                                      if symbols[k] == "C"}
    assert all(a["label"] for a in h.details["h_needed"])


def test_hexamine_without_h_names_every_ch2(shared_data):
    """The issue's example: C6N4 instead of C6H12N4 — each CH2 carbon between two N needs 2 H."""
    atoms = read(shared_data, f"{MORE}/packing-analysis/HXMTAM.cif")
    stripped, _, _ = strip_hydrogens(atoms)
    chem = analyse_crystal(stripped)
    carbons = [i for i, s in enumerate(stripped.get_chemical_symbols()) if s == "C"]
    assert chem.h_needed == {i: 2 for i in carbons}
    assert {m.formula for m in chem.molecules} == {"C6N4"} and chem.n_molecules == 2


def test_co2_and_other_h_free_molecules_are_kept(shared_data):
    path = shared_data / "cod-sample/1010060.cif"  # CO2, Pa-3
    atoms = ase.io.read(path, format="cif")
    chem = analyse_crystal(atoms)
    assert [(s["smiles"], s["charge"], s["count"]) for s in chem.species] == [("O=C=O", 0, 4)]
    assert chem.compound_key == "CURLTUGMZLYLDI-UHFFFAOYSA-N" and chem.h_needed == {}
    entry = Entry(structure_id="co2", atoms=atoms, kvp={"readable": True}, data={"cif": path.read_text()})
    result = evaluate(entry, Thresholds())
    assert result.passed, result.rejections
    assert result.kvp["z_prime"] == pytest.approx(4 / 24, abs=1e-4)  # molecules on -3 sites: Z' = 1/6


def test_zwitterion_and_salt_are_neutral_per_cell(shared_data):
    glycine = analyse_crystal(read(shared_data, CRYSTALS and "more/Differentiable-Electron-Crystallography+cif-tools/"
                                   "fixtures/example_cifs/glycine/jana2006_glycine.cif"))
    (species,) = glycine.species
    assert species["smiles"] == "[NH3+]CC(=O)[O-]" and species["charge"] == 0
    # N,N'-diphenylbiguanidinium(1+) adipate(2-) dihydrate: charged molecules, neutral cell
    salt = analyse_crystal(read(shared_data, "cod/2228759.cif"))
    charges = Counter({s["smiles"]: s["charge"] * s["count"] for s in salt.species})
    assert sorted(s["charge"] for s in salt.species) == [-2, 0, 1] and salt.net_charge == 0
    assert sum(charges.values()) == 0 and salt.h_needed == {}
    result = structural_verdict(read(shared_data, "cod/2228759.cif"))
    assert "hydrogen_missing" not in result.checks and not result.flags or \
        {f.check for f in result.flags} <= {"no_temperature"}


def test_radical_is_flagged_not_rejected(shared_data):
    """TEMPO (a nitroxide): an odd-electron molecule with all its H is a radical, not an H problem."""
    atoms = read(shared_data, f"{MORE}/cifs/TMPPIO03.cif")
    chem = analyse_crystal(atoms)
    assert all(m.radical and m.charge == 0 for m in chem.molecules) and chem.h_needed == {}
    result = structural_verdict(atoms)
    assert "hydrogen_missing" not in result.checks
    assert "radical" in {f.check for f in result.flags}


def test_molecules_are_whole_across_cell_edges(shared_data):
    atoms = read(shared_data, f"{MORE}/cifs/aspirin-c.cif")
    molecules = find_molecules(atoms)
    assert len(molecules) == 4 and {m.formula for m in molecules} == {"C9H8O4"}
    wrapped_apart = 0
    for m in molecules:
        for a, b in m.bonds:
            assert np.linalg.norm(m.positions[a] - m.positions[b]) < 1.8  # unwrapped: every bond short
            wrapped_apart += np.linalg.norm(atoms.positions[m.indices[a]] - atoms.positions[m.indices[b]]) > 1.8
    assert wrapped_apart > 0  # the test means something: some molecules do cross the cell edge


def test_isolated_atoms_are_fragments_and_missing_h():
    """A lone O (water without its H) and a lone H: incomplete_structure, showing the fragment."""
    atoms = Atoms("OH", positions=[[1, 1, 1], [4, 4, 4]], cell=[8, 8, 8], pbc=True)
    result = structural_verdict(atoms)
    inc = next(r for r in result.rejections if r.check == "incomplete_structure")
    reasons = {f["reason"].split(" (")[0] for f in inc.details["fragments"]}
    assert reasons == {"isolated O atom", "lone hydrogen fragment H"} and inc.details["atoms"] == [0, 1]
    h = next(r for r in result.rejections if r.check == "hydrogen_missing")
    assert h.details["h_missing_structure"] == 2


def test_polymeric_chain_has_no_identity():
    """A carbon chain bonded to its own periodic image is an infinite network, not a molecule."""
    atoms = Atoms("C2H4", positions=[[0, 0, 0], [1.27, 0, 0.8], [0, 1, -0.6], [0, -1, -0.6],
                                     [1.27, 1, 1.4], [1.27, -1, 1.4]], cell=[2.54, 8, 8], pbc=True)
    (mol,) = find_molecules(atoms)
    assert mol.polymeric
    chem = analyse_crystal(atoms)
    assert chem.compound_key is None and chem.molecules[0].error.startswith("polymeric")


@pytest.mark.parametrize("text,expected", [("False", False), ("true", True), (0, False), ("no", False), (True, True)])
def test_switches_from_papermill_strings(text, expected):
    assert as_bool(text) is expected
    assert Thresholds.make(require_formula=text).require_formula is expected


def test_bad_switch_values_are_errors():
    with pytest.raises(ValueError, match="require_formula"):
        Thresholds.make(require_formula="maybe")
    with pytest.raises(ValueError, match="reader"):
        Thresholds.make(reader="openbabel")
    assert Thresholds.make(reader=" PyMatGen ").reader == "pymatgen"
    assert Thresholds().require_formula is False and Thresholds().reader == "ase"


#: cod-sample entries whose hydrogen-less copy is a valid closed-shell molecule of its own (an H-free
#: tautomer): no structural check can see the H are gone; only a formula can
H_FREE_TAUTOMERS = {"2007511": "tetrazol-5-one CH2N4O -> O=C1N=NN=N1",
                    "2300006": "nitro-triazolone C2H2N4O3 -> O=C1N=NC([N+](=O)[O-])=N1"}


@pytest.mark.slow
def test_every_unaltered_cod_entry_and_its_hydrogen_less_copy(shared_data):
    """All of cod-sample/ (137 unaltered COD entries) that ASE reads without disorder: no H is asked for
    on the real crystals, and every hydrogen-less copy is caught (but the known H-free tautomers), the
    number of H asked for being the number deleted for at least 90 % of those caught (measured: 122 of 129)."""
    import warnings

    false_alarms, missed, right, wrong = [], [], [], []
    for path in sorted((shared_data / "cod-sample").glob("*.cif")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                atoms = ase.io.read(path, format="cif")
            except Exception:  # noqa: BLE001 - ASE's criterion 1, not this test's business
                continue
        occupancy = atoms.info.get("occupancy") or {}
        if any(o < 0.99 for occ in occupancy.values() for o in occ.values()):
            continue
        chem = analyse_crystal(atoms)
        if chem.h_needed or (chem.net_charge or 0) < 0 or chem.fragments:
            false_alarms.append(path.stem)
            continue
        h = np.array(atoms.get_chemical_symbols()) == "H"
        if not h.any():  # CO2: nothing to delete
            continue
        stripped = analyse_crystal(atoms[~h])
        total = sum(stripped.h_needed.values()) + max(0, -(stripped.net_charge or 0))
        if total == 0:
            missed.append(path.stem)
        else:
            (right if total == h.sum() else wrong).append(path.stem)
    assert false_alarms == []
    assert sorted(missed) == sorted(H_FREE_TAUTOMERS)
    assert len(right) + len(wrong) >= 125 and len(right) >= 0.9 * (len(right) + len(wrong)), wrong
