"""Fewer BFGS steps for an expensive potential: the initial Hessian from a cheap one (issue 35, lever c).

ASE's BFGS starts from H0 = 70 eV/Å² · I and spends most of its steps learning the curvature. Here the
same BFGS + FrechetCellFilter at the study's fmax starts from the cheap potential's finite-difference
Hessian at the experimental geometry (in the filter's coordinates: positions and cell strain), its
eigenvalues clipped to at least ``--floor`` eV/Å² (negative and zero modes would give unbounded steps).
Prints per crystal: steps and volume of the default run and of the seeded run, their volume and energy
differences (a different minimum shows here) and the cheap Hessian's cost. Steps are what the seed can
change; seconds depend on the machine's load.

Measured on a busy 2-core machine (CHGNet + D3, ANI-2x seed, fmax 5e-4 eV/Å), floor 5 eV/Å²: COD 2002929
438 -> 201 steps, 4501703 464 -> 162, 2007511 198 -> 108, the same minimum (|ΔV| <= 0.004 %, ΔE <= 0.001
meV/atom); a floor of 1-2 eV/Å² led twice to another minimum (ΔV -1.0 % and -1.5 %).
Usage: ``.venv/bin/python benchmarks/hessian_seed.py --potential chgnet-d3 --cheap ani2x 2002929 4501703``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("ANI_MODEL_DIR", str(SHARED / "models" / "ani-neurochem"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def filter_hessian(atoms, calc, step: float = 1e-3) -> np.ndarray:
    """Central finite-difference Hessian of ``calc`` in FrechetCellFilter coordinates (symmetrised)."""
    from ase.filters import FrechetCellFilter

    work = atoms.copy()
    work.calc = calc
    target = FrechetCellFilter(work)
    x0 = target.get_positions().ravel().copy()
    hessian = np.zeros((x0.size, x0.size))
    for i in range(x0.size):
        gradients = []
        for sign in (1, -1):
            x = x0.copy()
            x[i] += sign * step
            target.set_positions(x.reshape(-1, 3))
            gradients.append(-target.get_forces().ravel())
        hessian[:, i] = (gradients[0] - gradients[1]) / (2 * step)
    return 0.5 * (hessian + hessian.T)


def clipped(hessian: np.ndarray, floor: float) -> np.ndarray:
    """``hessian`` with every eigenvalue raised to at least ``floor`` (positive definite, bounded steps)."""
    values, vectors = np.linalg.eigh(hessian)
    return (vectors * np.clip(values, floor, None)) @ vectors.T


def relax(atoms, calc, fmax: float, cap: int, h0: np.ndarray | None = None) -> tuple[int, bool, float, float]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calc
    opt = BFGS(FrechetCellFilter(work), logfile=None)
    if h0 is not None:
        opt.H0 = h0  # BFGS builds its first Hessian from H0 at its first step
    converged = opt.run(fmax=fmax, steps=cap)
    return opt.nsteps, bool(converged), work.get_volume(), work.get_potential_energy() / len(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="+", help="COD ids of ../shared/data/cod-sample")
    parser.add_argument("--potential", default="chgnet-d3")
    parser.add_argument("--cheap", default="ani2x")
    parser.add_argument("--floor", type=float, default=5.0, help="smallest eigenvalue of the seed, eV/Å²")
    parser.add_argument("--fmax", type=float, default=5e-4)
    args = parser.parse_args()

    import ase.io
    import torch

    from helpers.relax.potentials.registry import get_potential

    torch.set_num_threads(1)
    expensive, cheap = get_potential(args.potential), get_potential(args.cheap)
    for cod_id in args.ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(SHARED / "data" / "cod-sample" / f"{cod_id}.cif")
        cap = 300 + expensive.steps_per_atom * len(atoms)
        started = time.perf_counter()
        seed = clipped(filter_hessian(atoms, cheap.calculator()), args.floor)
        seed_s = time.perf_counter() - started
        base = relax(atoms, expensive.calculator(), args.fmax, cap)
        seeded = relax(atoms, expensive.calculator(), args.fmax, cap, seed)
        print(f"{cod_id} ({len(atoms)} atoms): default {base[0]} steps (converged {base[1]}), seeded {seeded[0]} "
              f"(converged {seeded[1]}); dV {100 * (seeded[2] - base[2]) / base[2]:+.3f} %, "
              f"dE {1000 * (seeded[3] - base[3]):+.4f} meV/atom; seed Hessian {seed_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
