"""Is the D3 lattice sum converged? torchani's cutoff D3 vs simple-dftd3, on real crystals.

Prints, per crystal, the two-body D3(BJ) energy and pressure with ωB97X parameters from
  - simple-dftd3 with Ewald summation of the two-body term (the reference: no truncation),
  - simple-dftd3 with its default sharp real-space cutoff (60 Bohr = 31.75 Å), and with the same
    cutoff switched off smoothly over 5 Bohr (``helpers.relax.potentials.dispersion`` default),
  - the helpers default + three-body ATM (to show its size; not the default),
  - torchani ``TwoBodyDispersionD3`` at cutoffs 8/12/16/20/30 Å, with its default smooth
    envelope (the one usable in a relaxation) and with a hard truncation (lattice sum only).
Usage: ``.venv/bin/python benchmarks/d3_convergence.py [cif ...]`` (data from ../shared/data).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase.io  # noqa: E402
import ase.units  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchani.potentials.dftd3 import TwoBodyDispersionD3  # noqa: E402

from helpers.relax.potentials.dispersion import d3_calculator  # noqa: E402

torch.set_num_threads(1)

DATA = Path(os.environ.get("CODANI_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
CRYSTALS = [
    DATA / "cod" / "2100348.cif",  # benzene, 48 atoms
    DATA / "more" / "MaterSim+PyXtal" / "pyxtal" / "database" / "cifs" / "naphthalene.cif",
    DATA / "more" / "MaterSim+PyXtal" / "pyxtal" / "database" / "cifs" / "ice.cif",
]
CUTOFFS = (8.0, 12.0, 16.0, 20.0, 30.0)
GPA = 1 / ase.units.GPa


def pressure(stress_voigt: np.ndarray) -> float:
    """Pressure in GPa from a Voigt stress in eV/Å³ (positive = the term pulls the cell in)."""
    return -float(np.mean(stress_voigt[:3])) * GPA


def dftd3_point(atoms, **opts) -> tuple[float, np.ndarray, float]:
    atoms = atoms.copy()
    atoms.calc = d3_calculator("wb97x", "d3bj", **opts)
    start = time.perf_counter()
    energy = atoms.get_potential_energy()
    stress = atoms.get_stress()
    return energy, stress, time.perf_counter() - start


def torchani_point(atoms, cutoff: float, cutoff_fn: str) -> tuple[float, np.ndarray, float]:
    """Energy (eV) and Voigt stress (eV/Å³) of torchani's D3 term, stress by the strain derivative."""
    symbols = sorted(set(atoms.get_chemical_symbols()))
    d3 = TwoBodyDispersionD3.from_functional(symbols, "wb97x", cutoff=cutoff, cutoff_fn=cutoff_fn)
    d3 = d3.to(torch.float64)
    species = torch.tensor(atoms.numbers).unsqueeze(0)
    coords = torch.tensor(atoms.positions).unsqueeze(0)
    cell = torch.tensor(np.asarray(atoms.cell))
    pbc = torch.tensor(atoms.pbc)
    strain = torch.zeros((3, 3), dtype=torch.float64, requires_grad=True)
    deform = torch.eye(3, dtype=torch.float64) + 0.5 * (strain + strain.T)
    start = time.perf_counter()
    energy = d3(species, coords @ deform, cell @ deform, pbc).sum() * ase.units.Hartree
    (virial,) = torch.autograd.grad(energy, [strain])
    elapsed = time.perf_counter() - start
    s = virial.numpy() / atoms.get_volume()
    voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    return float(energy.detach()), voigt, elapsed


def report(path: Path) -> list[str]:
    atoms = ase.io.read(path)
    ref_e, ref_s, ref_t = dftd3_point(atoms, ewald={}, realspace_cutoff={})
    ref_p = pressure(ref_s)
    lines = [f"\n{path.name}: {atoms.get_chemical_formula()}, {len(atoms)} atoms, "
             f"V = {atoms.get_volume():.1f} Å^3",
             f"{'method':<34}{'E_D3 (eV)':>11}{'dE %':>8}{'P_D3 (GPa)':>12}{'dP %':>8}"
             f"{'max|ds| MPa':>13}{'time s':>8}"]

    def row(label, e, s, t):
        lines.append(f"{label:<34}{e:>11.4f}{100 * (e - ref_e) / ref_e:>8.2f}{pressure(s):>12.4f}"
                     f"{100 * (pressure(s) - ref_p) / ref_p:>8.2f}"
                     f"{np.abs(s - ref_s).max() * GPA * 1000:>13.2f}{t:>8.2f}")

    row("dftd3 Ewald (reference)", ref_e, ref_s, ref_t)
    row("dftd3 library default, sharp 31.75", *dftd3_point(atoms, realspace_cutoff={}))
    row("dftd3 31.75 Å smooth 2.6 (helpers)", *dftd3_point(atoms))
    row("dftd3 helpers + ATM three-body", *dftd3_point(atoms, atm=True))
    for cutoff_fn in ("smooth", "dummy"):
        for cutoff in CUTOFFS:
            name = "smooth" if cutoff_fn == "smooth" else "hard"
            row(f"torchani {name} cutoff {cutoff:>4.0f} Å", *torchani_point(atoms, cutoff, cutoff_fn))
    return lines


def main(paths: list[str]) -> None:
    print("Two-body D3(BJ), wB97X parameters (s8=0.2641, a1=0, a2=5.4959); "
          "errors relative to simple-dftd3 Ewald; times are single calls on a shared machine")
    for path in [Path(p) for p in paths] or CRYSTALS:
        print("\n".join(report(path)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
