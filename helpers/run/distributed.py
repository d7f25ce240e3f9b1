"""Run a relax campaign on a Dask cluster: this machine, a running scheduler, or SLURM/PBS.

Each (potential x batch) job is one papermill run of ``03_relax`` on a worker (see
:func:`helpers.run.notebooks.run_relax_job`). A job that dies (worker lost, node killed) is run again
elsewhere; it resumes because ``run_batch`` skips structures already stored with the same settings
hash, so a campaign can also be restarted on a new cluster without recomputing anything.
SQLite shards are merged into the potential's database as each job finishes; PostgreSQL URLs take
every job's rows directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.relax.stage import merge_shards
from helpers.run.notebooks import CampaignPlan, new_run_id, run_relax_job
from helpers.store.db import connect, is_url
from helpers.store.paths import resolve
from helpers.store.shards import job_tag, output_path
from helpers.vocabulary import FORWARDED_ENV, JOB_ENV, THREADS_ENV

JOBQUEUE_KINDS = ("slurm", "pbs")


def _worker_env(threads_per_worker: int) -> dict[str, str]:
    env = {**JOB_ENV, "OMP_NUM_THREADS": str(threads_per_worker), THREADS_ENV: str(threads_per_worker)}
    for key in FORWARDED_ENV:  # every variable that says where a job's inputs are (model files, caches, ...)
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def make_jobqueue_cluster(kind: str, threads_per_worker: int = 1, **jobqueue_kwargs: Any):
    """A dask-jobqueue ``SLURMCluster``/``PBSCluster`` (not scaled: call ``.scale(jobs=...)``).

    One batch job = one Dask worker process with ``threads_per_worker`` cores and one task slot,
    so torch gets exactly the cores the batch system gave it. ``jobqueue_kwargs`` override the
    defaults (queue, account, memory, walltime, job_extra_directives, ...) and the
    ``jobqueue.slurm``/``jobqueue.pbs`` sections of the Dask config (``~/.config/dask/jobqueue.yaml``).
    """
    import dask_jobqueue

    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}
    if kind not in classes:
        raise ValueError(f"kind must be one of {JOBQUEUE_KINDS}, got {kind!r}")
    env = _worker_env(threads_per_worker)
    prologue = [f"export {k}={v}" for k, v in env.items()]
    options: dict[str, Any] = {
        "cores": threads_per_worker, "processes": 1, "memory": f"{max(2, 2 * threads_per_worker)}GB",
        "walltime": "24:00:00", "job_script_prologue": prologue,
        "worker_extra_args": ["--nthreads", "1"],  # one job at a time; torch uses the cores
    }
    options.update(jobqueue_kwargs)
    return classes[kind](**options)


def make_client(address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
                jobqueue_kwargs: dict[str, Any] | None = None):
    """A Dask client for ``address``: None/"local", "tcp://host:port", a scheduler-file path, "slurm", "pbs".

    Local: ``n_workers`` processes (default: cores // threads_per_worker), one task each.
    SLURM/PBS: ``n_workers`` batch jobs (default 1), see :func:`make_jobqueue_cluster`.
    """
    from dask.distributed import Client, LocalCluster

    if threads_per_worker < 1:
        raise ValueError("threads_per_worker must be >= 1")
    if address in (None, "local"):
        n = n_workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               env=_worker_env(threads_per_worker), dashboard_address=":0")
        return Client(cluster)
    if address in JOBQUEUE_KINDS:
        cluster = make_jobqueue_cluster(address, threads_per_worker, **(jobqueue_kwargs or {}))
        cluster.scale(jobs=n_workers or 1)
        return Client(cluster)
    if address.endswith(".json") and Path(address).is_file():
        return Client(scheduler_file=address)
    if "://" in address or ":" in address:
        return Client(address)
    raise ValueError(f"unknown scheduler {address!r}: use local, slurm, pbs, tcp://host:port or a scheduler file")


def _job_tag(job: dict[str, Any]) -> str:
    return job_tag(job["potential"], job["batch"], job["n_batches"])


def run_campaign_dask(plan: CampaignPlan, log_dir: str | Path, client, retries: int = 2,
                      n_threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every job of ``plan`` on ``client``'s cluster; merge each job's shard as it finishes.

    ``retries``: extra attempts for a job that raised (a lost worker is rescheduled by Dask on
    its own, up to ``distributed.scheduler.allowed-failures`` times). A job that still fails is
    reported, not fatal: the others finish and are merged. ``n_threads``: torch threads per job
    (default: the workers' ``CODANI_THREADS``, i.e. ``threads_per_worker`` of :func:`make_client`).
    Returns ``{"merged": {potential: rows}, "failed": [{"job", "error"}], "notebooks": [...]}``.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    log_dir = resolve(str(log_dir))
    jobs = plan.jobs()
    if n_threads is not None:
        jobs = [{**job, "n_threads": n_threads} for job in jobs]
    print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    run_id = new_run_id()  # a job Dask runs again within this call counts its structure's deaths
    futures = {client.submit(run_relax_job, job, log_dir, run_id, key=f"03_relax-{_job_tag(job)}-{run_id}",
                             pure=False, retries=retries): job for job in jobs}
    out_db = resolve(plan.out_db)
    server = is_url(out_db)
    merged: dict[str, int] = {}
    failed: list[dict[str, Any]] = []
    notebooks: list[str] = []
    bar = tqdm(as_completed(futures), total=len(futures), desc="relax jobs", unit="job", disable=not progress)
    for future in bar:
        job = futures[future]
        if future.status != "finished":
            error = future.exception()
            failed.append({"job": _job_tag(job), "error": f"{type(error).__name__}: {error}"})
            print(f"!!! job {_job_tag(job)} failed after {retries} retries: {error}", flush=True)
        else:
            notebooks.append(str(future.result()))
            if not server and plan.n_batches > 1:  # stream this job's rows into the merged database
                shard = output_path(out_db, job["potential"], job["batch"], plan.n_batches)
                merged[job["potential"]] = merge_shards(out_db, job["potential"], shards=[shard])
        bar.set_postfix(done=len(notebooks), failed=len(failed))
    for potential in plan.potentials:
        if server:
            merged[potential] = connect(out_db.format(potential=potential)).count()
        elif plan.n_batches > 1:  # all shards, also those of earlier (resumed) runs
            merged[potential] = merge_shards(out_db, potential)
    return {"merged": merged, "failed": failed, "notebooks": sorted(notebooks)}
