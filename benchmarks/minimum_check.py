"""Are a relaxed database's converged crystals minima of their potential? The rattle test, printed.

The same check as the campaign's opt-in ``minima`` stage and ``notebooks/06_minimum_check.ipynb``
(:func:`helpers.relax.minima.check_minima`), for one database outside a campaign: every converged row (``--sample
science``: the unaltered COD entries only) is kicked by 0.01 Å (seeded) and relaxed again with its own settings,
one crystal at a time on the exact model; the end point is not a minimum when the kicked relaxation ends more than
0.1 meV/atom lower (enthalpy under pressure). Prints the non-minima and the potential's median ΔV over the checked
crystals with the kicked ends in their place. The relaxed database is only read; results go to ``--minima-db``
(default: ``minima_<potential>.db`` beside it), and a rerun skips the crystals already there.
Usage: ``.venv/bin/python benchmarks/minimum_check.py data/results/relaxed_ani1ccx.db --sample science``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_env  # noqa: F401  (threads, weights and paths set before numpy, torch and the project)

# isort: split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("relaxed_db", help="a relaxed_<potential>.db of a campaign")
    parser.add_argument("--sample", default=None, help="only this sample set (science, altered, ice)")
    parser.add_argument("--minima-db", default=None, help="where the checks go (default: beside the database)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one crystal: 1 pays best)")
    args = parser.parse_args()

    import warnings

    from helpers.relax.minima import check_minima, finished_checks, minima_summary, minima_table
    from helpers.relax.stage import configure_threads

    warnings.simplefilter("ignore")
    configure_threads(args.threads)
    relaxed = Path(args.relaxed_db)
    out = args.minima_db or str(relaxed.with_name(relaxed.name.replace("relaxed_", "minima_", 1)
                                                  if relaxed.name.startswith("relaxed_") else f"minima_{relaxed.name}"))
    print(check_minima(str(relaxed), out, sample=args.sample, seed=args.seed, limit=args.limit, progress=True))
    table = minima_table(out)
    for line in minima_summary(table).itertuples():
        print(f"{line.potential}: checked {line.checked} converged crystals, {line.not_minima} end points are not "
              f"minima (a 0.01 Å kick relaxes them lower by more than 0.1 meV/atom), {line.failed} checks failed")
        ok, saddle = finished_checks(table[table.potential == line.potential])
        for r in ok[saddle].itertuples():
            print(f"  {r.structure_id}: ΔV {r.dv_end:+.2f} % -> {r.dv_kicked:+.2f} %, {r.energy_drop_mev:.2f} "
                  "meV/atom lower")
        print(f"  median ΔV end points {line.median_dv:+.2f} %, kicked ends in the non-minima's place "
              f"{line.median_dv_kicked:+.2f} %; median |ΔV| {line.median_abs_dv:.2f} -> "
              f"{line.median_abs_dv_kicked:.2f} %")


if __name__ == "__main__":
    main()
