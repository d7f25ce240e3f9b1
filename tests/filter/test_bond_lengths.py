"""Geometry against chemistry (helpers.filter.bond_lengths): real CIFs, one of them with one site relabelled."""

from __future__ import annotations

import re

import pytest

from helpers.fetch.stage import fetch
from helpers.filter.bond_lengths import allowed_range, bond_outliers, reference_lengths
from helpers.filter.checks import Entry, Thresholds
from helpers.filter.stage import run_filter

SAMPLE = "cod-sample"


def relabel(text: str, label: str, element: str) -> str:
    """The CIF with the type symbol of atom site ``label`` changed to ``element`` (coordinates untouched)."""
    out, done = [], False
    for line in text.splitlines():
        tok = line.split()
        if not done and tok and tok[0] == label and len(tok) >= 5 and re.match(r"^-?\d", tok[2]):
            old = re.sub(r"\d.*", "", label)
            line = " ".join(element if (k > 0 and x == old) else x for k, x in enumerate(tok))
            done = True
        out.append(line)
    assert done, f"site {label} not found"
    return "\n".join(out) + "\n"


def _filter_one(tmp_path, cif_text: str, cod_id: int):
    tmp_path.mkdir(exist_ok=True)
    folder = tmp_path / str(cod_id)
    folder.mkdir()
    (folder / f"{cod_id}.cif").write_text(cif_text)
    fetch(source=str(folder), raw_db=str(tmp_path / "raw.db"), cod_ids=(cod_id,), progress=False)
    report = run_filter(str(tmp_path / "raw.db"), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"),
                        progress=False)
    (result,) = report.results
    return result


def test_reference_lengths_come_from_pymatgen():
    assert reference_lengths("C", "C")[2.0] == pytest.approx(1.34)
    assert reference_lengths("O", "O") == {1.0: pytest.approx(1.48)}
    # a conjugated single C-C may be as short as a double bond, an isolated one may not
    assert allowed_range("C", "C", 1.0, conjugated=True) == (pytest.approx(1.34), pytest.approx(1.54))
    assert allowed_range("C", "C", 1.0, conjugated=False) == (pytest.approx(1.54), pytest.approx(1.54))
    # pymatgen has no N=O: a charged nitro N-O is not judged on its short side
    assert allowed_range("N", "O", 1.0, conjugated=True, charged=True)[0] is None


def test_relabelled_site_contradicts_its_bond_order(tmp_path, shared_data):
    """trans-dinitrostilbene (COD 7204577): its C7=C7 double bond lies across an inversion centre, so
    relabelling the one site C7 as N turns it into a hydrazine N-N single bond 0.12 Å too short."""
    text = (shared_data / SAMPLE / "7204577.cif").read_text()
    result = _filter_one(tmp_path, relabel(text, "C7", "N"), 7204577)
    found = {f.check: f for f in result.rejections + result.flags}
    assert "bond_length_outlier" in found
    finding = found["bond_length_outlier"]
    bond = finding.details["distinct"][0]
    assert bond["labels"] == ["C7", "C7"] and bond["symbols"] == ["N", "N"]
    assert bond["distance"] == pytest.approx(1.332, abs=0.005)
    assert bond["order"] == 1.0 and bond["expected"] == [pytest.approx(1.45), pytest.approx(1.45)]
    assert "C7–C7 1.332 Å, perceived single" in finding.reason
    # the unaltered file is clean and unflagged
    clean = _filter_one(tmp_path / "orig", text, 7204577)
    assert clean.passed and not [f for f in clean.flags if f.check.startswith("bond_length")]


def test_xray_hydrogens_are_not_flagged(shared_data):
    """Dimethyl fumarate (COD 2203632, X-ray): C-H 0.93-0.98 Å, far below pymatgen's 1.08 Å, yet no finding."""
    from ase.io import read

    atoms = read(shared_data / SAMPLE / "2203632.cif")
    entry = Entry("2203632", atoms, {"readable": True})
    chemistry = entry.chemistry(Thresholds())
    c_h = atoms.get_all_distances(mic=True)[atoms.numbers == 1][:, atoms.numbers == 6].min(axis=1)
    assert c_h.max() < 1.0  # X-ray C-H: short by nature
    assert bond_outliers(atoms, chemistry, tolerance=0.0) and all(
        "H" not in v.symbols for v in bond_outliers(atoms, chemistry, tolerance=0.0))
    assert bond_outliers(atoms, chemistry, tolerance=Thresholds().bond_flag_tolerance) == []


def test_co2_with_a_short_c_o_is_flagged(shared_data):
    """COD 1010060 (solid CO2): its C=O of 1.05 Å is shorter than any C=O (pymatgen 1.23 Å)."""
    from ase.io import read

    atoms = read(shared_data / SAMPLE / "1010060.cif")
    entry = Entry("1010060", atoms, {"readable": True})
    verdicts = bond_outliers(atoms, entry.chemistry(Thresholds()))
    assert verdicts and verdicts[0].symbols in (["C", "O"], ["O", "C"])
    assert verdicts[0].length == pytest.approx(1.053, abs=0.01) and verdicts[0].order == 2.0
