"""Geometry against chemistry: is every bond as long as its perceived bond order allows?

The filter perceives each molecule's bond orders and charges (RDKit, :mod:`helpers.filter.molecules`).
A bond whose length fits no order the chemistry allows is a contradiction between the file's
coordinates and its chemistry: a "peroxide" O–O of 1.21 Å (the length of O=O or an azo N=N, so most
likely mislabelled atoms), a CO2 whose C=O is far shorter than any C=O. Such an entry enters every
potential's statistics as a "potential error".

Reference lengths: pymatgen's bond-length table (``pymatgen.core.bonds.obtain_all_bond_lengths``,
the bundled ``bond_lengths.json``: typical lengths per element pair and bond order). No number here is
hand-picked; the only parameters are the tolerances (Å beyond the reference range), set from the
distribution over the shared data (docs/filter.md).

Which lengths a bond of perceived order ``o`` may have:

- a bond that is not conjugated (RDKit ``GetIsConjugated``): the length of order ``o``;
- a conjugated bond (amide C–N, carboxylate C–O, aromatic C–C): anywhere between the lengths of the
  orders ``o - 1`` and ``o + 1`` (resonance moves it between them; an aromatic bond, order 1.5,
  between single and double).

A side whose order the table does not have is not checked (pymatgen has no N=O: a nitro N⁺–O⁻ or a
furazan N–O cannot be said to be too short), except for an uncharged multiple bond, which is no shorter
than its own order (pymatgen has no C≡O: the C=O of CO2 is no shorter than a C=O). Bonds to hydrogen
are never checked: X-ray C–H/N–H/O–H are short by nature (the H position is the electron density's
centroid, 0.1-0.2 Å inside the nucleus).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from ase import Atoms

#: Å beyond the allowed range before a bond is reported (flag) and before the entry is rejected
FLAG_TOLERANCE = 0.10
REJECT_TOLERANCE = 0.20
#: where the reference lengths come from (shown in findings and docs)
SOURCE = "pymatgen.core.bonds (bond_lengths.json)"


@cache
def reference_lengths(a: str, b: str) -> dict[float, float]:
    """pymatgen's typical bond length (Å) per bond order for an element pair ({} when it has none)."""
    from pymatgen.core.bonds import obtain_all_bond_lengths

    try:
        return {float(k): float(v) for k, v in obtain_all_bond_lengths(a, b).items()}
    except ValueError:  # pymatgen raises when the pair is not tabulated
        return {}


def allowed_range(a: str, b: str, order: float, conjugated: bool,
                  charged: bool = False) -> tuple[float | None, float | None]:
    """Shortest and longest reference length (Å) a bond of ``order`` may have; None where the table is silent.

    The range spans the reference lengths of the orders the chemistry allows (``order`` alone, or
    ``order ± 1`` for a conjugated bond, orders below 1 excluded). A side whose extreme order is not
    tabulated stays open (None).
    """
    table = reference_lengths(a, b)
    if not table:
        return None, None
    low_order, high_order = (max(order - 1.0, 1.0), order + 1.0) if conjugated else (order, order)
    if order % 1:  # aromatic 1.5: between single and double
        low_order, high_order = np.floor(order), np.ceil(order)
    shortest = table.get(high_order)
    longest = table.get(low_order)
    if shortest is None and order >= 2.0 and not charged and order in table:
        # a multiple bond whose next order the table lacks (no C≡O): without a charge, no shorter than ``order``
        shortest = table[order]
    return shortest, longest


@dataclass
class BondVerdict:
    """One bond whose length is outside the range its perceived order allows."""

    i: int
    j: int
    shift: list[int]
    symbols: list[str]
    length: float
    order: float
    conjugated: bool
    expected: list[float | None]
    excess: float  # Å outside the range (> 0)

    def as_dict(self, labels: list[str]) -> dict[str, Any]:
        return {"i": self.i, "j": self.j, "shift": self.shift, "symbols": self.symbols, "labels": labels,
                "distance": round(self.length, 4), "order": self.order, "conjugated": self.conjugated,
                "expected": [None if x is None else round(x, 3) for x in self.expected],
                "excess": round(self.excess, 3)}


def perceived_bonds(mol) -> list[tuple[int, int, float, bool, bool]]:
    """(local i, local j, RDKit bond order, conjugated, charged) of an identified molecule; [] when unknown.

    ``charged``: either atom carries a formal charge (a nitro N⁺–O⁻, a carboxylate).

    Uses the charge the filter settled on (``mol.charge``); radicals and molecules without a closed
    shell have no trusted orders.
    """
    from helpers.filter.molecules import _closed_shell

    if mol.charge is None or mol.radical or mol.polymeric or mol.h_needed or not mol.bonds:
        return []
    _, rd = _closed_shell(mol.symbols, mol.positions, mol.bonds, charges=(mol.charge,))
    if rd is None:
        return []
    return [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), float(b.GetBondTypeAsDouble()), bool(b.GetIsConjugated()),
             bool(b.GetBeginAtom().GetFormalCharge() or b.GetEndAtom().GetFormalCharge())) for b in rd.GetBonds()]


def bond_outliers(atoms: Atoms, chemistry, tolerance: float = FLAG_TOLERANCE) -> list[BondVerdict]:
    """Every heavy-atom bond of the cell more than ``tolerance`` Å outside its allowed range, worst first."""
    out = []
    inv = np.linalg.inv(atoms.cell.array)
    for mol in chemistry.molecules:
        for a, b, order, conjugated, charged in perceived_bonds(mol):
            sa, sb = mol.symbols[a], mol.symbols[b]
            if "H" in (sa, sb):
                continue
            length = float(np.linalg.norm(mol.positions[a] - mol.positions[b]))
            shortest, longest = allowed_range(sa, sb, order, conjugated, charged)
            excess = max((shortest - length) if shortest is not None else 0.0,
                         (length - longest) if longest is not None else 0.0)
            if excess <= tolerance:
                continue
            i, j = mol.indices[a], mol.indices[b]
            # the image of j bonded to i: the unwrapped molecule says where j sits relative to i
            shift = np.rint(((mol.positions[b] - mol.positions[a]) - (atoms.positions[j] - atoms.positions[i]))
                            @ inv).astype(int)
            out.append(BondVerdict(i=int(i), j=int(j), shift=shift.tolist(), symbols=[sa, sb], length=length,
                                   order=order, conjugated=conjugated, expected=[shortest, longest],
                                   excess=excess))
    return sorted(out, key=lambda v: -v.excess)


ORDER_NAMES = {1.0: "single", 1.5: "aromatic", 2.0: "double", 3.0: "triple"}


def describe(v: BondVerdict, labels: list[str]) -> str:
    """``O1–O2 1.210 Å, perceived single (not conjugated), expected 1.48 Å`` for people."""
    lo, hi = v.expected
    if lo is None:
        expected = f"≤ {hi:.2f} Å"
    elif hi is None:
        expected = f"≥ {lo:.2f} Å"
    else:
        expected = f"{lo:.2f} Å" if abs(lo - hi) < 1e-6 else f"{lo:.2f}–{hi:.2f} Å"
    kind = ORDER_NAMES.get(v.order, f"order {v.order:g}")
    conj = "conjugated" if v.conjugated else "not conjugated"
    return f"{labels[0]}–{labels[1]} {v.length:.3f} Å, perceived {kind} ({conj}), expected {expected}"
