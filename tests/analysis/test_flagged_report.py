"""The report's 'CIF error or potential error?' section and results.json's ``flagged``, from a fixed errors
table (tests/data/results_errors.csv: three ANI models, and here a SevenNet-0-d3 copy of ANI-1x's rows, so two
potential families vote) with three crystals every potential moves far, recomputed by hand."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_report import ERRORS, section_table

from helpers.analysis.report import write_report
from helpers.analysis.stage import analyse_errors

FAR = ("cod-2000001", "cod-2000002", "cod-2000003")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("flagged")
    errors = pd.read_csv(ERRORS)
    errors = pd.concat([errors, errors[errors.potential == "ani1x"].assign(potential="sevennet0-d3",
                                                                           potential_name="sevennet0-d3")],
                       ignore_index=True)
    errors.loc[errors.structure_id.isin(FAR), "dV_pct"] = 25.0  # every potential: +25 %
    errors["filter_flags"] = np.where(errors.structure_id == "cod-2000004", "bond_length_outlier", "")
    analyse_errors(errors, root / "analysis", n_boot=50, quantities=("volume",), plots=False)
    plan = SimpleNamespace(sources=["/x/cod"], max_atoms={})
    path = write_report(root / "analysis", plan, root / "docs", extra={})
    return errors, path.read_text(), root


def test_listed_crystals_and_results_json(report):
    errors, markdown, root = report
    listed = pd.read_csv(root / "analysis" / "consensus_outliers.csv")
    converged = errors[errors.status == "converged"]
    far = set()
    for sid, g in converged.groupby("structure_id"):
        families = [g[g.potential.str.startswith("ani")], g[g.potential == "sevennet0-d3"]]
        families = [f for f in families if len(f)]  # a family votes as more than half of its converged members
        up = sum((f.dV_pct > 10).sum() * 2 > len(f) for f in families)
        down = sum((f.dV_pct < -10).sum() * 2 > len(f) for f in families)
        if len(g) >= 3 and len(families) == 2 and max(up, down) == 2:  # both families, the same direction
            far.add(sid)
    assert set(FAR) <= far  # by hand: both families far up
    expected = sorted(far | {"cod-2000004"})
    assert sorted(listed.structure_id) == expected
    flagged = json.loads((root / "docs" / "results.json").read_text())["flagged"]
    assert flagged["reasons"]["volume_consensus"] == sorted(far)
    assert flagged["reasons"]["filter_flagged"] == ["cod-2000004"]
    assert flagged["n_listed"] == len(expected)


def test_section_numbers_with_and_without(report):
    errors, markdown, root = report
    assert "## CIF error or potential error?" in markdown
    table = section_table(markdown, "ΔV of converged relaxations, all entries → without the listed ones:")
    row = table[table.potential == "ANI-1x"].iloc[0]
    listed = set(pd.read_csv(root / "analysis" / "consensus_outliers.csv").structure_id)
    dv = errors[(errors.potential == "ani1x") & (errors.status == "converged")]
    rest = dv[~dv.structure_id.isin(listed)].dV_pct
    before, after = (float(x) for x in row["median ΔV [%]"].split(" → "))
    assert before == pytest.approx(np.median(dv.dV_pct), abs=0.006)
    assert after == pytest.approx(np.median(rest), abs=0.006)
    assert row["n (left out)"] == f"{len(dv)} ({len(dv) - len(rest)})"
    up = dv.dV_pct > 10
    n_up_listed = int((up & dv.structure_id.isin(listed)).sum())
    assert row["tails that are listed"].startswith(f"{n_up_listed}/{int(up.sum())} up")


def test_the_report_hands_its_tables_over_and_the_section_is_the_same(report):
    """The report has read errors.csv and consensus_outliers.csv already: the section built from those tables is
    the one built from the files (and a table it is given is the one it uses)."""
    from helpers.analysis.flagged_report import flagged_section
    from helpers.analysis.report import read_tables

    _, _, root = report
    tables = read_tables(root / "analysis")
    whole = flagged_section(root / "analysis", tables=tables)
    assert whole == flagged_section(root / "analysis") and "| cod-2000001 " in "\n".join(whole)
    none_listed = {**tables, "consensus_outliers": tables["consensus_outliers"].iloc[:0]}
    assert "| cod-2000001 " not in "\n".join(flagged_section(root / "analysis", tables=none_listed))
