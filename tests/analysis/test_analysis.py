"""Known-answer tests of the analysis stage: constructed relaxed databases with known errors.

The "relaxed" structures are the experimental benzene crystal (COD 2100348) deformed by a known
amount and written with the relaxed-row schema, so every error has an exact expected value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.geometry import cell_to_cellpar
from ase.io import read

from helpers.analysis import stage as analysis
from helpers.analysis.distributions import fit_gaussian, median_mad
from helpers.analysis.structure_compare import match_setting
from helpers.store import db as dbmod

EXP_KEYS = ("a_exp", "b_exp", "c_exp", "alpha_exp", "beta_exp", "gamma_exp")


@pytest.fixture(scope="module")
def benzene(cod_dir) -> Atoms:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(cod_dir / "2100348.cif")


def exp_kvp(atoms: Atoms, sid: str, temperature: float | None = 296.0) -> dict:
    par = cell_to_cellpar(atoms.cell)
    kvp = dict(zip(EXP_KEYS, (float(v) for v in par)))
    kvp.update(structure_id=sid, V_exp=float(atoms.get_volume()),
               density_exp=float(atoms.get_masses().sum() * 1.66053906660 / atoms.get_volume()))
    if temperature is not None:
        kvp["temperature"] = temperature
    return kvp


def write_clean(path, structures: dict[str, Atoms], temperatures: dict[str, float | None]) -> None:
    database = dbmod.connect(path)
    for sid, atoms in structures.items():
        database.write(atoms, key_value_pairs=exp_kvp(atoms, sid, temperatures.get(sid, 296.0)),
                       data={"cell_exp": np.asarray(atoms.cell).tolist()})


def write_relaxed(path, exp: Atoms, relaxed: Atoms, sid: str, potential: str, status: str = "converged",
                  steps: int = 42, temperature: float | None = 296.0, **extra) -> None:
    database = dbmod.connect(path)
    kvp = {**exp_kvp(exp, sid, temperature), "potential": potential, "status": status,
           "converged": status == "converged", "steps": steps, "settings_hash": "abc123", **extra}
    database.write(relaxed, key_value_pairs=kvp, data={"cell_exp": np.asarray(exp.cell).tolist()})


def scaled(atoms: Atoms, factors=(1.0, 1.0, 1.0)) -> Atoms:
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell) * np.asarray(factors)[:, None], scale_atoms=True)
    return out


# --- Gaussian fit and robust statistics ------------------------------------------------------


def test_gaussian_fit_recovers_mu_sigma_of_normal_data():
    values = np.random.default_rng(0).normal(3.0, 8.4, 4000)
    fit = fit_gaussian(values)
    assert fit.method == "curve_fit histogram"
    assert fit.mu == pytest.approx(3.0, abs=0.5)
    assert fit.sigma == pytest.approx(8.4, rel=0.06)
    assert fit.sigma_mad == pytest.approx(8.4, rel=0.06)


def test_histogram_fit_follows_the_peak_when_tails_pull_the_mean():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(2.0, 5.0, 3000), rng.uniform(150, 400, 150)])
    fit = fit_gaussian(values)
    assert fit.mu == pytest.approx(2.0, abs=0.6)
    assert fit.sigma == pytest.approx(5.0, rel=0.1)
    assert fit.mu_mle > 10  # the maximum-likelihood fit is dragged by the tail
    assert fit.n_outside == 150 and fit.n == 3150


def test_median_mad_and_small_samples():
    assert median_mad(np.array([1, 2, 3, 4, 100])) == (3.0, 1.0)
    fit = fit_gaussian([1.0, 2.0, 3.0])
    assert fit.method.startswith("norm.fit") and fit.mu == pytest.approx(2.0)
    assert fit_gaussian([]).n == 0


# --- cell setting -------------------------------------------------------------------------------


def test_match_setting_same_permuted_reduced_and_rotated(benzene):
    cell = np.asarray(benzene.cell)
    strained = cell * np.array([1.03, 0.98, 1.05])[:, None]
    assert match_setting(cell, strained).setting == "same"
    perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    found = match_setting(cell, perm @ strained)
    assert found.setting == "mapped"
    np.testing.assert_allclose(found.transform @ perm @ strained, strained, atol=1e-9)
    shear = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    np.testing.assert_allclose(match_setting(cell, shear @ strained).transform @ shear @ strained, strained,
                               atol=1e-9)
    theta = np.radians(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    rotated = perm @ strained @ rot.T
    found = match_setting(cell, rotated)
    assert found.setting == "mapped"
    np.testing.assert_allclose(cell_to_cellpar(found.transform @ rotated), cell_to_cellpar(strained),
                               atol=1e-9)
    assert match_setting(cell, cell * 3).setting == "same"  # blew up, but still the same vectors
    odd = np.array([[20.0, 0, 0], [1.0, 3.0, 0], [0.5, 0.7, 4.0]]) @ rot.T
    assert match_setting(cell, odd).setting == "unmatched"


# --- errors from databases ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dbs(tmp_path_factory, benzene):
    """Two potentials on three 'structures' (benzene under three ids) with known deformations."""
    root = tmp_path_factory.mktemp("analysis")
    ids = {"cod-0000001": 100.0, "cod-0000002": 200.0, "cod-0000003": None}
    write_clean(root / "clean.db", {sid: benzene for sid in ids}, ids)
    iso = scaled(benzene, [1.02] * 3)                       # ΔV = 1.02³ − 1, Δa = 2 %
    aniso = scaled(benzene, [1.05, 1.0, 1.0])                # ΔV = Δa1 = 5 %, Δa2 = 0
    perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    permuted = aniso.copy()                                  # same crystal, axes relabelled b, c, a
    permuted.set_cell(perm @ np.asarray(aniso.cell), scale_atoms=False)
    shrunk = scaled(benzene, [0.99] * 3)
    write_relaxed(root / "relaxed_ani1x.db", benzene, iso, "cod-0000001", "ani1x", temperature=100.0)
    write_relaxed(root / "relaxed_ani1x.db", benzene, aniso, "cod-0000002", "ani1x", temperature=200.0)
    write_relaxed(root / "relaxed_ani1x.db", benzene, scaled(benzene, [2.0] * 3), "cod-0000003", "ani1x",
                  status="exploded", temperature=None)
    write_relaxed(root / "relaxed_ani1ccx.db", benzene, permuted, "cod-0000001", "ani1ccx", temperature=100.0)
    write_relaxed(root / "relaxed_ani1ccx.db", benzene, shrunk, "cod-0000002", "ani1ccx", temperature=200.0)
    write_relaxed(root / "relaxed_ani1ccx.db", benzene, Atoms(), "cod-0000003", "ani1ccx", status="error",
                  steps=0, temperature=None)
    return root


@pytest.fixture(scope="module")
def errors(dbs):
    return analysis.collect_errors(str(dbs / "relaxed_*.db"), dbs / "clean.db", structure=True, matcher=True)


def pick(errors, sid, potential):
    rows = errors[(errors.structure_id == sid) & (errors.potential == potential)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_collect_errors_exact_known_answers(errors):
    assert len(errors) == 6
    iso = pick(errors, "cod-0000001", "ani1x")
    assert iso.dV_pct == pytest.approx((1.02**3 - 1) * 100, abs=1e-9)
    for name in ("da1_pct", "da2_pct", "da3_pct"):
        assert iso[name] == pytest.approx(2.0, abs=1e-9)
    assert iso.dalpha_deg == pytest.approx(0, abs=1e-9)
    assert iso.ddensity_pct == pytest.approx((1 / 1.02**3 - 1) * 100, abs=1e-9)
    assert iso.cell_setting == "same" and iso.temperature == 100.0
    aniso = pick(errors, "cod-0000002", "ani1x")
    assert aniso.dV_pct == pytest.approx(5.0, abs=1e-9)
    assert aniso.da1_pct == pytest.approx(5.0, abs=1e-9) and aniso.da2_pct == pytest.approx(0, abs=1e-9)


def test_permuted_cell_is_mapped_back_and_said_so(errors):
    row = pick(errors, "cod-0000001", "ani1ccx")
    assert row.cell_setting == "mapped"
    assert "mapped" in row.note
    assert row.da1_pct == pytest.approx(5.0, abs=1e-9)
    assert row.da2_pct == pytest.approx(0.0, abs=1e-9) and row.da3_pct == pytest.approx(0.0, abs=1e-9)
    assert row.dV_pct == pytest.approx(5.0, abs=1e-9)


def test_structure_checks_on_deformed_cells(errors):
    iso = pick(errors, "cod-0000001", "ani1x")
    assert iso.sg_exp == 61 and iso.sg_relaxed == 61 and bool(iso.sg_survived)
    assert bool(iso.bonds_intact) and bool(iso.molecules_same) and iso.n_molecules_exp == 4
    assert iso.rmsd_A == pytest.approx(0, abs=1e-9)
    permuted = pick(errors, "cod-0000001", "ani1ccx")
    assert permuted.rmsd_A == pytest.approx(0, abs=1e-9)
    assert permuted.matcher_rms == pytest.approx(0, abs=1e-6)


def test_broken_molecule_and_lost_symmetry_are_detected(tmp_path, benzene):
    exp = benzene
    moved = exp.copy()
    h = [i for i, s in enumerate(moved.get_chemical_symbols()) if s == "H"][0]
    moved.positions[h] += [0.0, 0.0, 1.2]                  # one C-H bond broken
    write_clean(tmp_path / "clean.db", {"cod-1": exp}, {})
    write_relaxed(tmp_path / "relaxed.db", exp, moved, "cod-1", "ani1x")
    row = analysis.collect_errors(tmp_path / "relaxed.db", tmp_path / "clean.db", structure=True,
                                  matcher=False).iloc[0]
    assert not row.bonds_intact and row.bonds_broken == 1
    assert not row.molecules_same
    assert not row.sg_survived and row.sg_relaxed != 61
    assert row.dV_pct == pytest.approx(0, abs=1e-9)
    assert row.rmsd_A == pytest.approx(1.2 / np.sqrt(len(exp)), abs=1e-9)
    assert row.rmsd_heavy_A == pytest.approx(0, abs=1e-9) and row.max_disp_A == pytest.approx(1.2)


def test_status_counts_and_converged_only(errors):
    counts = analysis.status_counts(errors)
    assert counts.loc["ani1x", "converged"] == 2 and counts.loc["ani1x", "exploded"] == 1
    assert counts.loc["ani1ccx", "error"] == 1 and counts.loc["ani1ccx", "total"] == 3
    summary = analysis.summarize(errors)
    volume = summary[(summary.potential == "ani1x") & (summary.quantity == "volume")].iloc[0]
    assert volume.n == 2  # the exploded one is left out
    assert volume.mu == pytest.approx(np.mean([(1.02**3 - 1) * 100, 5.0]))
    everything = analysis.summarize(errors, converged_only=False)
    assert everything[(everything.potential == "ani1x") & (everything.quantity == "volume")].n.iloc[0] == 3


def test_outliers_listed_with_ids(errors):
    assert analysis.outliers(errors, 20).empty
    found = analysis.outliers(errors, 20, converged_only=False)
    assert list(found.structure_id) == ["cod-0000003"] and found.dV_pct.iloc[0] == pytest.approx(700.0)
    fractions = analysis.outlier_fractions(errors, 4.0).set_index("potential")
    assert fractions.loc["ani1x", "n_outliers"] == 2 and fractions.loc["ani1ccx", "n_outliers"] == 1
    assert fractions.loc["ani1ccx", "structure_ids"] == "cod-0000001"
    pair = analysis.load_pair(found.iloc[0])
    assert pair["relaxed"].get_volume() == pytest.approx(8 * found.V_exp.iloc[0])


def test_temperature_bands_and_thermal_correction(errors):
    bands = analysis.temperature_bands(errors, edges=(150, 250), quantities=("volume",))
    ani1x = bands[bands.potential == "ani1x"].set_index("temperature_band")
    assert ani1x.loc["< 150 K", "n"] == 1 and ani1x.loc["150–250 K", "n"] == 1
    assert ani1x.loc["< 150 K", "mu"] == pytest.approx((1.02**3 - 1) * 100)
    corrected = analysis.thermal_corrected(errors, alpha_v=1.65e-4)
    row = corrected[(corrected.structure_id == "cod-0000002") & (corrected.potential == "ani1x")].iloc[0]
    v_ref = row.V_exp / (1 + 1.65e-4 * 200)
    assert row.dV_thermal_pct == pytest.approx((1.05 * row.V_exp - v_ref) / v_ref * 100)
    assert "1.65 × 10⁻⁴ K⁻¹" in corrected.attrs["assumption"]
    assert np.isnan(corrected[corrected.structure_id == "cod-0000003"].dV_thermal_pct).all()


def test_thermal_correction_zero_for_a_perfect_0K_volume():
    factor = 1 + 300 * 1.6e-4
    frame = pd.DataFrame({"temperature": [300.0], "V_exp": [1000.0], "V_relaxed": [1000.0 / factor],
                          "a1_exp": [10.0], "a1_relaxed": [10.0 / factor ** (1 / 3)]})
    out = analysis.thermal_corrected(frame, alpha_v=1.6e-4)
    assert out.dV_thermal_pct.iloc[0] == pytest.approx(0, abs=1e-12)
    assert out.da1_thermal_pct.iloc[0] == pytest.approx(0, abs=1e-12)


def test_paired_differences_use_common_structures_only():
    rows = []
    for k in range(12):
        rows.append({"structure_id": f"s{k}", "potential": "A", "dV_pct": 2.0 + k, "converged": True,
                     "status": "converged"})
        rows.append({"structure_id": f"s{k}", "potential": "B", "dV_pct": 1.0 + k, "converged": k < 10,
                     "status": "converged" if k < 10 else "step_cap"})
    paired = analysis.paired_differences(pd.DataFrame(rows)).iloc[0]
    assert paired.n_common == 10
    assert paired.mean_diff == pytest.approx(1.0) and paired.std_diff == pytest.approx(0.0)
    assert paired.a_closer_fraction == 0.0
    assert paired.wilcoxon_p < 0.01


def test_study_table_layouts(errors):
    summary = analysis.summarize(errors)
    table = analysis.study_table(summary, counts=analysis.status_counts(errors))
    assert list(table.index) == ["ΔV, ANI-1ccx", "ΔV, ANI-1x", "Δ|a1|, ANI-1ccx", "Δ|a1|, ANI-1x"]
    assert table.loc["ΔV, ANI-1x", "μ study"] == 3.0 and table.loc["Δ|a1|, ANI-1ccx", "σ study"] == 6.8
    assert table.loc["ΔV, ANI-1x", "exploded"] == 1
    wide = analysis.study_table(summary, wide=True)
    assert ("ANI-1x", "μ") in wide.columns and list(wide.index) == ["ΔV [%]", "Δ|a1| [%]"]


def test_settings_variants_are_not_mixed(tmp_path, benzene):
    write_relaxed(tmp_path / "r1.db", benzene, scaled(benzene, [1.01] * 3), "cod-1", "ani1x")
    write_relaxed(tmp_path / "r2.db", benzene, scaled(benzene, [1.03] * 3), "cod-1", "ani1x",
                  settings_hash="zzz999")
    errors = analysis.collect_errors([tmp_path / "r1.db", tmp_path / "r2.db"])
    assert sorted(errors.potential) == ["ani1x[abc123]", "ani1x[zzz999]"]
    assert errors.exp_source.iloc[0] == "relaxed.data.cell_exp"


def test_missing_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 03_relax first"):
        analysis.collect_errors(str(tmp_path / "relaxed_*.db"))
    with pytest.raises(FileNotFoundError):
        analysis.collect_errors(tmp_path / "nothing.db")


def test_run_analysis_writes_every_table_and_figure(dbs, tmp_path):
    out = tmp_path / "analysis"
    result = analysis.run_analysis(str(dbs / "relaxed_*.db"), dbs / "clean.db", out, matcher=False,
                                   quantities=("volume", "a1"))
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:7]) == ["potential", "quantity", "unit", "n", "mu", "sigma", "median"]
    assert {"mad"} <= set(summary.columns) and set(summary.quantity) == {"volume", "a1"}
    errors = pd.read_csv(out / "errors.csv")
    required = ["structure_id", "potential", "natoms", "V_exp", "V_relaxed", "dV_pct", "a1_exp", "a1_relaxed",
                "da1_pct", "converged", "steps"]
    assert set(required) <= set(errors.columns) and len(errors) == 6
    for name in ("hist_ani1x_volume.png", "hist_ani1ccx_a1.png", "hist_grid_volume.png", "median_ci_a1.png",
                 "dv_vs_temperature.png", "status_counts.png", "paired_ani1ccx_vs_ani1x.png"):
        assert (out / name).stat().st_size > 5000, name
    assert all(p.stat().st_size > 0 for p in result["figures"])
    assert set(result["files"]) >= {"summary", "errors", "study_table", "status_counts", "temperature_bands"}


def test_rows_written_by_the_filter_and_relax_stages(tmp_path, cod_dir):
    """Schema contract with 02 and 03: a clean row from run_filter, a relaxed row from write_result."""
    import shutil

    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter
    from helpers.relax.engine import RelaxResult, RelaxSettings
    from helpers.relax.stage import write_result

    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(cod_dir / "2100348.cif", source)
    fetch(str(source), str(tmp_path / "raw.db"), progress=False)
    run_filter(str(tmp_path / "raw.db"), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"),
               progress=False)
    clean = dbmod.connect(tmp_path / "clean.db", must_exist=True)
    clean_row = clean.get(structure_id="cod-2100348")
    settings = RelaxSettings(potential="ani1x", steps_per_atom=6)
    out = dbmod.connect(tmp_path / "relaxed_ani1x.db")
    relaxed = scaled(clean_row.toatoms(), [1.04, 1.0, 1.0])
    write_result(out, clean_row, RelaxResult(atoms=relaxed, status="converged", converged=True, steps=7,
                                             max_steps=600, e_initial=-1.0, e_final=-2.0, fmax_final=4e-4,
                                             wall_time=1.0), settings, "hash0001")
    frame = analysis.collect_errors(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", structure=True)
    row = frame.iloc[0]
    assert row.potential == "ani1x" and row.status == "converged" and row.steps == 7
    assert row.dV_pct == pytest.approx(4.0, abs=1e-9) and row.da1_pct == pytest.approx(4.0, abs=1e-9)
    assert row.temperature == pytest.approx(296.0) and row.cell_setting == "same"
    assert row.exp_source == "relaxed.data.cell_exp"
    assert row.ddensity_pct == pytest.approx((1 / 1.04 - 1) * 100, abs=1e-6)
    assert bool(row.sg_survived) and bool(row.bonds_intact)


def test_unmatched_cells_leave_the_lattice_fits_but_not_the_volume_fit():
    frame = pd.DataFrame({"structure_id": ["a", "b", "c"], "potential": "ani1x", "converged": True,
                          "status": "converged", "dV_pct": [1.0, 2.0, 3.0], "da1_pct": [1.0, 2.0, 50.0],
                          "cell_setting": ["same", "mapped", "unmatched"]})
    summary = analysis.summarize(frame, quantities=("volume", "a1")).set_index("quantity")
    assert summary.loc["volume", "n"] == 3 and summary.loc["a1", "n"] == 2
    assert summary.loc["a1", "mu"] == pytest.approx(1.5)


# --- one entry per compound ---------------------------------------------------------------------

COMPOUNDS = {  # structure_id: (compound_key, r_factor, temperature, isotropic scale of the "relaxed" cell)
    "cod-1000001": ("AAAA-X.BBBB-Y", 0.050, 100.0, 1.01),
    "cod-1000002": ("AAAA-X.BBBB-Y", 0.030, 296.0, 1.03),   # same compound, better R factor
    "cod-1000003": ("CCCC-Z", None, 150.0, 1.02),            # R factor unknown: ranked last
    "cod-1000004": ("CCCC-Z", 0.040, 200.0, 1.05),
    "cod-1000005": (None, 0.060, 100.0, 0.99),               # no key: a compound of its own
}


def write_compound_dbs(root, benzene, with_keys: bool = True) -> None:
    clean = dbmod.connect(root / "clean.db")
    for sid, (key, r_factor, temperature, scale) in COMPOUNDS.items():
        kvp = exp_kvp(benzene, sid, temperature)
        if with_keys and key is not None:
            kvp["compound_key"] = key
        if r_factor is not None:
            kvp["r_factor"] = r_factor
        clean.write(benzene, key_value_pairs=kvp, data={"cell_exp": np.asarray(benzene.cell).tolist()})
        for potential, extra in (("ani1x", 0.0), ("ani1ccx", 0.01)):
            write_relaxed(root / f"relaxed_{potential}.db", benzene, scaled(benzene, [scale + extra] * 3), sid,
                          potential, temperature=temperature)


def dv(sid: str, potential: str = "ani1x") -> float:
    scale = COMPOUNDS[sid][3] + (0.01 if potential == "ani1ccx" else 0.0)
    return (scale**3 - 1) * 100


def test_one_entry_per_compound_lowest_r_factor_then_temperature(tmp_path, benzene):
    write_compound_dbs(tmp_path, benzene)
    result = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", tmp_path / "out",
                                   structure=False, plots=False, quantities=("volume",), n_boot=200)
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors.set_index(["structure_id", "potential"]).loc[("cod-1000002", "ani1x"), "compound_key"] \
        == "AAAA-X.BBBB-Y"
    assert errors.set_index(["structure_id", "potential"]).loc[("cod-1000002", "ani1ccx"), "r_factor"] == 0.03
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["entries", "potential", "quantity"])
    assert set(summary.index.get_level_values("entries")) == {"all", "one_per_compound", "one_per_polymorph"}
    for potential in ("ani1x", "ani1ccx"):
        everything = summary.loc[("all", potential, "volume")]
        assert everything.n == 5
        assert everything["median"] == pytest.approx(np.median([dv(s, potential) for s in COMPOUNDS]))
        one = summary.loc[("one_per_compound", potential, "volume")]
        chosen = ["cod-1000002", "cod-1000004", "cod-1000005"]  # lowest R; known R before unknown; no key
        assert one.n == 3
        assert one["median"] == pytest.approx(np.median([dv(s, potential) for s in chosen]))
        assert one["mu"] == pytest.approx(np.mean([dv(s, potential) for s in chosen]))
    assert "'one_per_compound' (3 compounds" in result["entries_note"]
    # the study table stays the study's way: all entries
    assert result["study_table"].loc["ΔV, ANI-1x", "n"] == 5
    # the coldest measurement instead; a string "None" (papermill -r) switches it off
    colder = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", tmp_path / "out2",
                                   structure=False, plots=False, quantities=("volume",), n_boot="200",
                                   one_per_compound="temperature")["summary"]
    picked = colder[(colder.entries == "one_per_compound") & (colder.potential == "ani1x")].iloc[0]
    assert picked["median"] == pytest.approx(np.median([dv(s) for s in ("cod-1000001", "cod-1000003",
                                                                           "cod-1000005")]))
    off = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", tmp_path / "out3",
                                structure=False, plots=False, quantities=("volume",), n_boot=100,
                                one_per_compound="None")
    assert set(off["summary"].entries) == {"all"} and "disabled" in off["entries_note"]


def test_without_compound_keys_only_all_entries_and_the_reason(tmp_path, benzene):
    write_compound_dbs(tmp_path, benzene, with_keys=False)
    result = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", tmp_path / "out",
                                   structure=False, plots=False, quantities=("volume",), n_boot=100)
    assert set(pd.read_csv(tmp_path / "out" / "summary.csv").entries) == {"all"}
    assert "no compound_key" in result["entries_note"]


# --- real relaxations, numbers recomputed by hand from errors.csv ------------------------------


@pytest.mark.slow
def test_summary_tables_agree_with_a_hand_computation_from_errors_csv(small_clean_db, tmp_path, model_dir):
    """Real COD crystals relaxed by ANI-1x and ANI-1ccx (loose fmax), 04's analysis, then pandas/numpy/scipy."""
    from scipy import stats

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.stage import run_batch

    out = str(tmp_path / "relaxed_{potential}.db")
    for potential in ("ani1x", "ani1ccx"):
        run_batch(small_clean_db, out, potential, settings=RelaxSettings(potential=potential, fmax=0.05),
                  progress=False, n_threads=1)
    result = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), small_clean_db, tmp_path / "analysis",
                                   structure=False, n_boot=500, boot_seed=3)
    errors = pd.read_csv(tmp_path / "analysis" / "errors.csv")
    summary = pd.read_csv(tmp_path / "analysis" / "summary.csv")
    # what each crystal is, for the worst-structure tables: the CIF's name and 02_filter's molecules
    named = errors.drop_duplicates("structure_id").set_index("structure_id")
    assert named.loc["cod-2000642", "compound_name"] == "1,4-Dibenzoylbenzene"
    assert pd.isna(named.loc["cod-4021477", "compound_name"])
    assert named.loc["cod-2000642", "molecules"] == "1 × O=C(c1ccccc1)c1ccc(C(=O)c2ccccc2)cc1"
    ice = named.loc["cod-1011063", "molecules"]  # ice II: species of O and H only, counted in the cell
    assert "C" not in ice and all(part.split(" × ")[1][:1] in "O[H" for part in ice.split(" + "))
    # the filter stores compound keys: every statistic also over one entry per compound and per polymorph (4
    # distinct compounds here, so the same numbers)
    assert set(summary.entries) == {"all", "one_per_compound", "one_per_polymorph"}
    per_compound = summary[summary.entries == "one_per_compound"].set_index(["potential", "quantity"])
    summary = summary[summary.entries == "all"].set_index(["potential", "quantity"])
    assert (per_compound.n == summary.n).all()
    converged = errors[errors.converged.astype(bool) & ~errors.status.isin(["error", "exploded"])]
    assert len(converged) >= 6
    for (potential, column, quantity) in [(p, c, q) for p in ("ani1x", "ani1ccx")
                                          for c, q in (("dV_pct", "volume"), ("da1_pct", "a1"),
                                                       ("ddensity_pct", "density"))]:
        x = converged.loc[converged.potential == potential, column].dropna().to_numpy()
        if quantity == "a1":
            x = converged.loc[(converged.potential == potential) & (converged.cell_setting != "unmatched"),
                              column].dropna().to_numpy()
        row = summary.loc[(potential, quantity)]
        median = np.median(x)
        mad = np.median(np.abs(x - median))
        assert row.n == len(x) and row["median"] == pytest.approx(median) and row["mad"] == pytest.approx(mad)
        assert row.mu_mle == pytest.approx(x.mean()) and row.sigma_mle == pytest.approx(x.std())
        # n < 50: the MLE of the values within median ± 8·1.4826·MAD (all of them here), said so
        window = x[np.abs(x - median) <= 8 * 1.482602218505602 * mad] if mad > 0 else x
        assert row.fit_method.startswith("norm.fit") and "< 50" in row.fit_method
        assert row.mu == pytest.approx(window.mean()) and row.sigma == pytest.approx(window.std())
        assert x.min() <= row.mu <= x.max()
        # below 30 values the median's CI is the exact order-statistic interval, by hand: the widest k with
        # P(k <= Binomial(n, 1/2) <= n - k) >= 95 % gives (x_(k), x_(n-k+1)); none exists for n < 6
        xs = np.sort(x)
        ks = [k for k in range(1, len(x) // 2 + 1)
              if stats.binom.cdf(len(x) - k, len(x), 0.5) - stats.binom.cdf(k - 1, len(x), 0.5) >= 0.95]
        if ks:
            k = max(ks)
            assert row.median_ci_method.startswith("exact order statistics")
            assert row.median_ci_low == pytest.approx(xs[k - 1]) and row.median_ci_high == pytest.approx(xs[-k])
        else:  # said, not faked
            assert row.median_ci_method.startswith("none: n = ")
            assert np.isnan(row.median_ci_low) and np.isnan(row.median_ci_high)
        assert row.mu_ci_low <= row.mu <= row.mu_ci_high
    # the angles: fraction that changed by more than 0.01°, no Gaussian
    for potential in ("ani1x", "ani1ccx"):
        alpha = converged.loc[(converged.potential == potential) & (converged.cell_setting != "unmatched"),
                              "dalpha_deg"].dropna()
        row = summary.loc[(potential, "alpha")]
        assert row.fraction_changed == pytest.approx(np.mean(np.abs(alpha) > 0.01))
        assert np.isnan(row.mu) and row.fit_method.startswith("not fitted")
    # the study table shows the same numbers, rounded
    table = pd.read_csv(tmp_path / "analysis" / "study_table.csv", index_col=0)
    row = summary.loc[("ani1x", "volume")]
    assert table.loc["ΔV, ANI-1x", "μ"] == pytest.approx(round(row.mu, 2))
    assert table.loc["ΔV, ANI-1x", "μ CI low"] == pytest.approx(round(row.mu_ci_low, 2))
    assert table.loc["ΔV, ANI-1x", "fit method"] == row.fit_method
    # the paired comparison: common converged structures, mean difference and Wilcoxon by hand
    paired = pd.read_csv(tmp_path / "analysis" / "paired_volume.csv").iloc[0]
    wide = converged.pivot_table(index="structure_id", columns="potential", values="dV_pct").dropna()
    diff = wide[paired.potential_a] - wide[paired.potential_b]
    absdiff = wide[paired.potential_a].abs() - wide[paired.potential_b].abs()
    assert paired.n_common == len(wide) and paired.mean_diff == pytest.approx(diff.mean())
    assert paired.median_absdiff == pytest.approx(absdiff.median())
    if len(wide) >= 10:
        assert paired.wilcoxon_abs_p == pytest.approx(stats.wilcoxon(absdiff).pvalue)
    else:
        assert paired.verdict.startswith(f"cannot tell: {len(wide)} common structures")
    for name in ("hist_ani1x_volume.png", "hist_grid_volume.png", "hist_ani1ccx_alpha.png"):
        assert (tmp_path / "analysis" / name).stat().st_size > 10_000
    assert result["entries_note"].startswith("summary.csv: entries = 'all' (4 structures) and 'one_per_compound' "
                                             "(4 compounds")


def test_only_structures_clean_now_are_counted(dbs, tmp_path, benzene):
    """A stricter re-filter removed cod-0000002 from the clean database: its relaxed rows are left out,
    counted and explained, not analysed."""
    import shutil

    root = tmp_path / "refiltered"
    shutil.copytree(dbs, root)
    clean = dbmod.connect(root / "clean.db")
    clean.delete([clean.get(structure_id="cod-0000002").id])
    result = analysis.run_analysis(str(root / "relaxed_*.db"), root / "clean.db", tmp_path / "out",
                                   structure=False, plots=False, quantities=("volume",), n_boot=50)
    assert sorted(set(result["errors"].structure_id)) == ["cod-0000001", "cod-0000003"]
    left = pd.read_csv(tmp_path / "out" / "left_out.csv")
    assert sorted(left.potential) == ["ani1ccx", "ani1x"] and set(left.structure_id) == {"cod-0000002"}
    assert left.reason.str.contains("not in the clean database now").all()
    volume = result["summary"].query("quantity == 'volume' and potential == 'ani1x' and entries == 'all'")
    assert int(volume.n.iloc[0]) == 1  # cod-0000001 only (cod-0000003 exploded)


def test_rerun_into_the_same_folder_leaves_no_stale_outputs(dbs, tmp_path):
    out = tmp_path / "analysis"
    analysis.run_analysis(str(dbs / "relaxed_*.db"), dbs / "clean.db", out, structure=False,
                          quantities=("volume",), n_boot=50)
    assert (out / "hist_ani1ccx_volume.png").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "my_table.csv").write_text("a,b\n")
    analysis.run_analysis(str(dbs / "relaxed_ani1x.db"), dbs / "clean.db", out, structure=False,
                          quantities=("volume",), n_boot=50)
    assert not (out / "hist_ani1ccx_volume.png").exists(), "a figure of the earlier run was left behind"
    assert (out / "hist_ani1x_volume.png").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "my_table.csv").is_file()  # not ours: kept


def test_run_analysis_gives_the_ranking_its_targets_so_a_running_potential_waits(tmp_path, benzene):
    """04_analysis ranks as the report does: 12 clean structures, ANI-1x and ANI-1ccx relaxed all of them,
    ANI-2x only 4 (a campaign still running). run_analysis says what each potential is to relax; with that,
    ANI-2x is listed as partial and the other two are ranked on all 12, not on the 4 ANI-2x reached."""
    from helpers.analysis.ranking import rank_potentials

    clean = dbmod.connect(tmp_path / "clean.db")
    ids = [f"cod-20000{i:02d}" for i in range(12)]
    for i, sid in enumerate(ids):
        clean.write(benzene, key_value_pairs=exp_kvp(benzene, sid),
                    data={"cell_exp": np.asarray(benzene.cell).tolist()})
        for potential, extra in (("ani1x", 0.0), ("ani1ccx", 0.01), ("ani2x", 0.02)):
            if potential != "ani2x" or i < 4:
                write_relaxed(tmp_path / f"relaxed_{potential}.db", benzene,
                              scaled(benzene, [1.0 + 0.002 * i + extra] * 3), sid, potential)
    result = analysis.run_analysis(str(tmp_path / "relaxed_*.db"), tmp_path / "clean.db", tmp_path / "out",
                                   structure=False, plots=False, quantities=("volume",), n_boot=50)
    assert result["targets"] == {p: set(ids) for p in ("ani1ccx", "ani1x", "ani2x")}
    ranking = rank_potentials(result["errors"], n_boot=50, targets=result["targets"])
    table = ranking["table"].set_index("potential")
    assert ranking["partial"] == {"ani2x": (8, 12)} and len(ranking["shared"]) == 12
    assert table.loc[["ani1x", "ani1ccx"], "ranked"].all() and not table.loc["ani2x", "ranked"]
    blind = rank_potentials(result["errors"], n_boot=50, min_ranked=4)  # without targets: cut to the 4
    assert len(blind["shared"]) == 4
    assert analysis.run_analysis(str(tmp_path / "relaxed_*.db"), None, tmp_path / "out2", structure=False,
                                 plots=False, quantities=("volume",), n_boot=50)["targets"] is None
