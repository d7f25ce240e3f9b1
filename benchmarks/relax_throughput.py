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
and all crystals in one pass); the fast path's time split (model / neighbour lists / optimizer) and
both paths' totals. Ends with ``speedup: <r>x, max |dV fast - dV seed|: <p>%``.
Usage: ``.venv/bin/python benchmarks/relax_throughput.py [--quick | --big] [--csv out.csv]``.
A potential other than a plain ANI model (``--potential sevennet0-d3``, ``chgnet-d3``, ...) relaxes one crystal at
a time: its comparison is :mod:`one_at_a_time_throughput` (today's path vs seeded BFGS on every core).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("ANI_MODEL_DIR", str(SHARED / "models" / "ani-neurochem"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from one_at_a_time_throughput import load_crystals  # noqa: E402

#: clean COD crystals (pass helpers.filter.stage.run_filter), 24-148 atoms: the default list
DEFAULT_IDS = (1011063, 2007300, 2000642, 2100348, 7100406, 2007325, 2210104)
QUICK_IDS = (2007300, 2100348)
#: added by --big: 184-496 atoms (the study's method needs hours for these)
BIG_IDS = (2008119, 2009480, 4022310, 2007008)


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
    _threads(1)
    import torch

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.side_by_side import relax_many

    settings = RelaxSettings(potential=potential, strategy="fast", draft=draft).resolved(
        get_potential(potential).steps_per_atom)
    model = load_ani(potential)
    evaluator = SideBySideANI(model)
    drafter = SideBySideANI(model, dtype=getattr(torch, draft)) if draft else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = dict(relax_many(shares, evaluator, settings, max_atoms_in_flight=batch_atoms, draft=drafter))
    wall = time.perf_counter() - start
    both = [e for e in (evaluator, drafter) if e is not None]
    split = {"wall": wall, "model": sum(e.time_model for e in both), "pairs": sum(e.time_pairs for e in both),
             "passes": sum(e.n_calls for e in both), "draft_passes": drafter.n_calls if drafter else 0,
             "rebuilds": sum(e.n_rebuilds for e in both)}
    split["optimizer"] = wall - split["model"] - split["pairs"]
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
    parser.add_argument("--ids", help="comma-separated COD ids instead of the default list")
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
          + ", ".join(f"{w:.1f} s" for w in splits.wall) + ")", flush=True)
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
    tot = splits[["wall", "model", "pairs", "optimizer", "passes", "draft_passes", "rebuilds"]].sum()
    print(f"fast path time split (summed over workers): model {tot.model:.1f} s, neighbour lists {tot.pairs:.1f} s, "
          f"optimizer and bookkeeping {tot.optimizer:.1f} s; {int(tot.passes)} model passes "
          f"({int(tot.draft_passes)} of them draft), "
          f"{int(tot.rebuilds)} pair-list builds")
    print(f"study: {len(table)} crystals in {study_total:.0f} s = {3600 * len(table) / study_total:.0f} crystals/h; "
          f"fast: {fast_total:.0f} s = {3600 * len(table) / fast_total:.0f} crystals/h; wrote {args.csv}; "
          f"load average {os.getloadavg()[0]:.2f}")
    worse = table[(table.dV_diff_pct > 0.5) & (table.dE_meV_atom > 0)]
    if len(worse):
        print(f"fast path above 0.5 % volume AND higher energy for: {', '.join(worse.structure_id)}")
    print(f"speedup: {study_total / fast_total:.1f}x, max |dV fast - dV seed|: {table.dV_diff_pct.max():.2f}%")


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
