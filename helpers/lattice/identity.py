"""Is the gas-phase molecule the molecule the crystal is made of? Formula and connectivity.

A lattice energy subtracts the crystal per molecule from the isolated molecule: that only means something
when both hold the same molecule, Z times in the cell. The molecules are perceived as the filter perceives
them (:mod:`helpers.filter.molecules`: covalent-radius bonds under periodic boundaries, whole molecules,
RDKit's canonical SMILES of the bond graph plus the Hill formula), so a crystal whose CIF lacks its
hydrogens, or a pair mixed up, is caught before any energy is computed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ase import Atoms

from helpers.filter.molecules import find_molecules, skeleton_key


@dataclass(frozen=True)
class Identity:
    """The verdict: ``same`` when the crystal is ``z`` copies of the gas molecule and nothing else."""

    same: bool
    crystal_molecules: dict[str, int]  #: skeleton key (SMILES of the bond graph | formula) -> copies in the cell
    gas_molecule: str
    reason: str = ""


def molecule_keys(atoms: Atoms) -> Counter:
    """Skeleton keys (formula + connectivity) of the molecules in ``atoms``, with their counts."""
    return Counter(skeleton_key(m) for m in find_molecules(atoms))


def same_molecule(crystal: Atoms, molecule: Atoms, z: int | None = None) -> Identity:
    """Compare the molecules of ``crystal`` with the isolated ``molecule`` (and their number with ``z``)."""
    in_crystal = molecule_keys(crystal)
    gas = molecule_keys(molecule)
    if len(gas) != 1 or sum(gas.values()) != 1:
        return Identity(False, dict(in_crystal), " + ".join(gas), f"the gas-phase structure is {sum(gas.values())} "
                        "molecules, not one")
    (key,) = gas
    reason = ""
    if set(in_crystal) != {key}:
        reason = (f"the crystal holds {', '.join(f'{n} × {k}' for k, n in in_crystal.items())}, "
                  f"the gas phase {key}")
    elif z is not None and in_crystal[key] != z:
        reason = f"the crystal holds {in_crystal[key]} molecules, the reference's Z is {z}"
    return Identity(not reason, dict(in_crystal), key, reason)
