"""How many crystals per hour: the study's relax method vs the project's fast path, same run.

(a) the study's method exactly: one crystal at a time, torchani's stock ASE calculator with its
    default ``all_pairs`` neighbour list, float64, 8-model ensemble, ASE BFGS + FrechetCellFilter,
    fmax 5e-4 eV/Å, cap 300 + x·n; torch uses every core.
(b) the fast path (``RelaxSettings(strategy="fast")``, :func:`helpers.relax.side_by_side.relax_many`): the same
    BFGS + FrechetCellFilter, fmax and cap per crystal, but the crystals of a worker's share are
    evaluated side by side in one torchani pass per step (fused ensemble, Verlet pair lists, float64,
    :class:`helpers.relax.potentials.ani_side_by_side.SideBySideANI`), the cell filter's algebra done once per
    step; one worker process per core with one torch thread, shares balanced by atoms².
The study runs first, then the fast path; the load average is printed at both ends.
Crystals come from ../shared/data through the real fetch + filter stages.

Prints per crystal: study wall time, force calls, steps, final fmax, relaxed volume, energy per atom,
|V_fast − V_study| / V_study; the cost floor (ns per atom per pass of the full model alone, one crystal
and all crystals in one pass); where the fast path's time went (draft passes, exact passes — counts, seconds,
ns per atom against the floor —, pair lists, optimizer and bookkeeping, the workers' start-up) and both paths'
totals. Ends with ``speedup: <r>x, max |dV fast - dV seed|: <p>%``.
Usage: ``.venv/bin/python benchmarks/relax_throughput.py [--quick | --big | --small] [--csv out.csv]``.

``--small`` measures the way a user meets it (:mod:`helpers.run.throughput`): :data:`SMALL_ATOMS`' crystals of
the unaltered COD sample, one clean database built by the project's fetch + filter, then ``03_relax`` run twice
by ``python -m papermill`` as a fresh process each, whole process timed (start-up and model load included):
(a) the study's method (``-p strategy study -p hessian_seed off``: one crystal at a time, torch on every core)
and (b) 03_relax's defaults (the fast path); compared crystal by crystal from the two relaxed databases.
A potential other than a plain ANI model (``--potential sevennet0-d3``, ``chgnet-d3``, ...) relaxes one crystal at
a time: its comparison is :mod:`one_at_a_time_throughput` (today's path vs seeded BFGS on every core).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import bench_env  # noqa: F401  (threads, weights and paths set before numpy, torch and the project)

# isort: split
import numpy as np
import pandas as pd
from bench_env import ROOT, SHARED  # noqa: F401
from one_at_a_time_throughput import load_crystals

from helpers.run.throughput import closing_line, pass_lines

#: clean COD crystals (pass helpers.filter.stage.run_filter), 24-148 atoms: the default list
DEFAULT_IDS = (1011063, 2007300, 2000642, 2100348, 7100406, 2007325, 2210104)
QUICK_IDS = (2007300, 2100348)
#: added by --big: 184-496 atoms (the study's method needs hours for these)
BIG_IDS = (2008119, 2009480, 4022310, 2007008)
#: --small: COD id -> atoms. Clean crystals (pass helpers.filter.stage.run_filter) of the unaltered COD sample
#: (../shared/data/cod-sample, all C/H/N/O), in none of the lists above nor one_at_a_time_throughput's: in each
#: band of 8 atoms from 20 to 91 (20-27, 28-35, ..., 84-91), the one with the lowest COD id -- chosen by that
#: rule, not by how they relax (cod-1100992 and cod-2104943 reach the step cap in the campaign's fast path)
SMALL_ATOMS = {2012828: 22, 2003630: 30, 2004431: 38, 1511801: 44, 1513282: 52, 1504357: 60, 1555524: 68,
               1100992: 80, 2104943: 84}
SMALL_IDS = tuple(SMALL_ATOMS)


class Timed:
    """Accumulates the wall time spent inside a torch module (forward hooks)."""

    def __init__(self, module) -> None:
        self.total = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t = time.perf_counter()

    def _stop(self, *_):
        self.total += time.perf_counter() - self._t


def count_calls(calc):
    """Count and time ``calc.calculate`` (torchani's stock calculator has no counter)."""
    inner = calc.calculate
    counts_itself = hasattr(calc, "n_calls")
    calc.n_calls, calc.t_calc = getattr(calc, "n_calls", 0), 0.0

    def calculate(*args, **kwargs):
        t = time.perf_counter()
        inner(*args, **kwargs)
        calc.n_calls += 0 if counts_itself else 1
        calc.t_calc += time.perf_counter() - t

    calc.calculate = calculate
    return calc


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def study_relax(atoms, potential: str):
    """The study's method exactly (see the module docstring)."""
    import torch

    from helpers.relax.engine import RelaxSettings, relax
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.registry import get_potential

    calc = count_calls(load_ani(potential, dtype=torch.float64, neighborlist="all_pairs").ase())
    settings = RelaxSettings(potential=potential).resolved(get_potential(potential).steps_per_atom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = relax(atoms, calc, settings)
    result.force_calls = calc.n_calls
    return result, {"t_calc": calc.t_calc}


def fast_share(args):
    """Worker: the fast path on its share of the crystals, one torch thread; results and time split."""
    shares, potential, batch_atoms, draft = args
    entered = time.perf_counter()
    _threads(1)
    import torch

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.side_by_side import relax_many
    from helpers.relax.time_split import time_split

    settings = RelaxSettings(potential=potential, strategy="fast", draft=draft).resolved(
        get_potential(potential).steps_per_atom)
    model = load_ani(potential)
    evaluator = SideBySideANI(model)
    drafter = SideBySideANI(model, dtype=getattr(torch, draft)) if draft else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = dict(relax_many(shares, evaluator, settings, max_atoms_in_flight=batch_atoms, draft=drafter))
    split = time_split(evaluator, drafter, time.perf_counter() - start)
    split["startup_s"] = start - entered  # imports, model load, the evaluators' copies of it
    return results, split


def cost_floor(atoms_list, potential: str, repeats: int = 5) -> float:
    """ns per atom of one energy+forces+stress pass of the full float64 ensemble over ``atoms_list``."""
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI

    evaluator = SideBySideANI(load_ani(potential))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluator.compute(atoms_list)
        times.append(time.perf_counter() - t)
    return 1e9 * min(times) / sum(len(a) for a in atoms_list)


def _floor_worker(args):
    atoms_list, potential = args
    _threads(1)
    return cost_floor(atoms_list, potential)


def energy_per_atom(atoms, potential: str) -> float:
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.calculators import OnePassANICalculator

    probe = atoms.copy()
    probe.calc = OnePassANICalculator(load_ani(potential))
    return probe.get_potential_energy() / len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 small crystals (smoke run)")
    parser.add_argument("--big", action="store_true", help="add crystals of 148-496 atoms")
    parser.add_argument("--small", action="store_true",
                        help="the --small list (20-90 atoms) through 03_relax with papermill, fresh processes")
    parser.add_argument("--ids", help="comma-separated COD ids instead of the default (or --small) list")
    parser.add_argument("--notebook-threads", type=int,
                        help="--small: -p n_threads N for both notebook runs (default: none given, every core)")
    parser.add_argument("--workdir", help="--small: keep the clean and relaxed databases and the executed notebooks "
                                          "here (default: a temporary folder)")
    parser.add_argument("--potential", default="ani1x")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-atoms", type=int, default=512, help="atoms per model pass in the fast path")
    parser.add_argument("--draft", default="float32", type=lambda v: None if v == "none" else v,
                        help="dtype of the fast path's draft model, or 'none' for exact forces throughout")
    parser.add_argument("--csv", default="relax_throughput.csv")
    args = parser.parse_args()
    from helpers.relax.potentials.ani import ANI_MODELS

    if args.potential not in ANI_MODELS:  # one crystal at a time (SevenNet, CHGNet, ...): its own comparison
        import one_at_a_time_throughput as one

        ids = (tuple(int(i) for i in args.ids.split(",")) if args.ids else
               one.QUICK_IDS if args.quick else one.DEFAULT_IDS + (one.BIG_IDS if args.big else ()))
        one.run(args.potential, ids, args.workers, args.csv, SHARED)
        return
    if args.small:
        small(tuple(int(i) for i in args.ids.split(",")) if args.ids else SMALL_IDS, args)
        return
    ids = (tuple(int(i) for i in args.ids.split(",")) if args.ids else
           QUICK_IDS if args.quick else DEFAULT_IDS + (BIG_IDS if args.big else ()))
    import torch

    from helpers.relax.stage import split_batches

    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        crystals = load_crystals(ids, Path(tmp), SHARED / "data" / "cod")
    print(f"{len(crystals)} crystals, {args.potential}; study: one at a time, 1 process x {args.workers} threads; "
          f"fast: {args.workers} processes x 1 thread, each relaxing its share side by side "
          f"(<= {args.batch_atoms} atoms per model pass); load average {os.getloadavg()[0]:.2f}", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        floors = list(pool.map(_floor_worker, [([a], args.potential) for _, a, _ in crystals]))
        floor_batched = pool.submit(_floor_worker, ([a for _, a, _ in crystals], args.potential)).result()
        study, study_total = {}, 0.0
        for sid, atoms, _ in crystals:
            t = time.perf_counter()
            result, split = study_relax(atoms, args.potential)
            study[sid] = (result, time.perf_counter() - t, split)
            study_total += study[sid][1]
            print(f"  study {sid} ({len(atoms)} atoms): {study[sid][1]:.1f} s, {result.status}, "
                  f"{result.steps} steps", flush=True)
        by_id = {sid: atoms for sid, atoms, _ in crystals}
        plan = split_batches([(sid, len(atoms)) for sid, atoms, _ in crystals], args.workers)
        t = time.perf_counter()
        outputs = list(pool.map(fast_share, [([(sid, by_id[sid]) for sid in share], args.potential,
                                              args.batch_atoms, args.draft) for share in plan if share]))
        fast_total = time.perf_counter() - t
    fast = {sid: res for results, _ in outputs for sid, res in results.items()}
    splits = pd.DataFrame([split for _, split in outputs])
    print(f"  fast  all {len(crystals)} crystals: {fast_total:.1f} s (per worker: "
          + ", ".join(f"{w:.1f} s" for w in splits.wall_s) + ")", flush=True)
    rows = [_row(sid, atoms, v_exp, study[sid], fast[sid], floors[k], args.potential)
            for k, (sid, atoms, v_exp) in enumerate(crystals)]
    table = pd.DataFrame(rows)
    table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(table.drop(columns=["E_study", "E_fast"]).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\ncost floor (full float64 ensemble, 1 thread, one pass): {np.median(table.ns_atom_call):.0f} ns per atom "
          f"for one crystal (median; per crystal in the CSV), {floor_batched:.0f} ns per atom for all "
          f"{len(crystals)} crystals in one pass")
    passes = table.rename(columns={"fast_calls": "force_calls", "fast_draft_calls": "draft_calls"})
    print("where the fast path's time went (summed over workers):\n  " + "\n  ".join(
        pass_lines(splits.sum().to_dict(), passes, floor_batched)))
    print(f"  start-up: imports and model load {splits.startup_s.sum():.1f} s (per worker: "
          + ", ".join(f"{w:.1f} s" for w in splits.startup_s) + f"); outside the workers' runs "
          f"{fast_total - (splits.startup_s + splits.wall_s).max():.1f} s of the {fast_total:.1f} s")
    _totals(table, study_total, fast_total, args.csv)


def _totals(table: pd.DataFrame, study_s: float, fast_s: float, csv: str, what: str = "") -> None:
    """Crystals per hour of both, the crystals the fast path puts elsewhere and higher, the closing line."""
    n = len(table)
    print(f"study: {n} crystals in {study_s:.0f} s = {3600 * n / study_s:.0f} crystals/h; fast: {fast_s:.0f} s = "
          f"{3600 * n / fast_s:.0f} crystals/h{what}; wrote {csv}; load average {os.getloadavg()[0]:.2f}")
    worse = table[(table.dV_diff_pct > 0.5) & (table.dE_meV_atom > 0)]
    if len(worse):
        print(f"fast path above 0.5 % volume AND higher energy for: {', '.join(worse.structure_id)}")
    print(closing_line(study_s / fast_s, table.dV_diff_pct.max()))


def small(ids: tuple[int, ...], args) -> None:
    """``--small``: the study's method and 03_relax's defaults, each a fresh papermill process (module docstring)."""
    import torch

    from helpers.process.parallel import worker_count
    from helpers.run.throughput import compare_through_notebooks

    parameters = {} if args.potential == "ani1x" else {"potential": args.potential}
    if args.notebook_threads:
        parameters["n_threads"] = args.notebook_threads
    threads = args.notebook_threads or worker_count()  # what 03_relax takes when not told
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.workdir or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        crystals = load_crystals(ids, tmp, SHARED / "data" / "cod-sample")
        unlike = [f"{sid} ({len(a)} atoms)" for sid, a, _ in crystals
                  if SMALL_ATOMS.get(int(sid[4:]), len(a)) != len(a)]
        if unlike:
            print(f"not the atom counts SMALL_ATOMS lists: {', '.join(unlike)}")
        torch.set_num_threads(threads)  # the floor with the threads the notebooks use
        floor_one = float(np.median([cost_floor([a], args.potential) for _, a, _ in crystals]))
        floor_all = cost_floor([a for _, a, _ in crystals], args.potential)
        print(f"{len(crystals)} crystals ({', '.join(str(len(a)) for _, a, _ in crystals)} atoms), "
              f"{args.potential}; 03_relax by papermill, a fresh process each: study "
              f"(-p strategy study -p hessian_seed off), then its defaults (fast)"
              + "".join(f" -p {k} {v}" for k, v in parameters.items()) + f"; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        run = compare_through_notebooks(tmp / "clean.db", tmp, parameters)
        split = run.fast.time_split()  # the executed notebooks are read before the folder goes
        startup = [run.study.startup_line(), run.fast.startup_line()]
        table = run.table
    table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(table.drop(columns=["E_study", "E_fast", "V_study", "V_fast"]).to_string(
        index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\ncost floor (full float64 ensemble, {threads} threads, one pass): {floor_one:.0f} ns per atom for one "
          f"crystal (median), {floor_all:.0f} ns per atom for all {len(crystals)} crystals in one pass")
    print("\n".join(startup))
    if split:
        print("where the fast path's relaxing time went:\n  " + "\n  ".join(
            pass_lines(split, run.fast.rows, floor_all)))
    _totals(table, run.study.wall, run.fast.wall, args.csv, " (whole processes)")


def _row(sid, atoms, v_exp, study, f_res, floor, potential) -> dict:
    s_res, s_wall, split = study
    v_s, v_f = s_res.atoms.get_volume(), f_res.atoms.get_volume()
    e_s = energy_per_atom(s_res.atoms, potential)
    e_f = f_res.e_final / len(atoms)
    return {
        "structure_id": sid, "natoms": len(atoms), "study_s": s_wall,
        "study_calls": s_res.force_calls, "fast_calls": f_res.force_calls,
        "fast_draft_calls": f_res.extra.get("draft_calls", 0),
        "study_steps": s_res.steps, "fast_steps": f_res.steps,
        "study_status": s_res.status, "fast_status": f_res.status,
        "study_fmax": s_res.fmax_final, "fast_fmax": f_res.fmax_final,
        "V_exp": v_exp, "V_study": v_s, "V_fast": v_f,
        "dV_study_pct": 100 * (v_s - v_exp) / v_exp, "dV_fast_pct": 100 * (v_f - v_exp) / v_exp,
        "dV_diff_pct": 100 * abs(v_f - v_s) / v_s,
        "E_study": e_s, "E_fast": e_f, "dE_meV_atom": 1000 * (e_f - e_s),
        "ns_atom_call": floor, "study_t_calc": split["t_calc"],
    }


if __name__ == "__main__":
    main()
