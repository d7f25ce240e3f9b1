"""Large cells (184-496 atoms): the fast path in full, the study's method sampled.

The study's method needs hours per crystal at these sizes, so it runs only ``--study-steps`` BFGS steps
here; its full cost is *estimated* as (seconds per study step) x (steps the fast path took), which assumes
the study's BFGS would need as many steps (on the default list the two step counts agree within ±40 %).
The fast path runs each crystal alone in its own worker process (one torch thread), so its time is that
crystal's own, start-up included. Prints a table and writes a CSV.
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
    """Seconds per BFGS step of the study's method, from a run capped at ``steps`` steps."""
    import helpers.relax as relax_module

    original = relax_module.RelaxSettings.resolved

    def capped(self, default):
        return replace(original(self, default), max_steps_base=steps, steps_per_atom=0)

    relax_module.RelaxSettings.resolved = capped
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result, _ = study_relax(atoms, potential)
        return (time.perf_counter() - start) / max(result.steps, 1)
    finally:
        relax_module.RelaxSettings.resolved = original


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
    with ProcessPoolExecutor(args.workers) as pool:
        fast = list(pool.map(timed_fast, [(sid, a, args.potential, args.draft) for sid, a, _ in crystals]))
    rows = []
    for (sid, atoms, v_exp), (_, result, wall, split) in zip(crystals, fast):
        estimate = per_step[sid] * result.steps
        rows.append({"structure_id": sid, "natoms": len(atoms), "fast_s": wall, "fast_steps": result.steps,
                     "fast_status": result.status, "fast_fmax": result.fmax_final,
                     "draft_calls": result.extra.get("draft_calls"), "model_s": split["model"],
                     "optimizer_s": split["optimizer"], "study_s_per_step": per_step[sid],
                     "study_s_estimated": estimate, "speedup_estimated": estimate / wall,
                     "dV_fast_pct": 100 * (result.atoms.get_volume() - v_exp) / v_exp})
    table = pd.DataFrame(rows)
    table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"estimated speedup per crystal (study per-step cost x fast steps / fast wall, one crystal per core "
          f"for the fast path vs both cores for the study): median {table.speedup_estimated.median():.1f}x; "
          f"wrote {args.csv}")


if __name__ == "__main__":
    main()
