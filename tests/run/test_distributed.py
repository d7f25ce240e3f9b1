"""Dask campaigns: a real scheduler + worker processes on loopback, a worker killed mid-campaign,
resume on a new cluster without recomputing, and SLURM/PBS job scripts (generated, never submitted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.run import CampaignConfig, DaskExecutor, run_campaign
from helpers.store import db as dbmod

ROOT = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
FAST = {"fmax": 0.05}  # loose tolerance: bookkeeping, not physics


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture
def dask_deployment(tmp_path):
    """``dask scheduler`` + two ``dask worker`` processes (own process groups, so a kill takes the
    worker with its papermill kernel, like a lost node)."""
    scheduler_file = tmp_path / "scheduler.json"
    common = {"env": _env(), "cwd": str(ROOT), "start_new_session": True,
              "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = {"scheduler": subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
         "--scheduler-file", str(scheduler_file)], **common)}
    for name in ("w0", "w1"):
        procs[name] = subprocess.Popen(
            [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1",
             "--name", name, "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"], **common)
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        yield {"scheduler_file": str(scheduler_file), "procs": procs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.slow
def test_campaign_survives_a_killed_worker_and_resumes_without_recompute(
        dask_deployment, small_clean_db, tmp_path, model_dir):
    from helpers.run.distributed import make_client

    out = str(tmp_path / "relaxed_{potential}.db")
    plan = CampaignConfig(work_dir=str(tmp_path), potentials=["ani1x"], n_batches=2, clean_db=small_clean_db,
                          out_db=out, relax_parameters=dict(FAST), log_dir=str(tmp_path / "logs"))
    client = make_client(dask_deployment["scheduler_file"])
    client.wait_for_workers(2, timeout=60)
    names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        run_campaign(plan, DaskExecutor(client, retries=1))))
    runner.start()
    # kill w1 (worker, nanny and its running papermill kernel) while it is running a job
    killed_task = None
    deadline = time.monotonic() + 120
    while killed_task is None and time.monotonic() < deadline and runner.is_alive():
        busy = client.processing().get(names["w1"], [])
        if busy:
            time.sleep(3)  # the kernel is up and relaxing
            busy = client.processing().get(names["w1"], [])
            if busy:
                killed_task = busy[0]
                os.killpg(dask_deployment["procs"]["w1"].pid, signal.SIGKILL)
        time.sleep(0.2)
    runner.join(240)
    assert not runner.is_alive(), "campaign did not finish after the worker was killed"
    assert killed_task is not None, "w1 never ran a job: nothing was killed"
    assert result["failed"] == []
    assert len(result["notebooks"]) == 2
    merged = dbmod.connect(out.format(potential="ani1x"))
    clean_ids = sorted(r.structure_id for r in dbmod.connect(small_clean_db).select())
    relaxed_ids = sorted(r.structure_id for r in merged.select())
    assert relaxed_ids == clean_ids  # every structure exactly once
    assert result["merged"] == {"ani1x": len(clean_ids)}

    # a new client (cluster restart) re-running the campaign recomputes nothing
    before = {r.structure_id: (r.id, r.mtime) for r in merged.select()}
    client.close()
    with make_client(dask_deployment["scheduler_file"]) as again:
        rerun = run_campaign(plan.with_changes(log_dir=str(tmp_path / "logs2")), DaskExecutor(again))
    assert rerun["failed"] == [] and rerun["merged"] == {"ani1x": len(clean_ids)}
    after = {r.structure_id: (r.id, r.mtime) for r in dbmod.connect(out.format(potential="ani1x")).select()}
    assert after == before
    import nbformat

    for path in rerun["notebooks"]:
        text = "".join(str(o.get("text", "")) for c in nbformat.read(path, 4).cells for o in c.get("outputs", []))
        assert "2 already done" in text  # each batch holds 2 of the 4 crystals


def test_local_cluster_pins_one_task_per_worker_and_torch_threads():
    from helpers.run.distributed import make_client

    client = make_client("local", n_workers=1, threads_per_worker=2)
    try:
        info = client.scheduler_info()["workers"]
        assert [w["nthreads"] for w in info.values()] == [1]  # one job at a time per worker

        def torch_threads():
            from helpers.relax.stage import configure_threads

            return configure_threads(), os.environ["OPENBLAS_NUM_THREADS"]

        assert client.submit(torch_threads, pure=False).result() == (2, "1")
        assert client.dashboard_link.startswith("http")
    finally:
        client.cluster.close()
        client.close()


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_jobqueue_job_script(kind, directive):
    """The SLURM/PBS code path up to the job script (no batch system here to submit to)."""
    from helpers.run.distributed import make_jobqueue_cluster

    cluster = make_jobqueue_cluster(kind, threads_per_worker=4, queue="short", account="chem",
                                    walltime="12:00:00", scheduler_options={"host": "127.0.0.1"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert directive in script
    assert "12:00:00" in script and "short" in script and "chem" in script
    assert "export OMP_NUM_THREADS=4" in script and "export CODANI_THREADS=4" in script
    assert "export OPENBLAS_NUM_THREADS=1" in script
    assert "--nthreads 1" in script  # one relax job per worker; torch gets the 4 cores
    assert "tcp://127.0.0.1:" in script


def test_make_client_rejects_unknown_scheduler():
    from helpers.run.distributed import make_client

    with pytest.raises(ValueError, match="unknown scheduler"):
        make_client("nonsense")


def test_every_project_variable_reaches_the_workers(monkeypatch):
    """Model-file potentials (CODANI_MODEL_DIR) and the AIMNet2 cache (CODANI_CACHE) on SLURM/PBS workers too:
    one list of the project's variables, and no variable read in helpers/ that the list misses."""
    import re
    from pathlib import Path

    from helpers.run.distributed import _worker_env
    from helpers.vocabulary import FORWARDED_ENV, JOB_ENV, RUN_ENV, THREADS_ENV

    for name in FORWARDED_ENV:
        monkeypatch.setenv(name, f"/somewhere/{name.lower()}")
    env = _worker_env(1)
    assert {name: env.get(name) for name in FORWARDED_ENV} == {n: f"/somewhere/{n.lower()}" for n in FORWARDED_ENV}
    assert {"CODANI_MODEL_DIR", "CODANI_CACHE"} <= set(env)

    helpers = Path(__file__).resolve().parents[2] / "helpers"
    source = "\n".join(p.read_text() for p in helpers.rglob("*.py"))
    read = set(re.findall(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""", source))
    named = set(re.findall(r"""^\s*[A-Z_]*_ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", source, re.M))
    from helpers.process.cores import CORE_SHARE_ENV

    # set per job (the core share: by the local executor, for the jobs of one machine), or not the project's (CXX:
    # the C++ compiler torch.compile uses, a property of each worker's machine, read as inductor reads it)
    per_job = {THREADS_ENV, RUN_ENV, CORE_SHARE_ENV, *JOB_ENV, "DISPLAY", "XDG_CACHE_HOME", "CXX"}
    assert (read | named) - per_job <= set(FORWARDED_ENV)
