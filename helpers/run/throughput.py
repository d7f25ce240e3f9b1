"""Two ways of relaxing the same crystals, measured the way a user meets them: ``03_relax`` run by papermill
as a fresh process from the command line, whole process timed (start-up and model load included).

:func:`compare_through_notebooks` runs the study's method (``strategy = "study"``: one crystal at a time, torch
on every core, ASE's BFGS start) and 03_relax's defaults (the fast path) on one clean database, each into its
own relaxed database, and compares them crystal by crystal (``benchmarks/relax_throughput.py --small``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.process.cores import CORE_SHARE_ENV
from helpers.relax.time_split import read_time_split
from helpers.run.notebooks import notebook_path
from helpers.store import db as dbmod
from helpers.store.paths import project_root
from helpers.vocabulary import RUN_ENV, THREADS_ENV

#: what 03_relax needs beyond its defaults to relax exactly as the study did (one crystal at a time, ASE's start)
STUDY_PARAMETERS = {"strategy": "study", "hessian_seed": "off"}
#: a campaign's settings in the environment that a user's shell does not have (threads, core sharing, run id)
CAMPAIGN_ENV = (THREADS_ENV, CORE_SHARE_ENV, RUN_ENV)
CLOSING = re.compile(r"speedup: (?P<speedup>[-\d.]+)x, max \|dV fast - dV seed\|: (?P<dv>[-\d.]+|nan)%")


def closing_line(speedup: float, max_dv_pct: float) -> str:
    """The benchmarks' last line: crystals-per-hour ratio and the largest |V_fast − V_study| / V_study."""
    return f"speedup: {speedup:.1f}x, max |dV fast - dV seed|: {max_dv_pct:.2f}%"


def parse_closing_line(text: str) -> tuple[float, float]:
    """(speedup, max |dV| %) of the last :func:`closing_line` in ``text``; ValueError if there is none."""
    found = list(CLOSING.finditer(text))
    if not found:
        raise ValueError("no 'speedup: <r>x, max |dV fast - dV seed|: <p>%' line")
    return float(found[-1]["speedup"]), float(found[-1]["dv"])


def papermill_command(name: str, executed: Path, parameters: dict[str, Any]) -> list[str]:
    """``python -m papermill notebooks/<name>.ipynb <executed> -p key value ...``: what a user types."""
    command = [sys.executable, "-m", "papermill", str(notebook_path(name)), str(executed), "--no-progress-bar"]
    for key, value in parameters.items():
        command += ["-p", key, str(value)]
    return command


def user_environment() -> dict[str, str]:
    """This process's environment without a campaign's settings (:data:`CAMPAIGN_ENV`)."""
    return {k: v for k, v in os.environ.items() if k not in CAMPAIGN_ENV}


def run_notebook_process(name: str, executed: Path, parameters: dict[str, Any]) -> float:
    """Run notebook ``name`` through papermill in a new process from the project folder; its wall seconds.

    The process's own output goes to ``<executed>.log``; a failed run raises with the log's end."""
    log = executed.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(papermill_command(name, executed, parameters), cwd=project_root(),
                               env=user_environment(), stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if code:
        raise RuntimeError(f"papermill {name} failed (exit {code}):\n" + "\n".join(log.read_text().splitlines()[-30:]))
    return wall


def notebook_times(executed: Path) -> dict[str, float]:
    """Seconds papermill recorded in an executed notebook: the whole run (kernel start included) and its cells."""
    book = json.loads(Path(executed).read_text())
    cells = [c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0 for c in book["cells"]]
    return {"notebook_s": book["metadata"]["papermill"]["duration"], "cells_s": float(sum(cells))}


def notebook_output(executed: Path) -> str:
    """Everything the executed notebook's cells printed (streams and plain-text results)."""
    book = json.loads(Path(executed).read_text())
    parts = []
    for cell in book["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def relaxed_rows(path: str | Path) -> pd.DataFrame:
    """One row per structure of a relaxed database (the newest when there are several): what the comparison
    and the time split read."""
    rows = {}
    for row in dbmod.connect(str(path), must_exist=True).select("structure_id"):
        rows[row.structure_id] = {
            "structure_id": row.structure_id, "natoms": row.natoms, "status": row.get("status"),
            "steps": row.get("steps"), "fmax_final": row.get("fmax_final"), "V": row.get("V_relaxed"),
            "V_exp": row.get("V_exp"), "E_atom": row.get("e_final", float("nan")) / row.natoms,
            "force_calls": row.get("force_calls"), "draft_calls": row.get("draft_calls") or 0,
            "wall_time": row.get("wall_time"), "cost_time": row.get("cost_time", row.get("wall_time")),
            "strategy": row.get("strategy"), "settings_hash": row.get("settings_hash")}
    return pd.DataFrame(list(rows.values())).set_index("structure_id").sort_values("natoms")


def compare_relaxed(study: pd.DataFrame, fast: pd.DataFrame) -> pd.DataFrame:
    """Per crystal of ``study`` (:func:`relaxed_rows`): status, steps, relaxed volume, energy per atom of both,
    |V_fast − V_study| / V_study in % and E_fast − E_study in meV/atom (a crystal ``fast`` lacks: NaN)."""
    both = study.merge(fast, left_index=True, right_index=True, how="left", suffixes=("_study", "_fast"))
    v_exp = both.V_exp_study
    table = pd.DataFrame({
        "natoms": both.natoms_study, "status_study": both.status_study, "status_fast": both.status_fast,
        "steps_study": both.steps_study, "steps_fast": both.steps_fast,
        "fmax_study": both.fmax_final_study, "fmax_fast": both.fmax_final_fast,
        "V_study": both.V_study, "V_fast": both.V_fast,
        "dV_study_pct": 100 * (both.V_study - v_exp) / v_exp, "dV_fast_pct": 100 * (both.V_fast - v_exp) / v_exp,
        "dV_diff_pct": 100 * (both.V_fast - both.V_study).abs() / both.V_study,
        "E_study": both.E_atom_study, "E_fast": both.E_atom_fast,
        "dE_meV_atom": 1000 * (both.E_atom_fast - both.E_atom_study),
        "study_s": both.cost_time_study, "fast_cost_s": both.cost_time_fast,
        "fast_calls": both.force_calls_fast, "fast_draft_calls": both.draft_calls_fast,
    })
    return table.reset_index()


@dataclass
class NotebookRun:
    """One fresh 03_relax process: its wall time, executed notebook and relaxed database."""

    label: str
    wall: float
    executed: Path
    out_db: Path
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)

    def relaxing_s(self) -> float:
        """Seconds spent relaxing: the fast path's side-by-side loop (its time split), else the rows' costs."""
        split = self.time_split()
        return float(split["wall_s"]) if split else float(self.rows.cost_time.sum())

    def time_split(self) -> dict[str, float | int] | None:
        return read_time_split(notebook_output(self.executed))

    def startup_line(self) -> str:
        """Where the process's time went besides relaxing: kernel and papermill, the cells' imports and model load."""
        times, relaxing = notebook_times(self.executed), self.relaxing_s()
        return (f"{self.label}: process {self.wall:.1f} s = relaxing {relaxing:.1f} s + start-up "
                f"{self.wall - relaxing:.1f} s (outside the cells: python, papermill, kernel "
                f"{self.wall - times['cells_s']:.1f} s; in the cells, not relaxing: imports, model load, "
                f"databases {times['cells_s'] - relaxing:.1f} s)")


def run_side(label: str, workdir: Path, clean_db: Path, parameters: dict[str, Any]) -> NotebookRun:
    """One 03_relax process reading ``clean_db`` and writing ``<workdir>/<label>/relaxed_{potential}.db``."""
    folder = Path(workdir) / label
    folder.mkdir(parents=True, exist_ok=True)
    template = str(folder / "relaxed_{potential}.db")
    executed = folder / "03_relax.ipynb"
    wall = run_notebook_process("03_relax", executed, {"clean_db": str(clean_db), "out_db": template, **parameters})
    out_db = Path(template.format(potential=parameters.get("potential", "ani1x")))
    return NotebookRun(label, wall, executed, out_db, relaxed_rows(out_db))


@dataclass
class Comparison:
    """The study's method and 03_relax's defaults on the same crystals, each a fresh process."""

    study: NotebookRun
    fast: NotebookRun
    table: pd.DataFrame

    def speedup(self) -> float:
        return self.study.wall / self.fast.wall

    def line(self) -> str:
        return closing_line(self.speedup(), float(self.table.dV_diff_pct.max()))


def compare_through_notebooks(clean_db: Path, workdir: Path, parameters: dict[str, Any] | None = None) -> Comparison:
    """Run 03_relax twice on ``clean_db`` — the study's method (:data:`STUDY_PARAMETERS`), then its defaults —
    each as a fresh papermill process with ``parameters`` (strings as on a command line) added, and compare."""
    parameters = dict(parameters or {})
    study = run_side("study", workdir, clean_db, {**parameters, **STUDY_PARAMETERS})
    fast = run_side("fast", workdir, clean_db, parameters)
    return Comparison(study, fast, compare_relaxed(study.rows, fast.rows))


def pass_lines(split: dict[str, float | int], rows: pd.DataFrame, floor_ns: float | None = None) -> list[str]:
    """The fast path's passes against the cost floor: draft and exact passes (count, seconds, ns per atom of a
    crystal's pass, from the rows' draft and exact calls), pair lists, optimizer and bookkeeping."""
    draft_atoms = float((rows.draft_calls * rows.natoms).sum())
    exact_atoms = float(((rows.force_calls - rows.draft_calls) * rows.natoms).sum())

    def per_atom(seconds: float, atoms: float) -> str:
        return f"{1e9 * seconds / atoms:.0f} ns per atom" if atoms else "-"

    floor = f"; cost floor (full float64 ensemble, one pass of all): {floor_ns:.0f} ns per atom" if floor_ns else ""
    return [
        f"draft passes {int(split['draft_passes'])}: {split['draft_s']:.1f} s "
        f"({per_atom(split['draft_s'], draft_atoms)}); "
        f"exact passes {int(split['exact_passes'])}: {split['exact_s']:.1f} s "
        f"({per_atom(split['exact_s'], exact_atoms)}){floor}",
        f"pair lists {split['pairs_s']:.1f} s ({int(split['pair_builds'])} builds); "
        + (f"D3 {split['dispersion_s']:.1f} s; " if split.get("dispersion_s") else "")
        + f"optimizer and bookkeeping {split['optimizer_s']:.1f} s; side-by-side loop {split['wall_s']:.1f} s",
    ]
