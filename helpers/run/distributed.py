"""Dask clusters for a relax campaign: this machine, a running scheduler, or SLURM/PBS.

:class:`helpers.run.executor.DaskExecutor` runs each (potential x batch) job as one papermill run of
``03_relax`` on a worker of the client made here. A job that dies (worker lost, node killed) is run again
elsewhere; it resumes because ``run_batch`` skips structures already stored with the same settings
hash, so a campaign can also be restarted on a new cluster without recomputing anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.process.parallel import worker_count
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
        n = n_workers or max(1, worker_count() // threads_per_worker)
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
