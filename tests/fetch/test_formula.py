"""Formula parsing and the strict 'only C, H, N, O' selection on tricky COD formulas."""

from __future__ import annotations

import json

import pytest

from helpers.fetch.cod import (
    CodSearchError,
    entry_from_row,
    parse_search,
    row_elements,
    select,
)
from helpers.fetch.formula import parse_formula

CHNO = ("C", "H", "N", "O")


@pytest.mark.parametrize("formula, expected", [
    ("C6 H6", {"C": 6, "H": 6}),
    ("- C6 H6 -", {"C": 6, "H": 6}),                     # COD's formula column
    ("C10H8N2", {"C": 10, "H": 8, "N": 2}),              # no spaces
    ("C H N O", {"C": 1, "H": 1, "N": 1, "O": 1}),       # counts omitted
    ("C12 H8 N2, C20 H14 O2", {"C": 32, "H": 22, "N": 2, "O": 2}),  # two moieties add up
    ("C22 H22 O ", {"C": 22, "H": 22, "O": 1}),          # trailing space (COD 2001826)
    ("C6 H13 N O0.5", {"C": 6, "H": 13, "N": 1, "O": 0.5}),
    ("C10 H8 N2 Ni", {"C": 10, "H": 8, "N": 2, "Ni": 1}),
    ("Co C O", {"Co": 1, "C": 1, "O": 1}),
    ("CO", {"C": 1, "O": 1}),                             # carbon monoxide, not cobalt
    ("D2 O", {"H": 2, "O": 1}),                           # heavy water: deuterium counts as H
])
def test_parse_formula_counts(formula, expected):
    assert parse_formula(formula) == pytest.approx(expected)


@pytest.mark.parametrize("formula", [
    "?", "", " - - ", ".", "foo C6 H6", "C6 foo H6", "Xx2 O",
    "C6 H6 foo",
])
def test_parse_formula_rejects_unknown(formula):
    with pytest.raises(ValueError):
        parse_formula(formula)


# formula -> made only of C, H, N, O?  Every False case hides a symbol starting with C/H/N/O.
TRICKY = [
    ("C6 H6", True), ("H2 O", True), ("C24 H14 N10", True), ("C H N O", True),
    ("C10 H8 N2 Ni", False), ("C2 H3 Na O2", False), ("C5 H5 Nb O", False), ("C6 H5 N Nd", False),
    ("C H Cl3", False), ("C4 H6 Ca O4", False), ("C8 H8 Co O", False), ("C6 H6 Cr O3", False),
    ("C6 H6 Cu N", False), ("C H O Cs", False), ("C2 H6 O4 Os", False), ("C12 H10 Hg", False),
    ("C4 H4 Ho N O", False), ("C H N O Hf", False), ("C6 H5 N O Ne", False), ("C H3 No", False),
]


@pytest.mark.parametrize("formula, inside", TRICKY)
def test_formula_elements_are_strict(formula, inside):
    assert (set(parse_formula(formula)) <= set(CHNO)) is inside


def rows_for(formulas, start=9000001):
    return [{"file": str(start + i), "formula": f"- {f} -"} for i, (f, _) in enumerate(formulas)]


def test_select_keeps_exactly_the_chno_rows():
    rows = rows_for(TRICKY)
    selection = select(rows, CHNO)
    kept = {e.cod_id for e in selection.entries}
    expected = {int(r["file"]) for r, (_, inside) in zip(rows, TRICKY) if inside}
    assert kept == expected
    assert selection.queried == len(TRICKY)
    assert selection.skipped == {"elements outside C,H,N,O": len(TRICKY) - len(expected)}
    assert selection.skipped_ids[9000005] == "elements outside C,H,N,O"  # the Ni one


def test_row_elements_falls_back_to_calcformula():
    assert row_elements({"formula": "?", "calcformula": "- C6 H6 -"}) == ("C6 H6", frozenset("CH"))
    assert row_elements({"formula": None, "calcformula": None}) == (None, None)
    formula, elements = row_elements({"formula": "- C6 H5 D -"})  # deuterium is hydrogen to a potential
    assert elements == frozenset("CH") and formula == "C6 H5 D"
    assert parse_formula("C6 D6") == {"C": 6, "H": 6}
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        parse_formula("C6 Xx2")


def test_unknown_formula_kept_or_dropped_on_request():
    rows = [{"file": "1", "formula": "?"}, {"file": "2", "formula": "- C6 H6 -"}]
    kept = select(rows, CHNO)
    assert [e.cod_id for e in kept.entries] == [1, 2] and kept.unknown_formula == 1
    strict = select(rows, CHNO, keep_unknown_formula=False)
    assert [e.cod_id for e in strict.entries] == [2] and strict.skipped == {"formula unknown": 1}


def test_metadata_selection_counts():
    rows = [
        {"file": "1", "formula": "- C6 H6 -", "cellpressure": "101.3"},
        {"file": "2", "formula": "- C6 H6 -", "cellpressure": "1500000(20000)"},  # 1.5 GPa
        {"file": "3", "formula": "- C6 H6 -", "diffrpressure": "250000"},
        {"file": "4", "formula": "- C6 H6 -", "duplicateof": "1"},
        {"file": "5", "formula": "- C6 H6 -", "Robs": "0.2510"},
        {"file": "6", "formula": "- C6 H6 -", "Robs": None, "Rall": "0.0400"},
        {"file": "6", "formula": "- C6 H6 -"},  # repeated row
    ]
    selection = select(rows, CHNO, max_pressure_kpa=1000, drop_duplicates=True, max_r_factor=0.15)
    assert [e.cod_id for e in selection.entries] == [1, 6]
    assert selection.skipped == {"pressure > 1000 kPa": 2, "COD duplicate of another entry": 1,
                                 "R factor > 0.15": 1, "repeated in search result": 1}
    assert [e.cod_id for e in select(rows, CHNO).entries] == [1, 2, 3, 4, 5, 6]
    limited = select(rows, CHNO, limit=2)
    assert [e.cod_id for e in limited.entries] == [1, 2] and limited.skipped["beyond limit"] == 4


def test_entry_metadata_parsed_and_prefixed():
    entry = entry_from_row({"file": "2100348", "formula": "- C6 H6 -", "a": "7.44(2)", "vol": "467.2",
                            "volume": "12", "celltemp": "218(2)", "sg": "P b c a", "Z": "4",
                            "duplicateof": None, "doi": "10.1107/x", "Robs": "0.041"})
    assert entry.cod_id == 2100348 and entry.elements == frozenset("CH")
    assert isinstance(entry.meta["cod_z"], int) and isinstance(entry.meta["cod_a"], float)
    assert entry.meta == {"cod_formula": "C6 H6", "cod_a": 7.44, "cod_vol": 467.2, "cod_celltemp": 218.0,
                          "cod_sg": "P b c a", "cod_z": 4.0, "cod_doi": "10.1107/x", "cod_robs": 0.041}
    assert entry.r_factor == 0.041 and entry.pressure_kpa is None


def test_parse_search_formats():
    rows = [{"file": "1000001", "formula": "- C6 H6 -", "vol": None}]
    assert parse_search(json.dumps(rows)) == rows
    csv_rows = parse_search("file,formula,vol\n1000001,- C6 H6 -,\n", "csv")
    assert csv_rows == [{"file": "1000001", "formula": "- C6 H6 -", "vol": ""}]
    assert parse_search("[]") == [] and parse_search("file,formula\n", "csv") == []
    for bad in ("<html><body>Error</body></html>", "{\"error\": \"bad query\"}", "[1, 2]", "[{"):
        with pytest.raises(CodSearchError):
            parse_search(bad)


def test_the_compound_name_from_real_cifs(cod_dir):
    """The CIF's common name first, else its systematic one (a multi-line text field, whitespace collapsed);
    None when the entry names nothing or the text is not a CIF."""
    from helpers.fetch.cif import compound_name

    def name(cod_id):
        return compound_name((cod_dir / f"{cod_id}.cif").read_text(errors="replace"))

    assert name(2007300) == "3-acetamido-2-nitrobenzyl acetate"  # common (quoted) before systematic
    assert name(2000642) == "1,4-Dibenzoylbenzene"  # systematic only, in a ;-delimited text field
    assert name(1011063) == "Dihydrogen oxide - ice II"  # a mineral name is not the compound's
    assert name(4021477) is None
    assert compound_name("data_x\n_cell_length_a 5\n") is None and compound_name("not a cif ;;; \x00") is None


def test_01_fetch_records_the_compound_name(tmp_path, cod_dir):
    """The name is metadata 01_fetch keeps (raw row key ``compound_name``, passed on to clean and rejects);
    a row fetched before it was kept gets it from its stored CIF text at analysis time."""
    from types import SimpleNamespace

    from helpers.analysis.stage import _compound_name
    from helpers.fetch.stage import fetch
    from helpers.store import db as dbmod

    raw = str(tmp_path / "raw.db")
    fetch(source=str(cod_dir), raw_db=raw, cod_ids=[2000642, 4021477], progress=False)
    rows = {row.structure_id: row for row in dbmod.connect(raw).select()}
    assert rows["cod-2000642"].get("compound_name") == "1,4-Dibenzoylbenzene"
    assert rows["cod-4021477"].get("compound_name") is None
    assert _compound_name(None, rows["cod-2000642"]) == "1,4-Dibenzoylbenzene"
    older = SimpleNamespace(get=lambda key, default=None: None, data=rows["cod-2000642"].data)
    assert "cif" in older.data and _compound_name(None, older) == "1,4-Dibenzoylbenzene"
