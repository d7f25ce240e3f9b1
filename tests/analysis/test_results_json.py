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
