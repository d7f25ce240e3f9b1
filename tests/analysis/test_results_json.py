"""docs/results.json: sections written separately land in one file; NaN becomes null."""

import json

import numpy as np
import pytest

from helpers.analysis.results_json import read_results_json, update_results_json


def test_sections_are_kept_and_nan_is_null(tmp_path):
    update_results_json(tmp_path, "potentials", {"ani1x": {"n": np.int64(3), "mu": float("nan")}})
    update_results_json(tmp_path, "flagged", {"bond_length": ["cod-1", "cod-2"]})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["potentials"]["ani1x"] == {"n": 3, "mu": None}
    assert data["flagged"]["bond_length"] == ["cod-1", "cod-2"]
    update_results_json(tmp_path, "potentials", {"ani1x": {"n": 4}})  # a section is replaced whole
    assert read_results_json(tmp_path)["potentials"] == {"ani1x": {"n": 4}}
    assert read_results_json(tmp_path)["flagged"]["bond_length"] == ["cod-1", "cod-2"]


def test_values_json_cannot_hold_are_refused(tmp_path):
    with pytest.raises(TypeError):
        update_results_json(tmp_path, "bad", {"x": object()})
    assert not (tmp_path / "results.json").exists()  # nothing half-written


def test_coverage_is_measured_on_one_yardstick(small_clean_db, monkeypatch):
    """Issue 35's coverage: the clean science crystals of ≤ N atoms whose elements the potential covers; a
    crystal attempted (failed or not) is covered, one never reached is not."""
    from types import SimpleNamespace

    from helpers.analysis import ranking_targets
    from helpers.relax.potentials.registry import get_potential
    from helpers.store import db as dbmod

    rows = list(dbmod.connect(small_clean_db).select())
    sizes = sorted(row.natoms for row in rows)
    plan = SimpleNamespace(dbs={"clean_db": small_clean_db}, potentials=["ani1x"], max_atoms={"ani1x": None})
    every = ranking_targets.coverage_sets(plan, max_atoms=10_000)["ani1x"]
    assert every == {row.structure_id for row in rows}  # no source recorded: every clean crystal is science
    small = ranking_targets.coverage_sets(plan, max_atoms=sizes[1])["ani1x"]
    assert small == {row.structure_id for row in rows if row.natoms <= sizes[1]} and len(small) >= 2
    # a potential without nitrogen: the crystals holding N leave its yardstick
    real = get_potential("ani1x")
    no_nitrogen = SimpleNamespace(uncovered=lambda symbols: set(symbols) & {"N"})
    monkeypatch.setattr("helpers.relax.potentials.registry.get_potential",
                        lambda name: no_nitrogen if name == "ani1x" else real)
    without = ranking_targets.coverage_sets(plan, max_atoms=10_000)["ani1x"]
    assert without == {row.structure_id for row in rows if "N" not in row.symbols} and 0 < len(without) < len(every)
    first = sorted(every)[0]
    assert ranking_targets.coverage({first, "cod-elsewhere"}, every) == {
        "coverage": 1 / len(every), "n_covered": 1, "n_yardstick": len(every)}
    assert ranking_targets.coverage({first}, None)["coverage"] is None
    # one count for results.json (run labels, name[hash7] when a potential ran with two settings) and the
    # report (bare potential names): the label finds its potential's yardstick
    import pandas as pd

    second = sorted(every)[1]
    science = pd.DataFrame({"structure_id": [first, second], "potential": ["ani1x[abc1234]", "ani1x[def5678]"],
                            "potential_name": ["ani1x", "ani1x"]})
    yardsticks = {"ani1x": every}
    assert ranking_targets.science_coverage(science, "ani1x[abc1234]", yardsticks)["n_covered"] == 1
    assert ranking_targets.science_coverage(science, "ani1x", yardsticks, "potential_name")["n_covered"] == 2
    assert ranking_targets.science_coverage(science, "ani1x", None)["coverage"] is None
    assert ranking_targets.science_coverage(science.iloc[:0], "ani1x", yardsticks)["n_covered"] == 0


def test_the_coverage_goal_names_the_potentials_below_it():
    from helpers.analysis.ranking_targets import coverage_goal_sentence

    full = {"coverage": 1.0, "n_covered": 126, "n_yardstick": 126}
    short = {"coverage": 119 / 126, "n_covered": 119, "n_yardstick": 126}  # 94.4 %: below 95 %
    names = {"ani1x": "ANI-1x", "chgnet-d3": "CHGNet-d3"}
    assert coverage_goal_sentence({"ani1x": full, "chgnet-d3": short}, names).startswith(
        "Below 95% of the science crystals of ≤ 150 atoms whose elements it covers: CHGNet-d3 119 of 126;")
    assert coverage_goal_sentence({"ani1x": full}, names).startswith("Every potential covers at least 95%")
    assert coverage_goal_sentence({"ani1x": {"coverage": None}}, names) == ""
