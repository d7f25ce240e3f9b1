"""The six notebooks: the parameter contract, no committed outputs, and a real end-to-end run."""

import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers.run import demo_config, run_campaign
from helpers.run.notebooks import notebook_path
from helpers.store import db as dbmod

#: every parameter of every notebook with its default: names and defaults are what papermill users script
#: against (``-p name value``), so none may change; a new parameter is added here too
CONTRACT = {
    "01_fetch": {"source": None, "raw_db": "data/raw.db", "elements": ["C", "H", "N", "O"], "cod_ids": None,
                 "limit": None, "n_workers": None},
    "02_filter": {"raw_db": "data/raw.db", "clean_db": "data/clean.db", "rejects_db": "data/rejects.db",
                  "min_distance": 0.8, "elements": ["C", "H", "N", "O"], "n_workers": None,
                  "require_formula": False, "reader": "ase", "group_duplicates": True},
    "03_relax": {"potential": "ani1x", "batch": 0, "n_batches": 1, "clean_db": "data/clean.db",
                 "out_db": "data/relaxed_{potential}.db", "fmax": 0.0005, "max_steps_base": 300,
                 "steps_per_atom": None, "strategy": "fast", "draft": "float32", "optimizer": "BFGS",
                 "cell_filter": "frechet", "fix_symmetry": False, "hydrostatic": False, "pressure": None,
                 "max_wall_time": None, "trajectory_dir": None, "limit": None, "n_threads": None, "max_atoms": None,
                 "checkpoint_every": 300.0, "hessian_seed": None, "hessian_seed_floor": 5.0, "sample": None,
                 "calculator_options": None},
    "04_analysis": {"relaxed_dbs": "data/relaxed_*.db", "clean_db": "data/clean.db", "out_dir": "data/analysis",
                    "converged_only": True, "alpha_v": 1.65e-4, "t_ref": 0.0, "threshold_pct": 20.0,
                    "temperature_edges": (150, 250), "structure": True, "matcher": False,
                    "one_per_compound": "r_factor,temperature", "n_boot": 2000, "boot_seed": 0,
                    "settings_hashes": None, "max_atoms": None, "backfill_start_tells": True},
    "05_lattice_energy": {"potential": "ani1x", "benchmarks": ["x23", "ice13"], "out_db": "data/lattice_{potential}.db",
                          "out_csv": "data/lattice_{potential}.csv", "fmax": 0.0005, "max_steps_base": 300,
                          "steps_per_atom": None, "geometry": "relaxed", "crystals": None, "start_db": None,
                          "max_wall_time": None, "n_threads": None, "reference_dir": None},
    "06_minimum_check": {"potential": "ani1ccx", "relaxed_db": "data/relaxed_{potential}.db",
                         "minima_db": "data/minima/minima_{potential}.db", "settings_hash": None, "sample": "science",
                         "batch": 0, "n_batches": 1, "seed": 0, "limit": None, "n_threads": 1},
}
NOTEBOOKS = tuple(CONTRACT)


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
    assert not set(values) - set(CONTRACT[name]), f"{name}: new parameters missing from CONTRACT"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_reads_every_parameter_with_its_help(name):
    """``papermill --help-notebook`` and ``inspect_notebook`` list what a user can pass; papermill skips (with
    a warning) any line with a second ``=``, e.g. in its comment."""
    import papermill

    found = papermill.inspect_notebook(str(notebook_path(name)))
    assert set(found) == set(CONTRACT[name])
    assert all(p["help"] for p in found.values()), [k for k, p in found.items() if not p["help"]]


@pytest.mark.parametrize(("given", "expected"), [
    ("r_factor,temperature", ("r_factor", "temperature")), ("r_factor, temperature", ("r_factor", "temperature")),
    ("temperature", ("temperature",)), ("r_factor then temperature", ("r_factor", "temperature")),
    (None, None), ("None", None), ("none", None), ("", None), ("  ", None), (False, None), ("False", None),
    (["temperature", "r_factor"], ("temperature", "r_factor"))])
def test_one_per_compound_parameter_as_papermill_passes_it(given, expected):
    """04_analysis's one_per_compound arrives as a string from `papermill -p/-r`: "None" or "" disables."""
    from helpers.analysis.compounds import parse_rule

    assert parse_rule(given) == expected


def test_bad_04_parameters_are_refused_with_the_allowed_values(tmp_path):
    from helpers.analysis import run_analysis
    from helpers.analysis.compounds import parse_rule

    with pytest.raises(ValueError, match="r_factor"):
        parse_rule("lowest_rfactor")
    with pytest.raises(ValueError, match="n_boot"):
        run_analysis(str(tmp_path / "none_*.db"), n_boot="many")
    with pytest.raises(ValueError, match="one_per_compound"):
        run_analysis(str(tmp_path / "none_*.db"), one_per_compound=3.5)


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
    from helpers.run.notebooks import execute

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
    result = run_campaign(demo_config(work_dir=str(tmp_path), sources=[str(cod_dir)],
                                      cod_ids=[2007300, 4021477, 2000642]))
    assert result["failed"] == [] and result["merged"] == {"ani1x": 3, "ani1ccx": 3}
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


@pytest.mark.slow
def test_command_line_strings_are_coerced_in_the_notebook(tmp_path, cod_dir):
    """``papermill -p converged_only false -p temperature_edges "(100, 200)"`` arrives as strings: 04 runs
    with what they mean (the 'false' string is truthy, and the tuple a string, without the check cell)."""
    import warnings

    from ase.io import read
    from test_analysis import scaled, write_clean, write_relaxed

    from helpers.run.notebooks import execute

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benzene = read(cod_dir / "2100348.cif")
    write_clean(tmp_path / "clean.db", {"cod-1": benzene, "cod-2": benzene}, {"cod-1": 120.0, "cod-2": 150.0})
    write_relaxed(tmp_path / "relaxed_ani1x.db", benzene, scaled(benzene, [1.01] * 3), "cod-1", "ani1x",
                  temperature=120.0)
    write_relaxed(tmp_path / "relaxed_ani1x.db", benzene, scaled(benzene, [1.02] * 3), "cod-2", "ani1x",
                  status="step_cap", temperature=150.0)
    execute("04_analysis", {"relaxed_dbs": str(tmp_path / "relaxed_*.db"), "clean_db": str(tmp_path / "clean.db"),
                            "out_dir": str(tmp_path / "analysis"), "converged_only": "false",
                            "temperature_edges": "(100, 200)", "structure": "False", "n_boot": "50"}, tmp_path / "logs")
    bands = pd.read_csv(tmp_path / "analysis" / "temperature_bands.csv")
    assert "100–200 K" in set(bands.astype(str).values.ravel())
    summary = pd.read_csv(tmp_path / "analysis" / "summary.csv")
    assert summary.query("quantity == 'volume'").n.iloc[0] == 2  # converged_only false: the step-capped row too


@pytest.mark.slow
def test_a_parameter_that_means_nothing_stops_the_notebook_naming_it(tmp_path):
    import papermill

    from helpers.run.notebooks import execute

    with pytest.raises(papermill.PapermillExecutionError, match=r"fix_symmetry = 'maybe'"):
        execute("03_relax", {"fix_symmetry": "maybe", "clean_db": str(tmp_path / "none.db")}, tmp_path)
    assert not (tmp_path / "none.db").exists()  # stopped before touching anything


def test_03_relax_builds_its_settings_as_the_campaign_hashes_them():
    """``job_settings`` (the campaign's resume and coverage rule) takes every ``RelaxSettings`` field from
    the job's parameters by name; 03_relax spells its fields out for the reader. A settings parameter the
    notebook does not pass on (or passes under another name) would make the two hashes differ and a
    finished campaign count 0 done — this fails first."""
    from dataclasses import fields

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.stage import hessian_seed_for, job_settings

    book = nbformat.read(notebook_path("03_relax"), as_version=4)
    calls = [node for cell in book.cells if cell.cell_type == "code" and "RelaxSettings(" in cell.source
             for node in ast.walk(ast.parse(cell.source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RelaxSettings"]
    assert len(calls) == 1, "03_relax builds its RelaxSettings once"
    passed = {kw.arg: kw.value.id for kw in calls[0].keywords if isinstance(kw.value, ast.Name)}
    assert len(passed) == len(calls[0].keywords), "every setting is passed as a parameter's own name"
    assert all(arg == name for arg, name in passed.items()), passed
    setting_parameters = {f.name for f in fields(RelaxSettings)} & set(CONTRACT["03_relax"])
    assert set(passed) == setting_parameters
    # and the hash the campaign computes from the job's parameters is the notebook's
    params = dict(CONTRACT["03_relax"], potential="ani1ccx", fmax=0.01, optimizer="FIRE", draft=None)
    notebook_settings = RelaxSettings(**{k: params[k] for k in passed}).resolved(10)
    assert job_settings("ani1ccx", params).hash() == notebook_settings.hash()
    # a seeded card: the notebook resolves hessian_seed (None: the card's) with the campaign's own rule
    source = "\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
    assert "hessian_seed = hessian_seed_for(potential, hessian_seed, optimizer)" in source
    for seed in (None, "off"):
        params = dict(CONTRACT["03_relax"], potential="chgnet-d3", hessian_seed=seed)
        chosen = {k: params[k] for k in passed} | {"hessian_seed": hessian_seed_for("chgnet-d3", seed, "BFGS")}
        assert job_settings("chgnet-d3", params).hash() == RelaxSettings(**chosen).resolved(6).hash()


@pytest.mark.slow
def test_lattice_energy_notebook_runs_from_command_line_strings_into_the_report_section(tmp_path, model_dir):
    """05_lattice_energy as `papermill -p` passes it (strings), then the report section over its table."""
    import json

    from helpers.lattice.report import CSV_NAME, lattice_energy_section
    from helpers.run.notebooks import execute

    csv = tmp_path / "lattice_{potential}.csv"
    execute("05_lattice_energy", {"potential": "ani1x", "benchmarks": "x23", "crystals": "co2", "fmax": "0.01",
                                  "out_db": str(tmp_path / "lattice_{potential}.db"), "out_csv": str(csv),
                                  "n_threads": "1", "start_db": "None"}, tmp_path)
    table = pd.read_csv(str(csv).format(potential="ani1x"))
    assert table[["benchmark", "crystal", "potential", "Z", "status"]].values.tolist() == \
        [["x23", "co2", "ani1x", 4, "converged"]]
    for column in ("E_latt_kJmol", "ref_kJmol", "error_kJmol", "V_relaxed", "V_exp", "E_latt_kcalmol",
                   "E_latt_fixed_kJmol", "molecule_status", "crystal_status"):
        assert column in table.columns
    assert np.isfinite(table.loc[0, ["E_latt_kJmol", "V_relaxed", "V_exp"]].astype(float)).all()
    docs = tmp_path / "docs"
    docs.mkdir()
    table.to_csv(docs / CSV_NAME, index=False)
    lines = "\n".join(lattice_energy_section(docs, n_boot=100))
    assert "## Lattice energies: X23 and ICE13" in lines and "ANI-1x" in lines and "~4 kJ/mol" in lines
    assert (docs / "figures" / "lattice_energy.png").is_file()
    saved = json.loads((docs / "results.json").read_text())["lattice_energy"]["potentials"]["ani1x"]
    assert saved["x23_n"] == 1 and saved["x23_mae"] == pytest.approx(abs(table.loc[0, "error_kJmol"]))
