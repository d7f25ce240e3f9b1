"""Where a campaign's notebook jobs run (03_relax, 05_lattice_energy: :func:`~helpers.run.notebooks.run_job`): a
pool of processes here (:class:`LocalExecutor`) or a Dask cluster (:class:`DaskExecutor`). Both only run jobs
and say how each ended; :func:`run_jobs` is the one rule every stage applies to that (a failure recorded and
printed, never stopping the others); what a finished job means (the merge of a relax shard, the progress bar)
is decided in :mod:`helpers.run.campaign`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from helpers.process.parallel import worker_count
from helpers.run.config import JOB_RETRIES
from helpers.run.notebooks import RELAX_NOTEBOOK, job_label, job_notebook, new_run_id, run_job
from helpers.store.paths import resolve

#: how one job ended: the job, its executed notebook (None when it failed), its last error (None when it ran)
Outcome = tuple[dict[str, Any], str | None, BaseException | None]
#: attempts of one job at most, however many of its structures kill the process
MAX_ATTEMPTS = 20


class Executor(Protocol):
    """Runs notebook jobs; one failed job never stops the others."""

    def threads_per_job(self, n_jobs: int) -> int:
        """Torch threads of a job that does not set ``n_threads``."""

    def run(self, jobs: Sequence[dict[str, Any]], log_dir: str | Path) -> Iterator[Outcome]:
        """Run ``jobs`` (one campaign run, :func:`~helpers.run.notebooks.new_run_id`), yielding each as it ends."""


class LocalExecutor:
    """``max_parallel`` jobs at a time (default: one per core this process may use), each in a spawned process
    (one at a time: in this process, the notebook kernel its child). A failed job is run again (it resumes) up
    to ``retries`` times, and a relax job for as long as each attempt dies on a structure: such a structure is
    recorded as ``crashed`` on its second death (helpers.relax.inflight), so every attempt moves the batch on
    (at most :data:`MAX_ATTEMPTS`). Only a job's last error is yielded."""

    def __init__(self, max_parallel: int | None = None, retries: int = JOB_RETRIES):
        self.max_parallel = max_parallel
        self.retries = retries

    def _parallel(self, n_jobs: int) -> int:
        return self.max_parallel or max(1, min(n_jobs, worker_count()))

    def threads_per_job(self, n_jobs: int) -> int:
        """The cores shared out: one crystal per core beat one crystal on all cores in the throughput benchmark."""
        return max(1, worker_count() // self._parallel(n_jobs))

    def run(self, jobs: Sequence[dict[str, Any]], log_dir: str | Path) -> Iterator[Outcome]:
        run_id = new_run_id()
        max_parallel = self._parallel(len(jobs))
        before = _child_pids()
        if max_parallel <= 1:
            try:
                yield from self._in_turn(jobs, log_dir, run_id)
            except BaseException:  # papermill shuts its kernel on Ctrl-C; a SIGTERM or a kill must not rely on it
                stop_processes_started_since(before)
                raise
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
        with ProcessPoolExecutor(max_parallel, mp_context=context) as pool:
            running = {pool.submit(run_job, job, str(log_dir), run_id): (job, 0) for job in jobs}
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job, attempt = running.pop(future)
                        error = future.exception()
                        if error is not None and self._try_again(job, attempt):
                            running[pool.submit(run_job, job, str(log_dir), run_id)] = (job, attempt + 1)
                        else:
                            yield job, None if error else str(future.result()), error
            except BaseException:  # Ctrl-C, SIGTERM (helpers.process.guard.stop_on_sigterm), or the caller stopped
                pool.shutdown(wait=False, cancel_futures=True)
                stop_processes_started_since(before)
                raise

    def _in_turn(self, jobs: Sequence[dict[str, Any]], log_dir: str | Path, run_id: str) -> Iterator[Outcome]:
        for job in jobs:
            for attempt in range(MAX_ATTEMPTS):
                try:
                    notebook = run_job(job, log_dir, run_id)
                except Exception as error:  # noqa: BLE001 - reported with its job
                    if not self._try_again(job, attempt):
                        yield job, None, error
                        break
                else:
                    yield job, str(notebook), None
                    break

    def _try_again(self, job: dict[str, Any], attempt: int) -> bool:
        """After a failed ``attempt`` (0-based): within ``retries``, or a relax job's process died on a structure
        (its in-flight mark is left), which the next attempt records or retries: progress either way."""
        if attempt + 1 >= MAX_ATTEMPTS:
            return False
        if attempt < self.retries:
            return True
        if job_notebook(job) != RELAX_NOTEBOOK:
            return False
        from helpers.relax.inflight import InFlight

        return InFlight.for_job(resolve(job["out_db"]), job["potential"], job["batch"],
                                job["n_batches"]).died_on() is not None


class DaskExecutor:
    """Jobs on a Dask cluster: ``client``, or one :func:`~helpers.run.distributed.make_client` makes for
    ``scheduler`` (and closes after the run). A job that raised is tried ``retries`` more times; a job whose
    worker died (node lost, pre-empted) is rescheduled by Dask on its own (up to
    ``distributed.scheduler.allowed-failures`` times); it resumes either way."""

    def __init__(self, client=None, scheduler: str | None = "local", n_workers: int | None = None,
                 threads_per_worker: int = 1, retries: int = JOB_RETRIES,
                 jobqueue_kwargs: dict[str, Any] | None = None):
        self.client, self.scheduler, self.n_workers = client, scheduler, n_workers
        self.threads_per_worker, self.retries, self.jobqueue_kwargs = threads_per_worker, retries, jobqueue_kwargs

    def threads_per_job(self, n_jobs: int) -> int:
        return self.threads_per_worker  # one job per worker: torch gets the worker's cores

    def run(self, jobs: Sequence[dict[str, Any]], log_dir: str | Path) -> Iterator[Outcome]:
        from dask.distributed import as_completed

        from helpers.run.distributed import make_client

        client = self.client or make_client(self.scheduler, self.n_workers, self.threads_per_worker,
                                            self.jobqueue_kwargs)
        try:
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            run_id = new_run_id()  # a job Dask runs again within this run counts its structure's deaths
            futures = {client.submit(run_job, job, str(log_dir), run_id, pure=False, retries=self.retries,
                                     key=f"{job_notebook(job)}-{job_label(job)}-{run_id}"): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                if future.status == "finished":
                    yield job, str(future.result()), None
                else:
                    yield job, None, future.exception()
        finally:
            if self.client is None:
                client.close()


def run_jobs(executor: Executor, jobs: Sequence[dict[str, Any]], log_dir: str | Path, stage: str,
             on_finished: Callable[[dict[str, Any]], None] | None = None,
             on_failed: Callable[[int], None] | None = None) -> dict[str, list]:
    """Every job of a ``stage`` on ``executor``, under the one failure rule: a job that still fails after its
    retries is recorded ``{"job", "error"}`` and printed, and never stops the others (a rerun retries it; what
    it finished stays); a finished job's executed notebook is kept and ``on_finished(job)`` called.
    ``on_failed(n)``: after each failure, with the failures so far. Returns ``{"failed", "notebooks"}``."""
    failed: list[dict[str, str]] = []
    notebooks: list[str] = []
    for job, notebook, error in executor.run(jobs, log_dir):
        if error is not None:
            failed.append({"job": job_label(job), "error": describe_error(error)})
            print(f"!!! {stage} job {failed[-1]['job']} failed (rerun to retry): {failed[-1]['error']} "
                  f"(log: {log_dir})", flush=True)
            if on_failed is not None:
                on_failed(len(failed))
        else:
            notebooks.append(notebook)
            if on_finished is not None:
                on_finished(job)
    return {"failed": failed, "notebooks": sorted(notebooks)}


def describe_error(error: BaseException) -> str:
    """A failed job's error in one line: papermill's cell error when there is one."""
    text = str(getattr(error, "evalue", "") or error) or type(error).__name__
    return f"{type(error).__name__}: {text[-400:]}"


def executor_for(config) -> Executor:
    """The executor ``config`` (a :class:`~helpers.run.config.CampaignConfig`) asks for."""
    if config.scheduler is None:
        return LocalExecutor(config.max_parallel, config.retries)
    return DaskExecutor(scheduler=config.scheduler, n_workers=config.n_workers,
                        threads_per_worker=config.threads_per_worker, retries=config.retries)


def _child_pids() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children()}


def stop_processes_started_since(before: set[int], grace: float = 10.0) -> None:
    """Terminate the processes this one started after ``before`` was taken (pool workers and the notebook
    kernels under them): an interrupted campaign must leave nothing running that writes beside the next run.
    Finished relaxations are already committed; the next run resumes from them.

    This process's own children are waited for without being reaped: their owner (the process pool's manager
    thread, multiprocessing's ``Popen``) must collect their exit status itself — had psutil reaped a pool worker,
    ``Popen.poll`` would take the missing child for one not yet started and the pool's shutdown, and with it the
    interpreter's exit, would wait for it forever (seen: a campaign stopped by SIGTERM hung after its traceback)."""
    import time

    import psutil

    started = [child for child in psutil.Process().children() if child.pid not in before]
    descendants = [p for child in started for p in child.children(recursive=True)]
    for process in (*descendants, *started):
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + grace
    _, alive = psutil.wait_procs(descendants, timeout=grace)  # not our children: nothing is reaped
    alive += [p for p in started if not _dead_by(p, deadline)]
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _dead_by(process, deadline: float) -> bool:
    """Whether our child ``process`` has exited (a zombie, or gone) before ``deadline``, without reaping it."""
    import time

    import psutil

    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
