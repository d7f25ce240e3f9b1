"""docs/results.md is regenerated from a small fixed errors.csv and its numbers recomputed by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers.analysis.report import COD_CHNO_ENTRIES, write_report
from helpers.analysis.stage import analyse_errors

ERRORS = Path(__file__).parents[1] / "data" / "results_errors.csv"


def section_table(markdown: str, heading: str) -> pd.DataFrame:
    """The first markdown table after ``heading``, as strings."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            table.append([cell.strip().replace("\\|", "|") for cell in cells])
        elif table:
            break
    return pd.DataFrame(table[2:], columns=table[0])


@pytest.fixture(scope="module")
def report(tmp_path_factory, sourced_errors):
    root = tmp_path_factory.mktemp("report")
    errors = sourced_errors.copy()
    analyse_errors(errors, root / "analysis", n_boot=200, n_refit=30, quantities=("volume", "a1"))
    plan = SimpleNamespace(sources=["/x/cod", "/x/cod-sample"], max_atoms={"ani2x": 60})
    extra = {"clean_fraction": 0.8, "n_clean": 40, "coverage": {"ani1x": (44, 44), "ani2x": (30, 12), "gfn-ff": (9, 0)},
             "stage_minutes": {"fetch": 0.5, "relax": 95.0}}
    path = write_report(root / "analysis", plan, root / "docs", extra=extra)
    return errors, path.read_text(), root


def science(errors: pd.DataFrame) -> pd.DataFrame:
    """The unaltered entries, by hand: the source path's folder is cod-sample."""
    return errors[errors.source.str.contains("/cod-sample/")]


def converged_dv(errors: pd.DataFrame, potential: str) -> np.ndarray:
    rows = science(errors)
    rows = rows[(rows.potential == potential) & (rows.status == "converged")]
    return rows.dV_pct.to_numpy()


def test_study_table_numbers_are_the_hand_computed_ones(report):
    errors, markdown, _ = report
    table = section_table(markdown, "## The study's table beside ours")
    row = table[(table.potential == "ANI-1x") & (table.quantity == "ΔV [%]")].iloc[0]
    dv = converged_dv(errors, "ani1x")
    assert int(row["n"]) == len(dv) == 34  # the science sample: 34 of the 40 structures
    assert float(row["median"]) == pytest.approx(np.median(dv), abs=0.006)
    assert float(row["MAD"]) == pytest.approx(np.median(np.abs(dv - np.median(dv))), abs=0.006)
    assert (row["study μ"], row["study σ"]) == ("3.0", "8.4")
    low, high = (float(x) for x in row["μ 95 % CI"].strip("[]").split(","))
    assert low < float(row["μ"]) < high and dv.min() < float(row["μ"]) < dv.max()
    assert 0 < float(row["σ"]) < dv.max() - dv.min()
    ccx = table[(table.potential == "ANI-1ccx") & (table.quantity == "ΔV [%]")].iloc[0]
    assert int(ccx["n"]) == len(converged_dv(errors, "ani1ccx")) < 34  # step-capped rows are not in the fit
    refit = [float(x) for x in row["μ CI, bins refitted"].strip("[]").split(",")]
    assert refit[0] < float(row["μ"]) < refit[1]


def test_ranking_follows_median_absolute_error(report):
    errors, markdown, _ = report
    table = section_table(markdown, "### Each potential on its own converged structures (not a ranking: different "
                                    "populations)")
    by_hand = {p: np.median(np.abs(converged_dv(errors, p))) for p in ("ani1x", "ani1ccx", "ani2x")}
    expected = [{"ani1x": "ANI-1x", "ani1ccx": "ANI-1ccx", "ani2x": "ANI-2x"}[p]
                for p in sorted(by_hand, key=by_hand.get)]
    assert list(table.potential) == expected
    for name, value in zip(table.potential, table["median abs ΔV [%]"]):
        key = {"ANI-1x": "ani1x", "ANI-1ccx": "ani1ccx", "ANI-2x": "ani2x"}[name]
        assert float(value) == pytest.approx(by_hand[key], abs=0.006)
    assert "ANI-2x ≤ 60 atoms" in markdown


def test_status_counts_worst_structures_and_cost(report):
    errors, markdown, root = report
    status = section_table(markdown, "### How the relaxations ended").set_index("potential")
    counts = science(errors).groupby(["potential", "status"]).size()
    assert int(status.loc["ANI-1ccx", "step_cap"]) == counts.get(("ani1ccx", "step_cap"), 0)
    assert int(status.loc["ANI-2x", "exploded"]) == counts.get(("ani2x", "exploded"), 0)
    assert int(status.loc["ANI-1x", "converged"]) == 34
    worst = section_table(markdown, "#### ANI-2x")
    rows = science(errors)[lambda f: f.potential == "ani2x"].assign(a=lambda f: f.dV_pct.abs()).sort_values(
        "a", ascending=False)
    assert list(worst.structure_id) == list(rows.structure_id[:10])
    assert worst["what went wrong"].iloc[0] == "exploded; |ΔV| > 20 %"
    # the fixed table predates names and molecules: the formula stands in, the molecules are missing ("–")
    assert set(worst["compound"]) == {"C6 H6"} and set(worst["molecules (02_filter)"]) == {"–"}
    cost = section_table(markdown, "### Cost on this machine").set_index("potential")
    ani1x = errors[errors.potential == "ani1x"].cost_time
    assert float(cost.loc["ANI-1x", "total core-hours"]) == pytest.approx(ani1x.sum() / 3600, abs=0.006)
    # the fixture's coverage says ANI-2x finished 12 of its 30: no projection from a partial run
    assert cost.loc["ANI-2x", "structures"] == "≤ 60 atoms, 12 of 30 done" and cost.loc["ANI-1x", "structures"] == "all"
    assert cost.loc["ANI-2x", "projected core-hours, all C/H/N/O COD"] == "– (partial run)"
    projected = float(cost.loc["ANI-1x", "projected core-hours, all C/H/N/O COD"].replace(",", ""))
    assert projected == pytest.approx(COD_CHNO_ENTRIES * 0.8 * ani1x.mean() / 3600, abs=1)
    assert cost.loc["ANI-1x", "clock"] == "wall"  # the fixed errors.csv predates cpu_time
    for name in ("ranking_ci.png", "hist_grid_volume.png"):  # the report's own figures (shrunk PNGs)
        assert (root / "docs" / "figures" / name).stat().st_size > 2000 and f"figures/{name}" in markdown
    for name in ("ci_volume.png", "overlay_volume.png", "hist_ani1x_volume.png"):  # the old ones: neither
        assert not (root / "docs" / "figures" / name).exists() and f"figures/{name}" not in markdown


def test_all_entries_and_one_per_compound(report):
    errors, markdown, _ = report
    table = section_table(markdown, "## Duplicates: all entries, one per compound, one per polymorph")
    one = table[(table.entries == "one_per_compound") & (table.potential == "ANI-1x")].iloc[0]
    assert int(one["n"]) == science(errors).compound_key.nunique() < 30
    # lowest R factor per compound, by hand
    ani1x = science(errors)[lambda f: f.potential == "ani1x"].sort_values(["compound_key", "r_factor"])
    chosen = ani1x.groupby("compound_key").head(1)
    assert float(one["median [%]"]) == pytest.approx(np.median(chosen.dV_pct), abs=0.006)
    assert "the study's value is" in markdown and "Why the numbers may differ" in markdown


def test_report_says_what_did_not_finish_and_how_long_it_took(report):
    _, markdown, _ = report
    ran = section_table(markdown, "## What was run").set_index("potential")
    assert list(ran.state) == ["complete", "partial", "not started"]
    assert list(ran.index) == ["ANI-1x", "ANI-2x", "GFN-FF"]  # the names papers use
    assert ran.loc["ANI-2x", "structures"] == "clean, ≤ 60 atoms" and ran.loc["ANI-1x", "structures"] == "every clean"
    assert (ran.loc["ANI-2x", "to relax"], ran.loc["ANI-2x", "finished"]) == ("30", "12")
    assert "analysis and report): fetch 0.5 min, relax 1.6 h." in markdown
    assert "Not finished: ANI-2x, GFN-FF. Rows below count only finished relaxations" in markdown


def test_a_finished_campaign_says_so():
    from helpers.analysis.report import coverage_sentence, coverage_table

    done = coverage_table({"ani1x": (168, 168), "gfn-ff": (91, 91)}, {"gfn-ff": 60})
    assert list(done.state) == ["complete", "complete"]
    assert coverage_sentence(done).startswith("Every potential finished every structure")
    part = coverage_table({"ani1x": (168, 168), "ani1x-d3": (168, 150)}, {})
    assert coverage_sentence(part).startswith("Not finished: ANI-1x-d3. Rows below count only finished")


def test_discussion_numbers_come_from_the_tables(report):
    from helpers.analysis.quantities import STUDY_RESULT

    _, markdown, root = report
    summary = pd.read_csv(root / "analysis" / "summary.csv")
    ours = summary[(summary.quantity == "volume") & (summary.entries == "all")].set_index("potential")["mu"]
    study = STUDY_RESULT.query("quantity == 'volume'").set_index("potential")["mu_study"]
    discussion = markdown.split("## Discussion", 1)[1]
    for potential, name in (("ani1x", "ANI-1x"), ("ani1ccx", "ANI-1ccx")):
        assert f"{ours[potential] - study[potential]:+.1f} points ({name})" in discussion
    assert "points to" not in markdown  # no cause claimed that the rows do not test
    assert "ANI-1ccx against ANI-1x on the same 34 shared structures (failures as ∞)" in discussion
    assert "sign test Holm-adjusted over all pairs: " in discussion



def test_same_structures_ranking_uses_only_common_converged_structures(report):
    errors, markdown, _ = report
    errors = science(errors)
    heading = next(line for line in markdown.splitlines() if line.startswith("The same ranking on the"))
    n_common = int(heading.split()[5])
    table = section_table(markdown, heading).set_index("potential")
    converged = errors[errors.status == "converged"]
    common = set.intersection(*(set(converged[converged.potential == p].structure_id)
                                for p in errors.potential.unique()))
    assert n_common == len(common) >= 5 and set(table.n.astype(int)) == {len(common)}
    for potential, name in (("ani1x", "ANI-1x"), ("ani2x", "ANI-2x")):
        dv = converged[(converged.potential == potential) & converged.structure_id.isin(common)].dV_pct
        assert float(table.loc[name, "median abs ΔV [%]"]) == pytest.approx(dv.abs().median(), abs=0.006)
    assert list(table["rank"].astype(int)) == list(range(1, len(table) + 1))


def test_a_small_subset_potential_is_left_out_of_the_same_structures_ranking_not_the_ranking():
    """The campaign's case: GFN2-xTB converged on 3 crystals; the other potentials still get their ranking
    on what they share, and the report names what was left out and why."""
    from helpers.analysis.report import _common_section, common_ranking

    errors = pd.read_csv(ERRORS)
    ids = sorted(set(errors.structure_id))
    small = errors[(errors.potential == "ani1x") & errors.structure_id.isin(ids[:3])].assign(potential="gfn2-xtb")
    smaller = errors[(errors.potential == "ani1x") & errors.structure_id.isin(ids[3:5])].assign(potential="gfn1-xtb")
    with_small = pd.concat([errors, small, smaller], ignore_index=True)
    table, n_common, left_out = common_ranking(with_small)
    converged = errors[errors.status == "converged"]
    common = set.intersection(*(set(converged[converged.potential == p].structure_id)
                                for p in ("ani1x", "ani1ccx", "ani2x")))
    assert n_common == len(common) >= 5 and sorted(table.potential) == ["ANI-1ccx", "ANI-1x", "ANI-2x"]
    n_small = int((small.status == "converged").sum())
    assert left_out == [("gfn1-xtb", 2), ("gfn2-xtb", n_small)]  # the fewest first, one at a time
    heading = _common_section(with_small)[0]
    assert heading.endswith(f"left out of it for too few structures in common: GFN1-xTB (2 converged), "
                            f"GFN2-xTB ({n_small} converged):")
    assert common_ranking(errors)[2] == []  # nothing left out when every potential shares enough
    assert _common_section(with_small[with_small.potential.isin(["ani1x", "gfn1-xtb"])])[0].startswith(
        "Only 2 structures were relaxed")  # two potentials: nothing left to leave out


def test_cost_projection_of_a_complete_subset_is_a_lower_bound():
    from helpers.analysis.report import cost_table

    errors = pd.read_csv(ERRORS)
    table = cost_table(errors, 0.8, {"ani2x": 60}, {"ani1x": (44, 44), "ani2x": (30, 30)}).set_index("potential")
    assert table.loc["ANI-2x", "structures"] == "≤ 60 atoms"
    assert table.loc["ANI-2x", "projected core-hours, all C/H/N/O COD"].startswith("> ")
    assert not table.loc["ANI-1x", "projected core-hours, all C/H/N/O COD"].startswith(">")


def test_cost_is_cpu_time_where_rows_record_it():
    from helpers.analysis.report import cost_table

    errors = pd.DataFrame({"potential": ["ani1x"] * 3 + ["ani2x"] * 2, "cost_time": [10.0, 20.0, 30.0, 5.0, 5.0],
                           "cpu_time": [4.0, 8.0, None, 3.0, 3.0]})
    table = cost_table(errors, 1.0).set_index("potential")
    assert table.loc["ANI-1x", "clock"] == "CPU (2), wall (1)" and table.loc["ANI-2x", "clock"] == "CPU"
    assert table.loc["ANI-1x", "median s/crystal"] == "8.0" and table.loc["ANI-2x", "total core-hours"] == "0.00"


def test_verdict_first_then_the_sample_by_source(report):
    errors, markdown, root = report
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Verdict", "## The sample", "## What was run"]
    assert headings[-2:] == ["## Glossary", "## Appendix"]
    sample = section_table(markdown, "## The sample").set_index("set")
    assert (sample.loc["science", "structures"], sample.loc["altered", "structures"],
            sample.loc["ice", "structures"]) == ("34", "5", "1")
    sets = json.loads((root / "docs" / "results.json").read_text())["sets"]["ids"]
    assert sets["science"] == sorted(set(science(errors).structure_id)) and len(sets["altered"]) == 5
    apart = section_table(markdown, "## Reported apart: the COD tool suite's test inputs and ice")
    assert set(apart["set"]) == {"altered", "ice"}
    ice = errors[errors.source.str.contains("/cod/") & (errors.cif_formula == "H2 O") & (errors.potential == "ani1x")]
    row = apart[(apart["set"] == "ice") & (apart.potential == "ANI-1x")].iloc[0]
    assert float(row["median ΔV [%]"]) == pytest.approx(ice.dV_pct.median(), abs=0.006)


def test_ranking_counts_failures_and_results_json_has_them(report):
    from helpers.analysis.ranking import dv_zero_kelvin

    errors, markdown, root = report
    table = section_table(markdown, "## Ranking on shared structures (primary: against the 0 K-extrapolated "
                                    "experiment)").set_index("potential")
    potentials = json.loads((root / "docs" / "results.json").read_text())["potentials"]
    for potential, name in (("ani1x", "ANI-1x"), ("ani1ccx", "ANI-1ccx"), ("ani2x", "ANI-2x")):
        rows = science(errors)[lambda f: f.potential == potential]  # noqa: B023
        failed = rows.status != "converged"
        dv0 = dv_zero_kelvin(rows.dV_pct, rows.temperature)
        score = np.where(failed, np.inf, np.abs(dv0))
        record = potentials[potential]
        assert record["failure_rate"] == pytest.approx(failed.mean())
        assert record["within_5pct"] == pytest.approx((score < 5).mean())
        assert record["within_10pct"] == pytest.approx((score < 10).mean())
        assert record["metric"] == pytest.approx(np.median(score))
        assert table.loc[name, "failure rate"] == f"{100 * failed.mean():.0f} %"
        assert record["n"] == len(rows) == int(table.loc[name, "n"])  # results.json's n is the table's
        assert table.loc[name, "median |ΔV₀| [%] (95 % CI)"].startswith(f"{np.median(score):.2f} [")
    # issue 35's machine-readable numbers: ΔV statistics by hand, the settings hash, the common structures
    data = json.loads((root / "docs" / "results.json").read_text())
    for potential in ("ani1x", "ani1ccx"):
        rows = science(errors)[lambda f: (f.potential == potential) & (f.status == "converged")]  # noqa: B023
        volume = potentials[potential]["volume"]
        assert volume["n"] == len(rows) and volume["median"] == pytest.approx(np.median(rows.dV_pct))
        assert volume["mu_ci_low"] <= volume["mu"] <= volume["mu_ci_high"]
        assert volume["sigma_ci_low"] <= volume["sigma"] <= volume["sigma_ci_high"]
        assert volume["median_ci_low"] <= volume["median"] <= volume["median_ci_high"]
        assert potentials[potential]["settings_hash"] == errors[errors.potential == potential].settings_hash.iloc[0]
    assert sorted(data["common"]["potentials"]) == sorted(p for p in potentials if potentials[p]["ranked"])
    assert data["common"]["structure_ids"] == sorted(set(science(errors).structure_id))  # all attempted by all
    best = min(potentials, key=lambda p: potentials[p]["metric"])
    verdict = markdown.split("## Verdict", 1)[1].split("## ", 1)[0]
    name = potentials[best]["display_name"]
    assert f"**{name} comes first" in verdict or f"Trust {name}" in verdict
    assert "α_V = (1.65 ± 0.51)·10⁻⁴ K⁻¹" in verdict and "Bond" in verdict
    pairs = section_table(markdown, next(line for line in markdown.splitlines() if line.startswith("Every pair (")))
    assert len(pairs) == 3 and all(v.startswith(("cannot tell", "ANI")) for v in pairs.verdict)


def test_results_json_holds_each_crystal_so_a_new_potential_can_be_paired(report):
    """results.json's common.per_structure: from it alone, each ranked potential's median |ΔV₀| (failures ∞)
    and the paired counts of the verdicts come back; the values are the relaxed rows' own."""
    errors, _, root = report
    data = json.loads((root / "docs" / "results.json").read_text())
    table, ids = data["common"]["per_structure"], data["common"]["structure_ids"]
    assert table["structure_ids"] == ids and len(ids) >= 10
    scores = {}
    for potential in data["common"]["potentials"]:
        dv0 = np.array([np.nan if v is None else v for v in table["dV0_pct"][potential]])
        scores[potential] = np.where(np.isnan(dv0), np.inf, np.abs(dv0))
        assert np.median(scores[potential]) == pytest.approx(data["potentials"][potential]["metric"])
        rows = science(errors)[lambda f: f.potential == potential].set_index("structure_id")  # noqa: B023
        assert table["status"][potential] == rows.loc[ids, "status"].tolist()
        converged = [i for i, sid in enumerate(ids) if rows.loc[sid, "status"] == "converged"]
        assert [table["dV_pct"][potential][i] for i in converged] == pytest.approx(
            rows.loc[[ids[i] for i in converged], "dV_pct"].tolist())
    for pair in data["paired"]:
        a, b = scores[pair["potential_a"]], scores[pair["potential_b"]]
        assert (int((a < b).sum()), int((b < a).sum())) == (pair["a_closer"], pair["b_closer"])


def test_the_shift_sentence_follows_its_own_rows(report):
    from helpers.analysis.exact_stats import median_ci_exact
    from helpers.analysis.quantities import STUDY_RESULT

    errors, markdown, _ = report
    section = markdown.split("## Temperature and size", 1)[1].split("\n## ", 1)[0]
    study = STUDY_RESULT.query("quantity == 'volume'").set_index("potential")["mu_study"]
    for potential, name in (("ani1x", "ANI-1x"), ("ani1ccx", "ANI-1ccx")):
        dv = converged_dv(errors, potential)
        low, high, _ = median_ci_exact(dv)
        line = next(x for x in section.splitlines() if x.startswith(f"- {name}:"))
        if low <= study[potential] <= high:
            assert "there is no shift to explain" in line
        else:
            assert "unexplained" in line or "neither establish nor exclude" in line


def test_shift_sentence_calls_an_untested_shift_unexplained():
    from helpers.analysis.report_sections import shift_sentence

    rows = pd.DataFrame([("all", "all", 60, -4.0, -5.0, -3.0), ("temperature", "T < 150 K", 30, -4.5, -6.0, -3.0),
                         ("temperature", "T ≥ 250 K", 30, -3.5, -5.0, -2.0),
                         ("size", "< 50 atoms", 12, -3.0, -4.0, 4.0)],
                        columns=["kind", "stratum", "n", "median", "ci_low", "ci_high"])
    assert "unexplained" in shift_sentence(rows.iloc[:3], 3.0, "ani1x")
    reached = shift_sentence(rows, 3.0, "ani1x")  # < 50 atoms reaches 3.0: no cause claimed either way
    assert "< 50 atoms (n = 12" in reached and "neither establish nor exclude" in reached
    assert "depends on" not in reached and "does not show" in reached
    assert "no shift to explain" in shift_sentence(rows, -4.0, "ani1x")


def test_glossary_explains_the_jargon(report):
    _, markdown, _ = report
    glossary = markdown.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for term in ("fast path", "settings hash", "step cap", "Holm correction", "polymorph"):
        assert f"**{term}" in glossary


def test_small_multiples_and_the_ranking_figure_are_shown(report):
    _, markdown, root = report
    for name in ("hist_grid_volume.png", "ranking_ci.png"):
        assert f"(figures/{name})" in markdown and (root / "docs" / "figures" / name).stat().st_size > 2000


def test_polymorphs_are_kept_apart_redeterminations_merged():
    from helpers.analysis.compounds import one_per_polymorph, polymorph_keys

    rows = pd.DataFrame({"structure_id": ["a", "b", "c", "d"], "compound_key": ["K", "K", "K", "K"],
                         "spacegroup_number": [14, 14, 14, 2], "natoms": [40, 40, 80, 40],
                         "V_exp": [400.0, 412.0, 880.0, 400.0], "temperature": [100.0, 300.0, 100.0, 100.0],
                         "r_factor": [0.05, 0.03, 0.04, 0.06], "potential": "ani1x"})
    keys = polymorph_keys(rows)
    # a and b: same packing (0 K volume per atom 9.84 vs 9.81 Å³); c: 10.8 Å³, another polymorph; d: other group
    assert keys["a"] == keys["b"] and len({keys["a"], keys["c"], keys["d"]}) == 3
    assert sorted(one_per_polymorph(rows).structure_id) == ["b", "c", "d"]  # b: the lower R factor


def test_every_built_in_potential_has_the_name_its_paper_uses():
    """Tables and the verdict print display names: no registered potential falls back to its raw key."""
    from helpers.analysis.quantities import display_name
    from helpers.relax.potentials.registry import REGISTRY, card_paths

    built_in = {path.stem for path in card_paths()}
    assert built_in <= set(REGISTRY)
    assert {p for p in built_in if display_name(p) == p} == set()
    assert display_name("sevennet-mf0-r2scan-d3") == "SevenNet-MF-0 (r²SCAN)-d3"


def test_the_ranking_without_the_candidate_cif_problems(tmp_path, sourced_errors):
    """Is the order carried by a few doubtful CIFs? The report says what leaving the listed ones out does: three
    science entries carry 02_filter's bond-length flag, so *CIF error or potential error?* lists them."""
    from helpers.analysis.ranking import leave_out_effect, rank_potentials

    errors = sourced_errors.copy()
    doubtful = sorted(set(science(errors).structure_id))[:3]
    errors["filter_flags"] = np.where(errors.structure_id.isin(doubtful), "bond_length_outlier", "")
    analyse_errors(errors, tmp_path / "analysis", n_boot=50, n_refit=10, quantities=("volume",))
    plan = SimpleNamespace(sources=["/x/cod", "/x/cod-sample"], max_atoms={})
    markdown = write_report(tmp_path / "analysis", plan, tmp_path / "docs",
                            extra={"clean_fraction": 0.8, "n_clean": 40}).read_text()
    listed = pd.read_csv(tmp_path / "analysis" / "consensus_outliers.csv")
    assert set(doubtful) <= set(listed.structure_id)
    rows = science(errors)
    effect = json.loads((tmp_path / "docs" / "results.json").read_text())["ranking"]["without_flagged"]
    assert effect["ids"] == doubtful and effect["n"] == rows.structure_id.nunique() - 3
    by_hand = leave_out_effect(rows, rank_potentials(rows, n_boot=20), doubtful)
    assert effect["metric"] == pytest.approx(by_hand["metric"]) and effect["order"] == by_hand["order"]
    assert "3 of the shared structures are listed as candidate CIF problems" in markdown
    assert "`ranking.without_flagged`" in markdown
