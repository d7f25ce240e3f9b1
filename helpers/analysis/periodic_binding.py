"""How a potential binds the molecules of a crystal: interaction energy per molecule, molecular net charges,
and the same for a finite cluster cut from the crystal.

Why: a potential that expands molecular crystals (AIMNet2, docs/aimnet2.md) can be wrong in its periodic set-up
(long-range sums, charge flowing between molecules) or in the model itself. The interaction energy at the
experimental geometry separates the two: if a non-periodic cluster binds its central molecule as badly as the
periodic cell does, the periodic set-up is not the cause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from helpers.filter.molecules import find_molecules

CalculatorFactory = Callable[[], Calculator]


@dataclass
class Binding:
    """Interaction energy per molecule (eV; negative = bound) and the molecules' net charges (e) if known."""

    per_molecule: float
    n_molecules: int
    molecule_charges: np.ndarray | None = None

    @property
    def max_abs_charge(self) -> float | None:
        return None if self.molecule_charges is None else float(np.abs(self.molecule_charges).max())


def _energy(atoms: Atoms, make: CalculatorFactory) -> tuple[float, np.ndarray | None]:
    atoms = atoms.copy()
    atoms.calc = make()
    energy = atoms.get_potential_energy()
    charges = atom_charges(atoms.calc)
    return energy, charges


def atom_charges(calc: Calculator) -> np.ndarray | None:
    """Atomic charges the calculator computed (its own, or its first ensemble member's), else None."""
    for c in (calc, *getattr(calc, "members", [])):
        if "charges" in getattr(c, "results", {}):
            return np.asarray(c.results["charges"], dtype=float)
    return None


def molecule_charges(atoms: Atoms, charges: np.ndarray) -> np.ndarray:
    """Net charge of every molecule (the filter's molecules) from atomic charges."""
    return np.array([charges[m.indices].sum() for m in find_molecules(atoms)])


def crystal_binding(atoms: Atoms, make: CalculatorFactory, molecule_calculator: CalculatorFactory | None = None
                    ) -> Binding:
    """(E(cell) − Σ E(each molecule alone, same geometry)) / Z at the given geometry.

    ``molecule_calculator`` evaluates the isolated molecules (default: ``make``), e.g. AIMNet2 with its
    all-pairs Coulomb for a molecule in vacuum.
    """
    molecules = find_molecules(atoms)
    e_cell, charges = _energy(atoms, make)
    e_alone = sum(_energy(Atoms(m.symbols, m.positions), molecule_calculator or make)[0] for m in molecules)
    q = None if charges is None else np.array([charges[m.indices].sum() for m in molecules])
    return Binding((e_cell - e_alone) / len(molecules), len(molecules), q)


def cluster(atoms: Atoms, radius: float) -> tuple[list[Atoms], int]:
    """Whole molecules of the crystal whose centres lie within ``radius`` (Å) of the first molecule's centre,
    and the position of that central molecule in the list."""
    molecules = find_molecules(atoms)
    centre = molecules[0].positions.mean(0)
    shifts = np.array(np.meshgrid(*[range(-3, 4)] * 3)).reshape(3, -1).T @ atoms.cell.array
    out = []
    for m in molecules:
        for s in shifts:
            if np.linalg.norm(m.positions.mean(0) + s - centre) < radius:
                out.append(Atoms(m.symbols, m.positions + s))
    central = min(range(len(out)), key=lambda k: np.linalg.norm(out[k].positions.mean(0) - centre))
    return out, central


def _merge(parts: list[Atoms]) -> Atoms:
    merged = parts[0].copy()
    for part in parts[1:]:
        merged += part
    return merged


def cluster_embedding(atoms: Atoms, make: CalculatorFactory, radius: float = 9.0) -> Binding:
    """Half the interaction of the central molecule of a non-periodic cluster with the rest of it (eV).

    E(cluster) − E(cluster without it) − E(it alone), halved: the lattice energy per molecule of a
    pairwise-additive crystal, to compare with :func:`crystal_binding`; the molecule charges are the
    cluster's (charge can flow between molecules there, symmetry does not forbid it).
    """
    parts, central = cluster(atoms, radius)
    whole = _merge(parts)
    e_all, charges = _energy(whole, make)
    e_rest, _ = _energy(_merge([p for k, p in enumerate(parts) if k != central]), make)
    e_one, _ = _energy(parts[central], make)
    q = None
    if charges is not None:
        bounds = np.cumsum([0] + [len(p) for p in parts])
        q = np.array([charges[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    return Binding((e_all - e_rest - e_one) / 2, len(parts), q)


def cluster_pair_sum(atoms: Atoms, make: CalculatorFactory, radius: float = 9.0) -> float:
    """Half the sum of the central molecule's dimer interactions with each molecule of the same cluster (eV).

    Equal to :func:`cluster_embedding` for a pairwise-additive potential; the difference is the many-body part.
    """
    parts, central = cluster(atoms, radius)
    e_alone = [_energy(p, make)[0] for p in parts]
    total = 0.0
    for k, part in enumerate(parts):
        if k != central:
            total += _energy(_merge([parts[central], part]), make)[0] - e_alone[central] - e_alone[k]
    return total / 2
