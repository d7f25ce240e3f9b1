"""BFGS's first Hessian from a cheap potential: the same minimum of the expensive one in fewer steps.

ASE's BFGS starts from H0 = 70 eV/Å² · I and spends most of a crystal's steps learning its curvature. With
``RelaxSettings(hessian_seed="ani2x")`` the one-crystal-at-a-time path first computes the cheap potential's
Hessian at the experimental geometry by central finite differences of its forces, in the optimizer's own
coordinates (the cell filter's: positions and cell strain), raises every eigenvalue to at least
``hessian_seed_floor`` eV/Å² (negative and zero modes would give unbounded steps) and hands it to BFGS as
its H0. Everything else is the study's: BFGS, the cell filter, fmax and the step cap, every energy, force
and the convergence verdict from the expensive model itself. Measured (``benchmarks/hessian_seed.py``,
CHGNet + D3 seeded by ANI-2x, floor 5): 438 -> 201, 464 -> 162 and 198 -> 108 steps on three COD crystals,
the same minimum (|ΔV| <= 0.004 %, ΔE <= 0.001 meV/atom); a floor of 1-2 led twice to another minimum.
The cost: 2 × (3 n_atoms + 9) calls of the cheap potential, one at a time through its ASE calculator
(CO2, 12 atoms: 90 ANI-2x calls, 20-50 s on a loaded 2-core machine). That pays for SevenNet and CHGNet
(seconds per step, hundreds of steps saved), not for cheap potentials such as GFN-FF; evaluating the
displaced geometries side by side in one pass is the obvious next step.
"""

from __future__ import annotations

import numpy as np

#: the smallest eigenvalue of a seed Hessian (eV/Å²), the default of ``RelaxSettings.hessian_seed_floor``
DEFAULT_FLOOR = 5.0
#: finite-difference step in the optimizer's coordinates (Å; dimensionless strain times the filter's factor)
FD_STEP = 1e-3


def finite_difference_hessian(target, step: float = FD_STEP) -> np.ndarray:
    """Symmetrised central-difference Hessian of ``target`` (Atoms or a cell filter with a calculator) in
    the coordinates its optimizer moves (``get_positions``); ``target`` is left where it was."""
    x0 = target.get_positions().copy()
    flat = x0.ravel()
    hessian = np.zeros((flat.size, flat.size))
    try:
        for i in range(flat.size):
            gradients = []
            for sign in (1.0, -1.0):
                x = flat.copy()
                x[i] += sign * step
                target.set_positions(x.reshape(x0.shape))
                gradients.append(-np.asarray(target.get_forces()).ravel())
            hessian[:, i] = (gradients[0] - gradients[1]) / (2 * step)
    finally:
        target.set_positions(x0)
    return 0.5 * (hessian + hessian.T)


def floored(hessian: np.ndarray, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """``hessian`` with every eigenvalue raised to at least ``floor``: positive definite, steps bounded."""
    values, vectors = np.linalg.eigh(hessian)
    return (vectors * np.clip(values, floor, None)) @ vectors.T


def seed_hessian(target, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """The seed for relaxing ``target``: its calculator's (the cheap potential's) floored Hessian where it
    stands, in the coordinates its optimizer moves. ``target`` is what
    :func:`~helpers.relax.engine.wrap_cell` builds for the run's settings around a copy of the atoms that
    carries the cheap calculator (constraints such as FixSymmetry come along: the seed lives in the same space)."""
    return floored(finite_difference_hessian(target), floor)
