"""The contract every potential must keep, checkable by anyone who writes one (a plugin author too):

- it covers the crystal's elements, and declares only real chemical symbols;
- energy, forces and stress come back as float64 (what ASE's optimizers and the hash of the answers expect);
- forces are minus the gradient of the energy, and the stress is the derivative of the energy under strain
  (central finite differences on a real, rattled crystal);
- the versions of its packages and its fixed answer-changing choices are in the settings hash, and so is
  every calculator option that differs from its default.

Why: the relax stage trusts these silently (a stress that is not the energy's derivative moves the cell to
the wrong volume without any error). Use::

    from helpers.relax.potentials.contract import check_contract
    report = check_contract(my_potential, atoms)  # raises ContractError naming what is broken

``tests/relax/test_potential_contract.py`` runs it over every registered potential on CO2 (COD 1010060, 12 atoms,
the smallest real clean crystal of the sample; every potential covers C and O).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols

from helpers.relax.engine import RelaxSettings, versions
from helpers.relax.potentials.card import Potential


class ContractError(AssertionError):
    """A potential breaks its contract (the message says which part, by how much)."""


@dataclass
class ContractReport:
    """What :func:`check_contract` measured (largest deviations, eV/Å and eV/Å³)."""

    name: str
    natoms: int
    force_error: float = 0.0
    stress_error: float = 0.0
    hashed: list[str] = field(default_factory=list)


def _energy(calc: Calculator, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def strained_energy(calc: Calculator, atoms: Atoms, i: int, j: int, d: float) -> float:
    """Energy of ``atoms`` under the symmetric strain ``d`` on (i, j) (atoms move with the cell)."""
    eps = np.eye(3)
    eps[i, j] += d
    if i != j:
        eps[j, i] += d
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array @ eps, scale_atoms=True)
    return _energy(calc, strained)


def check_elements(potential: Potential, atoms: Atoms) -> None:
    """Declared elements are real symbols and cover ``atoms``."""
    unreal = sorted(set(potential.elements) - set(chemical_symbols[1:]))
    if unreal:
        raise ContractError(f"{potential.name}: declares {unreal}, not chemical symbols")
    uncovered = potential.uncovered(atoms.get_chemical_symbols())
    if uncovered:
        raise ContractError(f"{potential.name}: does not cover {sorted(uncovered)} of {atoms.get_chemical_formula()}")


def check_float64(potential: Potential, calc: Calculator, atoms: Atoms) -> None:
    """Energy, forces and stress of the calculator come back in double precision."""
    atoms = atoms.copy()
    atoms.calc = calc
    values = {"energy": np.asarray(atoms.get_potential_energy()), "forces": np.asarray(atoms.get_forces()),
              "stress": np.asarray(atoms.get_stress())}
    bad = {k: str(v.dtype) for k, v in values.items() if v.dtype != np.float64}
    if bad:
        raise ContractError(f"{potential.name}: not float64: {bad}")


def check_forces(potential: Potential, calc: Calculator, atoms: Atoms, step: float = 1e-3, rtol: float = 1e-4,
                 atol: float = 1e-4, indices: tuple[int, ...] = (-1,)) -> float:
    """Forces on atoms ``indices`` against central differences of the energy; the largest deviation."""
    probe = atoms.copy()
    probe.calc = calc
    forces = probe.get_forces()
    tolerance = rtol * float(np.abs(forces).max()) + atol
    worst = 0.0
    for a in indices:
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += step
            minus.positions[a, k] -= step
            fd = -(_energy(calc, plus) - _energy(calc, minus)) / (2 * step)
            worst = max(worst, abs(forces[a, k] - fd))
            if abs(forces[a, k] - fd) > tolerance:
                raise ContractError(f"{potential.name}: force on atom {a % len(atoms)} axis {k} is "
                                    f"{forces[a, k]:.6g} eV/Å, the energy's finite difference {fd:.6g} "
                                    f"(tolerance {tolerance:.2g})")
    return worst


def check_stress(potential: Potential, calc: Calculator, atoms: Atoms, step: float = 1e-4, rtol: float = 1e-4,
                 atol: float = 1e-6) -> float:
    """Stress (xx, yy, zz, yz) against central differences of the energy under strain; the largest deviation."""
    probe = atoms.copy()
    probe.calc = calc
    stress = probe.get_stress(voigt=False)
    volume = atoms.get_volume()
    tolerance = rtol * float(np.abs(stress).max()) + atol
    worst = 0.0
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2)]:
        fd = strained_energy(calc, atoms, i, j, step) - strained_energy(calc, atoms, i, j, -step)
        fd /= 2 * step * volume * (2 if i != j else 1)
        worst = max(worst, abs(stress[i, j] - fd))
        if abs(stress[i, j] - fd) > tolerance:
            raise ContractError(f"{potential.name}: stress[{i},{j}] is {stress[i, j]:.6g} eV/Å³, the strain finite "
                                f"difference {fd:.6g} (tolerance {tolerance:.2g})")
    return worst


def _other(value: Any) -> Any:
    """A value different from a calculator option's default (for the hash check)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (tuple, list)):
        return [*value, *value[:1]] if value else [0]
    return f"{value!r}-changed"


def check_settings_hash(potential: Potential) -> list[str]:
    """Package versions, fixed answer settings and every defaulted calculator option reach the settings hash
    (``potential`` must be registered under its name). Returns what was found in it."""
    name = potential.name
    recorded = versions(name)
    needed = [*potential.packages, *(key for key, _ in potential.answer_settings)]
    absent = [key for key in needed if key not in recorded]
    if absent:
        raise ContractError(f"{name}: {absent} missing from the settings hash's versions")
    settings = RelaxSettings(potential=name)
    base = settings.hash()
    if potential.answer_options({}) or settings.hash(potential.answer_options({})) != base:
        raise ContractError(f"{name}: default calculator options change the settings hash")
    params = inspect.signature(potential.make_calculator).parameters.values()
    options = [p.name for p in params if p.default is not inspect.Parameter.empty and p.name != "model_file"]
    for option in options:
        default = next(p.default for p in params if p.name == option)
        changed = potential.answer_options({option: _other(default)})
        if option not in changed or settings.hash(changed) == base:
            raise ContractError(f"{name}: calculator option {option!r} set to another value leaves the hash unchanged")
    return needed + options


def check_contract(potential: Potential, atoms: Atoms, options: Mapping[str, Any] | None = None, *,
                   force_step: float = 1e-3, strain_step: float = 1e-4, rtol: float = 1e-4,
                   atol: float = 1e-4) -> ContractReport:
    """Every check of this module on one crystal (rattled, so no derivative is zero by symmetry).

    ``options``: calculator options (e.g. ``{"min_width": 0}`` for tblite's bare cell); ``rtol``/``atol``:
    tolerances of the finite differences (a float32 network needs ~1e-3 and a larger ``strain_step``).
    """
    check_elements(potential, atoms)
    atoms = atoms.copy()
    atoms.rattle(0.02, seed=3)
    calc = potential.calculator(**dict(options or {}))
    check_float64(potential, calc, atoms)
    report = ContractReport(potential.name, len(atoms))
    report.force_error = check_forces(potential, calc, atoms, force_step, rtol, atol)
    report.stress_error = check_stress(potential, calc, atoms, strain_step, rtol, atol * 1e-2)
    report.hashed = check_settings_hash(potential)
    return report
