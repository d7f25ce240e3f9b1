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

from typing import Any

import numpy as np
from ase import units

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


def backfill_start_tells(relaxed_db: str, clean_db: str, potential: str | None = None,
                         calculator_options: dict | None = None, limit: int | None = None,
                         progress: bool = False) -> int:
    """Write the start tells into rows of ``relaxed_db`` that lack ``start_fmax``; returns how many.

    The potential (each row's ``potential``, or ``potential``) is evaluated once on the clean
    database's structure of the row's ``structure_id``; skipped/crashed rows (never started) are left.
    Only key-value pairs are added: atoms, settings hashes and every other key stay as they are.
    """
    from helpers.relax.potentials.registry import get_potential
    from helpers.store import db as dbmod

    out = dbmod.connect(relaxed_db, must_exist=True)
    clean = dbmod.connect(clean_db, must_exist=True)
    todo = [(row.id, row.structure_id, row.get("potential")) for row in out.select()
            if row.get("start_fmax") is None and row.get("e_initial") is not None
            and (potential is None or row.get("potential") == potential)][:limit]
    calcs: dict[str, Any] = {}
    done = 0
    for row_id, sid, pot in todo:
        name = pot or potential
        if name not in calcs:
            calcs[name] = get_potential(name).calculator(**(calculator_options or {}))
        try:
            exp = clean.get(structure_id=sid)
        except KeyError:
            continue
        tells = evaluate_start(exp.toatoms(), calcs[name])
        if tells:
            out.update(row_id, **tells)
            done += 1
        if progress:
            print(f"{sid} {name}: {tells}")
    return done
