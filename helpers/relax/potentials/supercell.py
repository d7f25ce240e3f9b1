"""Γ-point-only codes on small cells: evaluate a supercell, report per cell.

tblite (GFN1-/GFN2-xTB) solves its Hamiltonian at the Γ point only (no k-points: tblite issue #4). On the
small cells of many molecular crystals (lengths of 3.4–5 Å) that is far from the crystal's answer: COD
2006099 (tetrazole) relaxed with GFN1-xTB in its 7-atom cell comes out 46 % too small, and its 3×3×3
supercell is then 850 meV/atom higher in energy and under 31 GPa (``benchmarks/xtb_gamma_point.py``).
Evaluating an n1×n2×n3 supercell at Γ is the unit cell sampled on the Γ-centred n1×n2×n3 k-point mesh, so
:class:`SupercellCalculator` repeats the cell until every perpendicular width reaches ``min_width`` and
returns the energy per cell, the forces of the cell's atoms (averaged over the copies) and the stress
(intensive) — Atoms in, Atoms out, the relaxation never sees the supercell.

GFN-FF (``gfnff``) is a real-space force field, but its periodic sums are not converged on small cells either:
the bare cell's energy is 2-3 meV/atom and its pressure 0.05-0.1 GPa off the converged supercell's, and the
library aborts on some 28-atom cells (``benchmarks/xtb_gamma_point.py --method gfn-ff``); it is evaluated the
same way. While one relaxation runs (the same Atoms object, the same repeats and atoms) the supercell is one
Atoms object moved in place, so a calculator that keys state to the object (GFN-FF's topology, fixed from the
start of a relaxation) keeps it; a new crystal gets a new supercell.
"""

from __future__ import annotations

import weakref

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes


def supercell_repeats(atoms: Atoms, min_width: float) -> tuple[int, int, int]:
    """The smallest repeats along each periodic cell vector that make every perpendicular width (the
    distance between opposite faces, which bounds the shortest lattice translation) at least ``min_width``.
    ``atoms``: anything with ``cell`` and ``pbc`` (an ``Atoms``, an ASE database row)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not min_width or not pbc.any():
        return (1, 1, 1)
    cell = np.asarray(atoms.cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return tuple(int(np.ceil(min_width / w - 1e-9)) if periodic else 1
                 for w, periodic in zip(widths, pbc, strict=True))


class SupercellCalculator(Calculator):
    """``inner`` evaluated on the supercell of :func:`supercell_repeats`; results per original cell."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner: Calculator, min_width: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        self.min_width = float(min_width)
        self.repeats: tuple[int, int, int] = (1, 1, 1)
        self.n_calls = 0  # the relax engine's force_calls
        self._big: Atoms | None = None
        self._source: weakref.ref | None = None  # the Atoms the supercell was made for

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        source = weakref.ref(atoms) if atoms is not None else self._source
        super().calculate(atoms, properties, system_changes)
        self.n_calls += 1
        repeats = supercell_repeats(self.atoms, self.min_width)
        copies = int(np.prod(repeats))
        big = self._supercell(repeats, source)
        # through get_property: the inner calculator sees what changed since its last call (tblite keeps
        # its wavefunction as the next step's guess when only positions and cell moved)
        energy = self.inner.get_property("energy", big)
        n = len(self.atoms)
        self.results["energy"] = float(energy) / copies
        free = self.inner.results.get("free_energy", energy)
        self.results["free_energy"] = float(free) / copies
        # atoms.repeat lays the copies out one block of n after another: every copy's forces are the cell's
        self.results["forces"] = self.inner.get_property("forces", big).reshape(copies, n, 3).mean(axis=0)
        # per volume: the same for the supercell. Always for a periodic cell: the cell filter asks for forces
        # and then stress, and one evaluation per step is what force_calls should count
        if "stress" in properties or self.atoms.pbc.all():
            self.results["stress"] = np.array(self.inner.get_property("stress", big))

    def _supercell(self, repeats: tuple[int, int, int], source: weakref.ref | None) -> Atoms:
        """The supercell of ``self.atoms``: the previous one moved in place while the same structure relaxes
        (same source object, repeats and atoms), a new one otherwise."""
        fresh = self.atoms.repeat(repeats) if int(np.prod(repeats)) > 1 else self.atoms.copy()
        same = (self._big is not None and source is not None and self._source is not None
                and source() is self._source() and repeats == self.repeats
                and np.array_equal(self._big.numbers, fresh.numbers))
        if not same:
            self._big, self._source, self.repeats = fresh, source, repeats
            return fresh
        self._big.set_cell(fresh.cell, scale_atoms=False)
        self._big.positions = fresh.positions
        return self._big
