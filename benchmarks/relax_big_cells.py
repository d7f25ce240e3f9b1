"""Large cells (184-496 atoms): the fast path in full, the study's method sampled.

The study's method needs hours per crystal at these sizes, so it runs only ``--study-steps`` BFGS steps
here; its full cost is *estimated* as (seconds per study step) x (steps the fast path took), which assumes
the study's BFGS would need as many steps (on the default list the two step counts agree within ±40 %).
The fast path runs each crystal alone in a worker process (one torch thread, one worker per core), so its
time per crystal is that crystal's own, start-up included; the crystals-per-hour ratio compares the summed
study estimates with the fast path's wall time over all crystals. Prints a table and writes a CSV.
Usage: ``.venv/bin/python benchmarks/relax_big_cells.py [--ids 2008119,2009480] [--csv out.csv]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as in relax_throughput

import pandas as pd  # noqa: E402
from relax_throughput import BIG_IDS, fast_share, load_crystals, study_relax  # noqa: E402


def timed_fast(args):
    sid, atoms, potential, draft = args
    start = time.perf_counter()
    results, split = fast_share(([(sid, atoms)], potential, 512, draft))
    return sid, results[sid], time.perf_counter() - start, split


def study_per_step(atoms, potential: str, steps: int) -> float:
    """Seconds per BFGS step of the study's method: runs capped at 1 and at ``steps`` steps, differenced
    (so model loading and the first evaluation do not count)."""
    import helpers.relax.engine as relax_module

    original = relax_module.RelaxSettings.resolved
    times = {}
    try:
        for cap in (1, steps):
            relax_module.RelaxSettings.resolved = lambda self, default, cap=cap: replace(
                original(self, default), max_steps_base=cap, steps_per_atom=0)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result, _ = study_relax(atoms, potential)
            times[cap] = (time.perf_counter() - start, result.steps)
    finally:
        relax_module.RelaxSettings.resolved = original
    (t1, n1), (tn, nn) = times[1], times[steps]
    return (tn - t1) / max(nn - n1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", help="comma-separated COD ids (default: the big list)")
    parser.add_argument("--potential", default="ani1x")
    parser.add_argument("--study-steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--draft", default="float32", type=lambda v: None if v == "none" else v)
    parser.add_argument("--csv", default="relax_big_cells.csv")
    args = parser.parse_args()
    ids = tuple(int(i) for i in args.ids.split(",")) if args.ids else BIG_IDS
    import torch

    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        crystals = load_crystals(ids, Path(tmp))
    per_step = {}
    for sid, atoms, _ in crystals:
        per_step[sid] = study_per_step(atoms, args.potential, args.study_steps)
        print(f"  study {sid} ({len(atoms)} atoms): {per_step[sid]:.2f} s per step "
              f"({args.study_steps} steps, {args.workers} threads)", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        fast = list(pool.map(timed_fast, [(sid, a, args.potential, args.draft) for sid, a, _ in crystals]))
    fast_total = time.perf_counter() - start
    rows = []
    for (sid, atoms, v_exp), (_, result, wall, split) in zip(crystals, fast):
        estimate = per_step[sid] * result.steps
        rows.append({"structure_id": sid, "natoms": len(atoms), "fast_s": wall, "fast_steps": result.steps,
                     "fast_status": result.status, "fast_fmax": result.fmax_final,
                     "draft_calls": result.extra.get("draft_calls"), "model_s": split["model"],
                     "optimizer_s": split["optimizer"], "study_s_per_step": per_step[sid],
                     "study_s_estimated": estimate, "per_crystal_ratio": estimate / wall,
                     "dV_fast_pct": 100 * (result.atoms.get_volume() - v_exp) / v_exp})
    table = pd.DataFrame(rows)
    table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    study_total = table.study_s_estimated.sum()
    print(f"study (estimated, one crystal at a time on {args.workers} threads): {study_total:.0f} s; fast "
          f"({args.workers} workers, one crystal each at a time): {fast_total:.0f} s; wrote {args.csv}")
    print(f"speedup (crystals per hour, study estimated): {study_total / fast_total:.1f}x")


if __name__ == "__main__":
    main()
