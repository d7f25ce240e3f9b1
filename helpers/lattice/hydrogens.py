"""Hydrogen positions of an X-ray structure moved to neutron X–H distances before a fixed-geometry energy.

X-ray diffraction sees the electron density, which sits inside the X–H bond: X-ray X–H distances are
0.1–0.15 Å short (X23's experimental CIFs: O–H 0.83, N–H 0.86–1.06, C–H 0.93–1.10 Å). A potential's energy at
such a geometry is dominated by the compressed bonds (tens of kJ/mol per molecule), not by how the molecules
pack, so a single point at the experimental geometry is computed with each H moved along its bond to the
mean neutron distance, as Mercury's "normalise hydrogens" does (Allen & Bruno, Acta Cryst. B66, 380 (2010)).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

#: mean X–H bond lengths from neutron diffraction (Å; Allen & Bruno 2010, Table 2; Mercury's defaults)
NEUTRON_XH = {"C": 1.089, "N": 1.015, "O": 0.993}
#: an H further than this from every heavy atom is left where it is (Å)
BOND_SEARCH = 1.4


def normalise_hydrogens(atoms: Atoms, lengths: dict[str, float] | None = None) -> tuple[Atoms, int]:
    """A copy of ``atoms`` with each H moved along the bond to its nearest heavy atom (minimum image) to that
    element's neutron X–H length; returns (atoms, number of H moved). H bonded to no listed element stays."""
    lengths = NEUTRON_XH if lengths is None else lengths
    out = atoms.copy()
    symbols = np.array(out.get_chemical_symbols())
    i, j, d, vec = neighbor_list("ijdD", out, BOND_SEARCH)
    moved = 0
    for h in np.flatnonzero(symbols == "H"):
        mine = (i == h) & (symbols[j] != "H")
        if not mine.any():
            continue
        k = np.flatnonzero(mine)[np.argmin(d[mine])]
        target = lengths.get(str(symbols[j[k]]))
        if target is None:
            continue
        # vec[k] points from H to the heavy atom: put H at heavy atom − unit vector × target
        heavy = out.positions[h] + vec[k]
        out.positions[h] = heavy - vec[k] / d[k] * target
        moved += 1
    return out, moved
