"""The four notebooks: the parameter contract, no committed outputs, and a real end-to-end run."""

import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers import db as dbmod
from helpers.pipeline import NOTEBOOKS, notebook_path, run_pipeline

CONTRACT = {
    "01_fetch": {"source": None, "raw_db": "data/raw.db", "elements": ["C", "H", "N", "O"], "cod_ids": None,
                 "limit": None, "n_workers": None},
    "02_filter": {"raw_db": "data/raw.db", "clean_db": "data/clean.db", "rejects_db": "data/rejects.db",
                  "min_distance": 0.8, "n_workers": None, "require_formula": False, "reader": "ase",
                  "group_duplicates": True},
    "03_relax": {"potential": "ani1x", "batch": 0, "n_batches": 1, "clean_db": "data/clean.db",
                 "out_db": "data/relaxed_{potential}.db", "fmax": 0.0005, "max_steps_base": 300,
                 "steps_per_atom": None, "optimizer": "BFGS", "strategy": "fast", "draft": "float32"},
    "04_analysis": {"relaxed_dbs": "data/relaxed_*.db", "clean_db": "data/clean.db", "out_dir": "data/analysis"},
}


def parameters_of(name: str) -> dict:
    book = nbformat.read(notebook_path(name), as_version=4)
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameter_contract(name):
    values = parameters_of(name)
    for key, default in CONTRACT[name].items():
        assert key in values, f"{name} lost parameter {key}"
        assert values[key] == default, f"{name}.{key} default changed: {values[key]!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    book = nbformat.read(notebook_path(name), as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
def test_filter_notebook_takes_switches_as_papermill_strings(tmp_path, cod_dir):
    """``papermill -r require_formula False -r reader pymatgen``: strings coerced, the fallback reader used."""
    from helpers.fetch import fetch
    from helpers.pipeline import execute

    fetch(source=str(cod_dir), raw_db=str(tmp_path / "raw.db"), cod_ids=[2010442, 2003003], progress=False)
    params = {"raw_db": str(tmp_path / "raw.db"), "clean_db": str(tmp_path / "clean.db"),
              "rejects_db": str(tmp_path / "rejects.db"), "n_workers": 1,
              "require_formula": "False", "reader": "pymatgen", "group_duplicates": "true"}
    execute("02_filter", params, tmp_path)
    clean, rejects = dbmod.connect(tmp_path / "clean.db"), dbmod.connect(tmp_path / "rejects.db")
    assert clean.get(structure_id="cod-2010442").reader == "pymatgen"
    assert "formula_unknown" not in rejects.get(structure_id="cod-2003003").checks  # "False" is False
    params.update(require_formula="True", reader="ase")
    execute("02_filter", params, tmp_path, tag="again")
    assert "formula_unknown" in rejects.get(structure_id="cod-2003003").checks
    assert rejects.get(structure_id="cod-2010442").checks.startswith("ase_unreadable")


@pytest.mark.slow
def test_pipeline_end_to_end_with_both_study_potentials(tmp_path, cod_dir, model_dir):
    """Fetch -> filter -> relax (ANI-1x, ANI-1ccx, study settings) -> analysis, all via papermill."""
    result = run_pipeline(run_dir=str(tmp_path), source=str(cod_dir), cod_ids=(2007300, 4021477, 2000642))
    executed = Path(result["executed"])
    for name in ("01_fetch", "02_filter", "03_relax.ani1x.batch0000of0001", "03_relax.ani1ccx.batch0000of0001",
                 "04_analysis"):
        book = json.loads((executed / f"{name}.ipynb").read_text())
        errors = [o for c in book["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, name
    for potential in ("ani1x", "ani1ccx"):
        db = dbmod.connect(tmp_path / f"relaxed_{potential}.db", must_exist=True)
        rows = list(db.select())
        assert len(rows) == 3
        for row in rows:
            assert row.status == "converged" and row.fmax_final <= 0.0005
            assert np.isfinite(row.energy) and np.shape(row.stress) == (6,)
            assert abs(row.volume / row.V_exp - 1) < 0.30  # within 30 % of experiment
    analysis = Path(result["analysis"])
    summary = pd.read_csv(analysis / "summary.csv")
    assert {"potential", "quantity", "n", "mu", "sigma", "median", "mad"} <= set(summary.columns)
    assert set(summary.potential) == {"ani1x", "ani1ccx"} and {"volume", "a1"} <= set(summary.quantity)
    assert (summary.set_index(["potential", "quantity"]).loc[:, "n"] == 3).all()
    errors = pd.read_csv(analysis / "errors.csv")
    assert len(errors) == 6 and errors.dV_pct.abs().max() < 30
    # the relative error is what it says: (V_relaxed - V_exp) / V_exp
    np.testing.assert_allclose(errors.dV_pct, 100 * (errors.V_relaxed - errors.V_exp) / errors.V_exp)
    for potential in ("ani1x", "ani1ccx"):
        for quantity in ("volume", "a1"):
            assert (analysis / f"hist_{potential}_{quantity}.png").stat().st_size > 5000
