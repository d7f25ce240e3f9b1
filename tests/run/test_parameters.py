"""Notebook parameters as papermill delivers them (strings from the command line) are coerced or refused."""

from __future__ import annotations

import pytest

from helpers.run.parameters import SPECS, ParameterError, checked


@pytest.mark.parametrize("given, expected", [("false", False), ("False", False), ("no", False), ("0", False),
                                             ("true", True), ("TRUE", True), (True, True), (0, False)])
def test_booleans_from_strings(given, expected):
    assert checked("03_relax", {"fix_symmetry": given})["fix_symmetry"] is expected


def test_a_word_that_is_not_a_boolean_is_refused_by_name():
    with pytest.raises(ParameterError, match=r"fix_symmetry = 'maybe': expected true or false"):
        checked("03_relax", {"fix_symmetry": "maybe"})


@pytest.mark.parametrize("given", ["C,H,N,O,Cl", "C H N O Cl", "['C', 'H', 'N', 'O', 'Cl']", list("CHNO") + ["Cl"]])
def test_element_lists(given):
    assert checked("02_filter", {"elements": given})["elements"] == ["C", "H", "N", "O", "Cl"]


def test_element_list_with_a_non_element_is_refused():
    with pytest.raises(ParameterError, match="elements = 'C,H,Xx'"):
        checked("01_fetch", {"elements": "C,H,Xx"})


@pytest.mark.parametrize("given", ["(100, 200)", "100,200", "[100, 200]", (100, 200)])
def test_temperature_edges(given):
    assert checked("04_analysis", {"temperature_edges": given})["temperature_edges"] == (100.0, 200.0)


def test_decreasing_edges_and_negative_limit_are_refused_together():
    with pytest.raises(ParameterError) as err:
        checked("04_analysis", {"temperature_edges": "250,150", "threshold_pct": "-1"})
    assert "temperature_edges" in str(err.value) and "threshold_pct" in str(err.value)
    with pytest.raises(ParameterError, match=r"limit = -1: expected a whole number ≥ 0"):
        checked("01_fetch", {"limit": -1})


@pytest.mark.parametrize("given, expected", [("None", None), ("", None), (None, None), ("5", 5), (5, 5), (5.0, 5)])
def test_optional_integers(given, expected):
    assert checked("01_fetch", {"limit": given})["limit"] == expected


def test_numbers_choices_and_ids():
    values = checked("03_relax", {"fmax": "0.01", "draft": "None", "strategy": "study", "potential": "ani1ccx",
                                  "max_wall_time": "0.5"})
    assert values == {"fmax": 0.01, "draft": None, "strategy": "study", "potential": "ani1ccx", "max_wall_time": 0.5}
    assert checked("01_fetch", {"cod_ids": "2000642,2007300"})["cod_ids"] == [2000642, 2007300]
    for bad in ({"fmax": "0"}, {"strategy": "quick"}, {"potential": "ani3x"}, {"batch": "1.5"}, {"n_batches": 0}):
        with pytest.raises(ParameterError, match=next(iter(bad))):
            checked("03_relax", bad)


def test_every_notebook_default_passes_unchanged():
    from test_notebooks import CONTRACT

    for notebook, defaults in CONTRACT.items():
        assert set(SPECS[notebook]) == set(defaults), notebook
        values = checked(notebook, defaults)
        for name, default in defaults.items():
            assert values[name] == (tuple(default) if isinstance(values[name], tuple) else default), (notebook, name)


def test_05_lattice_energy_takes_command_line_strings():
    values = checked("05_lattice_energy", {"benchmarks": "x23", "crystals": "co2,ammonia", "geometry": "fixed",
                                           "fmax": "0.01", "start_db": "None", "n_threads": "1"})
    assert values == {"benchmarks": ["x23"], "crystals": ["co2", "ammonia"], "geometry": "fixed", "fmax": 0.01,
                      "start_db": None, "n_threads": 1}
    assert checked("05_lattice_energy", {"benchmarks": "['x23', 'ice13']"})["benchmarks"] == ["x23", "ice13"]
    for bad in ({"benchmarks": "x24"}, {"geometry": "relax"}, {"fmax": "0"}):
        with pytest.raises(ParameterError, match=next(iter(bad))):
            checked("05_lattice_energy", bad)


def test_calculator_options_arrive_as_json_text_or_a_mapping():
    """papermill's ``-p calculator_options '{"min_width": 0}'`` passes text; ``-y`` or the campaign a mapping."""
    for given in ('{"min_width": 0}', {"min_width": 0}):
        assert checked("03_relax", {"calculator_options": given}) == {"calculator_options": {"min_width": 0}}
    assert checked("03_relax", {"calculator_options": "None"}) == {"calculator_options": None}
    with pytest.raises(ParameterError, match=r'calculator_options = .*a mapping such as \{"min_width": 0\}'):
        checked("03_relax", {"calculator_options": "min_width=0"})
