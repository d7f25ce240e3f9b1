"""Lattice energy per molecule and its units.

E_latt = E_mol − E_cryst / Z, per molecule, positive when the crystal binds (the sign of the ``.din``
references). Energies in eV in, kJ/mol out (kcal/mol beside it: 1 kcal = 4.184 kJ exactly).
"""

from __future__ import annotations

from ase import units

#: kJ/mol per eV (per particle), from ASE's CODATA constants (96.485 kJ/mol)
EV_TO_KJMOL = 1.0 / (units.kJ / units.mol)
#: kJ per kcal, the thermochemical calorie
KCAL_TO_KJ = 4.184


def lattice_energy(e_molecule: float, e_crystal: float, z: int) -> float:
    """E_mol − E_cryst / Z (same units as the inputs): per molecule, positive = bound."""
    if z < 1:
        raise ValueError(f"Z must be a positive number of molecules, got {z}")
    return float(e_molecule - e_crystal / z)


def ev_to_kjmol(value: float) -> float:
    """eV per molecule -> kJ/mol."""
    return float(value * EV_TO_KJMOL)


def kcal_to_kj(value: float) -> float:
    """kcal/mol -> kJ/mol."""
    return float(value * KCAL_TO_KJ)
