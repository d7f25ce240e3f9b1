"""Are a campaign's converged crystals minima of their potential? The rattle test on every converged row.

BFGS from an experimental cell can stop on a saddle its symmetry held it on (:mod:`helpers.relax.stability`).
For every converged row of one relaxed database (``--sample science``: the unaltered COD entries only), this
kicks the recorded end point by 0.01 Å (seeded) and relaxes it again with the study's method (float64, one
crystal, ASE's BFGS; the row's own fmax, step cap, cell filter and pressure), then prints per crystal the
energy drop (enthalpy under pressure) and the volume the kicked relaxation reached, and a summary: how many
end points were not minima, and the potential's median ΔV over the checked crystals with the kicked ends in
their place. The database is only read; results go to ``--csv`` (appended; a rerun skips the crystals
already there).
Usage: ``.venv/bin/python benchmarks/minimum_check.py data/results/relaxed_ani1ccx.db --sample science``.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import bench_env  # noqa: F401  (threads, weights and paths set before numpy, torch and the project)

# isort: split

FIELDS = ["potential", "structure_id", "natoms", "dV_end", "dV_kicked", "energy_drop_meV", "is_minimum",
          "kicked_status", "kicked_steps", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("relaxed_db", help="a relaxed_<potential>.db of a campaign")
    parser.add_argument("--sample", default=None, help="only this sample set (science, altered, ice)")
    parser.add_argument("--csv", default=None, help="append one line per crystal here (default: beside the db)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one crystal: 1 pays best)")
    args = parser.parse_args()

    import numpy as np
    from ase.db import connect
    from ase.units import GPa

    from helpers.analysis.sample_sets import sample_set
    from helpers.relax.engine import EXTERNAL_PRESSURE, RelaxSettings
    from helpers.relax.fallback import study_method
    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.stability import rattle_test
    from helpers.relax.stage import configure_threads

    warnings.simplefilter("ignore")
    configure_threads(args.threads)
    db = connect(args.relaxed_db)
    rows = [r for r in db.select(status="converged")
            if args.sample is None or sample_set(r.get("source"), formula=r.get("cif_formula")) == args.sample]
    rows.sort(key=lambda r: r.natoms)
    out = Path(args.csv or Path(args.relaxed_db).with_suffix(".minimum_check.csv"))
    done = {(r["potential"], r["structure_id"]) for r in csv.DictReader(out.open())} if out.is_file() else set()
    todo = [r for r in rows if (r.potential, r.structure_id) not in done][:args.limit]
    calcs = {}
    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        if not done:
            writer.writeheader()
        for row in todo:
            settings = study_method(RelaxSettings(**row.data["settings"]))
            if row.potential not in calcs:
                calcs[row.potential] = get_potential(row.potential).calculator()
            atoms = row.toatoms()
            if settings.pressure:  # relaxed at its CIF's pressure: kicked and compared (in enthalpy) at it too
                atoms.info[EXTERNAL_PRESSURE] = row.relax_pressure_gpa * GPa
            start = time.perf_counter()
            found = rattle_test(atoms, calcs[row.potential], settings, seed=args.seed)
            line = {"potential": row.potential, "structure_id": row.structure_id, "natoms": row.natoms,
                    "dV_end": 100 * (row.V_relaxed / row.V_exp - 1),
                    "dV_kicked": 100 * (found.atoms.get_volume() / row.V_exp - 1),
                    "energy_drop_meV": 1000 * found.energy_drop, "is_minimum": found.is_minimum,
                    "kicked_status": found.status, "kicked_steps": found.steps,
                    "seconds": round(time.perf_counter() - start, 1)}
            writer.writerow(line)
            fh.flush()
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()),
                  flush=True)

    table = list(csv.DictReader(out.open()))
    if not table:
        return
    end = np.array([float(r["dV_end"]) for r in table])
    kicked = np.array([float(r["dV_kicked"]) for r in table])
    saddle = np.array([r["is_minimum"] != "True" for r in table])
    print(f"checked {len(table)} converged crystals: {int(saddle.sum())} end points are not minima "
          f"(a 0.01 Å kick relaxes them lower by more than 0.1 meV/atom)")
    for r in (r for r, s in zip(table, saddle) if s):
        print(f"  {r['structure_id']}: ΔV {float(r['dV_end']):+.2f} % -> {float(r['dV_kicked']):+.2f} %, "
              f"{float(r['energy_drop_meV']):.2f} meV/atom lower")
    with_kicked = np.where(saddle, kicked, end)
    print(f"median ΔV over these {len(table)}: end points {np.median(end):+.2f} %, kicked ends in the saddles' "
          f"place {np.median(with_kicked):+.2f} %; median |ΔV| {np.median(np.abs(end)):.2f} -> "
          f"{np.median(np.abs(with_kicked)):.2f} %")


if __name__ == "__main__":
    main()
