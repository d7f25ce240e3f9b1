"""Run one batch of relaxations: the work behind one papermill run of ``03_relax``.

Deterministic, cost-balanced batches; every finished structure is committed at once; a
re-run skips what is done (same structure, same settings hash) and retries what crashed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd
from ase import Atoms
from ase.db.core import Database
from ase.units import GPa, Pascal

from helpers.process.cores import core_share, keep_niceness
from helpers.process.guard import interrupt_on_sigterm
from helpers.process.parallel import worker_count
from helpers.relax.checkpoint import CHECKPOINT_EVERY
from helpers.relax.engine import EXTERNAL_PRESSURE, RelaxResult, RelaxSettings, relax, versions
from helpers.relax.fallback import (
    FALLBACK,
    awaits_fallback,
    is_final,
    needs_study_fallback,
    study_method,
    with_fast_cost,
)
from helpers.relax.inflight import DEATHS_BEFORE_CRASHED, InFlight, crashed_message
from helpers.relax.potentials.registry import get_potential
from helpers.relax.time_split import format_time_split, time_split
from helpers.store import db as dbmod
from helpers.store.paths import file_in
from helpers.store.shards import output_path, result_files, shard_paths
from helpers.vocabulary import FAILURES, NO_HESSIAN_SEED, THREADS_ENV, Status

#: above this fraction of exploded/error/timeout a batch warns loudly
FAILURE_ALARM = 0.2
#: clean-DB keys copied onto each relaxed row (the experimental reference travels with it)
REFERENCE_KEYS = ("cod_id", "a_exp", "b_exp", "c_exp", "alpha_exp", "beta_exp", "gamma_exp", "V_exp",
                  "density_exp", "temperature", "pressure", "spacegroup", "spacegroup_number",
                  "cif_formula", "r_factor", "flag_high_pressure", "flag_no_temperature", "source")


def relax_cost(natoms: int) -> float:
    """Relative cost of relaxing ``natoms`` atoms: steps grow ~n, each step ~n (model + BFGS)."""
    return float(natoms) ** 2


def split_batches(items: list[tuple[str, int]], n_batches: int) -> list[list[str]]:
    """Split ``(structure_id, natoms)`` into ``n_batches`` lists of about equal cost.

    Longest-processing-time-first greedy assignment; ties broken by id, so the split is
    the same on every machine and every run.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    loads = [0.0] * n_batches
    batches: list[list[str]] = [[] for _ in range(n_batches)]
    for sid, natoms in sorted(items, key=lambda x: (-relax_cost(x[1]), x[0])):
        target = min(range(n_batches), key=lambda b: (loads[b], b))
        batches[target].append(sid)
        loads[target] += relax_cost(natoms)
    return [sorted(b) for b in batches]


def batch_ids(clean_db: Database, batch: int, n_batches: int, max_atoms: int | None = None,
              potential: str | None = None, sample: str | None = None) -> list[str]:
    """The structure ids of ``batch`` (0-based) out of ``n_batches`` for this clean database, balanced by
    the atoms ``potential`` evaluates per structure (a Γ-point code's supercell; else the cell's atoms);
    with ``max_atoms``, only structures of at most that many: the subset a slow potential can afford; with
    ``sample`` (a set of :mod:`helpers.analysis.sample_sets`: "science", "altered", "ice"), only its entries."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    if not 0 <= batch < n_batches:
        raise ValueError(f"batch must be in 0..{n_batches - 1}, got {batch} (batches are numbered from 0; "
                         f"n_batches={n_batches})")
    from helpers.analysis import sample_sets  # the sets are the analysis's; only a sampled run needs them

    if sample is not None and sample not in sample_sets.SETS:
        raise ValueError(f"sample must be one of {', '.join(sample_sets.SETS)} or None, got {sample!r}")
    rows = clean_db.select("structure_id", columns=["id", "key_value_pairs", "numbers", "cell", "pbc"])
    size = get_potential(potential).atoms_evaluated if potential else (lambda row: row.natoms)
    items = [(row.structure_id, size(row)) for row in rows if sample is None
             or sample_sets.sample_set(row.get("source"), row.get("compound_key"), row.get("cif_formula")) == sample]
    items = [(sid, n) for sid, n in items if max_atoms is None or n <= max_atoms]
    return split_batches(items, n_batches)[batch]


def relax_targets(clean_db: Database, potentials: Sequence[str], max_atoms: Mapping[str, int | None],
                  sample: str | None = None) -> dict[str, set[str]]:
    """Per potential, the clean structure ids its relax jobs are to relax (every batch together, within its
    ``max_atoms``, of ``sample`` when given): what "finished" and "partial" are measured against. A potential
    not registered here (a plug-in not installed) is left out: its targets are unknown."""
    out = {}
    for p in potentials:
        try:
            get_potential(p)
        except KeyError:
            continue
        out[p] = set(batch_ids(clean_db, 0, 1, max_atoms.get(p), p, sample))
    return out


@dataclass
class BatchReport:
    """What one batch did, per structure and in total."""

    potential: str
    batch: int
    n_batches: int
    out_db: str
    settings_hash: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_done: int = 0
    #: fast path: where the batch's time went (:func:`helpers.relax.time_split.time_split`); None otherwise
    time_split: dict[str, float | int] | None = None

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def status_counts(self) -> Counter:
        return Counter(r["status"] for r in self.rows)

    def failure_rate(self) -> float:
        counts = self.status_counts()
        bad = sum(counts[s] for s in FAILURES)
        return bad / max(1, len(self.rows))


def configure_threads(n_threads: int | None = None) -> int:
    """Pin torch (and BLAS, where threadpoolctl is present) to ``n_threads`` threads.

    numpy's BLAS and torch fighting over the cores made a 192-atom BFGS relaxation 3x slower (291 s vs 92 s).
    """
    import torch

    n = n_threads or int(os.environ.get(THREADS_ENV, 0)) or worker_count()
    torch.set_num_threads(n)
    keep_niceness()  # a niced campaign's kernels yield the cores to other work
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass
    return n


def hessian_seed_for(potential: str, requested: str | None = None, optimizer: str = "BFGS") -> str | None:
    """The seed potential a 03_relax job uses: ``requested`` when given (``"off"``: none), else the
    potential's card default (``Potential.hessian_seed``: ANI-2x for SevenNet and CHGNet, none for ANI),
    which applies to BFGS only (the optimizer that keeps a Hessian)."""
    if requested == NO_HESSIAN_SEED:
        return None
    if requested is not None:
        return requested
    return get_potential(potential).hessian_seed if optimizer == "BFGS" else None


def experimental_pressure(row) -> float:
    """The pressure (eV/Å³) the clean row's CIF says it was measured at (``pressure``, kPa as COD records it);
    0 where none is recorded."""
    kpa = row.get("pressure")
    return float(kpa) * 1e3 * Pascal if kpa is not None else 0.0


def relax_input(row, settings: RelaxSettings) -> Atoms:
    """The clean row's atoms as its relaxation starts: with ``settings.pressure`` "experimental", the external
    pressure it is relaxed at (``atoms.info[EXTERNAL_PRESSURE]``, read by the cell filter)."""
    atoms = row.toatoms()
    if settings.pressure == "experimental":
        atoms.info[EXTERNAL_PRESSURE] = experimental_pressure(row)
    return atoms


def job_settings(potential: str, parameters: Mapping[str, Any] | None = None) -> RelaxSettings:
    """The settings a 03_relax job with these notebook ``parameters`` relaxes with (steps_per_atom
    resolved from the potential, the Hessian seed from :func:`hessian_seed_for`): whose hash marks its
    finished rows. Other parameters are ignored."""
    names = {f.name for f in fields(RelaxSettings)} - {"potential"}
    chosen = {k: v for k, v in (parameters or {}).items() if k in names}
    chosen["hessian_seed"] = hessian_seed_for(potential, chosen.get("hessian_seed"),
                                              chosen.get("optimizer", "BFGS"))
    return RelaxSettings(potential=potential, **chosen).resolved(get_potential(potential).steps_per_atom)


def run_batch(clean_db: str, out_db: str, potential: str = "ani1x", batch: int = 0, n_batches: int = 1,
              settings: RelaxSettings | None = None, max_wall_time: float | None = None,
              trajectory_dir: str | None = None, limit: int | None = None, progress: bool = True,
              n_threads: int | None = None, calculator_options: dict | None = None,
              max_atoms: int | None = None, checkpoint_every: float = CHECKPOINT_EVERY,
              sample: str | None = None) -> BatchReport:
    """Relax every structure of one batch into its output database; resumable.

    Structures with elements the potential does not cover are recorded as ``skipped``; with
    ``max_atoms``, larger structures are not part of any batch (not recorded); with ``sample``, only the
    entries of that sample set (e.g. "science": the unaltered COD entries) are. One crystal at a time,
    a relaxation saves its progress every ``checkpoint_every`` seconds and a rerun continues it
    (:mod:`helpers.relax.checkpoint`).
    """
    from tqdm.auto import tqdm

    pot = get_potential(potential)
    settings = (settings or job_settings(potential)).resolved(pot.steps_per_atom)
    if settings.potential != potential:
        raise ValueError(f"settings are for {settings.potential!r}, batch is for {potential!r}")
    threads = configure_threads(n_threads)
    clean = dbmod.connect(clean_db, must_exist=True)
    ids = batch_ids(clean, batch, n_batches, max_atoms, potential, sample)[:limit]
    target = output_path(out_db, potential, batch, n_batches)
    out = dbmod.connect(target)
    options = pot.answer_options(calculator_options)  # what of calculator_options changes the answers
    settings_hash = settings.hash(options)
    report = BatchReport(potential, batch, n_batches, target, settings_hash)
    # awaiting: the fast path left these at the step cap here and the study's method has yet to try them
    done, awaiting = finished_and_waiting(out, settings_hash)
    done |= _finished_elsewhere(out_db, potential, target, settings_hash)
    todo = [sid for sid in ids if sid not in done]
    report.skipped_done = len(ids) - len(todo)
    fallback = [sid for sid in todo if sid in awaiting]
    bar = tqdm(total=len(todo), desc=f"{potential} batch {batch + 1}/{n_batches}", unit="crystal",
               disable=not progress)

    def record(row, atoms: Atoms, result: RelaxResult, fast: Mapping[str, Any] | None = None) -> None:
        """Commit a result; one the fast path left at the step cap waits for the study's method (``fast``:
        the fast row that result then replaces)."""
        if fast is not None:
            result = with_fast_cost(result, fast)
        write_result(out, row, result, settings, settings_hash, options)
        if fast is None and needs_study_fallback(result, settings):
            fallback.append(row.structure_id)
            return
        report.rows.append(_summary_row(row.structure_id, len(atoms), result, row))
        bar.update()
        bar.set_postfix(Counter(r["status"] for r in report.rows))

    runnable = []
    for sid in todo:
        if sid in awaiting:
            continue
        row = clean.get(structure_id=sid)
        atoms = row.toatoms()
        missing = pot.uncovered(atoms.get_chemical_symbols())
        if missing:
            record(row, atoms, RelaxResult.without_relaxing(
                atoms, settings, Status.skipped, f"{potential} does not cover {', '.join(sorted(missing))}"))
        else:
            runnable.append((sid, len(atoms)))
    if not runnable and not fallback:
        bar.close()
        _alarm(report)
        return report
    calc = pot.calculator(**(calculator_options or {}))
    marker = InFlight.for_job(out_db, potential, batch, n_batches)
    died_on = marker.died_on()  # the structure a previous run of this job died on, if any

    def one_at_a_time(sids: list[str], share, is_fallback: bool = False) -> None:
        """Relax ``sids`` one crystal at a time with the job's settings, or with ``is_fallback`` the study's
        method (the fast path's step-cap crystals), each checkpointed and marked in flight so a crash or a stop
        loses nothing."""
        run_settings = study_method(settings) if is_fallback else settings
        run_hash = run_settings.hash(options) if is_fallback else settings_hash
        with interrupt_on_sigterm():  # a stop we ask for clears the mark: it is not a crash
            for sid in sids:
                row = clean.get(structure_id=sid)
                atoms = relax_input(row, run_settings)
                fast = out.get(structure_id=sid, settings_hash=settings_hash).key_value_pairs if is_fallback \
                    else None
                deaths = died_on[1] if died_on and died_on[0] == sid else 0
                if deaths >= DEATHS_BEFORE_CRASHED:
                    record(row, atoms, RelaxResult.without_relaxing(
                        atoms, run_settings, Status.crashed, crashed_message(potential, deaths)), fast)
                    continue
                trajectory = file_in(trajectory_dir, sid, ".study.traj" if is_fallback else ".traj") \
                    if trajectory_dir else None
                if trajectory:
                    trajectory.parent.mkdir(parents=True, exist_ok=True)
                marker.begin(sid, deaths)
                checkpoint = marker.checkpoint(sid, run_hash, checkpoint_every)
                try:
                    result = relax(atoms, calc, run_settings, max_wall_time=max_wall_time, trajectory=trajectory,
                                   checkpoint=checkpoint,
                                   on_optimizer=lambda opt: opt.attach(share.refresh, interval=1))
                except BaseException:
                    marker.clear()  # the checkpoint stays: the next run continues this relaxation
                    raise
                record(row, atoms, result, fast)
                checkpoint.clear()
            marker.clear()

    # cores that other jobs of this machine leave idle when they end come to this one (helpers.process.cores)
    with warnings.catch_warnings(), core_share(threads) as share:
        warnings.simplefilter("ignore", RuntimeWarning)
        if runnable and settings.strategy == "fast" and runs_side_by_side(calc, settings, trajectory_dir):
            report.time_split = _relax_side_by_side(clean, runnable, calc, settings, max_wall_time, record,
                                                    share.refresh)
            if progress:
                print(format_time_split(report.time_split))
        elif runnable:
            one_at_a_time([sid for sid, _ in runnable], share)
        if fallback:
            one_at_a_time(list(fallback), share, is_fallback=True)
    bar.close()
    _alarm(report)
    return report


def runs_side_by_side(calc, settings: RelaxSettings, trajectory_dir: str | None = None) -> bool:
    """Can these crystals be relaxed side by side (``helpers.relax.side_by_side``)?

    Needs a torchani model, alone or with D3 added (the ``-d3`` variants: D3 is then added per
    crystal after the shared pass), an optimizer that steps one step at a time, and no per-step
    trajectory files.
    """
    from helpers.relax.potentials.calculators import OnePassANICalculator
    from helpers.relax.potentials.dispersion import DispersionCorrectedCalculator
    from helpers.relax.side_by_side import LOCKSTEP_OPTIMIZERS

    if isinstance(calc, DispersionCorrectedCalculator):
        calc = calc.base
    return (isinstance(calc, OnePassANICalculator) and settings.optimizer in LOCKSTEP_OPTIMIZERS
            and not trajectory_dir and settings.hessian_seed is None)  # a seeded BFGS: one at a time


def _relax_side_by_side(clean: Database, runnable: list[tuple[str, int]], calc, settings: RelaxSettings,
                        max_wall_time: float | None, record, on_pass=None) -> dict[str, float | int]:
    """Relax ``runnable`` crystals side by side, largest first, committing each as it ends; where the time
    went (:func:`~helpers.relax.time_split.time_split`)."""
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.side_by_side import relax_many

    rows = {}

    def items():
        for sid, _ in sorted(runnable, key=lambda x: (-x[1], x[0])):
            rows[sid] = clean.get(structure_id=sid)
            yield sid, relax_input(rows[sid], settings)

    import torch

    from helpers.relax.potentials.dispersion import (
        DispersionCorrectedCalculator,
        SideBySideDispersion,
        draft_dispersion,
    )

    dispersion = calc.dispersion if isinstance(calc, DispersionCorrectedCalculator) else None
    model = (calc.base if dispersion is not None else calc).model

    def evaluator(dtype=None, d3=dispersion):
        ani = SideBySideANI(model, dtype=dtype)
        return ani if d3 is None else SideBySideDispersion(ani, d3)

    # the draft only moves crystals: float32 ANI, and D3 with cheaper cutoffs
    draft = evaluator(getattr(torch, settings.draft), dispersion and draft_dispersion(dispersion)) \
        if settings.draft else None
    exact, started = evaluator(), time.perf_counter()
    for sid, result in relax_many(items(), exact, settings, max_wall_time=max_wall_time, draft=draft,
                                  on_pass=on_pass):
        row = rows.pop(sid)
        record(row, result.atoms, result)
    return time_split(exact, draft, time.perf_counter() - started)


def _finished_elsewhere(out_db: str, potential: str, target: str, settings_hash: str) -> set[str]:
    """Structures finished with these settings in the merged database or in a shard of any batch split
    other than ``target``: a rerun with another ``n_batches`` or ``max_atoms`` (other shards) recomputes
    nothing; ``merge_shards`` collects every shard."""
    done: set[str] = set()
    for path in result_files(out_db, potential):  # none for a server URL: ``target`` is the one database
        if str(path) != str(target):
            done |= finished_ids(dbmod.connect(path, must_exist=True), settings_hash)
    return done


def finished_ids(out: Database, settings_hash: str) -> set[str]:
    """Structures ``out`` holds a final answer for (a final status; a fast step-cap row only once the study's
    method has redone it, :mod:`helpers.relax.fallback`) made with these settings: what a rerun skips, and
    what a campaign counts as done."""
    return finished_and_waiting(out, settings_hash)[0]


def finished_and_waiting(out: Database, settings_hash: str) -> tuple[set[str], set[str]]:
    """One read of ``out`` (these settings): the structures with a final answer (:func:`finished_ids`), and
    those the fast path left at the step cap that the study's method has not yet redone (a rerun relaxes them
    the study's way only)."""
    final, waiting = set(), set()
    for row in out.select(settings_hash=settings_hash, columns=["key_value_pairs"]):
        if is_final(row):
            final.add(row.structure_id)
        elif awaits_fallback(row):
            waiting.add(row.structure_id)
    return final, waiting


#: forces/stress at the experimental geometry (helpers.relax.start_tells), from the engines' first evaluation
START_TELLS = ("start_fmax", "start_fmax_heavy", "start_pressure", "start_max_stress")


def write_result(out: Database, clean_row, result: RelaxResult, settings: RelaxSettings,
                 settings_hash: str, calculator: Mapping[str, Any] | None = None) -> int:
    """Commit one relaxation (replacing an earlier attempt with the same settings); ``calculator``: the
    options that changed the answer (:meth:`~helpers.relax.potentials.registry.Potential.answer_options`),
    kept in the row's data. A model-file potential's row carries its weights' sha256 (``model_file_sha256``)."""
    from helpers.relax.potentials.registry import MODEL_FILE_HASH

    versions_now = versions(settings.potential)
    calculator = dict(calculator or {})
    model_hash = calculator.get(MODEL_FILE_HASH) or versions_now.get(MODEL_FILE_HASH)
    kvp = {key: clean_row.get(key) for key in REFERENCE_KEYS}
    kvp.update(
        potential=settings.potential, status=result.status, converged=result.converged,
        steps=result.steps, max_steps=result.max_steps, fmax_final=result.fmax_final,
        e_initial=result.e_initial, e_final=result.e_final, wall_time=round(result.wall_time, 3),
        force_calls=result.force_calls, draft_calls=result.extra.get("draft_calls"), optimizer=settings.optimizer,
        resumed_at_step=result.extra.get("resumed_at_step"),
        fallback=result.extra.get(FALLBACK), fast_steps=result.extra.get("fast_steps"),
        e_dispersion_initial=result.extra.get("e_dispersion_initial"), e_dispersion=result.extra.get("e_dispersion"),
        cost_time=round(result.extra.get("cost_time", result.wall_time), 3),
        cpu_time=round(result.extra["cpu_time"], 3) if "cpu_time" in result.extra else None,
        cell_filter=settings.cell_filter, strategy=settings.strategy,
        fmax_target=settings.fmax, V_relaxed=result.atoms.get_volume() if result.atoms.pbc.all() else None,
        message=result.message[:500] or None, clean_id=clean_row.id, host=os.uname().nodename,
        model_file_sha256=model_hash,
        **{k: result.extra.get(k) for k in START_TELLS},
        hessian_seeded=result.extra.get("hessian_seeded"), hessian_seed_time=result.extra.get("hessian_seed_time"),
        relax_pressure_gpa=(round(experimental_pressure(clean_row) / GPa, 6) if settings.pressure == "experimental"
                            else None),
    )
    data = {"cell_exp": clean_row.data.get("cell_exp", clean_row.cell.tolist()),
            "settings": settings.__dict__, "versions": versions_now, "message": result.message}
    if calculator:
        data["calculator_options"] = calculator
    match = {"structure_id": clean_row.structure_id, "settings_hash": settings_hash}
    return dbmod.upsert(out, result.atoms, match, data=data, **dbmod.clean_kvp(kvp))


def _summary_row(sid: str, natoms: int, result: RelaxResult, clean_row) -> dict[str, Any]:
    v_exp = clean_row.get("V_exp") or clean_row.toatoms().get_volume()
    v = result.atoms.get_volume() if result.atoms.pbc.all() else float("nan")
    return {"structure_id": sid, "natoms": natoms, "status": result.status, "steps": result.steps,
            "max_steps": result.max_steps, "fmax_final": result.fmax_final,
            "dV_pct": 100 * (v - v_exp) / v_exp, "wall_time": round(result.wall_time, 2),
            FALLBACK: result.extra.get(FALLBACK), "message": result.message}


def _alarm(report: BatchReport) -> None:
    rate = report.failure_rate()
    if report.rows and rate > FAILURE_ALARM:
        msg = (f"!!! {report.potential} batch {report.batch}: {rate:.0%} of {len(report.rows)} structures "
               f"exploded/errored/timed out ({dict(report.status_counts())}) — check the inputs and settings")
        print("\n" + "!" * 80 + f"\n{msg}\n" + "!" * 80)
        warnings.warn(msg, stacklevel=2)


def merge_shards(out_db: str, potential: str, shards: list[str] | None = None) -> int:
    """Merge per-batch shard files into ``out_db``; idempotent (keyed by structure + settings).

    A shard row replaces the merged row only when it is newer, so merging twice, or merging
    shards of a resumed run, gives the same database. Returns the merged row count.
    """
    target = dbmod.connect(out_db.format(potential=potential))
    paths = shards if shards is not None else [str(p) for p in shard_paths(out_db, potential)]
    existing = {(row.structure_id, row.settings_hash): row.mtime
                for row in target.select("structure_id", columns=["key_value_pairs", "mtime"])}
    for path in paths:
        shard = dbmod.connect(path, must_exist=True)
        for row in shard.select("structure_id"):
            key = (row.structure_id, row.settings_hash)
            if key in existing and existing[key] >= row.mtime:
                continue
            kvp = {k: v for k, v in row.key_value_pairs.items() if k not in ("structure_id", "settings_hash")}
            dbmod.upsert(target, row.toatoms(),
                         {"structure_id": row.structure_id, "settings_hash": row.settings_hash},
                         data=row.data, **kvp)
            existing[key] = row.mtime
    return target.count()
