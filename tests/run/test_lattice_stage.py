"""The ``lattice`` stage on the executor the campaign's config chose (a local pool, Dask), under the campaign's
one failure rule: a potential whose notebook fails is reported, the others' tables are still written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.run import CampaignConfig, LocalExecutor, run_campaign

#: one X23 crystal at a loose fmax: the stage's bookkeeping, not its physics (tests/run/test_results.py too)
TRIAL = {"benchmarks": ["x23"], "crystals": ["co2"], "fmax": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [None, "local"], ids=["local-pool", "dask"])
def test_the_lattice_stage_runs_on_the_configs_executor_and_reports_a_failed_potential(scheduler, tmp_path,
                                                                                        model_dir, capsys):
    """ANI-1ccx's lattice database is not a database (a broken file left on disk): its notebook fails, is
    reported once (no retries here) with its error, and ANI-1x's table still makes docs/lattice_energy.csv, beside
    GFN-FF's from an earlier run (a run of some potentials never drops the others). Run without the report stage,
    the existing report's lattice section is rewritten from the new table and the rest of the report is kept."""
    work, docs = tmp_path / "work", tmp_path / "docs"
    broken = work / "lattice" / "lattice_ani1ccx.db"
    broken.parent.mkdir(parents=True)
    broken.write_text("not a database\n")
    earlier = {"benchmark": "x23", "crystal": "co2", "potential": "gfn-ff", "geometry": "relaxed",
               "status": "converged", "E_latt_kJmol": 20.0, "ref_kJmol": 29.4, "error_kJmol": -9.4}
    pd.DataFrame([earlier]).to_csv(work / "lattice" / "lattice_gfn-ff.csv", index=False)
    docs.mkdir()
    (docs / "results.md").write_text("# Results\n\n## Verdict\n\nkept\n\n## Lattice energies: X23 and ICE13\n\n"
                                     "old\n\n## Glossary\n\nkept too\n")
    config = CampaignConfig(work_dir=str(work), docs_dir=str(docs), stages=["lattice"],
                            potentials=["ani1x", "ani1ccx"], lattice_parameters=dict(TRIAL), retries=0,
                            scheduler=scheduler, n_workers=1)
    result = run_campaign(config)
    assert [failure["job"] for failure in result["lattice_failed"]] == ["ani1ccx"]
    assert "not a database" in result["lattice_failed"][0]["error"]
    assert "!!! lattice job ani1ccx failed (rerun to retry)" in capsys.readouterr().out
    assert result["failed"] == [] and set(result["minutes"]) == {"lattice"}
    table = pd.read_csv(docs / "lattice_energy.csv")
    assert table[["potential", "benchmark", "crystal", "status"]].values.tolist() == \
        [["ani1x", "x23", "co2", "converged"], ["gfn-ff", "x23", "co2", "converged"]]
    row = table.iloc[0]
    report = (docs / "results.md").read_text()
    assert report.startswith("# Results\n\n## Verdict\n\nkept\n\n## Lattice energies: X23 and ICE13\n")
    assert report.endswith("## Glossary\n\nkept too\n") and "\nold\n" not in report
    assert "| ANI-1x " in report and "| GFN-FF " in report and "ANI-1ccx" in report  # ANI-1ccx: not yet run
    assert np.isfinite(row.E_latt_kJmol) and row.error_kJmol == pytest.approx(row.E_latt_kJmol - row.ref_kJmol)
    assert (work / "executed" / "05_lattice_energy.ani1x.ipynb").is_file()  # the job's log, named as before
    assert broken.read_text() == "not a database\n"  # a failed potential's file is left as it was


def test_the_local_pool_counts_the_cores_this_process_may_use(monkeypatch):
    """taskset/SLURM cpusets: two cores of a larger machine mean two jobs at once, or one job on both."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
    pool = LocalExecutor()
    assert pool._parallel(8) == 2 and pool.threads_per_job(8) == 1
    assert pool._parallel(1) == 1 and pool.threads_per_job(1) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert pool._parallel(8) == 1 and pool.threads_per_job(8) == 1
    assert LocalExecutor(max_parallel=3).threads_per_job(8) == 1  # asked for more jobs than cores: one thread each


def test_batches_and_torch_threads_default_to_the_cores_this_process_may_use(monkeypatch, tmp_path):
    """The same count for a campaign's default batches and a job's default torch threads (a cpuset of 2 of 64)."""
    import torch

    from helpers.relax.stage import THREADS_ENV, configure_threads

    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
    assert CampaignConfig(work_dir=str(tmp_path), potentials=["ani1x"], n_batches=0).batches() == 2  # 0: one per core
    try:
        assert configure_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_job_names_its_notebook_and_a_relax_job_is_named_as_before(tmp_path):
    from helpers.run.lattice import lattice_jobs
    from helpers.run.notebooks import job_label, job_notebook

    relax = CampaignConfig(work_dir=str(tmp_path), potentials=["ani1x"], n_batches=2).jobs()[1]
    assert (job_notebook(relax), job_label(relax)) == ("03_relax", "ani1x.batch0001of0002")
    lattice = lattice_jobs(["ani1x"], tmp_path)[0]
    assert (job_notebook(lattice), job_label(lattice)) == ("05_lattice_energy", "ani1x")
    assert Path(lattice["out_db"]).parent == tmp_path / "lattice"
