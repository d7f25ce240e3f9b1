"""The ``minima`` stage of a campaign: ``06_minimum_check`` on each potential's relaxed database.

Opt-in (``--stages minima``; not among ``make results``' default stages): the rattle test relaxes every
converged crystal of the campaign's settings once more, so it costs a fraction of the relax stage again. Run it
on the potentials a verdict rests on; the report's minimum-check section shows every potential checked in the
work folder (``minima/``) and names those that were not. Each potential's check is split into batches that
share the executor's cores; every result is written as it ends and a rerun skips what is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.relax.minima import minima_path
from helpers.run.executor import Executor, run_jobs
from helpers.run.notebooks import NOTEBOOK_KEY
from helpers.store.paths import work_layout

MINIMA_NOTEBOOK = "06_minimum_check"


def minima_folder(work_dir: str | Path) -> str:
    """Where a campaign keeps its minimum checks (one database per potential)."""
    return work_layout(work_dir)["minima"]


def minima_jobs(relaxed_dbs: dict[str, str], work_dir: str | Path, settings_hashes: dict[str, str],
                sample: str | None, n_batches: int = 1) -> list[dict[str, Any]]:
    """The 06_minimum_check jobs: ``n_batches`` per potential of ``relaxed_dbs`` (potential -> its database),
    each on the rows of that potential's settings hash (of ``sample`` when given), one torch thread each."""
    folder = minima_folder(work_dir)
    return [{NOTEBOOK_KEY: MINIMA_NOTEBOOK, "potential": p, "relaxed_db": db, "minima_db": minima_path(folder, p),
             "settings_hash": settings_hashes.get(p), "sample": sample, "batch": b, "n_batches": n_batches,
             "n_threads": 1}
            for p, db in relaxed_dbs.items() for b in range(n_batches)]


def run_minima_stage(config, executor: Executor, settings_hashes: dict[str, str]) -> dict[str, Any]:
    """Every potential of ``config`` with a relaxed database, checked on ``executor`` (as many batches per
    potential as leave no core idle), each on its rows of ``settings_hashes`` (potential -> the campaign's hash);
    a failed job is reported and the others go on. Returns ``{"failed", "notebooks"}``."""
    from helpers.process.parallel import worker_count
    from helpers.store.db import is_url

    out_db = config.dbs["out_db"]
    relaxed = {p: out_db.format(potential=p) for p in config.potentials
               if is_url(out_db) or Path(out_db.format(potential=p)).is_file()}
    if not relaxed:
        return {"failed": [], "notebooks": []}
    Path(minima_folder(config.work_path)).mkdir(parents=True, exist_ok=True)
    n_batches = max(1, worker_count() // len(relaxed))
    sample = config.sample or config.sample_first
    jobs = minima_jobs(relaxed, config.work_path, settings_hashes, sample, n_batches)
    return run_jobs(executor, jobs, config.executed_dir, "minima")
