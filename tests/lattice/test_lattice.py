"""Lattice energies (X23, ICE13): the din reader, Z and the sign of E_latt, molecule identity, a real run."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from ase.io import read

from helpers.lattice import (
    DinError,
    benchmark_entries,
    ev_to_kjmol,
    kcal_to_kj,
    lattice_energy,
    lattice_references,
    read_crystal,
    read_din,
    read_molecule,
    reference_dir,
    same_molecule,
)

REF = reference_dir()


@pytest.fixture(scope="module")
def lattice_ref():
    if not (REF / "x23" / "x23.din").is_file():
        pytest.fail(f"lattice-energy reference data missing: {REF}")
    return REF


def test_real_din_files_are_read_with_the_ice_xi_duplicate_used_once(lattice_ref):
    with pytest.warns(UserWarning, match=r"ice\.din:67: 'ice_XI' is listed twice \(first at line 61\); used once"):
        ice = read_din(lattice_ref / "ice13" / "ice.din")
    names = [e.name for e in ice]
    assert len(names) == 12 and names.count("ice_XI") == 1 and "ice_IX" not in names
    x23 = read_din(lattice_ref / "x23" / "x23.din")
    assert len(x23) == 23
    urea = next(e for e in x23 if e.name == "urea")
    assert urea.terms == ((-0.5, "urea"), (1.0, "mol_urea")) and urea.value == 24.4025


def _din(tmp_path, text):
    path = tmp_path / "bad.din"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "line", "what"), [
    ("# header\n-0.5\nurea\n1\nmol_urea\n0\n", 6, "the closing 0 has no reference value"),
    ("-0.5\nurea\n1\nmol_urea\n", 1, "not closed"),
    ("# header\n-0.5\nurea\n1\n2.5\n0\n24.4\n", 5, "expected the system name"),
    ("-0.5\nurea\n1\nmol_urea\n0\nabc\n", 6, "expected the reference value"),
    ("-0.5\nurea\n1\nmol_urea\n0\n24.4\nhalf\nurea\n", 7, "expected a coefficient"),
    ("0\n24.4\n", 1, "without systems"),
])
def test_malformed_din_blocks_are_an_error_naming_the_line(tmp_path, text, line, what):
    path = _din(tmp_path, text)
    with pytest.raises(DinError, match=rf"bad\.din:{line}: .*({what})"):
        read_din(path)


def test_an_entry_listed_twice_with_another_value_is_an_error(tmp_path):
    path = _din(tmp_path, "-0.5\nurea\n1\nmol_urea\n0\n24.4\n-0.5\nurea\n1\nmol_urea\n0\n25.0\n")
    with pytest.raises(DinError, match=r"bad\.din:7: 'urea' is listed again \(first at line 1\)"):
        read_din(path)


def test_a_name_without_a_structure_is_a_clear_error(tmp_path, lattice_ref):
    root = tmp_path / "lattice-energy"
    (root / "x23").mkdir(parents=True)
    (root / "x23" / "expt").symlink_to(lattice_ref / "x23" / "expt")
    (root / "x23" / "dft").symlink_to(lattice_ref / "x23" / "dft")
    (root / "x23" / "x23.din").write_text("-0.5\nurea\n1\nmol_urea\n0\n24.4025\n-0.25\nglycine\n1\nmol_glycine\n0\n1\n")
    with pytest.raises(FileNotFoundError, match=r"'glycine' has no structure: .*expt/glycine\.cif not found"):
        benchmark_entries("x23", root)
    (root / "x23" / "x23.din").write_text("-0.5\nurea\n1\nmol_urea\n0\n24.4025\n")
    (entry,) = benchmark_entries("x23", root)
    assert entry.reference.z == 2


def test_z_and_the_sign_of_the_lattice_energy_by_hand(lattice_ref):
    refs = {r.crystal: r for r in lattice_references(read_din(lattice_ref / "x23" / "x23.din"))}
    urea = refs["urea"]  # -0.5 urea / 1 mol_urea / 0 / 24.4025: E_latt = E(mol) - E(cryst)/2
    assert (urea.z, urea.molecule, urea.ref_kcalmol) == (2, "mol_urea", 24.4025)
    assert refs["triazine"].z == 6 and refs["cyanamide"].z == 8 and refs["hexamine"].z == 1
    # a crystal of 2 molecules 1 eV lower than two free molecules binds each by 0.5 eV: positive
    assert lattice_energy(e_molecule=-10.0, e_crystal=-21.0, z=2) == pytest.approx(0.5)
    assert lattice_energy(e_molecule=-10.0, e_crystal=-19.0, z=2) == pytest.approx(-0.5)  # unbound: negative
    assert ev_to_kjmol(0.5) == pytest.approx(48.2427, abs=1e-3)  # 1 eV = 96.4853 kJ/mol
    assert kcal_to_kj(urea.ref_kcalmol) == pytest.approx(102.1001, abs=1e-4)
    with pytest.raises(ValueError, match="Z must be"):
        lattice_energy(-10.0, -20.0, 0)
    ice = {e.name: e for e in benchmark_entries("ice13", lattice_ref)}
    assert ice["ice_XIII"].reference.z == 28  # coefficient -0.035714
    assert len(read(ice["ice_XIII"].crystal_file)) == 3 * 28


def test_the_z_of_every_entry_is_the_number_of_molecules_in_its_start_cell(lattice_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = benchmark_entries("x23", lattice_ref) + benchmark_entries("ice13", lattice_ref)
    for entry in entries:
        crystal = read_crystal(entry.dft_crystal_file or entry.crystal_file)
        verdict = same_molecule(crystal, read_molecule(entry.molecule_file), entry.reference.z)
        assert verdict.same, (entry.name, verdict.reason)


def test_a_mismatched_pair_is_not_the_same_molecule(lattice_ref):
    urea = read_crystal(lattice_ref / "x23" / "expt" / "urea.cif")
    verdict = same_molecule(urea, read_molecule(lattice_ref / "x23" / "dft" / "mol_formamide.scf.in"), 2)
    assert not verdict.same and "CH4N2O" in verdict.reason and "CH3NO" in verdict.reason
    assert same_molecule(urea, read_molecule(lattice_ref / "x23" / "dft" / "mol_urea.scf.in"), 2).same
    wrong_z = same_molecule(urea, read_molecule(lattice_ref / "x23" / "dft" / "mol_urea.scf.in"), 4)
    assert not wrong_z.same and "2 molecules" in wrong_z.reason and "Z is 4" in wrong_z.reason
    # the experimental hexamine CIF has no hydrogens: not the gas-phase molecule
    hexamine = same_molecule(read_crystal(lattice_ref / "x23" / "expt" / "hexamine.cif"),
                             read_molecule(lattice_ref / "x23" / "dft" / "mol_hexamine.scf.in"), 1)
    assert not hexamine.same and "C6N4" in hexamine.reason and "C6H12N4" in hexamine.reason


def test_quantum_espresso_inputs_are_read_in_angstrom(lattice_ref):
    mol = read_molecule(lattice_ref / "x23" / "dft" / "mol_urea.scf.in")
    assert mol.get_chemical_formula() == "CH4N2O" and not mol.pbc.any()
    d_co = np.linalg.norm(mol.positions[0] - mol.positions[1])
    assert 1.2 < d_co < 1.3  # the C=O bond of urea, read in angstrom
    hexamine = read_crystal(lattice_ref / "x23" / "dft" / "hexamine.scf.in")  # cell in celldm(1) = 1 bohr
    assert len(hexamine) == 22 and hexamine.get_volume() == pytest.approx(165.4, abs=0.1)
    assert hexamine.get_volume() / read_crystal(lattice_ref / "x23" / "expt" / "hexamine.cif").get_volume() \
        == pytest.approx(0.953, abs=0.005)


@pytest.mark.slow
def test_ani1x_lattice_energies_of_two_small_crystals_end_to_end(tmp_path, lattice_ref, model_dir):
    from helpers.lattice import run_lattice_energy
    from helpers.store import db as dbmod

    out = str(tmp_path / "lattice_{potential}.db")
    table = run_lattice_energy("ani1x", ["x23"], out_db=out, fmax=0.01, crystals=["co2", "hexamine"],
                               n_threads=1, progress=False, reference_dir=lattice_ref).set_index("crystal")
    assert list(table.index) == ["co2", "hexamine"]
    assert set(table.status) == {"converged"} and set(table.molecule_status) == {"converged"}
    co2, hexamine = table.loc["co2"], table.loc["hexamine"]
    assert co2.Z == 4 and co2.crystal_source == "expt" and co2.ref_kJmol == pytest.approx(4.184 * 7.02677)
    assert hexamine.crystal_source == "dft" and "no structure" not in str(hexamine.message)
    assert "C6N4" in hexamine.message  # why the DFT crystal was the start: the CIF has no H
    for row in (co2, hexamine):
        expected = ev_to_kjmol(row.E_mol_eV - row.E_cryst_eV / row.Z)
        assert row.E_latt_kJmol == pytest.approx(expected) and math.isfinite(row.E_latt_fixed_kJmol)
        assert row.error_kJmol == pytest.approx(row.E_latt_kJmol - row.ref_kJmol)
        assert row.same_molecule_after_relax
    assert co2.V_exp == pytest.approx(read(lattice_ref / "x23" / "expt" / "co2.cif").get_volume())
    assert 0.8 < co2.V_relaxed / co2.V_exp < 1.2
    db = dbmod.connect(out.format(potential="ani1x"))
    before = {(r.system, r.kind): r.mtime for r in db.select()}
    assert set(before) == {(c, kind) for c in ("co2", "hexamine") for kind in
                           ("crystal", "crystal_fixed_hnorm", "crystal_dft")} | {("mol_co2", "molecule"),
                                                                                  ("mol_hexamine", "molecule")}
    assert math.isfinite(co2.E_latt_dft_geometry_kJmol) and co2.h_normalised == 0  # CO2 has no H
    again = run_lattice_energy("ani1x", ["x23"], out_db=out, fmax=0.01, crystals=["co2", "hexamine"],
                               n_threads=1, progress=False, reference_dir=lattice_ref).set_index("crystal")
    assert {(r.system, r.kind): r.mtime for r in db.select()} == before  # nothing recomputed
    assert again.E_latt_kJmol.tolist() == table.E_latt_kJmol.tolist()


def test_x_ray_hydrogens_move_to_neutron_distances_and_the_energy_drops(lattice_ref, model_dir):
    """Acetic acid's CIF (X-ray: O–H 0.83, C–H 0.95 Å): every H moves along its bond to the neutron length, the
    heavy atoms stay, and ANI-1x's energy falls by tens of kJ/mol per molecule — the artefact the fixed-geometry
    lattice energy would otherwise carry."""
    from ase.neighborlist import neighbor_list

    from helpers.lattice.hydrogens import NEUTRON_XH, normalise_hydrogens
    from helpers.lattice.structures import read_crystal
    from helpers.relax.potentials.registry import get_potential

    raw = read_crystal(lattice_ref / "x23" / "expt" / "acetic_acid.cif")
    fixed, moved = normalise_hydrogens(raw)
    symbols = np.array(raw.get_chemical_symbols())
    assert moved == (symbols == "H").sum() == 16
    heavy = symbols != "H"
    assert np.allclose(fixed.positions[heavy], raw.positions[heavy])
    i, j, d = neighbor_list("ijd", fixed, 1.3)
    bonds = {(symbols[a], round(float(x), 4)) for a, b, x in zip(j, i, d, strict=True)
             if symbols[b] == "H" and symbols[a] != "H"}
    assert bonds == {("C", NEUTRON_XH["C"]), ("O", NEUTRON_XH["O"])}
    calc = get_potential("ani1x").calculator()
    per_molecule = [ev_to_kjmol(calc.get_potential_energy(a.copy()) / 4) for a in (raw, fixed)]
    assert per_molecule[0] - per_molecule[1] > 20


def test_the_fixed_geometry_mode_reports_the_dft_crystal(tmp_path, lattice_ref, model_dir):
    """geometry="fixed" (GFN2-xTB's mode): no relaxation; E_latt at the reference DFT crystal."""
    from helpers.lattice import run_lattice_energy

    row = run_lattice_energy("ani1x", ["x23"], out_db=str(tmp_path / "l.db"), fmax=0.01, crystals=["co2"],
                             geometry="fixed", n_threads=1, progress=False, reference_dir=lattice_ref).iloc[0]
    assert row.status == "fixed_geometry" and row.crystal_source == "dft" and np.isnan(row.V_relaxed)
    assert row.E_latt_kJmol == row.E_latt_dft_geometry_kJmol != row.E_latt_fixed_kJmol


def _row(potential, benchmark, crystal, e_latt, ref, status="converged", dv=np.nan, geometry="relaxed"):
    return {"potential": potential, "benchmark": benchmark, "crystal": crystal, "E_latt_kJmol": e_latt,
            "ref_kJmol": ref, "error_kJmol": e_latt - ref, "E_latt_fixed_kJmol": e_latt - 1,
            "error_fixed_kJmol": e_latt - 1 - ref, "status": status, "dV_exp_pct": dv, "geometry": geometry}


def test_summary_counts_failures_and_ranks_ice_polymorphs():
    """MAE over crystals with both energies (the step-capped one with its last energy); the exploded one is
    in n and listed, not in the MAE; ρ = 1 when the ice ordering is DMC's even with an offset."""
    import pandas as pd

    from helpers.lattice.report import potential_summary

    rows = [_row("p", "x23", "a", 10.0, 12.0, dv=-2.0), _row("p", "x23", "b", 30.0, 26.0, dv=4.0),
            _row("p", "x23", "c", 20.0, 21.0, status="crystal step_cap"),
            _row("p", "x23", "d", np.nan, 30.0, status="crystal exploded")]
    rows += [_row("p", "ice13", f"ice_{k}", 50.0 + k, 58.0 + k) for k in range(4)]
    summary = potential_summary(pd.DataFrame(rows), n_boot=200).iloc[0]
    assert summary.x23_n == 4 and summary.x23_n_in_mae == 3 and summary.x23_n_converged == 2
    assert summary.x23_mae == pytest.approx((2 + 4 + 1) / 3) and summary.x23_mse == pytest.approx((-2 + 4 - 1) / 3)
    assert summary.x23_worst == "b" and summary.x23_worst_error == pytest.approx(4.0)
    assert summary.x23_mae_ci_low <= summary.x23_mae <= summary.x23_mae_ci_high
    assert summary.x23_dV_mean_pct == pytest.approx(1.0) and summary.x23_dV_mae_pct == pytest.approx(3.0)
    assert summary.ice13_mae == pytest.approx(8.0) and summary.ice13_mse == pytest.approx(-8.0)
    assert summary.ice13_spearman == pytest.approx(1.0) and summary.ice13_mae_relative == pytest.approx(0.0)
    assert summary.not_converged == "c: crystal step_cap; d: crystal exploded"


def test_the_results_stage_runs_every_potential_and_gfn2_at_the_fixed_geometry(tmp_path):
    from helpers.run.config import STAGES
    from helpers.run.lattice import lattice_jobs

    assert STAGES.index("lattice") < STAGES.index("report")  # the report reads docs/lattice_energy.csv
    jobs = {j["potential"]: j for j in lattice_jobs(["ani1x", "gfn2-xtb", "gfn1-xtb"], tmp_path)}
    assert jobs["ani1x"]["geometry"] == "relaxed"
    assert jobs["gfn2-xtb"]["geometry"] == jobs["gfn1-xtb"]["geometry"] == "fixed"
    assert jobs["ani1x"]["out_csv"] == str(tmp_path / "lattice" / "lattice_ani1x.csv")
    assert all(j["n_threads"] == 1 for j in jobs.values())


def test_the_section_names_the_potentials_whose_benchmark_has_not_run(tmp_path):
    """A registered potential with no table is named under the table and in results.json, never just absent."""
    import json

    import pandas as pd

    from helpers.lattice.report import CSV_NAME, lattice_energy_section

    rows = [_row("ani1x", "x23", name, 20.0 + k, 22.0) for k, name in enumerate("abc")]
    pd.DataFrame(rows).to_csv(tmp_path / CSV_NAME, index=False)
    lines = lattice_energy_section(tmp_path, n_boot=50, expected=["ani1x", "ani2x", "gfn-ff"])
    named = [line for line in lines if line.startswith("Not yet run")]
    assert named == ["Not yet run (no lattice-energy table, so not in this section): ANI-2x, GFN-FF."]
    assert json.loads((tmp_path / "results.json").read_text())["lattice_energy"]["not_run"] == ["ani2x", "gfn-ff"]
    assert not any(line.startswith("Not yet run") for line in
                   lattice_energy_section(tmp_path, n_boot=50, expected=["ani1x"]))


def test_the_closing_sentence_names_the_best_on_each_count_and_whether_one_is_best_on_both():
    import pandas as pd

    from helpers.lattice.report import best_on_both_counts, potential_summary

    rows = [_row("ani1x", "x23", c, 20.0, 22.0) for c in "abc"]  # MAE 2
    rows += [_row("ani2x", "x23", c, 20.0, 25.0) for c in "abc"]  # MAE 5
    rows += [_row("gfn-ff", "x23", c, 20.0, 21.0) for c in "abc"]  # MAE 1, not ranked on volumes
    summary = potential_summary(pd.DataFrame(rows), n_boot=50)
    ranking = pd.DataFrame({"potential": ["ani2x", "ani1x", "ani1ccx"], "metric": [5.8, 6.1, 7.0],
                            "metric_ci_low": [4.2, 5.0, 6.0], "metric_ci_high": [6.6, 7.0, 8.0]})
    text = best_on_both_counts(summary, ranking)
    assert text.startswith("Best on X23 lattice energies: GFN-FF (MAE 1.0")
    assert "best on COD volumes: ANI-2x (median |ΔV₀| 5.80 % [4.20, 6.60])" in text
    assert text.endswith("No potential is best on both counts; place on COD volumes / on X23 among the "
                         "potentials with both: ANI-2x 1/2, ANI-1x 2/1.")
    same = best_on_both_counts(summary[summary["potential"] != "gfn-ff"], ranking.iloc[[1, 0, 2]])
    assert same.endswith("ANI-1x is best on both counts, among the 2 potentials ranked on both so far.")
    unranked_best = best_on_both_counts(summary, ranking.iloc[[1, 0, 2]])  # GFN-FF leads X23 but has no volumes
    assert unranked_best.endswith("ANI-1x is best on both counts, among the 2 potentials ranked on both so far "
                                  "(GFN-FF, best on X23, is not ranked on COD volumes yet).")
    assert best_on_both_counts(summary, None).endswith("kJ/mol).")
    fixed = pd.DataFrame(rows)  # a potential not relaxed (the DFT crystal) is said to be so where it is named
    fixed.loc[fixed["potential"] == "gfn-ff", "geometry"] = "fixed"
    fixed = potential_summary(fixed, n_boot=50)
    assert best_on_both_counts(fixed, None).startswith("Best on X23 lattice energies: GFN-FF at the DFT geometry (MAE")


def test_a_lattice_run_alone_rewrites_only_the_reports_lattice_section(tmp_path):
    """From docs/lattice_energy.csv and the volume ranking results.json recorded: the old section replaced, every
    other line and results.json key kept, the closing sentence from the recorded ranking (ANI-2x first)."""
    import json

    import pandas as pd

    from helpers.lattice.report import CSV_NAME, refresh_report_section

    rows = [_row("ani1x", "x23", c, 20.0, 22.0) for c in "abc"] + [_row("ani2x", "x23", c, 20.0, 25.0) for c in "abc"]
    pd.DataFrame(rows).to_csv(tmp_path / CSV_NAME, index=False)
    recorded = {"potentials": {
        "ani1x": {"ranked": True, "rank": 2.0, "metric": 6.1, "metric_ci_low": 5.0, "metric_ci_high": 7.0},
        "ani2x": {"ranked": True, "rank": 1.0, "metric": 5.8, "metric_ci_low": 4.2, "metric_ci_high": 6.6},
        "ani1ccx-d3": {"ranked": False, "rank": None, "metric": 9.0}}, "common": {"structure_ids": ["cod-1"]}}
    (tmp_path / "results.json").write_text(json.dumps(recorded))
    head, tail = "# Results\n\n## Verdict\n\nANI-2x first.\n\n", "## Glossary\n\nterms\n"
    (tmp_path / "results.md").write_text(head + "## Lattice energies: X23 and ICE13\n\nold table\n\n" + tail)
    refresh_report_section(tmp_path, expected=["ani1x", "ani2x", "gfn-ff"], n_boot=50)
    text = (tmp_path / "results.md").read_text()
    assert text.startswith(head + "## Lattice energies: X23 and ICE13\n") and text.endswith(tail)
    assert "old table" not in text and "Not yet run (no lattice-energy table, so not in this section): GFN-FF." in text
    assert ("Best on X23 lattice energies: ANI-1x (MAE 2.0 [2.0, 2.0] kJ/mol); best on COD volumes: ANI-2x "
            "(median |ΔV₀| 5.80 % [4.20, 6.60]). No potential is best on both counts") in text
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["common"] == recorded["common"] and written["potentials"] == recorded["potentials"]
    assert set(written["lattice_energy"]["potentials"]) == {"ani1x", "ani2x"}

    (tmp_path / "results.md").write_text(head + tail)  # an older report without the section: before the glossary
    refresh_report_section(tmp_path, expected=["ani1x", "ani2x"], n_boot=50)
    text = (tmp_path / "results.md").read_text()
    assert text.startswith(head + "## Lattice energies: X23 and ICE13\n") and text.endswith(tail)


def test_every_table_in_the_work_folder_is_combined_in_the_registrys_order(tmp_path):
    from helpers.run.lattice import lattice_tables

    folder = tmp_path / "lattice"
    folder.mkdir()
    for name in ("my-plugin", "gfn-ff", "ani2x", "ani1x"):
        (folder / f"lattice_{name}.csv").write_text("potential\n")
    (folder / "lattice_ani1x.db").write_text("")
    assert [p.name for p in lattice_tables(tmp_path)] == ["lattice_ani1x.csv", "lattice_ani2x.csv",
                                                          "lattice_gfn-ff.csv", "lattice_my-plugin.csv"]


def test_the_figure_has_a_panel_per_potential_and_draws_dft_geometry_rows_as_finished():
    """A fixed-geometry (DFT crystal) energy is a finished answer: a filled marker, its panel titled so; only a
    step-capped relaxation is drawn open. Each panel spans its own points (an outlier squeezes no other panel)."""
    import pandas as pd

    from helpers.lattice.report import parity_figure

    rows = [_row("ani1x", "x23", c, 20.0 + k, 22.0) for k, c in enumerate("abc")]
    rows += [_row("ani1x", "x23", "d", 25.0, 30.0, status="crystal step_cap")]
    rows += [_row("gfn2-xtb", "x23", c, 20.0, 21.0, status="fixed_geometry", geometry="fixed") for c in "abc"]
    rows += [_row("aimnet2", "x23", c, -150.0, 22.0) for c in "ab"] + [_row("aimnet2", "ice13", "ice_Ih", 30.0, 59.5)]
    fig = parity_figure(pd.DataFrame(rows), columns=2)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["ANI-1x", "GFN2-xTB (DFT geometry)", "AIMNet2"]

    from matplotlib.collections import PathCollection

    def filled(ax):  # scatter points: (filled, open)
        sizes = [(len(c.get_offsets()), c.get_facecolors()[:, 3].max() if len(c.get_facecolors()) else 0.0)
                 for c in ax.collections if isinstance(c, PathCollection)]
        return sum(n for n, alpha in sizes if alpha > 0), sum(n for n, alpha in sizes if alpha == 0)

    assert filled(panels[0]) == (3, 1) and filled(panels[1]) == (3, 0) and filled(panels[2]) == (3, 0)
    assert panels[2].get_ylim()[0] < -150 and panels[0].get_ylim()[0] > -10


def test_combined_tables_keep_step_counts_as_integers_beside_a_fixed_geometry_potential(tmp_path):
    import pandas as pd

    from helpers.lattice.report import combine_tables

    pd.DataFrame({"potential": ["ani1x"], "crystal_steps": [189], "E_latt_kJmol": [58.0]}).to_csv(tmp_path / "a.csv",
                                                                                                index=False)
    pd.DataFrame({"potential": ["gfn2-xtb"], "crystal_steps": [None], "E_latt_kJmol": [60.0]}).to_csv(
        tmp_path / "b.csv", index=False)
    combine_tables([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == [
        "potential,crystal_steps,E_latt_kJmol", "ani1x,189,58.0", "gfn2-xtb,,60.0"]


def test_an_exploded_crystal_has_no_lattice_energy_and_stays_out_of_the_mae(tmp_path, lattice_ref):
    """Its last energy is not an answer (AIMNet2's pyrazole exploded and its last energy read as a lattice
    energy); the single points at the fixed geometries keep theirs. A step-capped one keeps its last energy."""
    from helpers.lattice import LatticeSettings, benchmark_entries, lattice_table, read_crystal, read_molecule
    from helpers.lattice.stage import DFT, FIXED, RELAXED, SINGLE_POINT, _Store

    entry = next(e for e in benchmark_entries("x23", lattice_ref) if e.name == "co2")
    settings = LatticeSettings(potential="ani1x")
    c_hash, m_hash = settings.crystal().hash(), settings.molecule().hash()
    crystal, molecule = read_crystal(entry.dft_crystal_file), read_molecule(entry.molecule_file)
    z = entry.reference.z
    for relaxed_status, expected in (("exploded", None), ("step_cap", "crystal step_cap")):
        store = _Store(str(tmp_path / f"{relaxed_status}.db"))
        store.write(molecule, entry.reference.molecule, "molecule", m_hash, status="converged", e_final=-10.0)
        for kind in (FIXED, DFT):
            store.write(crystal, entry.name, kind, c_hash, status=SINGLE_POINT, e_final=-10.2 * z)
        store.write(crystal, entry.name, RELAXED, c_hash, status=relaxed_status, e_final=-50.0 * z)
        row = lattice_table(str(tmp_path / f"{relaxed_status}.db"), settings, ["x23"], ["co2"], lattice_ref).iloc[0]
        assert row.E_latt_dft_geometry_kJmol == pytest.approx(0.2 * 96.4853, rel=1e-4)
        if expected is None:
            assert row.status == "crystal exploded" and np.isnan(row.E_latt_kJmol) and np.isnan(row.error_kJmol)
        else:
            assert row.status == expected and row.E_latt_kJmol == pytest.approx(40.0 * 96.4853, rel=1e-4)
