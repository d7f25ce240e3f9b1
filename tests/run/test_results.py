"""``make results`` end to end on a tiny copy of the data folders: every stage, the report, the resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_report import section_table

from helpers.run.campaign import TIMINGS_FILE, coverage, relaxed_counts, run_campaign
from helpers.run.config import STAGES, CampaignConfig
from helpers.store import db as dbmod


def test_results_subsets_default_and_overrides(capsys):
    from helpers.cli import _max_atoms, main
    from helpers.run.config import RESULTS_MAX_ATOMS, results_config

    plan = results_config("/data", work_dir="/work", potentials=["ani1x", "ani1x-d3", "gfn-ff"])
    assert plan.max_atoms == {"ani1x": None, "ani1x-d3": None, "gfn-ff": RESULTS_MAX_ATOMS["gfn-ff"]}
    assert [job["max_atoms"] for job in plan.jobs() if job["batch"] == 0] == [None, None, RESULTS_MAX_ATOMS["gfn-ff"]]
    assert {job["n_threads"] for job in plan.jobs()} == {1} and plan.sources == ["/data/cod", "/data/cod-sample"]
    plan = results_config("/data", potentials=["ani1x-d3", "gfn-ff"], max_atoms=_max_atoms("ani1x-d3=100, gfn-ff=none"))
    assert plan.max_atoms == {"ani1x-d3": 100, "gfn-ff": None}
    with pytest.raises(KeyError, match="not in this run"):
        results_config("/data", potentials=["ani1x"], max_atoms={"gfn-ff": 10})
    every = results_config("/data").max_atoms  # issue 35: every non-xTB potential on every clean crystal <= 150
    assert {name for name, n in every.items() if n is None} == {"ani1x", "ani1x-d3", "ani1ccx", "ani1ccx-d3",
                                                                "ani2x", "ani2x-d3"}
    assert {name: n for name, n in every.items() if n is not None and "xtb" not in name} == {
        "gfn-ff": 500, "sevennet0-d3": 150, "sevennet-l3i5-d3": 150, "sevennet-mf0-r2scan-d3": 150,
        "chgnet-d3": 150, "aimnet2": 150}
    for bad in ("gfn-ff", "gfn-ff=0", "gfn-ff=ten"):
        with pytest.raises(SystemExit):
            main(["results", "--data-dir", "/", "--max-atoms", bad])
        assert "--max-atoms" in capsys.readouterr().err


slow = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, cod_dir, model_dir):
    """cod/: two small clean crystals and a file that is not a CIF; cod-sample/: one more crystal."""
    root = tmp_path_factory.mktemp("results")
    (root / "data" / "cod").mkdir(parents=True)
    (root / "data" / "cod-sample").mkdir()
    for cod_id in (1011063, 2007300):  # 24 and 30 atoms
        shutil.copy(cod_dir / f"{cod_id}.cif", root / "data" / "cod")
    shutil.copy(cod_dir / "2000642.cif", root / "data" / "cod-sample")  # 36 atoms
    (root / "data" / "cod" / "9999999.cif").write_text("data_broken\n_cell_length_a 5\nnot a cif at all\n")
    plan = CampaignConfig(sources=[str(root / "data" / "cod"), str(root / "data" / "cod-sample")],
                          work_dir=str(root / "work"), docs_dir=str(root / "docs"), stages=list(STAGES),
                          potentials=["ani1x", "ani1x-d3"], max_atoms={"ani1x-d3": 26}, n_batches=1,
                          relax_parameters={"fmax": 0.05, "n_threads": 1}, sample_first="science",
                          lattice_parameters={"benchmarks": ["x23"], "crystals": ["co2"], "fmax": 0.05})
    out = run_campaign(plan)
    return root, plan, out


@slow
def test_every_stage_runs_and_the_report_says_what_ran(campaign):
    root, plan, out = campaign
    assert set(out["minutes"]) == {"fetch", "filter", "relax", "minima", "analysis", "lattice", "report"}
    assert coverage(plan) == {"ani1x": (3, 3), "ani1x-d3": (1, 1)}  # the subset rule: only the 24-atom cell
    markdown = (root / "docs" / "results.md").read_text()
    ran = section_table(markdown, "## What was run").set_index("potential")
    assert list(ran.state) == ["complete", "complete"] and ran.loc["ANI-1x-d3", "structures"] == "clean, ≤ 26 atoms"
    errors = pd.read_csv(root / "work" / "analysis" / "errors.csv")
    assert set(errors.status) == {"converged"} and len(errors) == 4  # every crystal of both subsets
    # the status table counts the science sample (the cod-sample/ entry), as every table of the report
    status = section_table(markdown, "### How the relaxations ended").set_index("potential")
    science = errors[errors.sample_set == "science"]
    for potential, shown in (("ani1x", "ANI-1x"), ("ani1x-d3", "ANI-1x-d3")):
        expected = int((science.potential == potential).sum())
        assert (int(status.loc[shown, "converged"]) if shown in status.index else 0) == expected, potential
    d3 = errors[errors.potential == "ani1x-d3"].iloc[0]
    plain = errors[(errors.potential == "ani1x") & (errors.structure_id == d3.structure_id)].iloc[0]
    assert d3.e_dispersion < 0 and d3.dV_pct < plain.dV_pct  # D3 binds: the cell comes out smaller
    assert (root / "docs" / "figures" / "hist_grid_volume.png").is_file()  # 3 shared structures: no ranking figure
    assert not (root / "docs" / "figures" / "ci_volume.png").exists()
    assert "3 CIF files" in markdown or "4 CIF files" in markdown


@slow
def test_the_minimum_check_stage_checks_the_converged_science_rows(campaign):
    """The minima stage (asked for: it is opt-in) kicks and relaxes again each converged crystal of the science
    sample with its row's settings; the report counts them per potential and results.json carries them."""
    from helpers.analysis.minima_section import HEADING
    from helpers.relax.minima import minima_table

    root, plan, _ = campaign
    table = minima_table(str(root / "work" / "minima" / "minima_ani1x.db"))
    assert list(table.structure_id) == ["cod-2000642"] and list(table.status) == ["converged"]
    row = next(dbmod.connect(plan.dbs["out_db"].format(potential="ani1x")).select(structure_id="cod-2000642"))
    assert table.relaxed_hash.iloc[0] == row.settings_hash
    assert list((root / "work" / "executed").glob("06_minimum_check.ani1x*.ipynb"))  # its job's log
    shown = section_table((root / "docs" / "results.md").read_text(), HEADING).set_index("potential")
    assert list(shown.index) == ["ANI-1x"] and shown.loc["ANI-1x", "checked / converged"] == "1 / 1"
    published = json.loads((root / "docs" / "results.json").read_text())["minima"]
    assert set(published) == {"ani1x"} and published["ani1x"]["checked"] == 1


@slow
def test_the_science_sample_is_relaxed_first(campaign):
    """Issue 35: every potential relaxes the unaltered COD entries first (its own pass, its own executed
    notebook), then the rest; nothing twice."""
    root, plan, _ = campaign
    executed = Path(plan.executed_dir)
    assert (executed / "03_relax.ani1x.batch0000of0001.science.ipynb").is_file()
    assert (executed / "03_relax.ani1x.batch0000of0001.ipynb").is_file()
    rows = sorted(dbmod.connect(plan.dbs["out_db"].format(potential="ani1x")).select(), key=lambda row: row.ctime)
    assert [row.structure_id for row in rows][0] == "cod-2000642"  # the cod-sample/ entry, before the cod/ ones
    assert sorted(row.structure_id for row in rows) == ["cod-1011063", "cod-2000642", "cod-2007300"]


@slow
def test_the_lattice_stage_writes_its_table_and_report_section(campaign):
    root, plan, _ = campaign
    table = pd.read_csv(root / "docs" / "lattice_energy.csv")
    assert sorted(table.potential) == ["ani1x", "ani1x-d3"] and set(table.crystal) == {"co2"}
    assert set(table.status) == {"converged"} and table.E_latt_kJmol.notna().all()
    markdown = (root / "docs" / "results.md").read_text()
    assert "## Lattice energies: X23 and ICE13" in markdown and "figures/lattice_energy.png" in markdown
    assert (root / "docs" / "figures" / "lattice_energy.png").is_file()
    assert set(json.loads((root / "docs" / "results.json").read_text())["lattice_energy"]["potentials"]) == \
        {"ani1x", "ani1x-d3"}


@slow
def test_a_rerun_relaxes_nothing_and_adds_its_time(campaign):
    root, plan, _ = campaign
    before = {p: [(r.structure_id, r.ctime) for r in dbmod.connect(plan.dbs["out_db"].format(potential=p)).select()]
              for p in plan.potentials}
    run_campaign(plan.with_changes(stages=["relax", "report"]))
    after = {p: [(r.structure_id, r.ctime) for r in dbmod.connect(plan.dbs["out_db"].format(potential=p)).select()]
             for p in plan.potentials}
    assert after == before and relaxed_counts(plan) == {"ani1x": 3, "ani1x-d3": 1}
    times = pd.read_csv(root / "work" / TIMINGS_FILE)
    assert list(times.stage).count("relax") == 2 and list(times.stage).count("report") == 2


@slow
def test_rows_made_with_other_settings_neither_count_nor_enter_the_report(campaign):
    """A row left by earlier settings (e.g. before a D3 cutoff change) is not finished work for this
    campaign, and 04 leaves it out (listed with the reason) instead of labelling two runs of one potential."""
    root, plan, _ = campaign
    merged = dbmod.connect(plan.dbs["out_db"].format(potential="ani1x-d3"))
    row = next(merged.select())
    kvp = {**row.key_value_pairs, "settings_hash": "0123456789abcdef"}
    old = merged.write(row.toatoms(), key_value_pairs=kvp, data=row.get("data", {}))
    try:
        assert relaxed_counts(plan) == {"ani1x": 3, "ani1x-d3": 1}  # still one, not two
        run_campaign(plan.with_changes(stages=["analysis"]))
        errors = pd.read_csv(root / "work" / "analysis" / "errors.csv")
        assert set(errors.potential) == {"ani1x", "ani1x-d3"} and len(errors) == 4  # no "ani1x-d3[0123456]"
        left = pd.read_csv(root / "work" / "analysis" / "left_out.csv")
        assert list(left.potential) == ["ani1x-d3"] and "0123456789abcdef" in left.reason.iloc[0]
        run_campaign(plan.with_changes(stages=["report"]))
        assert "1 made with other settings (ani1x-d3 1)" in (root / "docs" / "results.md").read_text()
    finally:
        del merged[old]


@slow
def test_the_analysis_reads_what_the_shards_hold(campaign):
    """A relax run stopped before its merge: the analysis merges first, so the report counts its rows — of
    the potential's subset only (a row of a structure outside it, e.g. from an earlier wider run, is left out)."""
    from helpers.run.campaign import settings_hashes

    root, plan, _ = campaign
    merged = plan.dbs["out_db"].format(potential="ani1x-d3")
    shard = merged.replace(".db", ".batch0000of0002.db")
    database = dbmod.connect(merged)
    own = database.get(structure_id="cod-1011063")  # 24 atoms: ani1x-d3's subset; moved into the shard
    dbmod.connect(shard).write(own.toatoms(), key_value_pairs=own.key_value_pairs, data=own.get("data", {}))
    del database[own.id]
    row = next(r for r in dbmod.connect(plan.dbs["out_db"].format(potential="ani1x")).select()
               if r.structure_id == "cod-2000642")  # 36 atoms: not in ani1x-d3's subset (≤ 26)
    kvp = {**row.key_value_pairs, "potential": "ani1x-d3", "settings_hash": settings_hashes(plan)["ani1x-d3"]}
    dbmod.connect(shard).write(row.toatoms(), key_value_pairs=kvp)
    try:
        run_campaign(plan.with_changes(stages=["analysis"]))
        errors = pd.read_csv(root / "work" / "analysis" / "errors.csv")
        assert sorted(errors[errors.potential == "ani1x-d3"].structure_id) == ["cod-1011063"]
        left = pd.read_csv(root / "work" / "analysis" / "left_out.csv")
        assert list(left.structure_id) == ["cod-2000642"] and "subset" in left.reason.iloc[0]
    finally:
        Path(shard).unlink()
        database = dbmod.connect(merged)
        database.delete([r.id for r in database.select() if r.structure_id == "cod-2000642"])


def test_settings_hashes_parameter_is_checked():
    from helpers.analysis.stage import run_analysis
    from helpers.run.campaign import settings_hashes
    from helpers.run.parameters import checked

    assert checked("04_analysis", {"settings_hashes": "0123456789abcdef,fedcba9"}) == {
        "settings_hashes": ["0123456789abcdef", "fedcba9"]}
    with pytest.raises(ValueError, match="at least 7 characters"):
        run_analysis("/nowhere/*.db", settings_hashes=["abc"])
    plan = CampaignConfig(work_dir="/w", potentials=["ani1x", "ani1ccx"], relax_parameters={"fmax": 0.05})
    hashes = settings_hashes(plan)  # what the relax jobs of this plan write: fmax and each potential's x count
    assert hashes["ani1x"] != hashes["ani1ccx"]
    assert hashes != settings_hashes(CampaignConfig(work_dir="/w", potentials=["ani1x", "ani1ccx"]))


@slow
@pytest.mark.parametrize("max_parallel", [2, 1])
def test_a_killed_campaign_stops_its_jobs_and_logs_its_time(campaign, tmp_path, max_parallel):
    """SIGTERM to `results` (a scheduler's stop, `kill`): no relax job or notebook kernel keeps running
    beside the next run, and the interrupted stage's time is logged — with a pool of jobs, and with one
    job at a time, whose notebook kernel is this process's own child."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root, plan, _ = campaign
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(plan.dbs["clean_db"], work / "clean.db")
    command = [sys.executable, "-m", "helpers.cli", "results", "--data-dir", str(root / "data"), "--work-dir",
               str(work), "--stages", "relax", "--potentials", "ani1x", "--max-parallel", str(max_parallel)]
    parent = subprocess.Popen(command, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        expected = 2 * max_parallel if max_parallel > 1 else 1  # pool workers with their kernels, or a kernel
        while time.time() < deadline and len(psutil.Process(parent.pid).children(recursive=True)) < expected:
            time.sleep(1)
        time.sleep(3)  # into the relaxation
        started = psutil.Process(parent.pid).children(recursive=True)
        assert len(started) >= expected, "the relax jobs did not start"
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if parent.poll() is None:
            parent.kill()
    times = pd.read_csv(work / TIMINGS_FILE)
    assert list(times.stage) == ["relax"] and times.minutes.iloc[0] >= 0


@slow
def test_the_report_tests_the_cif_error_explanation(campaign):
    """Issue 36 end to end: every relaxed row carries its start tells, the report has its section, and
    results.json its ``flagged`` ids per reason (none of these three clean crystals is listed)."""
    import json

    root, plan, out = campaign
    errors = pd.read_csv(root / "work" / "analysis" / "errors.csv")
    assert errors.start_fmax.notna().all() and (errors.start_fmax > 0).all()
    assert errors.start_fmax_heavy.notna().all() and errors.start_pressure.notna().all()
    markdown = (root / "docs" / "results.md").read_text()
    assert "## CIF error or potential error?" in markdown
    flagged = json.loads((root / "docs" / "results.json").read_text())["flagged"]
    assert set(flagged["reasons"]) == {"volume_consensus", "chemistry_changed", "filter_flagged", "start_extreme"}
    assert (root / "work" / "analysis" / "consensus_outliers.csv").is_file()


def test_a_sample_set_restricts_the_batches_and_a_first_pass_comes_first(small_clean_db):
    """The relax jobs' ``sample`` (real clean rows of cod/: three test inputs and ice II) and the campaign's
    passes: ``sample_first`` alone with every potential, then everything."""
    from helpers.relax.stage import batch_ids, relax_targets
    from helpers.run.config import results_config
    from helpers.run.notebooks import job_label

    clean = dbmod.connect(small_clean_db)
    every = set(batch_ids(clean, 0, 1))
    assert set(batch_ids(clean, 0, 1, sample="ice")) == {"cod-1011063"}
    assert set(batch_ids(clean, 0, 1, sample="altered")) == every - {"cod-1011063"} and len(every) == 4
    assert batch_ids(clean, 0, 1, sample="science") == []
    assert relax_targets(clean, ["ani1x"], {}, "ice") == {"ani1x": {"cod-1011063"}}
    with pytest.raises(ValueError, match="sample must be one of"):
        batch_ids(clean, 0, 1, sample="sience")
    plan = results_config("/data", work_dir="/work", potentials=["ani1x", "gfn-ff"], n_batches=2)
    first, rest = plan.passes()
    assert (first.sample, rest.sample, plan.sample_first) == ("science", None, "science")
    assert {job["sample"] for job in first.jobs()} == {"science"} and all("sample" not in job for job in rest.jobs())
    assert job_label(first.jobs()[0]) == "ani1x.batch0000of0002.science" and job_label(rest.jobs()[0]) == \
        "ani1x.batch0000of0002"
    assert len(plan.with_changes(sample="altered").passes()) == 1 == len(plan.with_changes(sample_first=None).passes())
    with pytest.raises(ValueError, match="sample_first must be one of"):
        plan.with_changes(sample_first="cod")
