"""The ``lattice`` stage of ``make results``: ``05_lattice_energy`` per potential, one table beside the report.

Each potential runs the notebook once (one torch thread), as one job of the campaign's executor (a local pool:
as many potentials at once as cores; or Dask) under the campaign's one failure rule, writing its lattice
database and per-crystal CSV in the campaign's work folder; every table in that folder (this run's and earlier
runs' potentials: a run of one potential never drops the others) is then combined into ``docs/lattice_energy.csv``,
which the report's lattice-energy section reads. Resumable: a rerun of the notebook skips every finished crystal
and molecule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.lattice.report import CSV_NAME, combine_tables
from helpers.run.executor import Executor, LocalExecutor, run_jobs
from helpers.run.notebooks import NOTEBOOK_KEY
from helpers.store.paths import work_layout

#: potentials whose crystal relaxation at the study's fmax costs too much here: the reference DFT crystal only
#: (GFN2-xTB: ~12 s per call on an 84-atom supercell, GFN1-xTB 1-2 s, each crystal on its >= 8 A supercell,
#: hundreds of steps per crystal: hours per crystal on 2 cores); marked in the table and the report
LATTICE_GEOMETRY: dict[str, str] = {"gfn2-xtb": "fixed", "gfn1-xtb": "fixed"}
LATTICE_NOTEBOOK = "05_lattice_energy"
#: each potential's files in the work folder's ``lattice/``: ``lattice_<potential>.db`` and ``.csv``
FILE_PREFIX = "lattice_"


def lattice_jobs(potentials: list[str], work_dir: str | Path, parameters: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """The 05_lattice_energy jobs (their parameters) of each potential (databases and CSVs under
    ``work_dir/lattice``); ``parameters`` are added to every job (e.g. ``crystals`` and ``fmax`` for a trial)."""
    folder = Path(work_layout(work_dir)["lattice"])
    return [{NOTEBOOK_KEY: LATTICE_NOTEBOOK, "potential": p, "out_db": str(folder / f"{FILE_PREFIX}{p}.db"),
             "out_csv": str(folder / f"{FILE_PREFIX}{p}.csv"), "geometry": LATTICE_GEOMETRY.get(p, "relaxed"),
             "n_threads": 1, **(parameters or {})}
            for p in potentials]


def lattice_tables(work_dir: str | Path) -> list[Path]:
    """Every potential's per-crystal table in ``work_dir/lattice``, registered potentials in the registry's order,
    then any other (a plugin's) by name."""
    from helpers.relax.potentials.registry import REGISTRY

    order = {name: i for i, name in enumerate(REGISTRY)}
    tables = Path(work_layout(work_dir)["lattice"]).glob(f"{FILE_PREFIX}*.csv")
    return sorted(tables, key=lambda p: (order.get(p.stem.removeprefix(FILE_PREFIX), len(order)), p.stem))


def run_lattice_stage(potentials: list[str], work_dir: str | Path, log_dir: str | Path, docs_dir: str | Path,
                      executor: Executor | None = None, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every potential's lattice-energy notebook on ``executor`` (default: a local pool) and write
    ``docs_dir/lattice_energy.csv`` from every table in the work folder (:func:`lattice_tables`). A potential
    whose notebook fails is reported (:func:`~helpers.run.executor.run_jobs`) and the others go on; its finished
    rows stay for the next run.
    Returns ``{"table", "failed", "notebooks"}``."""
    jobs = lattice_jobs(potentials, work_dir, parameters)
    done = run_jobs(executor or LocalExecutor(), jobs, log_dir, "lattice")
    out = Path(docs_dir) / CSV_NAME
    combine_tables(lattice_tables(work_dir), out)
    return {"table": out, **done}
