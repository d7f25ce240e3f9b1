"""The structures of the lattice-energy benchmarks, read from ``../shared/reference/lattice-energy``.

- X23: the experimental crystal (``x23/expt/<name>.cif``), the reference group's DFT crystal
  (``x23/dft/<name>.scf.in``, ``ibrav=0``, cell in units of ``celldm(1)`` bohr) and isolated molecule
  (``x23/dft/mol_<name>.scf.in``, ``ATOMIC_POSITIONS angstrom``; ASE's ``espresso-in`` reader refuses
  these files: ``ibrav=1`` with the box in ``celldm(1)``), so both are read here.
- ICE13: each polymorph's DFT structure (``ice13/<name>/<name>.POSCAR``; there is no experimental one) and
  the water molecule (``ice13/<name>/geometry.in``, FHI-aims).

Every name in a ``.din`` file must have its structures: a missing one is an error naming it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr

from helpers.lattice.din import LatticeReference, lattice_references, read_din
from helpers.vocabulary import SHARED_ENV

BENCHMARKS = ("x23", "ice13")
DIN_FILES = {"x23": "x23/x23.din", "ice13": "ice13/ice.din"}


def reference_dir() -> Path:
    """The shared lattice-energy data: ``$CODANI_SHARED/reference/lattice-energy``, by default
    ``../shared/reference/lattice-energy`` beside the project."""
    import os

    from helpers.store.paths import project_root

    shared = os.environ.get(SHARED_ENV) or project_root().parent / "shared"
    return Path(shared) / "reference" / "lattice-energy"


@dataclass(frozen=True)
class BenchmarkEntry:
    """One crystal of a benchmark with its reference and where its structures are."""

    benchmark: str
    reference: LatticeReference
    crystal_file: Path  #: the starting crystal: the experimental CIF (X23), the DFT POSCAR (ICE13)
    molecule_file: Path
    dft_crystal_file: Path | None = None  #: X23 only: the reference DFT crystal (fallback start)

    @property
    def name(self) -> str:
        return self.reference.crystal


def _files(benchmark: str, ref: LatticeReference, root: Path) -> tuple[Path, Path, Path | None]:
    if benchmark == "x23":
        return (root / "x23" / "expt" / f"{ref.crystal}.cif", root / "x23" / "dft" / f"{ref.molecule}.scf.in",
                root / "x23" / "dft" / f"{ref.crystal}.scf.in")
    return (root / "ice13" / ref.crystal / f"{ref.crystal}.POSCAR", root / "ice13" / ref.molecule / "geometry.in",
            None)


def benchmark_entries(benchmark: str, root: str | Path | None = None) -> list[BenchmarkEntry]:
    """The entries of ``benchmark`` ("x23" or "ice13") from its ``.din`` file, each with existing structure files;
    a name whose structure file is missing is a FileNotFoundError naming the name and the file."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    root = Path(root) if root is not None else reference_dir()
    din = root / DIN_FILES[benchmark]
    out = []
    for ref in lattice_references(read_din(din), str(din)):
        crystal, molecule, dft = _files(benchmark, ref, root)
        for name, path in ((ref.crystal, crystal), (ref.molecule, molecule)):
            if not path.is_file():
                raise FileNotFoundError(f"{din}: {name!r} has no structure: {path} not found")
        out.append(BenchmarkEntry(benchmark, ref, crystal, molecule, dft if dft and dft.is_file() else None))
    return out


def read_crystal(path: str | Path) -> Atoms:
    """A benchmark crystal: a CIF or POSCAR through ASE, a Quantum ESPRESSO input through :func:`read_qe_input`."""
    path = Path(path)
    if path.name.endswith(".scf.in"):
        return read_qe_input(path)
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASE's CIF reader warns about occupancies and spacegroup details
        atoms = read(path, format="vasp" if path.suffix == ".POSCAR" else None)
    atoms.pbc = True
    return atoms


def read_molecule(path: str | Path) -> Atoms:
    """A benchmark's isolated molecule, no cell, no periodicity (QE input or FHI-aims ``geometry.in``)."""
    path = Path(path)
    if path.name.endswith(".scf.in"):
        atoms = read_qe_input(path)
    else:
        atoms = read_aims_geometry(path)
    return Atoms(atoms.get_chemical_symbols(), positions=atoms.positions - atoms.positions.mean(axis=0))


def read_aims_geometry(path: str | Path) -> Atoms:
    """Atoms of an FHI-aims ``geometry.in`` holding ``atom x y z symbol`` lines (Å) only (ASE's ``aims`` reader
    is moving to a plugin; a lattice vector or fractional atom is refused here)."""
    symbols, positions = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = line.split("#")[0].split()
        if not words:
            continue
        if words[0] != "atom" or len(words) != 5:
            raise ValueError(f"{path}: only 'atom x y z symbol' lines are read here, found {line.strip()!r}")
        positions.append([float(x) for x in words[1:4]])
        symbols.append(words[4])
    return Atoms(symbols, positions=positions)


_NUMBER = r"[-+0-9.eEdD]+"


def read_qe_input(path: str | Path) -> Atoms:
    """Atoms of a Quantum ESPRESSO ``pw.x`` input of this data set: ``ATOMIC_POSITIONS`` in angstrom or crystal,
    and for ``ibrav=0`` the ``CELL_PARAMETERS`` in units of ``celldm(1)`` bohr; an ``ibrav=1`` file (a molecule
    in a cubic box) is returned without cell. Anything else is refused with the reason."""
    text = Path(path).read_text(encoding="utf-8")

    def value(key: str) -> float | None:
        found = re.search(rf"\b{re.escape(key)}\s*=\s*({_NUMBER})", text, flags=re.IGNORECASE)
        return float(found.group(1).replace("d", "e").replace("D", "e")) if found else None

    nat, ibrav, alat = value("nat"), value("ibrav"), value("celldm(1)")
    if nat is None:
        raise ValueError(f"{path}: no nat")
    lines = text.splitlines()
    start = next((k for k, s in enumerate(lines) if s.strip().upper().startswith("ATOMIC_POSITIONS")), None)
    if start is None:
        raise ValueError(f"{path}: no ATOMIC_POSITIONS")
    units = lines[start].replace("{", " ").replace("}", " ").replace("(", " ").replace(")", " ").split()[1:]
    units = units[0].lower() if units else "alat"
    rows = [lines[start + 1 + k].split() for k in range(int(nat))]
    symbols = [r[0].capitalize() for r in rows]
    coords = np.array([[float(x) for x in r[1:4]] for r in rows])
    if ibrav == 1:
        if units != "angstrom":
            raise ValueError(f"{path}: ibrav=1 with positions in {units}: only angstrom is read here")
        return Atoms(symbols, positions=coords)
    if ibrav != 0 or alat is None:
        raise ValueError(f"{path}: ibrav={ibrav}: only ibrav=0 (with celldm(1)) and ibrav=1 are read here")
    cstart = next((k for k, s in enumerate(lines) if s.strip().upper().startswith("CELL_PARAMETERS")), None)
    if cstart is None:
        raise ValueError(f"{path}: ibrav=0 without CELL_PARAMETERS")
    cell_units = lines[cstart].split()[1:]
    cell_units = cell_units[0].strip("{}()").lower() if cell_units else "alat"
    cell = np.array([[float(x) for x in lines[cstart + 1 + k].split()[:3]] for k in range(3)])
    scale = {"angstrom": 1.0, "bohr": Bohr}.get(cell_units, alat * Bohr)  # alat, or old QE's cubic/hexagonal
    cell = cell * scale
    if units == "crystal":
        return Atoms(symbols, scaled_positions=coords, cell=cell, pbc=True)
    if units == "angstrom":
        return Atoms(symbols, positions=coords, cell=cell, pbc=True)
    raise ValueError(f"{path}: positions in {units}: only crystal and angstrom are read here")
