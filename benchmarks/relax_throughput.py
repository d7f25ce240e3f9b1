"""How many crystals per hour: the study's relax method vs the project's fast path, same run.

(a) the study's method exactly: one crystal at a time, torchani's stock ASE calculator with its
    default ``all_pairs`` neighbour list, float64, 8-model ensemble, ASE BFGS + FrechetCellFilter,
    fmax 5e-4 eV/Å, cap 300 + x·n; torch uses every core.
(b) the fast path (``RelaxSettings(strategy="fast")``, :func:`helpers.fastrelax.relax_fast`):
    one-pass calculator, per-cell neighbour list, cheap pre-relaxation (one network, float32),
    exact final stage (full float64 ensemble, BFGS, the study's fmax and cap), and one crystal
    per core in worker processes with one torch thread each.
Both run interleaved in chunks of ``--workers`` crystals (study on each crystal of the chunk, then
the fast path on the whole chunk in parallel), so load from other users hits both alike.
Crystals come from ../shared/data through the real fetch + filter stages.

Prints per crystal: wall time, force calls, steps, final fmax, relaxed volume, energy per atom,
|V_fast − V_study| / V_study and the speed-up; per crystal the cost floor (ns per atom per force
call of the full model alone) and the time split of the fast path's final stage (model /
neighbour list / optimizer). Ends with ``speedup: <r>x, max |dV fast - dV seed|: <p>%``.
Usage: ``.venv/bin/python benchmarks/relax_throughput.py [--quick | --big] [--csv out.csv]``.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: clean COD crystals (pass helpers.filters.run_filter), 24-116 atoms: the default list
DEFAULT_IDS = (1011063, 2007300, 2000642, 2100348, 7100406, 2007325)
QUICK_IDS = (2007300, 2100348)
#: added by --big: 148-496 atoms
BIG_IDS = (2210104, 2008119, 2009480, 4022310, 2007008)


def load_crystals(cod_ids, workdir: Path) -> list:
    """(structure_id, Atoms, V_exp) of the clean crystals, via the project's own fetch + filter."""
    from helpers import db
    from helpers.fetch import fetch
    from helpers.filters import run_filter

    fetch(source=str(SHARED / "data" / "cod"), raw_db=str(workdir / "raw.db"), cod_ids=cod_ids, progress=False)
    run_filter(str(workdir / "raw.db"), str(workdir / "clean.db"), str(workdir / "rejects.db"), progress=False)
    rows = list(db.connect(str(workdir / "clean.db")).select())
    missing = {f"cod-{i:07d}" for i in cod_ids} - {r.structure_id for r in rows}
    if missing:
        print(f"not clean (rejected by the filter), left out: {sorted(missing)}")
    return sorted(((r.structure_id, r.toatoms(), r.V_exp) for r in rows), key=lambda x: len(x[1]))


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

    from helpers.models import load_ani
    from helpers.potentials import get_potential
    from helpers.relax import RelaxSettings, relax

    calc = count_calls(load_ani(potential, dtype=torch.float64, neighborlist="all_pairs").ase())
    settings = RelaxSettings(potential=potential).resolved(get_potential(potential).steps_per_atom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = relax(atoms, calc, settings)
    result.force_calls = calc.n_calls
    return result, {"t_calc": calc.t_calc}


def fast_relax(args):
    """Worker: the fast path on one crystal, one torch thread; returns the result and time split."""
    sid, atoms, potential = args
    _threads(1)
    from helpers.fastrelax import relax_fast, stage_calculator
    from helpers.potentials import get_potential
    from helpers.relax import RelaxSettings

    settings = RelaxSettings(potential=potential, strategy="fast").resolved(get_potential(potential).steps_per_atom)
    final = stage_calculator(potential, None, "float64")
    if not hasattr(final, "t_calc"):
        count_calls(final)
        final.nl_timer = Timed(final.model.neighborlist)
    t_calc, t_nl = final.t_calc, final.nl_timer.total
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = relax_fast(atoms, potential, settings, final_calc=final)
    wall = time.perf_counter() - start
    stages = result.extra["stages"]
    t_nl = final.nl_timer.total - t_nl
    split = {"final_wall": stages[-1]["wall_time"], "final_nl": t_nl, "final_model": final.t_calc - t_calc - t_nl,
             "cheap_wall": sum(s["wall_time"] for s in stages[:-1])}
    split["final_opt"] = split["final_wall"] - split["final_model"] - split["final_nl"]
    return sid, result, wall, split


def cost_floor(atoms, potential: str, repeats: int = 5) -> float:
    """ns per atom per energy+forces+stress call of the full float64 ensemble, one thread."""
    from helpers.fastrelax import stage_calculator

    calc = stage_calculator(potential, None, "float64")
    probe = atoms.copy()
    times = []
    for _ in range(repeats):
        probe.calc = None
        calc.reset()
        t = time.perf_counter()
        calc.calculate(probe, ["energy", "forces", "stress"])
        times.append(time.perf_counter() - t)
    return 1e9 * min(times) / len(atoms)


def _floor_worker(args):
    atoms, potential = args
    _threads(1)
    return cost_floor(atoms, potential)


def energy_per_atom(atoms, potential: str) -> float:
    from helpers.fastrelax import stage_calculator

    probe = atoms.copy()
    probe.calc = stage_calculator(potential, None, "float64")
    return probe.get_potential_energy() / len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 small crystals (smoke run)")
    parser.add_argument("--big", action="store_true", help="add crystals of 148-496 atoms")
    parser.add_argument("--ids", help="comma-separated COD ids instead of the default list")
    parser.add_argument("--potential", default="ani1x")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--csv", default="relax_throughput.csv")
    args = parser.parse_args()
    ids = (tuple(int(i) for i in args.ids.split(",")) if args.ids else
           QUICK_IDS if args.quick else DEFAULT_IDS + (BIG_IDS if args.big else ()))
    import torch

    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        crystals = load_crystals(ids, Path(tmp))
    print(f"{len(crystals)} crystals, {args.potential}; study: 1 process x {args.workers} threads; "
          f"fast: {args.workers} processes x 1 thread", flush=True)
    rows = []
    study_total = fast_total = 0.0
    with ProcessPoolExecutor(args.workers) as pool:
        floors = list(pool.map(_floor_worker, [(a, args.potential) for _, a, _ in crystals]))
        for start in range(0, len(crystals), args.workers):
            chunk = crystals[start:start + args.workers]
            study = {}
            for sid, atoms, _ in chunk:
                t = time.perf_counter()
                result, split = study_relax(atoms, args.potential)
                study[sid] = (result, time.perf_counter() - t, split)
                study_total += study[sid][1]
                print(f"  study {sid} ({len(atoms)} atoms): {study[sid][1]:.1f} s, {result.status}", flush=True)
            t = time.perf_counter()
            fast = {sid: (res, wall, split) for sid, res, wall, split in
                    pool.map(fast_relax, [(sid, atoms, args.potential) for sid, atoms, _ in chunk])}
            chunk_wall = time.perf_counter() - t
            fast_total += chunk_wall
            print(f"  fast  chunk of {len(chunk)} in parallel: {chunk_wall:.1f} s", flush=True)
            for sid, atoms, v_exp in chunk:
                rows.append(_row(sid, atoms, v_exp, study[sid], fast[sid], floors[crystals.index(
                    next(c for c in crystals if c[0] == sid))], args.potential))
    table = pd.DataFrame(rows)
    table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(table.drop(columns=["E_study", "E_fast"]).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\ncost floor (full float64 ensemble, 1 thread): "
          f"{np.median(table.ns_atom_call):.0f} ns per atom per call (median; per crystal in the CSV)")
    opt = table[["t_model", "t_nl", "t_opt"]].sum()
    print(f"fast path final stage time split: model {opt.t_model:.1f} s, neighbour list {opt.t_nl:.1f} s, "
          f"optimizer {opt.t_opt:.1f} s; cheap stage {table.t_cheap.sum():.1f} s")
    print(f"study: {len(table)} crystals in {study_total:.0f} s = {3600 * len(table) / study_total:.0f} crystals/h; "
          f"fast: {fast_total:.0f} s = {3600 * len(table) / fast_total:.0f} crystals/h; wrote {args.csv}")
    worse = table[(table.dV_diff_pct > 0.5) & (table.dE_meV_atom > 0)]
    if len(worse):
        print(f"fast path above 0.5 % volume AND higher energy for: {', '.join(worse.structure_id)}")
    print(f"speedup: {study_total / fast_total:.1f}x, max |dV fast - dV seed|: {table.dV_diff_pct.max():.2f}%")


def _row(sid, atoms, v_exp, study, fast, floor, potential) -> dict:
    s_res, s_wall, _ = study
    f_res, f_wall, split = fast
    v_s, v_f = s_res.atoms.get_volume(), f_res.atoms.get_volume()
    e_s = energy_per_atom(s_res.atoms, potential)
    e_f = f_res.e_final / len(atoms)
    return {
        "structure_id": sid, "natoms": len(atoms),
        "study_s": s_wall, "fast_s": f_wall, "speedup": s_wall / f_wall,
        "study_calls": s_res.force_calls, "fast_calls": f_res.force_calls,
        "study_steps": s_res.steps, "fast_steps": f_res.steps, "fast_final_steps": f_res.extra.get("final_steps"),
        "study_status": s_res.status, "fast_status": f_res.status,
        "study_fmax": s_res.fmax_final, "fast_fmax": f_res.fmax_final,
        "V_exp": v_exp, "V_study": v_s, "V_fast": v_f,
        "dV_study_pct": 100 * (v_s - v_exp) / v_exp, "dV_fast_pct": 100 * (v_f - v_exp) / v_exp,
        "dV_diff_pct": 100 * abs(v_f - v_s) / v_s,
        "E_study": e_s, "E_fast": e_f, "dE_meV_atom": 1000 * (e_f - e_s),
        "ns_atom_call": floor, "study_t_calc": study[2]["t_calc"],
        "t_model": split["final_model"], "t_nl": split["final_nl"],
        "t_opt": split["final_opt"], "t_cheap": split["cheap_wall"],
    }


if __name__ == "__main__":
    main()
