"""Is a relaxed crystal a minimum of its potential, or a stationary point its symmetry held it on?

Why: BFGS from an experimental cell in float64 keeps the forces' symmetry, so where the potential makes that
symmetry unstable it can stop on a saddle: the forces vanish there, "converged" is true, and a 0.01 Å kick
lets the same relaxation fall to another structure tens of meV/atom lower, sometimes tens of percent away in
volume (ANI-1ccx on CO₂, cod-1010060: +14.8 % at the saddle, +48 % and +84 % after two kicks;
docs/reliability.md). A ΔV read at such a point says where the optimizer stopped, not where the potential
holds the crystal. The rattle test is the usual check: kick the relaxed atoms (seeded), relax again with the
same settings, and compare the energies.
"""

from __future__ import annotations

from dataclasses import dataclass

from ase import Atoms
from ase.calculators.calculator import Calculator

from helpers.relax.engine import RelaxSettings, external_pressure, relax

#: eV/atom: a kicked relaxation ending lower than this below the end point means it was not a minimum
#: (issue 31's energy tolerance between two relaxations of one crystal)
ENERGY_TOLERANCE = 1e-4
#: Å: the kick's standard deviation per Cartesian component
KICK = 0.01


@dataclass(frozen=True)
class Stability:
    """What the rattle test found at one relaxed structure."""

    is_minimum: bool  #: the kicked relaxation ended no lower (False too where it did not end: see ``status``)
    #: eV/atom, end point minus the kicked relaxation's end (> 0: it found lower ground); the enthalpy E + pV
    #: where the relaxation is under an external pressure (what the optimizer minimises), else the energy
    energy_drop: float
    volume_change_pct: float  #: the kicked relaxation's volume against the end point's, %
    status: str  #: how the kicked relaxation ended
    steps: int
    atoms: Atoms  #: where the kicked relaxation ended


def rattle_test(atoms: Atoms, calc: Calculator, settings: RelaxSettings, kick: float = KICK, seed: int = 0,
                tolerance: float = ENERGY_TOLERANCE) -> Stability:
    """Kick the relaxed ``atoms`` (positions, ``kick`` Å standard deviation, ``seed``) and relax them again with
    ``settings`` (its steps_per_atom resolved); the end point is a minimum unless the kicked relaxation ends more
    than ``tolerance`` eV/atom lower (in enthalpy under ``settings.pressure``: the pressure of
    ``atoms.info``, as in the relaxation). Atoms in, not changed."""
    end = atoms.copy()
    end.calc = calc
    pressure = external_pressure(atoms, settings)
    h_end = end.get_potential_energy() + pressure * atoms.get_volume()
    kicked = atoms.copy()
    kicked.rattle(stdev=kick, seed=seed)
    result = relax(kicked, calc, settings)
    n = len(atoms)
    drop = (h_end - result.e_final - pressure * result.atoms.get_volume()) / n if result.e_final is not None \
        else float("nan")
    volume = 100 * (result.atoms.get_volume() / atoms.get_volume() - 1)
    return Stability(is_minimum=bool(drop <= tolerance), energy_drop=drop, volume_change_pct=volume,
                     status=str(result.status), steps=result.steps, atoms=result.atoms)
