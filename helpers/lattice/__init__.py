"""Lattice energies of molecular crystals: the X23 and ICE13 benchmarks (``05_lattice_energy``).

Public API: :func:`read_din` (the reference files), :func:`benchmark_entries` (crystals, molecules, Z),
:func:`same_molecule` (crystal and gas phase hold one molecule), :func:`lattice_energy` (E_mol − E_cryst/Z),
:func:`run_lattice_energy` (the stage: one potential, resumable) and :func:`lattice_table` (its table).
"""

from helpers.lattice.din import DinEntry, DinError, LatticeReference, lattice_references, read_din
from helpers.lattice.energy import EV_TO_KJMOL, KCAL_TO_KJ, ev_to_kjmol, kcal_to_kj, lattice_energy
from helpers.lattice.identity import Identity, same_molecule
from helpers.lattice.stage import LatticeSettings, lattice_table, run_lattice_energy
from helpers.lattice.structures import (
    BENCHMARKS,
    BenchmarkEntry,
    benchmark_entries,
    read_aims_geometry,
    read_crystal,
    read_molecule,
    read_qe_input,
    reference_dir,
)

__all__ = ["BENCHMARKS", "EV_TO_KJMOL", "KCAL_TO_KJ", "BenchmarkEntry", "DinEntry", "DinError", "Identity",
           "LatticeReference", "LatticeSettings", "benchmark_entries", "ev_to_kjmol", "kcal_to_kj", "lattice_energy",
           "lattice_references", "lattice_table", "read_aims_geometry", "read_crystal", "read_din", "read_molecule",
           "read_qe_input", "reference_dir", "run_lattice_energy", "same_molecule"]
