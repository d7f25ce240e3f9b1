"""Run a campaign (:class:`~helpers.run.config.CampaignConfig`): its stages, in order, through the notebooks.

fetch -> filter -> relax (every (potential x batch) 03_relax job) -> minima (opt-in: the rattle test,
06_minimum_check) -> analysis -> lattice -> report. Every
stage is resumable: a rerun after an interruption skips what is done (the fetch and filter are idempotent,
each relaxation is committed as it ends and recognised by its settings hash). One run at a time per work dir
(:mod:`helpers.run.lock`); each stage's wall time is appended to :data:`TIMINGS_FILE`.

The relax and lattice stages run their notebook jobs on one executor (:mod:`helpers.run.executor`, the one
``config`` names: a local pool or Dask) under one failure rule (:func:`~helpers.run.executor.run_jobs`): a job
that still fails after its retries is recorded ``{"job", "error"}`` and printed, and never stops the others (a
rerun retries it). A finished relax job's shard is merged into ``relaxed_<potential>.db`` at once and every
shard of each potential at the end (a database server takes every job's rows directly: nothing to merge); one
progress bar counts the finished crystals over every potential (ETA for the whole campaign).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.run.config import CampaignConfig
from helpers.run.executor import Executor, executor_for, run_jobs
from helpers.run.notebooks import execute

#: one line per stage run of a campaign (appended, so resumed runs add up): the campaign's wall time
TIMINGS_FILE = "stage_times.csv"


def run_campaign(config: CampaignConfig, executor: Executor | None = None) -> dict[str, Any]:
    """Run ``config``'s stages (relax and lattice jobs on ``executor``, default the one ``config`` names);
    returns where everything went, the rows per potential after the merge, the relax jobs that failed, the
    executed relax notebooks, the lattice jobs that failed and each stage's minutes. Another run holding the
    work dir is a :class:`~helpers.run.lock.WorkDirBusy` naming it, or, with ``config.wait``, waited for."""
    from helpers.run.lock import WorkDirLock

    work_dir = config.work_path
    executor = executor or executor_for(config)
    relaxed: dict[str, Any] = {"merged": {}, "failed": [], "notebooks": []}
    lattice_failed: list[dict[str, str]] = []
    timings: dict[str, float] = {}
    with WorkDirLock(work_dir, wait=config.wait):
        for stage in config.stages:
            started = time.perf_counter()
            print(f"== {stage}", flush=True)
            try:
                if stage == "relax":
                    relaxed = relax(config, executor)
                elif stage == "minima":  # the rattle test on converged crystals (helpers.run.minima)
                    from helpers.run.minima import run_minima_stage

                    run_minima_stage(config, executor, settings_hashes(config))
                elif stage == "lattice":  # X23 + ICE13 lattice energies per potential -> docs/lattice_energy.csv
                    lattice_failed = lattice(config, executor)["failed"]
                else:
                    _run_stage(stage, config)
            finally:  # an interrupted stage's time counts too: its finished relaxations are kept
                timings[stage] = time.perf_counter() - started
                log_stage_time(work_dir, stage, config.potentials, timings[stage])
                print(f"   {stage}: {timings[stage] / 60:.1f} min", flush=True)
    return {"work_dir": work_dir, **config.dbs, "executed": config.executed_dir, "analysis": config.analysis_dir,
            "docs": str(_docs_dir(config)), **relaxed, "lattice_failed": lattice_failed,
            "minutes": {k: round(v / 60, 1) for k, v in timings.items()}}


# -- the relax stage ----------------------------------------------------------------------------------------
def relax(config: CampaignConfig, executor: Executor) -> dict[str, Any]:
    """Every relax job of ``config`` on ``executor``, under the module's one failure, merge and progress rule."""
    done: dict[str, Any] = {}
    with CrystalProgress(config) as progress:
        for one_pass in config.passes():  # the sample to relax first with every potential, then everything
            jobs = one_pass.jobs()
            threads = executor.threads_per_job(len(jobs))
            jobs = [{"n_threads": threads, **job} if job.get("n_threads") is None else job for job in jobs]
            outcome = run_jobs(executor, jobs, config.executed_dir, "relax",
                               on_finished=lambda job: merge_job(config, job),
                               on_failed=lambda n, before=progress.failed: setattr(progress, "failed", before + n))
            done = {k: done.get(k, []) + v if isinstance(v, list) else v for k, v in outcome.items()}
    return {"merged": merge_all(config), **done}


def lattice(config: CampaignConfig, executor: Executor) -> dict[str, Any]:
    """The lattice stage's jobs on ``executor``, under the same failure rule (:mod:`helpers.run.lattice`). Run
    without the report stage, it refreshes the existing report's lattice-energy section from the new table."""
    from helpers.lattice.report import refresh_report_section
    from helpers.relax.potentials.registry import REGISTRY
    from helpers.run.lattice import run_lattice_stage
    from helpers.vocabulary import REPORT_NAME

    docs = _docs_dir(config)
    done = run_lattice_stage(list(config.potentials), config.work_path, config.executed_dir, docs, executor,
                             config.lattice_parameters)
    if "report" not in config.stages and (docs / REPORT_NAME).is_file():
        print(f"   lattice-energy section of {refresh_report_section(docs, expected=list(REGISTRY))} refreshed",
              flush=True)
    return done


def merge_job(config: CampaignConfig, job: dict[str, Any]) -> None:
    """A finished job's shard into its potential's database (SQLite, split campaigns only)."""
    from helpers.relax.stage import merge_shards
    from helpers.store.db import is_url
    from helpers.store.shards import output_path

    out_db = config.dbs["out_db"]
    shard = output_path(out_db, job["potential"], job["batch"], job["n_batches"])
    if not is_url(shard) and shard != out_db.format(potential=job["potential"]):
        merge_shards(out_db, job["potential"], shards=[shard])


def merge_all(config: CampaignConfig) -> dict[str, int]:
    """Every shard of each potential merged (also those of earlier, resumed runs); rows per potential."""
    from helpers.relax.stage import merge_shards
    from helpers.store.db import connect, is_url

    out_db = config.dbs["out_db"]
    return {p: connect(out_db.format(potential=p)).count() if is_url(out_db) else merge_shards(out_db, p)
            for p in config.potentials}


class CrystalProgress:
    """``with CrystalProgress(config):`` one bar over every (potential, structure) the campaign is to relax,
    moved by a poll of the finished ids (in the databases and their shards) every ``poll_seconds``: what
    every executor shows, whatever runs the jobs and however long a job is."""

    def __init__(self, config: CampaignConfig, poll_seconds: float = 20.0):
        self.config, self.poll_seconds, self.failed = config, poll_seconds, 0
        self._stop = threading.Event()

    def __enter__(self) -> CrystalProgress:
        from tqdm.auto import tqdm

        self.wanted = target_ids(self.config)
        potentials = self.config.potentials
        which = ", ".join(potentials) if len(potentials) <= 2 else f"{len(potentials)} potentials"
        self.bar = tqdm(total=sum(map(len, self.wanted.values())), desc=f"relax ({which})", unit="crystal",
                        smoothing=0.05)
        self.refresh()
        self._watcher = threading.Thread(target=self._poll, daemon=True)
        self._watcher.start()
        return self

    def refresh(self) -> None:
        counts = {p: len(ids & self.wanted[p]) for p, ids in relaxed_ids(self.config).items()}  # one read each
        self.bar.update(max(0, sum(counts.values()) - self.bar.n))
        self.bar.set_postfix_str(", ".join(f"{p} {n}/{len(self.wanted[p])}" for p, n in counts.items())
                                 + (f", {self.failed} jobs failed" if self.failed else ""))

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._watcher.join()
        self.refresh()  # the bar ends on the final counts, not the last poll's
        self.bar.close()


# -- what the campaign is to relax and has relaxed ----------------------------------------------------------
def target_ids(config: CampaignConfig) -> dict[str, set[str]]:
    """The structure ids each potential is to relax (clean, within its ``max_atoms``)."""
    from helpers.relax.stage import relax_targets
    from helpers.store import db as dbmod

    return relax_targets(dbmod.connect(config.dbs["clean_db"], must_exist=True), config.potentials, config.max_atoms,
                         config.sample)


def settings_hashes(config: CampaignConfig) -> dict[str, str]:
    """Per potential: the settings hash its relax jobs write (what marks a row as this campaign's)."""
    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.stage import job_settings

    options = config.relax_parameters.get("calculator_options")
    return {p: job_settings(p, config.relax_parameters).hash(get_potential(p).answer_options(options))
            for p in config.potentials}


def relaxed_ids(config: CampaignConfig) -> dict[str, set[str]]:
    """The structures each potential has finished with this campaign's settings (in its database or its
    per-batch shards): the relax jobs' own rule, so rows made under other settings do not count."""
    from helpers.relax.stage import finished_ids
    from helpers.store import db as dbmod

    hashes = settings_hashes(config)
    found = {}
    for p in config.potentials:
        ids: set[str] = set()
        for path in result_paths(config, p):
            try:
                ids |= finished_ids(dbmod.connect(path, must_exist=True), hashes[p])
            except Exception:  # noqa: BLE001 - a shard being written: counted next time
                pass
        found[p] = ids
    return found


def result_paths(config: CampaignConfig, potential: str) -> list:
    """Every database holding ``potential``'s results: its SQLite database and shards, or its server URL."""
    from helpers.store import db as dbmod
    from helpers.store.shards import result_files

    out_db = config.dbs["out_db"]
    return result_files(out_db, potential) or ([out_db.format(potential=potential)] if dbmod.is_url(out_db) else [])


def relaxed_counts(config: CampaignConfig) -> dict[str, int]:
    return {p: len(ids) for p, ids in relaxed_ids(config).items()}


def coverage(config: CampaignConfig) -> dict[str, tuple[int, int]]:
    """Per potential: (structures it is to relax, those of them it has finished) — what the report says did
    not finish. Rows of structures outside the targets (an earlier, wider run) do not count."""
    targets, done = target_ids(config), relaxed_ids(config)
    return {p: (len(targets[p]), len(done[p] & targets[p])) for p in config.potentials}


# -- the other stages ---------------------------------------------------------------------------------------
def _docs_dir(config: CampaignConfig) -> Path:
    from helpers.store.paths import resolve

    return Path(resolve(config.docs_dir))


def _run_stage(stage: str, config: CampaignConfig) -> None:
    dbs, logs, analysis_dir = config.dbs, config.executed_dir, Path(config.analysis_dir)
    if stage == "fetch":
        sources = list(config.sources)  # one source as itself: a URL is one, never a list of folders
        execute("01_fetch", {"source": sources[0] if len(sources) == 1 else sources or None, "raw_db": dbs["raw_db"],
                             **({"cod_ids": list(config.cod_ids)} if config.cod_ids else {}),
                             **({"limit": config.limit} if config.limit is not None else {})}, logs, progress=True)
    elif stage == "filter":
        execute("02_filter", {k: dbs[k] for k in ("raw_db", "clean_db", "rejects_db")}, logs, progress=True)
    elif stage == "analysis":
        from helpers.analysis.stage import land_analysis
        from helpers.store.db import is_url

        merge_all(config)  # what jobs still running (or stopped) committed to their shards counts too
        relaxed = [dbs["out_db"].format(potential=p) for p in config.potentials
                   if is_url(dbs["out_db"]) or Path(dbs["out_db"].format(potential=p)).is_file()]
        # written apart and moved in whole when it finished: a stopped analysis never feeds the report
        partial = analysis_dir.with_name(f"{analysis_dir.name}.partial")
        if partial.is_dir():
            shutil.rmtree(partial)  # our own scratch folder, left by a stopped analysis
        execute("04_analysis", {"relaxed_dbs": relaxed, "clean_db": dbs["clean_db"], "out_dir": str(partial),
                                "settings_hashes": list(settings_hashes(config).values()),
                                "max_atoms": {p: n for p, n in config.max_atoms.items() if n is not None}},
                logs, progress=True)
        land_analysis(partial, analysis_dir)
    elif stage == "report":
        from helpers.analysis.report import dataset_info, write_report

        info = dataset_info(config.work_path, config.sources)
        info["coverage"] = coverage(config)
        info["stage_minutes"] = stage_minutes(config.work_path)
        write_report(analysis_dir, config, _docs_dir(config), extra=info)


def log_stage_time(work_dir: str | Path, stage: str, potentials: Sequence[str], seconds: float) -> None:
    """Append one stage's wall time to the campaign's :data:`TIMINGS_FILE`."""
    path = Path(work_dir) / TIMINGS_FILE
    new = not path.is_file()
    with path.open("a", encoding="utf-8") as out:
        if new:
            out.write("finished_utc,stage,potentials,minutes\n")
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())},{stage},{' '.join(potentials)},"
                  f"{seconds / 60:.2f}\n")


def stage_minutes(work_dir: str | Path) -> dict[str, float]:
    """Total wall minutes per stage over every run of this campaign (from :data:`TIMINGS_FILE`)."""
    import pandas as pd

    path = Path(work_dir) / TIMINGS_FILE
    if not path.is_file():
        return {}
    return pd.read_csv(path).groupby("stage", sort=False)["minutes"].sum().round(1).to_dict()
