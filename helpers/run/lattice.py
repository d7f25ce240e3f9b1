"""The ``lattice`` stage of ``make results``: ``05_lattice_energy`` per potential, one table beside the report.

Each potential runs the notebook once (one torch thread, as many potentials at once as cores), writing its
lattice database and per-crystal CSV in the campaign's work folder; the tables are then combined into
``docs/lattice_energy.csv``, which the report's lattice-energy section reads. Resumable: a rerun of the notebook
skips every finished crystal and molecule.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from helpers.lattice.report import CSV_NAME, combine_tables

#: potentials whose crystal relaxation at the study's fmax costs too much here: the start geometry only
#: (GFN2-xTB: ~12 s per call on an 84-atom supercell, hundreds of steps per crystal); marked in the table
LATTICE_GEOMETRY: dict[str, str] = {"gfn2-xtb": "fixed"}


def lattice_jobs(potentials: list[str], work_dir: str | Path, parameters: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """The 05_lattice_energy parameters of each potential (databases and CSVs under ``work_dir/lattice``);
    ``parameters`` are added to every job (e.g. ``crystals`` and ``fmax`` for a trial)."""
    folder = Path(work_dir) / "lattice"
    return [{"potential": p, "out_db": str(folder / f"lattice_{p}.db"), "out_csv": str(folder / f"lattice_{p}.csv"),
             "geometry": LATTICE_GEOMETRY.get(p, "relaxed"), "n_threads": 1, **(parameters or {})}
            for p in potentials]


def run_lattice_stage(potentials: list[str], work_dir: str | Path, log_dir: str | Path, docs_dir: str | Path,
                      max_parallel: int | None = None, parameters: dict[str, Any] | None = None) -> Path:
    """Run every potential's lattice-energy notebook and write ``docs_dir/lattice_energy.csv``; a potential
    whose notebook fails is reported and left out of the table (its finished rows stay for the next run)."""
    from helpers.run.notebooks import execute

    jobs = lattice_jobs(potentials, work_dir, parameters)

    def one(job: dict[str, Any]) -> str | None:
        try:
            execute("05_lattice_energy", job, log_dir, tag=job["potential"])
        except Exception as err:  # noqa: BLE001 - one potential's failure does not stop the others
            return f"{job['potential']}: {type(err).__name__}: {str(err)[:300]}"
        return None

    with ThreadPoolExecutor(max_workers=max_parallel or os.cpu_count() or 1) as pool:
        failures = [f for f in pool.map(one, jobs) if f]
    for line in failures:
        print("!!! lattice-energy notebook failed (rerun to continue):", line)
    out = Path(docs_dir) / CSV_NAME
    combine_tables([job["out_csv"] for job in jobs], out)
    return out
