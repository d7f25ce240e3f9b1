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
The seed itself: :mod:`helpers.relax.hessian_seed` (``RelaxSettings(hessian_seed=...)``, 03_relax's
``hessian_seed``).
Usage: ``.venv/bin/python benchmarks/hessian_seed.py --potential chgnet-d3 --cheap ani2x 2002929 4501703``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import bench_env  # noqa: F401  (threads, weights and paths set before numpy, torch and the project)

# isort: split
from bench_env import ROOT, SHARED  # noqa: F401


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

    from helpers.relax.engine import RelaxSettings, relax
    from helpers.relax.potentials.registry import get_potential

    torch.set_num_threads(1)
    expensive = get_potential(args.potential)
    plain = RelaxSettings(potential=args.potential, fmax=args.fmax, strategy="study").resolved(
        expensive.steps_per_atom)
    seeded = RelaxSettings(potential=args.potential, fmax=args.fmax, strategy="study", hessian_seed=args.cheap,
                           hessian_seed_floor=args.floor).resolved(expensive.steps_per_atom)
    for cod_id in args.ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(SHARED / "data" / "cod-sample" / f"{cod_id}.cif")
        runs = []
        for settings in (plain, seeded):
            started = time.perf_counter()
            result = relax(atoms, expensive.calculator(), settings)
            runs.append((result, time.perf_counter() - started))
        (base, base_s), (seed, seed_s) = runs
        print(f"{cod_id} ({len(atoms)} atoms): default {base.steps} steps {base.status} {base_s:.0f} s, seeded "
              f"{seed.steps} steps {seed.status} {seed_s:.0f} s (seed Hessian included); dV "
              f"{100 * (seed.atoms.get_volume() / base.atoms.get_volume() - 1):+.3f} %, dE "
              f"{1000 * (seed.e_final - base.e_final) / len(atoms):+.4f} meV/atom", flush=True)


if __name__ == "__main__":
    main()
