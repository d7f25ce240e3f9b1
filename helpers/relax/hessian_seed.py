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
The cost: 2 × (3 n_atoms + 9) evaluations of the cheap potential. For an ANI seed they run side by side,
many displaced geometries per torchani pass (:class:`~helpers.relax.potentials.ani_side_by_side.SideBySideANI`,
float64, the same numbers as its ASE calculator); the cell filter's own algebra then turns each geometry's
energy, forces and stress into the gradient in its coordinates, so the seed is the one-at-a-time seed to
rounding. Any other seed potential goes one call at a time through its ASE calculator. It pays for
SevenNet and CHGNet (a second or more per step, hundreds of steps saved): their cards make ANI-2x their
seed (``Potential.hessian_seed``), not for cheap potentials.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

#: the smallest eigenvalue of a seed Hessian (eV/Å²), the default of ``RelaxSettings.hessian_seed_floor``
DEFAULT_FLOOR = 5.0
#: finite-difference step in the optimizer's coordinates (Å; dimensionless strain times the filter's factor)
FD_STEP = 1e-3
#: atoms per side-by-side pass of the displaced geometries (an ANI seed)
SEED_BATCH_ATOMS = 2048

#: energies, forces and Voigt stresses of many periodic geometries at once (one dict each)
Evaluate = Callable[[list[Atoms]], list[dict]]


def finite_difference_hessian(target, step: float = FD_STEP, evaluate: Evaluate | None = None) -> np.ndarray:
    """Symmetrised central-difference Hessian of ``target`` (Atoms or a cell filter with a calculator) in
    the coordinates its optimizer moves (``get_positions``); ``target`` is left where it was.

    ``evaluate``: computes the displaced geometries together (then ``target`` needs no calculator); the
    gradients are still the filter's own, from each geometry's results. None: ``target``'s calculator, one
    geometry at a time."""
    x0 = target.get_positions().copy()
    flat = x0.ravel()
    displaced = []
    for i in range(flat.size):
        for sign in (1.0, -1.0):
            x = flat.copy()
            x[i] += sign * step
            displaced.append(x.reshape(x0.shape))
    try:
        if evaluate is None:
            gradients = []
            for x in displaced:
                target.set_positions(x)
                gradients.append(-np.asarray(target.get_forces()).ravel())
        else:
            gradients = _gradients_from(target, displaced, evaluate)
    finally:
        target.set_positions(x0)
    gradients = np.asarray(gradients)
    hessian = ((gradients[0::2] - gradients[1::2]) / (2 * step)).T
    return 0.5 * (hessian + hessian.T)


def _gradients_from(target, displaced: list[np.ndarray], evaluate: Evaluate) -> list[np.ndarray]:
    atoms = getattr(target, "atoms", target)  # a cell filter moves its atoms; bare Atoms move themselves
    geometries = []
    for x in displaced:
        target.set_positions(x)
        geometries.append(Atoms(atoms.numbers, positions=atoms.get_positions(), cell=atoms.cell.array.copy(),
                                pbc=atoms.pbc))
    results = evaluate(geometries)
    calc, gradients = atoms.calc, []
    try:
        for x, res in zip(displaced, results):
            target.set_positions(x)
            atoms.calc = SinglePointCalculator(atoms, energy=res["energy"], forces=res["forces"],
                                               stress=res["stress"])
            gradients.append(-np.asarray(target.get_forces()).ravel())
    finally:
        atoms.calc = calc
    return gradients


@lru_cache(maxsize=4)
def _side_by_side(name: str):
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI

    return SideBySideANI(load_ani(name))


def side_by_side_evaluator(name: str, batch_atoms: int = SEED_BATCH_ATOMS) -> Evaluate | None:
    """A side-by-side evaluator of the registered potential ``name`` when it is a plain ANI model (float64,
    the full ensemble), else None (its calculator is used one geometry at a time)."""
    from helpers.relax.potentials.ani import ANI_MODELS

    if name not in ANI_MODELS:
        return None
    evaluator = _side_by_side(name)

    def evaluate(geometries: list[Atoms]) -> list[dict]:
        results: list[dict] = []
        per_pass = max(1, batch_atoms // max(1, len(geometries[0])))
        for start in range(0, len(geometries), per_pass):
            chunk = geometries[start:start + per_pass]
            # one key: the displacements are far inside the pair list's skin, so one list serves them all
            results += evaluator.compute(chunk, keys=["seed"] * len(chunk))
        evaluator.forget("seed")
        return results

    return evaluate


def floored(hessian: np.ndarray, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """``hessian`` with every eigenvalue raised to at least ``floor``: positive definite, steps bounded."""
    values, vectors = np.linalg.eigh(hessian)
    return (vectors * np.clip(values, floor, None)) @ vectors.T


def seed_hessian(target, floor: float = DEFAULT_FLOOR, evaluate: Evaluate | None = None) -> np.ndarray:
    """The seed for relaxing ``target``: the cheap potential's floored Hessian where it stands, in the
    coordinates its optimizer moves. ``target`` is what :func:`~helpers.relax.engine.wrap_cell` builds for the
    run's settings around a copy of the atoms (constraints such as FixSymmetry come along: the seed lives in the
    same space); that copy carries the cheap calculator, or ``evaluate`` computes the displaced geometries many
    at a time (:func:`side_by_side_evaluator`)."""
    return floored(finite_difference_hessian(target, evaluate=evaluate), floor)
