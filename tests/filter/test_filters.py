"""The filter on real CIFs: every entry is clean or carries a reason, and known cases land in the right bucket."""

from __future__ import annotations

import io

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers.fetch.stage import fetch
from helpers.filter.checks import CHECKS, Entry, Thresholds, close_pairs
from helpers.filter.stage import evaluate, filter_row, run_filter

REJECT_NAMES = {c.name for c in CHECKS if c.kind == "reject"}
PARTIAL_OCCUPANCY_COD = [2001174, 2003003, 2010108, 2014244, 2203315, 2208311, 2211061, 2222274, 4100752]


@pytest.fixture(scope="session")
def filtered_all(tmp_path_factory, shared_data):
    """Every real CIF in ../shared/data (cod/, cod-sample/, more/) through fetch and filter, on 2 processes.

    elements=None: every file is loaded.
    """
    tmp = tmp_path_factory.mktemp("filter_all")
    fetch(source=str(shared_data), raw_db=str(tmp / "raw.db"), elements=None, progress=False, n_workers=2)
    report = run_filter(tmp / "raw.db", tmp / "clean.db", tmp / "rejects.db", progress=False, n_workers=2)
    print("\n" + report.counts().drop(columns="description").to_string())
    return {"report": report, "raw": ase.db.connect(str(tmp / "raw.db")),
            "clean": ase.db.connect(str(tmp / "clean.db")), "rejects": ase.db.connect(str(tmp / "rejects.db"))}


def _checks(rejects, sid: str) -> list[str]:
    return rejects.get(structure_id=sid).checks.split(",")


@pytest.mark.slow
def test_every_entry_is_clean_or_has_a_reason(filtered_all, shared_data):
    raw = {r.structure_id for r in filtered_all["raw"].select()}
    clean = [r.structure_id for r in filtered_all["clean"].select()]
    rejected = list(filtered_all["rejects"].select())
    assert len(raw) >= len(list(shared_data.rglob("*.cif"))) - 1  # -1: cod/ and cod-sample/ share id 2100348
    assert sorted(clean + [r.structure_id for r in rejected]) == sorted(raw)  # each exactly once
    assert clean, "nothing passed: the filter rejects everything"
    for row in rejected:
        records = row.data["rejections"]
        assert records and row.n_failures == len(records)
        assert [r["check"] for r in records] == row.checks.split(",")
        for record in records:
            assert record["check"] in REJECT_NAMES and record["reason"]
            assert not record["details"].get("internal_error"), record
    counts = filtered_all["report"].counts()
    assert counts.loc["passed", "n"] + len(rejected) == counts.loc["total", "n"] == len(raw)
    assert counts.loc[list(REJECT_NAMES), "n_first"].sum() == len(rejected)
    # the rejects table says what each entry is, as 01_fetch recorded it from the CIF
    table = filtered_all["report"].table().set_index("structure_id")
    names = {row.structure_id: row.get("compound_name") for row in rejected}
    shown = {sid: name if isinstance(name, str) else None for sid, name in table["compound"].items()}
    assert shown == names and names["cod-2001174"] == "2,4,6-tris(tert.-butyl)anilin"  # partial occupancy


@pytest.mark.slow
def test_known_cases_land_in_their_bucket(filtered_all):
    rejects = filtered_all["rejects"]
    for cod_id in PARTIAL_OCCUPANCY_COD:
        assert "partial_occupancy" in _checks(rejects, f"cod-{cod_id}"), cod_id
    # hydrogens missing from the atom list (ASE cannot read either; pymatgen's atoms are counted):
    # found by both checks, the formula's and the structure's (atoms whose valence needs H)
    for sid in ("cod-2003398", "cod-2103187"):
        assert {"ase_unreadable", "hydrogen_missing"} <= set(_checks(rejects, sid))
        h = next(r for r in rejects.get(structure_id=sid).data["rejections"] if r["check"] == "hydrogen_missing")
        assert h["details"]["by"] == ["structure", "formula"], sid
        assert h["details"]["h_missing_structure"] > 0 and h["details"]["h_needed"][0]["label"]
    h = next(r for r in rejects.get(structure_id="cod-2003398").data["rejections"]
             if r["check"] == "hydrogen_missing")
    assert h["details"]["h_expected_per_fu"] == 13 and h["details"]["h_found_per_fu"] == 0
    assert h["details"]["h_missing_in_cell"] == 13 * 8
    # the structure says 15 per molecule where the formula says 13: a terminal C bonded only to an O at
    # 1.24 Å is read as =CH2 (this cod-tools variant has a C where the formula has none); reported, not hidden
    assert h["details"]["h_missing_structure"] == 15 * 8
    # the pymatgen atoms of the broken loop of 2103187 are scattered: isolated C and O atoms, shown as fragments
    inc = next(r for r in rejects.get(structure_id="cod-2103187").data["rejections"]
               if r["check"] == "incomplete_structure")
    assert {f["reason"].split(" (")[0] for f in inc["details"]["fragments"]} == {"isolated C atom", "isolated O atom"}
    # _chemical_formula_sum '?': judged by the structure (formula not required by default) ...
    assert "formula_unknown" not in _checks(rejects, "cod-2003003")
    # ... and still rejected as formula_unknown when a formula is required
    raw_row = filtered_all["raw"].get(structure_id="cod-2003003")
    assert "formula_unknown" in filter_row(raw_row, require_formula=True).checks
    # ASE's space-group table: the reason says exactly which symbol failed
    row = rejects.get(structure_id="cod-2010442")
    assert row.checks == "ase_unreadable" and "P 1 21/c 1" in row.reason and "ase.io.read" in row.reason
    # unmerged copies of special-position atoms
    row = rejects.get(structure_id="cod-2102163")
    assert row.checks.startswith("close_contact")
    assert row.data["rejections"][0]["details"]["n_overlapping"] > 0
    # an X-ray N-H shorter than the study's 0.8 Å
    cc = rejects.get(structure_id="cod-7103889").data["rejections"][0]
    assert cc["check"] == "close_contact" and sorted(cc["details"]["pairs"][0]["symbols"]) == ["H", "N"]
    assert cc["details"]["pairs"][0]["distance"] < 0.8


@pytest.mark.slow
def test_clean_rows_carry_raw_keys_and_reference_cell(filtered_all):
    raw = filtered_all["raw"].get(structure_id="cod-2100348")  # benzene
    row = filtered_all["clean"].get(structure_id="cod-2100348")
    assert row.raw_id == raw.id and row.sha256 == raw.sha256 and row.cif_formula == "C6 H6"
    assert (row.a_exp, row.b_exp, row.c_exp) == pytest.approx((7.287, 9.200, 6.688), abs=1e-3)
    assert (row.alpha_exp, row.beta_exp, row.gamma_exp) == pytest.approx((90, 90, 90))
    assert row.V_exp == pytest.approx(448.4, abs=0.1)
    assert row.density_exp == pytest.approx(1.157, abs=0.005)
    assert np.allclose(row.data["cell_exp"], row.toatoms().cell.array)
    assert np.allclose(row.positions, raw.positions) and row.natoms == raw.natoms == 48
    assert row.flag_no_temperature is False and row.flag_high_pressure is False
    assert row.compound_name == raw.compound_name == "benzene"
    assert row.data["cif"] == raw.data["cif"]
    # what the crystal is: 4 benzene molecules, Z' = 4 / 8 operations of Pbca, 5 entries of benzene in the data
    assert row.n_molecules == 4 and row.z_prime == 0.5 and row.reader == "ase"
    assert row.compound_key == "UHOVQNZJYSORNB-UHFFFAOYSA-N"
    assert row.data["molecules"] == [{"formula": "C6H6", "smiles": "c1ccccc1", "inchikey": row.compound_key,
                                      "charge": 0, "count": 4, "n_atoms": 12}]
    assert row.n_same_compound == 5


@pytest.mark.slow
def test_formula_free_files_are_judged_by_their_structure(filtered_all):
    """Files without _chemical_formula_sum: kept when complete, rejected when their atoms lack H."""
    clean, rejects = filtered_all["clean"], filtered_all["rejects"]
    assert filtered_all["report"].counts().loc["formula_unknown", "n"] == 0
    kept = {r.structure_id for r in clean.select() if not r.get("cif_formula")}
    for name in ("cifs/naphthalene", "cifs/aspirin-c", "packing-analysis/HXMTAM", "glycine/jana2006_glycine"):
        assert any(sid.endswith(name) for sid in kept), name
    # exported without any H: hydrogen_missing from the structure alone, with the atoms named
    for name in ("packing-analysis/DNNAPH", "cif/ISATIN", "cif/DACMOR"):
        row = next(r for r in rejects.select() if r.structure_id.endswith(name))
        h = next(x for x in row.data["rejections"] if x["check"] == "hydrogen_missing")
        assert h["details"]["by"] == ["structure"] and h["details"]["h_missing_structure"] > 0, name


@pytest.mark.slow
def test_zwitterions_salts_and_h_free_molecules_are_kept(filtered_all):
    """Every entry whose molecules carry charges (zwitterions, salts) passes unless a non-chemical check failed."""
    clean, rejects = filtered_all["clean"], filtered_all["rejects"]
    assert clean.get(structure_id="cod-1010060").compound_key == "CURLTUGMZLYLDI-UHFFFAOYSA-N"  # CO2
    charged = []
    for db in (clean, rejects):
        for row in db.select():
            molecules = row.data.get("molecules") or []
            zwitterion = any(m["charge"] == 0 and m["smiles"] and "+" in m["smiles"] and "-" in m["smiles"]
                             and "[N+](=O)[O-]" not in m["smiles"] for m in molecules)
            salt = any(m["charge"] for m in molecules if m["charge"] is not None)
            if zwitterion or salt:
                charged.append(row)
    kinds = {r.structure_id for r in charged}
    assert {"cod-2100437", "cod-4506226", "cod-7219429", "cod-2228759", "cod-2013611"} <= kinds
    assert len(charged) >= 10
    for row in charged:  # the structure never blames their charges (cod-2001925's formula check does: Z/cell)
        records = {r["check"]: r for r in row.data.get("rejections", [])}
        assert "incomplete_structure" not in records, row.structure_id
        if "hydrogen_missing" in records:
            assert records["hydrogen_missing"]["details"]["by"] == ["formula"], row.structure_id
    passed = {r.structure_id for r in charged if r.get("checks") is None}
    assert {"cod-2100437", "cod-4506226", "cod-7219429", "cod-2228759", "cod-2013611"} <= passed


@pytest.fixture()
def small_raw(tmp_path, cod_dir):
    """A few COD files: one clean, one failing only the 0.8 Å check, one disordered."""
    raw = tmp_path / "raw.db"
    fetch(source=str(cod_dir), raw_db=str(raw), cod_ids=[2100348, 7103889, 2208311], progress=False)
    return tmp_path


def test_rerun_is_idempotent_and_moves_rows(small_raw):
    paths = [small_raw / n for n in ("raw.db", "clean.db", "rejects.db")]
    first = run_filter(*paths, progress=False)
    clean, rejects = ase.db.connect(str(paths[1])), ase.db.connect(str(paths[2]))
    assert sorted(first.passed) == ["cod-2100348"]
    assert sorted(first.rejected) == ["cod-2208311", "cod-7103889"]
    again = run_filter(*paths, progress=False)
    assert again.counts().equals(first.counts())
    assert clean.count() == 1 and rejects.count() == 2
    # without the 0.8 Å criterion the N-H structure passes: it leaves the rejects database
    run_filter(*paths, min_distance=0.0, progress=False)
    assert {r.structure_id for r in clean.select()} == {"cod-2100348", "cod-7103889"}
    assert [r.structure_id for r in rejects.select()] == ["cod-2208311"]
    run_filter(*paths, progress=False)
    assert [r.structure_id for r in clean.select()] == ["cod-2100348"] and rejects.count() == 2


def test_pymatgen_reader_keeps_what_ase_cannot_read(tmp_path, cod_dir):
    """'P 1 21/c 1' without a number: ASE fails (the study's criterion 1, the default); pymatgen reads it."""
    raw = tmp_path / "raw.db"
    fetch(source=str(cod_dir), raw_db=str(raw), cod_ids=[2010442], progress=False)
    default = run_filter(raw, tmp_path / "clean.db", tmp_path / "rejects.db", progress=False)
    assert default.rejected == ["cod-2010442"]
    fallback = run_filter(raw, tmp_path / "clean.db", tmp_path / "rejects.db", progress=False, reader="pymatgen")
    assert fallback.passed == ["cod-2010442"]
    row = ase.db.connect(str(tmp_path / "clean.db")).get(structure_id="cod-2010442")
    assert row.reader == "pymatgen" and row.readable is False and row.natoms == 156
    assert row.V_exp == pytest.approx(row.toatoms().cell.volume) and row.compound_key and row.n_molecules == 4
    assert ase.db.connect(str(tmp_path / "rejects.db")).count() == 0


def test_unknown_threshold_is_an_error():
    with pytest.raises(TypeError, match="unknown filter threshold"):
        Thresholds.make(min_distanse=0.7)


def _entry(atoms: Atoms, **kvp) -> Entry:
    """A synthetic raw entry whose CIF text is ASE's own rendering of ``atoms``."""
    text = io.BytesIO()
    ase.io.write(text, atoms, format="cif")
    return Entry(structure_id="test", atoms=atoms, kvp={"readable": True, **kvp},
                 data={"cif": text.getvalue().decode()})


def test_close_pair_across_the_cell_boundary_reports_indices_and_shift():
    atoms = Atoms("CH", scaled_positions=[[0.01, 0.5, 0.5], [0.95, 0.5, 0.5]], cell=[10, 10, 10], pbc=True)
    (i, j, d, shift), = close_pairs(atoms, 0.8)
    assert (i, j) == (0, 1) and d == pytest.approx(0.6) and shift == (-1, 0, 0)
    result = evaluate(_entry(atoms, cif_formula="C H", z_formula=1), Thresholds(require_formula=True))
    cc = next(r for r in result.rejections if r.check == "close_contact")
    assert cc.details["pairs"][0]["i"] == 0 and cc.details["pairs"][0]["j"] == 1
    assert "0.600" in cc.reason


def test_hydrogen_count_uses_z_and_reports_missing_atoms():
    # two CH4-like units per cell, formula C H4 with Z=2 -> 8 H expected, 6 found
    atoms = Atoms("C2H6", positions=[[1, 1, 1], [5, 5, 5], [2, 1, 1], [1, 2, 1], [1, 1, 2],
                                     [6, 5, 5], [5, 6, 5], [5, 5, 6]], cell=[10, 10, 10], pbc=True)
    result = evaluate(_entry(atoms, cif_formula="C H4", z_formula=2), Thresholds(min_distance=0.5))
    assert result.checks == ["hydrogen_missing", "implausible_density"]
    h = result.rejections[0].details
    assert h["h_found_per_fu"] == 3 and h["h_missing_per_fu"] == 1 and h["h_missing_in_cell"] == 2
    # Z given wrongly is a composition finding, not silently corrected
    result = evaluate(_entry(atoms, cif_formula="C H3", z_formula=4), Thresholds(density_range=(0, 9)))
    assert result.checks == ["hydrogen_missing", "composition_mismatch"]
    assert result.rejections[1].details["z_fit"] == 2 and result.rejections[1].details["z_cif"] == 4


def test_single_atom_foreign_element_and_flags():
    atoms = Atoms("Cl", positions=[[0, 0, 0]], cell=[3, 3, 3], pbc=True)
    result = evaluate(_entry(atoms, cif_formula="Cl", z_formula=1, pressure=2.0e6), Thresholds())
    assert {"incomplete_structure", "elements"} <= set(result.checks)
    assert {f.check for f in result.flags} == {"high_pressure", "no_temperature"}
    assert "high_pressure" not in result.checks  # flags do not reject by default
    assert "high_pressure" in evaluate(_entry(atoms, pressure=2.0e6), Thresholds(flags_reject=True)).checks


@pytest.mark.parametrize("cif", ["", "data_x\n_cell_length_a 5\nloop_\n_atom_site_label\nC1\n", "\x00garbage ;;"])
def test_garbage_input_gives_reasons_not_exceptions(cif):
    rng = np.random.default_rng(0)
    atoms = Atoms("CHNO" * 3, positions=rng.random((12, 3)) * 4, cell=[4, 4, 4], pbc=True)
    for entry in (Entry("g", Atoms(), {"readable": False, "read_error": "boom"}, {"cif": cif}),
                  Entry("g", atoms, {"readable": True, "cif_formula": "?"}, {"cif": cif})):
        result = filter_row(entry)
        assert result.rejections
        assert not any(r.details.get("internal_error") for r in result.rejections), result.rejections
