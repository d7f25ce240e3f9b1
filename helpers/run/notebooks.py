"""Run one notebook with papermill; every executed notebook is kept as the log of its run.

:func:`run_job` is one job of a campaign: a notebook's parameters, with the notebook it runs under
:data:`NOTEBOOK_KEY` (03_relax when absent). :mod:`helpers.run.campaign` decides which jobs run,
:mod:`helpers.run.executor` where.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers.process.cores import CORE_SHARE_ENV, machine_folder
from helpers.store.paths import project_root, resolve
from helpers.store.shards import job_tag
from helpers.vocabulary import JOB_ENV, RUN_ENV


def notebook_path(name: str) -> Path:
    return project_root() / "notebooks" / f"{name}.ipynb"


def execute(name: str, parameters: dict[str, Any], log_dir: str | Path, tag: str = "",
            progress: bool = False) -> Path:
    """Execute notebook ``name`` with ``parameters``; the executed copy goes to ``log_dir``."""
    import papermill

    out = Path(resolve(log_dir)) / f"{name}{'.' + tag if tag else ''}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    for key, value in JOB_ENV.items():
        os.environ.setdefault(key, value)
    # the jobs of this machine share its cores: a job's idle core goes to those still running
    os.environ.setdefault(CORE_SHARE_ENV, str(machine_folder()))
    papermill.execute_notebook(str(notebook_path(name)), str(out), parameters=parameters,
                               cwd=str(project_root()), progress_bar=progress, kernel_name="python3")
    return out


def new_run_id() -> str:
    """A fresh id for one campaign run (:data:`~helpers.vocabulary.RUN_ENV`)."""
    return uuid.uuid4().hex[:8]


class _RunEnvironment:
    """Campaign run ids in the environment a kernel inherits, which is the whole process's.

    On a Dask worker with several threads the jobs of one run overlap, so the variable is put back only
    when the last of them leaves: a job that ends must not take it from one whose kernel is still starting.
    Two runs at once in one process (two campaigns on one worker) share the one variable: it names the run
    entered last of those still inside.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside: Counter[str] = Counter()  # run id -> jobs of this process inside it now
        self._before: str | None = None  # the variable before the first of them

    @contextmanager
    def inside(self, run_id: str | None) -> Iterator[None]:
        """The kernels started inside belong to campaign run ``run_id`` (None: no run, as by hand)."""
        if run_id is None:
            yield
            return
        with self._lock:
            if not self._inside:
                self._before = os.environ.get(RUN_ENV)
            self._inside[run_id] += 1
            os.environ[RUN_ENV] = run_id
        try:
            yield
        finally:
            with self._lock:
                self._inside[run_id] -= 1
                if not self._inside[run_id]:
                    del self._inside[run_id]
                if self._inside:
                    os.environ[RUN_ENV] = next(reversed(self._inside))
                elif self._before is None:
                    os.environ.pop(RUN_ENV, None)
                else:
                    os.environ[RUN_ENV] = self._before


_runs = _RunEnvironment()


#: the key of a job that names its notebook (not a parameter of it); a job without it is a 03_relax job
NOTEBOOK_KEY = "notebook"
RELAX_NOTEBOOK = "03_relax"


def job_notebook(job: dict[str, Any]) -> str:
    """The notebook ``job`` runs."""
    return job.get(NOTEBOOK_KEY, RELAX_NOTEBOOK)


def job_label(job: dict[str, Any]) -> str:
    """A job's name within its notebook's jobs (its executed notebook's suffix, its failure record): the
    potential and batch of a 03_relax job (and its sample set, in a pass restricted to one), the potential of
    any other."""
    if job_notebook(job) == RELAX_NOTEBOOK:
        tag = job_tag(job["potential"], job["batch"], job["n_batches"])
        return f"{tag}.{job['sample']}" if job.get("sample") else tag
    if job.get("n_batches", 1) > 1:  # a split job of another notebook (06_minimum_check)
        return job_tag(job["potential"], job["batch"], job["n_batches"])
    return job["potential"]


def run_job(job: dict[str, Any], log_dir: str | Path, run_id: str | None = None) -> Path:
    """One papermill run of ``job``'s notebook (usable as a Dask task: plain arguments, returns a path).

    ``run_id``: the campaign run it belongs to; a structure's death in flight counts towards ``crashed`` only
    when the same run starts the job again (helpers.relax.inflight)."""
    parameters = {key: value for key, value in job.items() if key != NOTEBOOK_KEY}
    with _runs.inside(run_id):
        return execute(job_notebook(job), parameters, log_dir, tag=job_label(job))
