"""The bonding split of the report: N–H/O–H donors read from 02_filter's molecules of real COD crystals, and
the ranking per class recomputed by hand."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from ase.db import connect

from helpers.analysis.bonding import bonding_class, nh_oh_donors
from helpers.vocabulary import DONORS, NO_DONORS


def test_donors_of_real_crystals_read_by_the_filter(small_clean_db):
    found = {row.get("cod_id"): nh_oh_donors(sp.get("smiles") for sp in row.data["molecules"])
             for row in connect(small_clean_db).select()}
    assert found[2000642] == 0  # 1,4-dibenzoylbenzene: ketones only, held by dispersion and C–H···O
    assert found[2007300] == 1  # 3-acetamido-2-nitrobenzyl acetate: the amide N–H
    assert found[4021477] == 1  # a tertiary alcohol: one O–H
    assert found[1011063] is None  # ice II: species the filter could not write as SMILES -> unknown, not 0
    assert [bonding_class(found[i]) for i in (2000642, 2007300, 1011063)] == [NO_DONORS, DONORS, None]


@pytest.mark.parametrize(("smiles", "expected"), [
    (["NC(N)=O"], 2),  # urea: two N atoms with H (each counted once)
    (["O=[N+]([O-])c1cccc([N+](=O)[O-])c1"], 0),  # meta-dinitrobenzene
    (["CC(=O)O", "O"], 2),  # acetic acid with water of crystallisation
    (["[NH4+]", "[Cl-]"], 1),  # ammonium
    (["c1ccccc1", "not a smiles"], None), ([], None)])
def test_donor_rule(smiles, expected):
    assert nh_oh_donors(smiles) == expected
    assert bonding_class(float("nan")) is None and bonding_class(0) == NO_DONORS and bonding_class(3.0) == DONORS


def test_the_report_splits_the_ranking_by_donors(tmp_path, sourced_errors):
    from helpers.analysis.ranking import T_ASSUMED, dv_zero_kelvin
    from helpers.analysis.report import write_report
    from helpers.analysis.stage import analyse_errors
    from tests.analysis.test_report import science, section_table

    errors = sourced_errors.copy()
    ids = sorted(set(errors.structure_id))
    donors = {s: (2 if k % 3 else 0) for k, s in enumerate(ids)}  # two thirds with donors
    errors["nh_oh_donors"] = errors.structure_id.map(donors)
    analyse_errors(errors, tmp_path / "analysis", n_boot=50, n_refit=10, quantities=("volume",))
    plan = SimpleNamespace(sources=["/x/cod", "/x/cod-sample"], max_atoms={})
    markdown = write_report(tmp_path / "analysis", plan, tmp_path / "docs",
                            extra={"clean_fraction": 0.8, "n_clean": 40}).read_text()
    split = json.loads((tmp_path / "docs" / "results.json").read_text())["by_bonding"]
    table = section_table(markdown, "## Hydrogen-bonded or not: does the ranking hold for both?")
    table = table.set_index("potential")
    rows = science(errors)
    for name, wanted in ((DONORS, 2), (NO_DONORS, 0)):
        members = sorted(s for s in set(rows.structure_id) if donors[s] == wanted)
        assert split[name]["n"] == len(members) >= 10
        for potential, display in (("ani1x", "ANI-1x"), ("ani1ccx", "ANI-1ccx")):
            mine = rows[(rows.potential == potential) & rows.structure_id.isin(members)]
            t = mine.temperature.fillna(T_ASSUMED)
            score = np.where(mine.status == "converged", np.abs(dv_zero_kelvin(mine.dV_pct, t)), np.inf)
            assert split[name]["potentials"][potential]["metric"] == pytest.approx(np.median(score))
            cell = table.loc[display, f"{name} (n = {len(members)}): median |ΔV₀| [%] (exact 95 % CI)"]
            assert cell.startswith(f"{np.median(score):.2f} [")
        assert sorted(split[name]["order"]) == sorted(split[name]["potentials"])
    # the headline says where the first stands in each class, from the same numbers
    potentials = json.loads((tmp_path / "docs" / "results.json").read_text())["potentials"]
    first = next(p for p, row in potentials.items() if row["rank"] == 1)
    verdict = markdown.split("## Verdict", 1)[1].split("## ", 1)[0]
    ordinal = ("first", "second", "third")
    expected = [f"{ordinal[split[DONORS]['order'].index(first)]} among the crystals with {DONORS} "
                f"({split[DONORS]['n']})",
                f"{ordinal[split[NO_DONORS]['order'].index(first)]} among those with {NO_DONORS} "
                f"({split[NO_DONORS]['n']})"]
    assert f"By chemistry, {potentials[first]['display_name']} is {expected[0]} and {expected[1]}" in verdict


def test_the_notebook_table_is_the_split(sourced_errors):
    from helpers.analysis.bonding import bonding_frame, by_bonding
    from helpers.analysis.ranking import rank_potentials
    from tests.analysis.test_report import science

    rows = science(sourced_errors).copy()
    ids = sorted(set(rows.structure_id))
    rows["nh_oh_donors"] = rows.structure_id.map({s: k % 2 for k, s in enumerate(ids)})
    ranking = rank_potentials(rows, n_boot=50)
    split = by_bonding(rows, ranking)
    frame = bonding_frame(split)
    assert set(frame["class"]) == {DONORS, NO_DONORS} and len(frame) == 2 * len(split[DONORS]["potentials"])
    for r in frame.to_dict("records"):
        assert r["metric"] == split[r["class"]]["potentials"][r["potential"]]["metric"]
        assert split[r["class"]]["order"][r["rank"] - 1] == r["potential"]
    assert split[DONORS]["n"] + split[NO_DONORS]["n"] == len(ranking["shared"])
    rows["nh_oh_donors"] = np.nan  # molecules not read: no split, not a split into "no donors"
    assert by_bonding(rows, ranking) == {}
