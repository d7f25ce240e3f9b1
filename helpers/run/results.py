"""``make results``: the study's whole pipeline on the real sample, every potential, one report.

Fetch (the folders of real COD CIFs) -> filter -> relax with every registered potential (each on the
structures its cost allows here) -> analysis -> ``docs/results.md``. Every stage is resumable: a rerun
after an interruption skips what is done (the fetch and filter are idempotent, each relaxation is
committed as it ends and recognised by its settings hash) and only recomputes the analysis and report.
Each stage shows a progress bar; the relaxations show one bar over every (potential, structure) with
an ETA for the whole campaign.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.run.notebooks import JOB_RETRIES, CampaignPlan, describe_failure, execute, run_jobs
from helpers.store.paths import resolve

#: folders of ../shared/data the results are computed on (real COD entries; cod/ has broken ones too)
RESULT_FOLDERS = ("cod", "cod-sample")
#: the largest crystal (atoms it evaluates: a Γ-point code's supercell) a potential relaxes in the results
#: campaign on a 2-core machine: what keeps each slow potential near half a core-hour at the study's fmax.
#: Measured here, cost per crystal of 7-20 atoms (mean over the same 8 crystals): SevenNet-0 + D3 57 s,
#: CHGNet + D3 24 s, AIMNet2 5 s, GFN-FF 4 s. The sample has 17 clean crystals of ≤ 24 atoms, 32 of ≤ 32,
#: 91 of ≤ 60. GFN1-/GFN2-xTB evaluate every crystal on its ≥ 8 Å supercell (78-96 atoms for the 8 cheapest;
#: helpers.relax.potentials.supercell): GFN1-xTB 1-2 s per call there (8 crystals of ≤ 100), GFN2-xTB ~12 s
#: idle, ~1 core-hour per relaxation (the 3 of ≤ 84). Unlisted potentials (ANI and ANI + D3) relax every
#: clean structure. Override per run: ``--max-atoms name=N``.
RESULTS_MAX_ATOMS: dict[str, int] = {"gfn2-xtb": 84, "sevennet0-d3": 24, "gfn1-xtb": 100, "chgnet-d3": 32,
                                     "aimnet2": 60, "gfn-ff": 60}


@dataclass
class ResultsPlan:
    """What one results campaign runs and where it writes."""

    sources: Sequence[str]
    work_dir: str
    potentials: Sequence[str]
    #: potential -> largest structure (atoms) it relaxes here; absent or None: every structure
    max_atoms: dict[str, int | None] = field(default_factory=dict)
    n_batches: int = 0  # 0: one job per core per potential
    relax_parameters: dict[str, Any] = field(default_factory=dict)
    #: extra 05_lattice_energy parameters of the ``lattice`` stage (e.g. ``crystals``, ``fmax`` for a trial)
    lattice_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def dbs(self) -> dict[str, str]:
        run = Path(self.work_dir)
        return {"raw_db": str(run / "raw.db"), "clean_db": str(run / "clean.db"),
                "rejects_db": str(run / "rejects.db"), "out_db": str(run / "relaxed_{potential}.db")}

    def batches(self) -> int:
        return self.n_batches or (os.cpu_count() or 1)

    def jobs(self) -> list[dict[str, Any]]:
        """The campaign's (potential x batch) 03_relax jobs, one torch thread each (one job per core)."""
        return CampaignPlan(self.potentials, self.batches(), self.dbs["clean_db"], self.dbs["out_db"],
                            {"n_threads": 1, **self.relax_parameters},
                            {p: self.max_atoms.get(p) for p in self.potentials}).jobs()


def default_plan(data_dir: str | Path, work_dir: str | Path = "data/results",
                 potentials: Sequence[str] | None = None,
                 max_atoms: dict[str, int | None] | None = None) -> ResultsPlan:
    """Both result folders of ``data_dir``; every registered potential, each with the subset its cost allows
    (:data:`RESULTS_MAX_ATOMS`; ``max_atoms`` overrides it per potential, None = every structure)."""
    from helpers.relax.potentials.registry import REGISTRY

    names = list(potentials) if potentials else list(REGISTRY)
    sources = [str(Path(data_dir) / folder) for folder in RESULT_FOLDERS]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown potentials {unknown}; registered: {', '.join(sorted(REGISTRY))}")
    unknown = sorted(set(max_atoms or {}) - set(names))
    if unknown:
        raise KeyError(f"--max-atoms names potentials not in this run: {unknown}")
    limits = {name: (max_atoms or {}).get(name, RESULTS_MAX_ATOMS.get(name)) for name in names}
    return ResultsPlan(sources=sources, work_dir=resolve(str(work_dir)), potentials=names, max_atoms=limits)


def relax_targets(plan: ResultsPlan) -> dict[str, int]:
    """Structures each potential will relax (clean, within its ``max_atoms``)."""
    return {p: len(ids) for p, ids in target_ids(plan).items()}


def target_ids(plan: ResultsPlan) -> dict[str, set[str]]:
    """The structure ids each potential is to relax (clean, within its ``max_atoms``)."""
    from helpers.relax.stage import batch_ids
    from helpers.store import db as dbmod

    clean = dbmod.connect(plan.dbs["clean_db"], must_exist=True)
    return {p: set(batch_ids(clean, 0, 1, plan.max_atoms.get(p), p)) for p in plan.potentials}


def settings_hashes(plan: ResultsPlan) -> dict[str, str]:
    """Per potential: the settings hash its relax jobs write (what marks a row as this campaign's)."""
    from helpers.relax.stage import job_settings

    return {p: job_settings(p, plan.relax_parameters).hash() for p in plan.potentials}


def relaxed_counts(plan: ResultsPlan) -> dict[str, int]:
    """Structures each potential has finished with this campaign's settings (in its database or its
    per-batch shards): the relax jobs' own rule, so rows made under other settings do not count."""
    return {p: len(ids) for p, ids in relaxed_ids(plan).items()}


def relaxed_ids(plan: ResultsPlan) -> dict[str, set[str]]:
    """The structure ids of :func:`relaxed_counts`."""
    from helpers.relax.stage import finished_ids
    from helpers.store import db as dbmod
    from helpers.store.shards import result_files

    hashes = settings_hashes(plan)
    counts = {}
    for p in plan.potentials:
        ids: set[str] = set()
        for path in result_files(plan.dbs["out_db"], p):
            try:
                ids |= finished_ids(dbmod.connect(path, must_exist=True), hashes[p])
            except Exception:  # noqa: BLE001 - a shard being written: counted next time
                pass
        counts[p] = ids
    return counts


def coverage(plan: ResultsPlan) -> dict[str, tuple[int, int]]:
    """Per potential: (structures it is to relax, those of them it has finished) — what the report says did
    not finish. Rows of structures outside the targets (an earlier, wider run) do not count."""
    targets, done = target_ids(plan), relaxed_ids(plan)
    return {p: (len(targets[p]), len(done[p] & targets[p])) for p in plan.potentials}


#: one line per stage run of a campaign (appended, so resumed runs add up): the campaign's wall time
TIMINGS_FILE = "stage_times.csv"


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


def run_relaxations(plan: ResultsPlan, log_dir: str | Path, max_parallel: int | None = None,
                    poll_seconds: float = 20.0) -> dict[str, int]:
    """Every (potential, batch) job of ``plan`` through 03_relax, one per core, with one progress bar
    over all structures and potentials (ETA for the campaign); shards merged per potential."""
    from tqdm.auto import tqdm

    from helpers.relax.stage import merge_shards

    wanted = target_ids(plan)
    targets = {p: len(ids) for p, ids in wanted.items()}
    total = sum(targets.values())

    def done() -> dict[str, int]:
        return {p: len(ids & wanted[p]) for p, ids in relaxed_ids(plan).items()}

    which = ", ".join(plan.potentials) if len(plan.potentials) <= 2 else f"{len(plan.potentials)} potentials"
    bar = tqdm(total=total, initial=sum(done().values()), desc=f"relax ({which})", unit="crystal",
               smoothing=0.05)
    stop = threading.Event()

    def refresh() -> None:
        counts = done()  # one read of every shard per update
        bar.update(max(0, sum(counts.values()) - bar.n))
        bar.set_postfix_str(", ".join(f"{p} {n}/{targets[p]}" for p, n in counts.items()))

    def poll() -> None:
        while not stop.wait(poll_seconds):
            refresh()

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    failed = []
    try:
        for job, error in run_jobs(plan.jobs(), log_dir, max_parallel or plan.batches(),
                                   retries=JOB_RETRIES):
            if error is not None:  # failed after its retries: the next run tries again
                failed.append(describe_failure(job, error, log_dir))
    finally:
        stop.set()
        watcher.join()
        refresh()  # the bar ends on the final counts, not the last poll's
        bar.close()
    merged = {p: merge_shards(plan.dbs["out_db"], p) for p in plan.potentials}
    for line in failed:
        print("!!! relax job failed (rerun to retry):", line)
    return merged


def _run_stage(stage: str, plan: ResultsPlan, logs: Path, analysis_dir: Path, docs_dir: str | Path,
               max_parallel: int | None) -> None:
    dbs = plan.dbs
    if stage == "fetch":
        execute("01_fetch", {"source": list(plan.sources), "raw_db": dbs["raw_db"]}, logs, progress=True)
    elif stage == "filter":
        execute("02_filter", {k: dbs[k] for k in ("raw_db", "clean_db", "rejects_db")}, logs, progress=True)
    elif stage == "relax":
        run_relaxations(plan, logs, max_parallel)
    elif stage == "analysis":
        from helpers.relax.stage import merge_shards

        for p in plan.potentials:  # what jobs still running (or stopped) committed to their shards counts too
            merge_shards(dbs["out_db"], p)
        relaxed = [dbs["out_db"].format(potential=p) for p in plan.potentials
                   if Path(dbs["out_db"].format(potential=p)).is_file()]
        from helpers.analysis.stage import land_analysis

        # written apart and moved in whole when it finished: a stopped analysis never feeds the report
        partial = analysis_dir.with_name(f"{analysis_dir.name}.partial")
        if partial.is_dir():
            shutil.rmtree(partial)  # our own scratch folder, left by a stopped analysis
        execute("04_analysis", {"relaxed_dbs": relaxed, "clean_db": dbs["clean_db"], "out_dir": str(partial),
                                "settings_hashes": list(settings_hashes(plan).values()),
                                "max_atoms": {p: n for p, n in plan.max_atoms.items() if n is not None}},
                logs, progress=True)
        land_analysis(partial, analysis_dir)
    elif stage == "lattice":  # X23 + ICE13 lattice energies per potential -> docs/lattice_energy.csv
        from helpers.run.lattice import run_lattice_stage

        run_lattice_stage(list(plan.potentials), plan.work_dir, logs, docs_dir, max_parallel, plan.lattice_parameters)
    elif stage == "report":
        from helpers.analysis.report import dataset_info, write_report

        info = dataset_info(plan.work_dir, plan.sources)
        info["coverage"] = coverage(plan)
        info["stage_minutes"] = stage_minutes(plan.work_dir)
        write_report(analysis_dir, plan, docs_dir, extra=info)
    else:
        raise ValueError(f"unknown stage {stage!r}")


#: the campaign's stages, in order
STAGES = ("fetch", "filter", "relax", "analysis", "lattice", "report")


def run_results(data_dir: str | Path, work_dir: str | Path = "data/results", docs_dir: str | Path = "docs",
                potentials: Sequence[str] | None = None, stages: Sequence[str] = STAGES,
                max_parallel: int | None = None, plan: ResultsPlan | None = None,
                max_atoms: dict[str, int | None] | None = None, wait: bool = False) -> dict[str, Any]:
    """The whole campaign (see the module docstring); returns where everything went. One run at a time per
    work dir (:mod:`helpers.run.lock`): another one holding it is a :class:`~helpers.run.lock.WorkDirBusy`
    naming it, or, with ``wait``, waited for."""
    from helpers.run.lock import WorkDirLock

    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    plan = plan or default_plan(data_dir, work_dir, potentials, max_atoms)
    logs = Path(plan.work_dir) / "executed"
    analysis_dir = Path(plan.work_dir) / "analysis"
    timings: dict[str, float] = {}
    with WorkDirLock(plan.work_dir, wait=wait):
        for stage in stages:
            started = time.perf_counter()
            print(f"== {stage}", flush=True)
            try:
                _run_stage(stage, plan, logs, analysis_dir, docs_dir, max_parallel)
            finally:  # an interrupted stage's time counts too: its finished relaxations are kept
                timings[stage] = time.perf_counter() - started
                log_stage_time(plan.work_dir, stage, plan.potentials, timings[stage])
                print(f"   {stage}: {timings[stage] / 60:.1f} min", flush=True)
    return {"work_dir": plan.work_dir, "analysis": str(analysis_dir), "docs": str(docs_dir), "minutes":
            {k: round(v / 60, 1) for k, v in timings.items()}}
