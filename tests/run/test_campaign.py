"""One campaign runner (issue 33): the config and its YAML file, the presets, the command line's --config, and
one small campaign through both executors with the same finished crystals and the same failure record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import main
from helpers.relax.stage import batch_ids
from helpers.run import CampaignConfig, DaskExecutor, LocalExecutor, demo_config, results_config, run_campaign
from helpers.run.campaign import relaxed_ids
from helpers.run.config import DEMO_COD_IDS, OPT_IN_STAGES, RESULTS_MAX_ATOMS, STAGES
from helpers.store import db as dbmod

FAST = {"fmax": 0.05, "n_threads": 1}  # loose tolerance: bookkeeping, not physics


def test_a_config_goes_through_yaml_unchanged(tmp_path):
    config = results_config("/data", potentials=["ani1x", "gfn-ff"], max_atoms={"ani1x": 40}, n_batches=3,
                            relax_parameters={"fmax": 0.01}, scheduler="tcp://h:8786", retries=0)
    path = tmp_path / "c.yaml"
    config.to_yaml(path)
    again = CampaignConfig.from_yaml(path)
    assert again == config and again.jobs() == config.jobs()
    assert again.max_atoms == {"ani1x": 40, "gfn-ff": RESULTS_MAX_ATOMS["gfn-ff"]}
    assert again.relax_parameters == {"n_threads": 1, "fmax": 0.01}  # added to the preset's, not instead
    made = CampaignConfig(work_dir=tmp_path, stages=("fetch", "relax"), sources=(tmp_path,), cod_ids=(1, 2))
    made.to_yaml(tmp_path / "made.yaml")  # tuples and paths from Python become plain YAML lists and strings
    assert CampaignConfig.from_yaml(tmp_path / "made.yaml") == made


def test_unknown_settings_potentials_and_stages_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("potentials: [ani1x]\nn_batchs: 4\n")
    with pytest.raises(KeyError, match=r"c.yaml.*'n_batchs'.*n_batches"):
        CampaignConfig.from_yaml(path)
    with pytest.raises(KeyError, match=r"\['ani9x'\]; registered: .*ani1ccx, .*ani1x, .*gfn-ff"):
        CampaignConfig(potentials=["ani1x", "ani9x"])
    with pytest.raises(ValueError, match="unknown stages"):
        CampaignConfig(stages=["relax", "relaxx"])
    with pytest.raises(KeyError, match="not in this run"):
        CampaignConfig(potentials=["ani1x"], max_atoms={"gfn-ff": 60})
    path.write_text("potentials: [ani9x]\n")
    with pytest.raises(SystemExit):
        main(["campaign", "--config", str(path)])


def test_the_presets_are_what_the_commands_ran(tmp_path, capsys):
    demo = demo_config()
    assert demo.stages == ["fetch", "filter", "relax", "analysis"] and demo.cod_ids == list(DEMO_COD_IDS)
    assert demo.potentials == ["ani1x", "ani1ccx"] and demo.n_batches == 1 and demo.work_dir == "data"
    assert demo.dbs["clean_db"].endswith("/data/clean.db") and demo.executed_dir.endswith("/data/executed")
    assert demo.dbs["out_db"].endswith("/data/relaxed_{potential}.db")
    results = results_config("/d")
    assert results.stages == [s for s in STAGES if s not in OPT_IN_STAGES] == [s for s in STAGES if s != "minima"]
    assert results.work_dir == "data/results" and results.n_batches == 0
    assert results.analysis_dir.endswith("/data/results/analysis")
    assert main(["config", "--preset", "results"]) == 0  # the starting file a user edits
    path = tmp_path / "results.yaml"
    path.write_text(capsys.readouterr().out)
    assert CampaignConfig.from_yaml(path) == results_config()


@pytest.mark.slow
def test_the_command_line_runs_a_config_file_with_its_flags_on_top(small_clean_db, tmp_path, model_dir, capsys):
    """``campaign --config FILE --potentials ani1x --set ...``: the file's databases and batches, the flags'
    potentials and parameters."""
    path = tmp_path / "campaign.yaml"
    CampaignConfig(work_dir=str(tmp_path), potentials=["ani1x", "ani1ccx"], n_batches=2, clean_db=small_clean_db,
                   relax_parameters={"fmax": 0.05}).to_yaml(path)
    assert main(["campaign", "--config", str(path), "--potentials", "ani1x", "--set", "n_threads=1"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{\n"):])
    clean_ids = {row.structure_id for row in dbmod.connect(small_clean_db).select()}
    assert result["failed"] == [] and result["merged"] == {"ani1x": len(clean_ids)}
    file_config = CampaignConfig.from_yaml(path).with_changes(potentials=["ani1x"])
    assert relaxed_ids(file_config) == {"ani1x": clean_ids}  # made with the file's fmax (its settings hash)
    assert not (tmp_path / "relaxed_ani1ccx.db").exists()  # the flag's potentials, not the file's
    assert sorted(Path(p).name for p in result["notebooks"]) == [
        "03_relax.ani1x.batch0000of0002.ipynb", "03_relax.ani1x.batch0001of0002.ipynb"]
    assert (tmp_path / "stage_times.csv").is_file()

    # --status: where it stands, read from the databases, nothing run; then with one structure taken back
    # out of every result file and marked in flight, as a job stopped on it leaves it
    from helpers.run.status import campaign_status

    assert main(["campaign", "--config", str(path), "--potentials", "ani1x", "--status"]) == 0
    out = capsys.readouterr().out
    assert main(["campaign", "--work-dir", str(tmp_path / "none"), "--status"]) == 1  # no campaign there
    assert "nothing relaxed yet" in capsys.readouterr().err
    assert "left: ~0.0 core-hours" in out and "none left" in out
    row = campaign_status(file_config).set_index("potential").loc["ani1x"]
    assert (row["to relax"], row["finished"]) == (len(clean_ids), len(clean_ids)) and row["core-hours spent"] > 0
    first = sorted(clean_ids)[0]
    for result_file in [tmp_path / "relaxed_ani1x.db", *tmp_path.glob("relaxed_ani1x.batch*.db")]:
        with dbmod.connect(str(result_file)) as db:
            db.delete([r.id for r in db.select(structure_id=first)])
    (tmp_path / "relaxed_ani1x.batch0000of0002.inflight.json").write_text(json.dumps({"structure_id": first}))
    row = campaign_status(file_config).set_index("potential").loc["ani1x"]
    assert row["finished"] == len(clean_ids) - 1 and row["in flight"] == first
    assert row["core-hours left (est.)"] > 0 and row["estimate"] == f"mean of {len(clean_ids) - 1}"
    assert row["not converged"] == sum(r.status != "converged" for r in dbmod.connect(
        str(tmp_path / "relaxed_ani1x.db")).select())


def test_the_cost_left_is_fitted_on_the_atoms():
    """A cost that grows as n^1.5 is extrapolated exactly; few rows give their mean; none gives no number."""
    import numpy as np
    import pandas as pd

    from helpers.run.status import MIN_FIT, cost_left

    natoms = np.array([12, 20, 36, 48, 60, 84, 96, 116, 140])
    done = pd.DataFrame({"natoms": natoms, "cost": 2.0 * natoms ** 1.5})
    seconds, how = cost_left(done, np.array([24, 150]))
    assert seconds == pytest.approx(2.0 * (24 ** 1.5 + 150 ** 1.5)) and how == "fit on 9: n^1.50"
    # scattered costs: the fit, applied to the finished ones themselves, adds up to what they cost
    noisy = done.assign(cost=done["cost"] * np.where(np.arange(len(done)) % 2, 1.4, 0.6))
    assert cost_left(noisy, natoms)[0] == pytest.approx(noisy["cost"].sum())
    few = done.iloc[:MIN_FIT - 1]
    assert cost_left(few, np.array([24, 150]))[0] == pytest.approx(2 * few["cost"].mean())
    assert cost_left(done.iloc[:0], np.array([24])) == (None, "no finished relaxation yet")
    assert cost_left(done, np.array([])) == (0.0, "none left")


@pytest.mark.slow
def test_local_and_dask_executors_finish_the_same_crystals_and_report_a_failure_alike(small_clean_db, tmp_path,
                                                                                     model_dir):
    """Batch 1 of 2 is refused by the notebook's parameter check: with either executor it is recorded as
    ``{"job", "error"}`` (the same record), batch 0 still runs and its shard is merged."""
    outcomes = {}
    for name, executor in (("local", LocalExecutor(max_parallel=2, retries=0)),
                           ("dask", DaskExecutor(scheduler="local", n_workers=2, retries=0))):
        config = CampaignConfig(work_dir=str(tmp_path / name), potentials=["ani1x"], n_batches=2,
                                clean_db=small_clean_db, relax_parameters=dict(FAST))
        jobs = config.jobs()
        jobs[1]["max_atoms"] = 0  # not a size: this job fails
        config.jobs = lambda jobs=jobs: jobs
        result = run_campaign(config, executor)
        outcomes[name] = (result["failed"], relaxed_ids(config)["ani1x"], result["merged"])
        merged = {row.structure_id for row in dbmod.connect(config.dbs["out_db"].format(potential="ani1x")).select()}
        assert merged == outcomes[name][1]  # the finished job's shard went into relaxed_ani1x.db
        assert [Path(p).name for p in result["notebooks"]] == ["03_relax.ani1x.batch0000of0002.ipynb"]
    assert outcomes["local"] == outcomes["dask"]
    failed, finished, merged = outcomes["local"]
    assert [record["job"] for record in failed] == ["ani1x.batch0001of0002"]
    assert set(failed[0]) == {"job", "error"} and "max_atoms" in failed[0]["error"]
    assert finished == set(batch_ids(dbmod.connect(small_clean_db), 0, 2)) and merged == {"ani1x": len(finished)}


def test_stopping_the_jobs_leaves_each_worker_to_its_owner_to_reap():
    """A stopped campaign must exit: stop_processes_started_since kills the pool's workers without reaping them.
    Had it reaped one (psutil does, for its own children), multiprocessing's Popen would read the missing child as
    one not yet started and the pool's shutdown would wait for it forever — a campaign stopped by SIGTERM hung so."""
    import multiprocessing
    import signal
    import time

    from helpers.run.executor import _child_pids, stop_processes_started_since

    before = _child_pids()
    workers = [multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    stop_processes_started_since(before, grace=5)
    for worker in workers:
        worker.join(timeout=5)
        assert worker.exitcode == -signal.SIGTERM  # collected by its owner: not None forever
