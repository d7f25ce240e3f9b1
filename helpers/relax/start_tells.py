"""The start tells: how far from equilibrium a potential finds the experimental structure.

At the experimental geometry every relaxation's first model call gives the largest atomic force
(``start_fmax``, eV/Å) and the stress (``start_pressure``, GPa, and ``start_max_stress``, the largest
|component|, GPa). A crystal that every potential finds far from equilibrium is a candidate CIF problem
(mislabelled atoms, a wrong H position), not a verdict on one potential.

The relaxation engines record them from the evaluation they make anyway (no extra call, no change to
any relaxation or settings hash). Rows computed before that have no ``start_fmax``:
:func:`backfill_start_tells` evaluates the potential once on the clean database's experimental structure
and writes the keys into the relaxed database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ase import units

log = logging.getLogger(__name__)

#: the keys written into relaxed rows
KEYS = ("start_fmax", "start_fmax_heavy", "start_pressure", "start_max_stress")


def start_tells(forces: Any, stress: Any, numbers: Any = None) -> dict[str, float]:
    """``start_fmax`` (eV/Å) from the atomic forces, ``start_pressure`` and ``start_max_stress`` (GPa) from
    the stress (Voigt 6 or 3x3, eV/Å^3, ASE's sign: positive = tensile); missing parts are left out.

    With the atomic ``numbers``, also ``start_fmax_heavy``: the largest force on a non-H atom. X-ray
    X–H bonds are 0.1-0.2 Å short, which alone gives start forces of several eV/Å on the H atoms;
    forces on the heavy atoms tell more about the CIF's heavy-atom geometry.
    """
    out: dict[str, float] = {}
    if forces is not None:
        f = np.asarray(forces, dtype=float).reshape(-1, 3)
        if len(f) and np.isfinite(f).all():
            norms = np.sqrt((f**2).sum(axis=1))
            out["start_fmax"] = float(norms.max())
            if numbers is not None and len(numbers) == len(f) and (np.asarray(numbers) > 1).any():
                out["start_fmax_heavy"] = float(norms[np.asarray(numbers) > 1].max())
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (3, 3):
            s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if s.shape == (6,) and np.isfinite(s).all():
            out["start_pressure"] = float(-s[:3].mean() / units.GPa)
            out["start_max_stress"] = float(np.abs(s).max() / units.GPa)
    return out


def from_results(results: dict[str, Any] | None, numbers: Any = None) -> dict[str, float]:
    """The start tells from a calculator's ``results`` at the experimental geometry ({} when absent)."""
    if not results:
        return {}
    return start_tells(results.get("forces"), results.get("stress"), numbers)


def evaluate_start(atoms, calc) -> dict[str, float]:
    """One model call on ``atoms`` (the experimental structure): its start tells."""
    atoms = atoms.copy()
    atoms.calc = calc
    forces = atoms.get_forces()
    try:
        stress = atoms.get_stress()
    except Exception:  # noqa: BLE001 - a calculator without stress: forces only
        stress = None
    return start_tells(forces, stress, atoms.numbers)


#: a row whose back-fill failed records why here (and is not tried again unless asked): a failure is
#: the row's, it does not stop the others
ERROR_KEY = "start_tells_error"


def backfill_start_tells(relaxed_db: str, clean_db: str, potential: str | None = None,
                         calculator_options: dict | None = None, limit: int | None = None,
                         progress: bool = False, **options: Any) -> int:
    """Write the start tells into rows of ``relaxed_db`` that lack ``start_fmax``; returns how many.

    :func:`fill_start_tells` with its counts reduced to the rows filled (``options``: its keywords)."""
    return fill_start_tells(relaxed_db, clean_db, potential, calculator_options, limit, progress, **options)["filled"]


def _calculator_options(row, given: dict | None) -> tuple[dict, str | None]:
    """The options the row's relaxation made its calculator with (its data's ``calculator_options``, which
    hold only those that change the answers), or why they cannot be made again."""
    from helpers.relax.potentials.registry import MODEL_FILE_HASH

    recorded = dict((row.data or {}).get("calculator_options") or {})
    if MODEL_FILE_HASH in recorded:
        return {}, "relaxed with a model file of its own (only its sha256 is recorded): not back-filled"
    return {**recorded, **(given or {})}, None


def fill_start_tells(relaxed_db: str, clean_db: str, potential: str | None = None,
                     calculator_options: dict | None = None, limit: int | None = None, progress: bool = False, *,
                     keep: Callable[[Any], bool] | None = None, retry_failed: bool = False) -> dict[str, int]:
    """Write the start tells into rows of ``relaxed_db`` that lack ``start_fmax``: one model call each.

    The potential (each row's ``potential``, or ``potential``) is evaluated once on the clean database's
    structure of the row's ``structure_id``, with the calculator options its relaxation recorded;
    skipped/crashed rows (never started) are left. Only key-value pairs are added: atoms, settings hashes and
    every other key stay as they are. Resumable: each row is written as soon as it is done.

    A row that fails (the model raises, no finite forces, options that cannot be made again) gets
    :data:`ERROR_KEY` and is not tried again unless ``retry_failed``; a potential whose calculator cannot be
    made here (package missing) is logged and its rows left for a later run. ``keep(row)``: only rows it
    accepts (e.g. the rows an analysis uses). Returns counts: ``filled``, ``failed``, ``no_clean_row``,
    ``unavailable`` (rows of potentials without a calculator here).
    """
    from tqdm.auto import tqdm

    from helpers.relax.potentials.registry import get_potential
    from helpers.store import db as dbmod

    out = dbmod.connect(relaxed_db, must_exist=True)
    clean = dbmod.connect(clean_db, must_exist=True)
    clean_ids = dbmod.ids_with(clean, "structure_id")
    todo = [row for row in out.select()
            if row.get("start_fmax") is None and row.get("e_initial") is not None
            and (retry_failed or row.get(ERROR_KEY) is None)
            and (potential is None or row.get("potential") == potential) and (keep is None or keep(row))][:limit]
    counts = {"filled": 0, "failed": 0, "no_clean_row": 0, "unavailable": 0}
    calcs: dict[tuple[str, str], Any] = {}
    bar = tqdm(todo, desc=f"start tells {Path(str(relaxed_db)).name}", unit="row", disable=not (progress and todo))
    for row in bar:
        name = row.get("potential") or potential
        sid = str(row.get("structure_id"))
        if sid not in clean_ids:
            counts["no_clean_row"] += 1
            continue
        options, why_not = _calculator_options(row, calculator_options)
        tells: dict[str, float] = {}
        if why_not is None:
            key = (name, json.dumps(options, sort_keys=True, default=str))
            if key not in calcs:
                try:
                    calcs[key] = get_potential(name).calculator(**options)
                except Exception as exc:  # noqa: BLE001 - this machine cannot make it: later runs may
                    log.warning("start tells: no %s calculator here (%s: %s); its rows are left for a later run",
                                name, type(exc).__name__, exc)
                    calcs[key] = None
            if calcs[key] is None:
                counts["unavailable"] += 1
                continue
            try:
                tells = evaluate_start(clean.get(id=clean_ids[sid]).toatoms(), calcs[key])
                why_not = None if "start_fmax" in tells else "no finite forces at the experimental geometry"
            except Exception as exc:  # noqa: BLE001 - one row's failure is recorded, not raised
                why_not = f"{type(exc).__name__}: {exc}"
        if why_not is None:
            out.update(row.id, **tells)
            counts["filled"] += 1
        else:
            out.update(row.id, **{ERROR_KEY: why_not[:300]})
            counts["failed"] += 1
        bar.set_postfix(counts)
    bar.close()
    return counts
