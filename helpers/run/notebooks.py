"""Run the four notebooks with papermill: the demo, and campaigns of (potential x batch) jobs.

Every executed notebook is kept as the log of its run. Relax jobs write per-batch shards
that are merged into one database per potential (idempotently) at the end.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.process.cores import CORE_SHARE_ENV, machine_folder
from helpers.store.paths import project_root, resolve
from helpers.store.shards import job_tag
from helpers.vocabulary import JOB_ENV, RUN_ENV

#: small, clean CHNO COD entries (29-48 atoms per cell) that relax in seconds: the demo input
DEMO_COD_IDS = (2000642, 2007300, 4021477, 2100348)
STUDY_POTENTIALS = ("ani1x", "ani1ccx")


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


@dataclass
class CampaignPlan:
    """The (potential x batch) relax jobs of a campaign and where they write."""

    potentials: Sequence[str]
    n_batches: int
    clean_db: str
    out_db: str
    relax_parameters: dict[str, Any] = field(default_factory=dict)
    #: potential -> largest structure (atoms) it relaxes; absent: the notebook's default
    max_atoms: dict[str, int | None] = field(default_factory=dict)

    def jobs(self) -> list[dict[str, Any]]:
        return [{**self.relax_parameters, "potential": p, "batch": b, "n_batches": self.n_batches,
                 "clean_db": self.clean_db, "out_db": self.out_db,
                 **({"max_atoms": self.max_atoms[p]} if p in self.max_atoms else {})}
                for p in self.potentials for b in range(self.n_batches)]


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


def run_relax_job(parameters: dict[str, Any], log_dir: str | Path, run_id: str | None = None) -> Path:
    """One papermill run of ``03_relax`` (usable as a Dask task: plain arguments, returns a path).

    ``run_id``: the campaign run it belongs to; a structure's death in flight counts towards ``crashed`` only
    when the same run starts the job again (helpers.relax.inflight)."""
    tag = job_tag(parameters["potential"], parameters["batch"], parameters["n_batches"])
    with _runs.inside(run_id):
        return execute("03_relax", parameters, log_dir, tag=tag)


def run_jobs(jobs: Sequence[dict[str, Any]], log_dir: str | Path, max_parallel: int = 1,
             retries: int = 0) -> Iterator[tuple[dict[str, Any], BaseException | None]]:
    """Run 03_relax ``jobs`` (``max_parallel`` at a time, in spawned processes), yielding each job as it
    ends with its error (None when it succeeded): one failed job never stops the others. A failed job is
    run again (it resumes) up to ``retries`` times, and for as long as each attempt dies on a structure:
    such a structure is recorded as ``crashed`` on its second death (helpers.relax.inflight), so every
    attempt moves the batch on (at most :data:`MAX_ATTEMPTS`). Only a job's last error is yielded.
    Each call is one campaign run (:func:`new_run_id`)."""
    run_id = new_run_id()
    if max_parallel <= 1:
        before = _child_pids()
        try:
            yield from _run_jobs_in_turn(jobs, log_dir, retries, run_id)
        except BaseException:  # papermill shuts its kernel on Ctrl-C; a SIGTERM or a kill must not rely on it
            stop_processes_started_since(before)
            raise
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    before = _child_pids()
    with ProcessPoolExecutor(max_parallel, mp_context=context) as pool:
        running = {pool.submit(run_relax_job, job, str(log_dir), run_id): (job, 0) for job in jobs}
        try:
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, attempt = running.pop(future)
                    error = future.exception()
                    if error is not None and _try_again(job, attempt, retries):
                        running[pool.submit(run_relax_job, job, str(log_dir), run_id)] = (job, attempt + 1)
                    else:
                        yield job, error
        except BaseException:  # Ctrl-C, SIGTERM (see helpers.process.guard.stop_on_sigterm), or the caller stopped
            pool.shutdown(wait=False, cancel_futures=True)
            stop_processes_started_since(before)
            raise


def _run_jobs_in_turn(jobs: Sequence[dict[str, Any]], log_dir: str | Path, retries: int,
                      run_id: str) -> Iterator[tuple[dict[str, Any], BaseException | None]]:
    """:func:`run_jobs` one job at a time, in this process (the notebook kernel is its child)."""
    for job in jobs:
        for attempt in range(MAX_ATTEMPTS):
            try:
                run_relax_job(job, log_dir, run_id)
            except Exception as error:  # noqa: BLE001 - reported with its job
                if not _try_again(job, attempt, retries):
                    yield job, error
                    break
            else:
                yield job, None
                break


#: attempts of one job at most, however many of its structures kill the process
MAX_ATTEMPTS = 20
#: extra attempts for a failed job by default (``campaign --retries``, the results campaign)
JOB_RETRIES = 2


def _try_again(job: dict[str, Any], attempt: int, retries: int) -> bool:
    """After a failed ``attempt`` (0-based): within ``retries``, or the process died on a structure (its
    in-flight mark is left), which the next attempt records or retries: progress either way."""
    if attempt + 1 >= MAX_ATTEMPTS:
        return False
    if attempt < retries:
        return True
    from helpers.relax.inflight import InFlight

    return InFlight.for_job(resolve(job["out_db"]), job["potential"], job["batch"], job["n_batches"]).died_on() \
        is not None


def _child_pids() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children()}


def stop_processes_started_since(before: set[int], grace: float = 10.0) -> None:
    """Terminate the processes this one started after ``before`` was taken (pool workers and the notebook
    kernels under them): an interrupted campaign must leave nothing running that writes beside the next run.
    Finished relaxations are already committed; the next run resumes from them."""
    import psutil

    started = [child for child in psutil.Process().children() if child.pid not in before]
    tree = [p for child in started for p in (*child.children(recursive=True), child)]
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def describe_failure(job: dict[str, Any], error: BaseException, log_dir: str | Path) -> str:
    """One line naming a failed job, its error (papermill's cell error when there is one) and its log."""
    text = str(getattr(error, "evalue", "") or error) or type(error).__name__
    return f"{job['potential']} batch {job['batch']}: {type(error).__name__}: {text[-400:]} (log: {log_dir})"


def run_campaign(plan: CampaignPlan, log_dir: str | Path, max_parallel: int | None = None,
                 retries: int = JOB_RETRIES) -> dict[str, int]:
    """Run every job of ``plan`` (``max_parallel`` at a time), then merge shards per potential.

    Default: one job per core, each with ``cores // jobs`` torch threads (unless the plan sets
    ``n_threads``). One crystal per core beat one crystal on all cores in the throughput benchmark.
    A failed job does not stop the others and is run again up to ``retries`` times (it resumes); finished
    work is merged, then the failures are raised together (a rerun retries only what is missing).
    """
    from tqdm.auto import tqdm

    from helpers.relax.stage import merge_shards

    jobs = plan.jobs()
    cores = os.cpu_count() or 1
    if max_parallel is None:
        max_parallel = max(1, min(len(jobs), cores))
    for job in jobs:
        if job.get("n_threads") is None:
            job["n_threads"] = max(1, cores // max_parallel)
    failed = [describe_failure(job, error, log_dir)
              for job, error in tqdm(run_jobs(jobs, log_dir, max_parallel, retries), total=len(jobs), desc="relax jobs")
              if error is not None]
    merged = {}
    for potential in plan.potentials:
        merged[potential] = merge_shards(resolve(plan.out_db), potential) if plan.n_batches > 1 else -1
    if failed:
        raise RuntimeError("relax jobs failed (finished work is kept; rerun to retry):\n" + "\n".join(failed))
    return merged


def run_pipeline(run_dir: str = "data", cod_ids: Sequence[int] | None = DEMO_COD_IDS,
                 source: str | None = None, potentials: Sequence[str] = STUDY_POTENTIALS,
                 n_batches: int = 1, relax_parameters: dict[str, Any] | None = None,
                 limit: int | None = None) -> dict[str, Any]:
    """Fetch -> filter -> relax (each potential) -> analysis, all through the notebooks."""
    run = Path(resolve(run_dir))
    logs = run / "executed"
    dbs = {"raw_db": str(run / "raw.db"), "clean_db": str(run / "clean.db"),
           "rejects_db": str(run / "rejects.db")}
    out_db = str(run / "relaxed_{potential}.db")
    execute("01_fetch", {"source": source, "raw_db": dbs["raw_db"],
                         "cod_ids": list(cod_ids) if cod_ids else None, "limit": limit}, logs)
    execute("02_filter", {k: dbs[k] for k in ("raw_db", "clean_db", "rejects_db")}, logs)
    plan = CampaignPlan(potentials, n_batches, dbs["clean_db"], out_db, relax_parameters or {})
    run_campaign(plan, logs)
    relaxed = [out_db.format(potential=p) for p in potentials]
    execute("04_analysis", {"relaxed_dbs": relaxed, "clean_db": dbs["clean_db"],
                            "out_dir": str(run / "analysis")}, logs)
    return {"run_dir": str(run), "executed": str(logs), "analysis": str(run / "analysis"), **dbs}
