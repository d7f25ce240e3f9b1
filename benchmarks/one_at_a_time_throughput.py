"""Crystals per hour for a potential that relaxes one crystal at a time (SevenNet, CHGNet, ...): today's
path vs the project's, same crystals, same run (issue 35, lever a-c). Run through
``benchmarks/relax_throughput.py --potential NAME``.

(seed) today's one-at-a-time path with its defaults before issue 35: one process, torch on every core, the
       crystals one after another, ASE's BFGS from its stock Hessian (``hessian_seed="off"``), glibc's
       default allocator thresholds, the package's eager model (``compiled=False`` where the calculator has
       that option: SevenNet).
(fast) the project's default (``helpers.relax.stage.job_settings``): one single-thread process per core,
       the largest crystal first and the next one to whichever core frees up, a core left idle at the end
       going to the crystals still running (:mod:`helpers.process.cores`, as in a campaign's jobs); BFGS
       seeded with ANI-2x's Hessian (``Potential.hessian_seed``, :mod:`helpers.relax.hessian_seed`); the
       allocator thresholds of ``helpers.vocabulary.JOB_ENV`` (``GLIBC_TUNABLES``); the calculator's defaults
       (SevenNet: its layers through ``torch.compile``, compiled in each worker process, inside the time).
Both: the same model, BFGS + FrechetCellFilter, fmax 5e-4 eV/Å and step cap; every energy, force and
verdict comes from the model itself. Each path runs in freshly started processes (the allocator
settings are read at process start). Ends with ``speedup: <r>x, max |dV fast - dV seed|: <p>%``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pandas as pd

ALLOCATOR_ENV = "GLIBC_TUNABLES"
#: six clean crystals of the unaltered COD sample, 20-34 atoms (the graph potentials' hundreds of steps at
#: 0.3-2 s each make larger ones an hour of the seed path each)
DEFAULT_IDS = (2205937, 2002929, 4501703, 7200842, 2007511, 2231730)
QUICK_IDS = (1010060, 2205937)
#: added by --big: 36-76 atoms, around the sample's median size (60). 2100603 and, by the rule of relax_throughput's
#: --small list, the lowest COD id of the clean sample in each band of 48-65 and 66-84 atoms outside that list
#: (the earlier 2007300 is no entry of the sample: --big had silently lost it)
BIG_IDS = (2100603, 1518526, 2021969)


@contextmanager
def environment(**values: str | None):
    """Set (or with None unset) environment variables for processes started inside."""
    before = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def eager_options(potential: str) -> dict:
    """The calculator options of the path before issue 35: the eager model where the factory can compile."""
    import inspect

    from helpers.relax.potentials.registry import get_potential

    options = inspect.signature(get_potential(potential).make_calculator).parameters
    return {"compiled": False} if "compiled" in options else {}


@lru_cache(maxsize=2)
def calculator(potential: str, eager: bool):
    """One calculator per worker process and path, as a relax job keeps one for its whole batch (a compiled
    SevenNet compiles once per process, not once per crystal)."""
    from helpers.relax.potentials.registry import get_potential

    return get_potential(potential).calculator(**(eager_options(potential) if eager else {}))


def relax_one(args):
    """One relaxation in a worker process: (structure_id, result, wall seconds, seed seconds)."""
    sid, atoms, potential, threads, seed = args
    import torch

    from helpers.process.cores import core_share
    from helpers.relax.engine import relax
    from helpers.relax.stage import job_settings

    torch.set_num_threads(threads)
    settings = job_settings(potential, {"strategy": "study", **({} if seed else {"hessian_seed": "off"})})
    started = time.perf_counter()
    with warnings.catch_warnings(), core_share(threads) as share:  # fast path: a core left idle comes here
        warnings.simplefilter("ignore")
        result = relax(atoms, calculator(potential, eager=not seed), settings,
                       on_optimizer=lambda opt: opt.attach(share.refresh, interval=1))
    return sid, result, time.perf_counter() - started, settings.hessian_seed


def load_crystals(cod_ids, workdir: Path, source: Path | None = None) -> list:
    """(structure_id, Atoms, V_exp) of the clean crystals among ``cod_ids`` in the CIF folder ``source`` (default:
    the COD tool suite's inputs, ../shared/data/cod), via the project's own fetch + filter, smallest first."""
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter
    from helpers.store import db

    if source is None:
        shared = Path(os.environ.get("CODANI_SHARED", Path(__file__).resolve().parents[2] / "shared"))
        source = shared / "data" / "cod"
    fetch(source=str(source), raw_db=str(workdir / "raw.db"), cod_ids=cod_ids, progress=False)
    run_filter(str(workdir / "raw.db"), str(workdir / "clean.db"), str(workdir / "rejects.db"), progress=False)
    rows = list(db.connect(str(workdir / "clean.db")).select())
    missing = {f"cod-{i:07d}" for i in cod_ids} - {r.structure_id for r in rows}
    if missing:
        print(f"not clean (rejected by the filter), left out: {sorted(missing)}")
    return sorted(((r.structure_id, r.toatoms(), r.V_exp) for r in rows), key=lambda x: len(x[1]))


def run(potential: str, ids, workers: int, csv: str, shared: Path) -> pd.DataFrame:
    import tempfile

    from helpers.process.cores import CORE_SHARE_ENV
    from helpers.relax.stage import job_settings
    from helpers.run.throughput import closing_line
    from helpers.vocabulary import JOB_ENV

    with tempfile.TemporaryDirectory() as tmp:
        crystals = load_crystals(ids, Path(tmp), shared / "data" / "cod-sample")
    spawn = multiprocessing.get_context("spawn")  # a new process reads the allocator settings at its start
    print(f"{len(crystals)} crystals ({', '.join(str(len(a)) for _, a, _ in crystals)} atoms), {potential}; "
          f"seed: 1 process x {workers} threads, one crystal after another, ASE's BFGS start, glibc defaults, "
          f"calculator options {eager_options(potential) or 'default'}; "
          f"fast: {workers} processes x 1 thread (an idle core to those running), largest first, "
          f"Hessian seed {job_settings(potential).hessian_seed}, "
          f"{ALLOCATOR_ENV}={JOB_ENV[ALLOCATOR_ENV]}; load average {os.getloadavg()[0]:.2f}", flush=True)
    seed, started = {}, time.perf_counter()
    with environment(**{ALLOCATOR_ENV: None, CORE_SHARE_ENV: None}), ProcessPoolExecutor(1, mp_context=spawn) as pool:
        for sid, atoms, _ in crystals:
            sid, result, wall, _ = pool.submit(relax_one, (sid, atoms, potential, workers, False)).result()
            seed[sid] = (result, wall)
            print(f"  seed {sid} ({len(atoms)} atoms): {wall:.0f} s, {result.status}, {result.steps} steps",
                  flush=True)
    seed_total = time.perf_counter() - started
    fast, started = {}, time.perf_counter()
    cores = tempfile.mkdtemp(prefix="cores-")  # the fast path's jobs share the cores (helpers.process.cores)
    with environment(**{ALLOCATOR_ENV: JOB_ENV[ALLOCATOR_ENV], CORE_SHARE_ENV: cores}), \
            ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        jobs = [pool.submit(relax_one, (sid, atoms, potential, 1, True))
                for sid, atoms, _ in sorted(crystals, key=lambda c: -len(c[1]))]
        for job in as_completed(jobs):
            sid, result, wall, _ = job.result()
            fast[sid] = (result, wall)
            print(f"  fast {sid}: {wall:.0f} s (seed Hessian {result.extra.get('hessian_seed_time', 0):.1f} s), "
                  f"{result.status}, {result.steps} steps", flush=True)
    fast_total = time.perf_counter() - started
    rows = []
    for sid, atoms, v_exp in crystals:
        (s_res, s_wall), (f_res, f_wall) = seed[sid], fast[sid]
        v_s, v_f = s_res.atoms.get_volume(), f_res.atoms.get_volume()
        rows.append({"structure_id": sid, "natoms": len(atoms), "seed_s": s_wall, "fast_s": f_wall,
                     "seed_steps": s_res.steps, "fast_steps": f_res.steps,
                     "hessian_seed_s": f_res.extra.get("hessian_seed_time"),
                     "seed_status": s_res.status, "fast_status": f_res.status,
                     "seed_fmax": s_res.fmax_final, "fast_fmax": f_res.fmax_final,
                     "dV_seed_pct": 100 * (v_s - v_exp) / v_exp, "dV_fast_pct": 100 * (v_f - v_exp) / v_exp,
                     "dV_diff_pct": 100 * abs(v_f - v_s) / v_s,
                     "dE_meV_atom": 1000 * (f_res.e_final - s_res.e_final) / len(atoms)
                     if f_res.e_final is not None and s_res.e_final is not None else float("nan")})
    table = pd.DataFrame(rows)
    table.to_csv(csv, index=False)
    pd.set_option("display.width", 250)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    per_step = (table.seed_s / table.seed_steps).sum(), ((table.fast_s - table.hessian_seed_s.fillna(0))
                                                         / table.fast_steps).sum()
    print(f"\nsteps: seed {table.seed_steps.sum()}, fast {table.fast_steps.sum()} "
          f"({table.seed_steps.sum() / table.fast_steps.sum():.2f}x fewer); seconds per step summed over crystals: "
          f"seed {per_step[0]:.1f} (2 threads), fast {per_step[1]:.1f} (1 thread each); seed Hessians "
          f"{table.hessian_seed_s.sum():.0f} s of {table.fast_s.sum():.0f} s fast-path process time")
    converged_before = table.seed_status == "converged"
    lost = table[converged_before & (table.fast_status != "converged")]
    if len(lost):
        print(f"converged in the seed path but not in the fast path: {', '.join(lost.structure_id)}")
    worse = table[(table.dV_diff_pct > 0.5) | (table.dE_meV_atom > 0.1)]
    if len(worse):
        print(f"outside the rule (|dV| > 0.5 % or energy higher by > 0.1 meV/atom): {', '.join(worse.structure_id)}")
    print(f"seed: {len(table)} crystals in {seed_total:.0f} s = {3600 * len(table) / seed_total:.1f} crystals/h; "
          f"fast: {fast_total:.0f} s = {3600 * len(table) / fast_total:.1f} crystals/h; wrote {csv}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(closing_line(seed_total / fast_total, table.dV_diff_pct.max()))
    return table
