"""DFT-D3 dispersion on top of ANI, from the maintained ``dftd3`` package (simple-dftd3).

Why this library and not torchani's ``TwoBodyDispersionD3``: under periodic boundaries the
torchani term needs a finite cutoff and its smooth envelope truncates the lattice sum badly
(``benchmarks/d3_convergence.py``, benzene/naphthalene/ice: D3 energy -23 % at 8 Å, -11 % at
12 Å, -4 % at 20 Å, -1.9 % at 30 Å; pressure likewise), while simple-dftd3 sums pairs to a cutoff
we choose, with analytic forces and stress. Its exact Ewald sum is the reference for that choice
(:data:`DEFAULT_REALSPACE_CUTOFF`).

Parameters: no D3(BJ) set exists for the ANI reference methods themselves (see
:data:`D3_REFERENCE`); the defaults are the ``wb97x`` D3(BJ) set, two-body only, the same
numbers torchani ships for ``wb97x``. ANI-1x + D3 was measured to over-bind (README, Potentials): the
variants must be reported with their measured effect, not assumed to improve anything.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import Bohr
from dftd3.ase import DFTD3
from dftd3.interface import (
    ModifiedRationalDampingParam,
    ModifiedZeroDampingParam,
    OptimizedPowerDampingParam,
    RationalDampingParam,
    ZeroDampingParam,
)

#: Real-space cutoffs (Å) given to simple-dftd3: pairs to 40 Bohr (21.2 Å), switched off smoothly over
#: the last 5 Bohr; coordination numbers from neighbours within 40 Bohr (the library's default; a
#: shorter CN cutoff makes forces disagree with the energy by 1e-4 eV/Å). Against the exact Ewald sum
#: (naphthalene, benzene, ice, COD 1011063): energy and pressure 0.19-0.24 % short, stress within
#: 2.4e-5 eV/Å³ (0.004 GPa) — the library's 60 Bohr gets 0.05 % at twice the cost, and D3 was 70 % of a
#: ``-d3`` relaxation's time there. Relaxed volumes: see ``benchmarks/d3_speed.py`` (README). With a
#: sharp cutoff, forces differ from finite differences of the energy by ~2.6e-5 eV/Å (pairs crossing
#: it); smoothed: 4e-9 eV/Å.
DEFAULT_REALSPACE_CUTOFF: dict[str, float] = {"disp2": 40 * Bohr, "width2": 5 * Bohr, "cn": 40 * Bohr}


#: D3 cutoffs of the float32 draft on the fast path (the exact float64 finish uses
#: :data:`DEFAULT_REALSPACE_CUTOFF`): 30 Bohr pairs, coordination numbers within 25 Bohr, 2.5x cheaper
#: than the default. Its forces are not exactly the gradient of its energy (1e-4 eV/Å), which a draft
#: may afford: it only moves the crystal; every verdict and reported number comes from the exact model.
#: ``benchmarks/d3_speed.py``: the whole ``-d3`` relaxation 1.5x faster, volumes within 0.007
#: percentage points of the one-crystal path.
DRAFT_REALSPACE_CUTOFF: dict[str, float] = {"disp2": 30 * Bohr, "width2": 5 * Bohr, "cn": 25 * Bohr}


def _bohr(cutoffs: dict[str, float]) -> str:
    return ",".join(f"{key}={value / Bohr:g}" for key, value in sorted(cutoffs.items()))


def d3_answer_settings(draft: bool = False) -> tuple[tuple[str, str], ...]:
    """The D3 choices a potential with D3 records in its settings hash (cutoffs, Bohr); ``draft``: also
    the draft's, for potentials that take the fast path (they change the path, if not the minimum)."""
    out = (("d3_realspace_cutoff_bohr", _bohr(DEFAULT_REALSPACE_CUTOFF)),)
    return out + ((("d3_draft_realspace_cutoff_bohr", _bohr(DRAFT_REALSPACE_CUTOFF)),) if draft else ())


def copy_d3(dispersion: Calculator, **changes: Any) -> Calculator:
    """A fresh simple-dftd3 calculator with ``dispersion``'s parameters (and ``changes``): no shared state."""
    return type(dispersion)(**{**dict(dispersion.parameters), **changes})


def draft_dispersion(dispersion: Calculator) -> Calculator:
    """A copy of a simple-dftd3 calculator with the draft's cheaper cutoffs (:data:`DRAFT_REALSPACE_CUTOFF`)."""
    return copy_d3(dispersion, realspace_cutoff=dict(DRAFT_REALSPACE_CUTOFF))


#: Largest atomic number with D3 reference data in simple-dftd3 (H..Lr); beyond it the library
#: silently returns numbers instead of failing, so we check first.
MAX_D3_ELEMENT = 103


#: damping names accepted by ``dftd3.ase.DFTD3`` -> the parameter class that loads them
_DAMPING_PARAMS = {
    "d3bj": RationalDampingParam, "d3zero": ZeroDampingParam, "d3bjm": ModifiedRationalDampingParam,
    "d3mbj": ModifiedRationalDampingParam, "d3zerom": ModifiedZeroDampingParam,
    "d3mzero": ModifiedZeroDampingParam, "d3op": OptimizedPowerDampingParam,
}


class D3Reference(NamedTuple):
    """Which D3 parametrisation goes with an ANI model, and why."""

    method: str
    damping: str
    justification: str
    citation: str


_WB97X_CAVEAT = (
    "No D3(BJ) set was fitted to the original wB97X (Chai & Head-Gordon 2008, the ANI reference). "
    "simple-dftd3's 'wb97x' D3(BJ) set (s6=1, s8=0.2641, a1=0, a2=5.4959) is Najibi & Goerigk's "
    "wB97X-D3(BJ), whose base functional is wB97X-V without VV10 (simple-dftd3 issue #143); it is "
    "the closest published set and the one torchani ships as 'wb97x'. Two-body only (no ATM), as "
    "fitted. 6-31G(d) basis-set superposition error already adds spurious binding to the ANI "
    "reference, so D3 on top may double count."
)

#: ANI model name (as in :mod:`helpers.relax.potentials.ani`) -> D3 parametrisation used for its ``-d3`` variant.
D3_REFERENCE: dict[str, D3Reference] = {
    "ani1x": D3Reference(
        "wb97x", "d3bj",
        "ANI-1x was trained on wB97X/6-31G(d). " + _WB97X_CAVEAT,
        "Smith et al., J. Chem. Phys. 148, 241733 (2018), doi:10.1063/1.5023802; "
        "Najibi & Goerigk, J. Chem. Theory Comput. 14, 5725 (2018), doi:10.1021/acs.jctc.8b00842",
    ),
    "ani1ccx": D3Reference(
        "wb97x", "d3bj",
        "ANI-1ccx targets CCSD(T)*/CBS, which contains dispersion itself: no D3 parameters exist "
        "for it (simple-dftd3 has none). What ANI-1ccx lacks is the part beyond its 5.2 Å cutoff, "
        "the same part ANI-1x lacks. ANI-1ccx was transfer-learned from ANI-1x (same architecture "
        "and wB97X pre-training, retrained on ~0.5 M CCSD(T)*/CBS points), so we use the ANI-1x "
        "(wB97X) set: ani1x-d3 and ani1ccx-d3 then differ only in the network. Expect more "
        "over-binding than for ANI-1x, since short-range dispersion is already in CCSD(T). "
        + _WB97X_CAVEAT,
        "Smith et al., Nat. Commun. 10, 2903 (2019), doi:10.1038/s41467-019-10827-4; "
        "Najibi & Goerigk, J. Chem. Theory Comput. 14, 5725 (2018), doi:10.1021/acs.jctc.8b00842",
    ),
    "ani2x": D3Reference(
        "wb97x", "d3bj",
        "ANI-2x was trained on wB97X/6-31G(d), like ANI-1x. " + _WB97X_CAVEAT,
        "Devereux et al., J. Chem. Theory Comput. 16, 4192 (2020), doi:10.1021/acs.jctc.0c00121; "
        "Najibi & Goerigk, J. Chem. Theory Comput. 14, 5725 (2018), doi:10.1021/acs.jctc.8b00842",
    ),
}


class D3Calculator(DFTD3):
    """simple-dftd3's ASE calculator, also declaring the ``free_energy`` it already returns.

    Without it ``force_consistent`` energy requests (``calculate_numerical_stress``, some
    filters) raise PropertyNotImplementedError.
    """

    implemented_properties = [*DFTD3.implemented_properties, "free_energy"]


class DispersionError(RuntimeError):
    """The D3 library cannot evaluate this structure or these settings."""


def d3_calculator(method: str = "wb97x", damping: str = "d3bj", *, atm: bool = False,
                  **opts: Any) -> D3Calculator:
    """Return a simple-dftd3 ASE calculator (energy, forces, Voigt stress) for ``method``.

    ``atm=True`` adds the repulsive three-body Axilrod-Teller-Muto term (s9=1); the published
    parameters were fitted without it, and it is slow under PBC (~20 s per call for 48 atoms vs
    0.06 s). ``opts`` go to :class:`dftd3.ase.DFTD3` (``realspace_cutoff``, ``ewald``,
    ``params_tweaks``, ...). The default :data:`DEFAULT_REALSPACE_CUTOFF` converges the lattice
    sum to 0.2 % of the Ewald result; ``ewald={}`` gives the exact two-body sum (3-7x slower).
    Unknown method/damping pairs fail here, not in the middle of a relaxation.
    """
    opts.setdefault("realspace_cutoff", dict(DEFAULT_REALSPACE_CUTOFF))
    tweaks = opts.pop("params_tweaks", None) or ({"method": method, "atm": True} if atm else {})
    if damping not in _DAMPING_PARAMS:
        raise DispersionError(f"unknown D3 damping {damping!r}; known: {', '.join(_DAMPING_PARAMS)}")
    if "s8" not in tweaks:  # parameters come from the library's table: check the method exists
        try:
            _DAMPING_PARAMS[damping](method=method, atm=atm)
        except RuntimeError as err:
            raise DispersionError(f"simple-dftd3 has no {damping} parameters for {method!r}: {err}") from err
    calc = D3Calculator(method=method, damping=damping, params_tweaks=tweaks, **opts)
    calc.label = f"d3-{method}-{damping}{'-atm' if atm else ''}"
    return calc


def check_d3_input(atoms: Atoms) -> None:
    """Raise :class:`DispersionError` for structures D3 rejects or would silently mis-handle."""
    formula = atoms.get_chemical_formula() or "(empty)"
    if len(atoms) == 0:
        raise DispersionError("D3: structure has no atoms")
    if not np.isfinite(atoms.positions).all():
        raise DispersionError(f"D3: non-finite atomic positions in {formula}")
    bad = sorted({int(z) for z in atoms.numbers if not 1 <= z <= MAX_D3_ELEMENT})
    if bad:
        raise DispersionError(f"D3: no reference data for atomic numbers {bad} in {formula}")
    if atoms.pbc.any():
        cell = atoms.cell.array
        if not np.isfinite(cell).all() or np.linalg.matrix_rank(cell[atoms.pbc], tol=1e-6) < atoms.pbc.sum():
            raise DispersionError(f"D3: periodic structure {formula} has a degenerate cell")


class DispersionCorrectedCalculator(Calculator):
    """Sum of a base calculator (e.g. ANI) and D3: energy, forces and Voigt stress in one call.

    Unlike ASE's ``SumCalculator`` it asks each part for every property at once (the D3 part
    gives forces and stress from one gradient pass) and keeps results to the standard ASE
    properties, so ``ase.db`` and ``FrechetCellFilter`` see an ordinary calculator. The two
    parts' energies of the last call are kept: :meth:`energy_contributions`. A D3 failure is
    raised as :class:`DispersionError` naming the structure and the library's reason.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, base: Calculator, dispersion: Calculator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.dispersion = dispersion
        self._contributions: tuple[float, float] | None = None
        #: calculations done (the relax engine's ``force_calls``; the parts keep no count of their own)
        self.n_calls = 0

    @property
    def parts(self) -> Sequence[Calculator]:
        return (self.base, self.dispersion)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        wanted = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
        check_d3_input(atoms)  # before the base model sees a structure D3 would refuse
        self.n_calls += 1
        base = _results_of(self.base, atoms, wanted)
        summed = add_dispersion(base, self.dispersion, atoms)
        self._contributions = (float(base["energy"]), summed["e_dispersion"])
        self.results.update({key: summed[key] for key in ("energy", "free_energy", "forces", "stress")
                             if key in summed})

    def energy_contributions(self) -> dict[str, float]:
        """Energies (eV) of the base and dispersion parts from the last calculation."""
        if self._contributions is None:
            raise CalculatorSetupError("no calculation done yet")
        return {"base": self._contributions[0], "dispersion": self._contributions[1]}

    def todict(self) -> dict[str, Any]:
        return {"base": type(self.base).__name__, "dispersion": getattr(self.dispersion, "label", None)
                or type(self.dispersion).__name__}


def add_dispersion(base: dict[str, Any], dispersion: Calculator, atoms: Atoms) -> dict[str, Any]:
    """``base`` results (energy, forces, stress for a crystal) plus ``dispersion``'s for ``atoms``.

    The one place the D3 part is added, for the one-crystal calculator and the side-by-side
    path alike (same numbers either way). Returns a new dict with the sums, every other key of
    ``base`` unchanged, and ``e_dispersion`` (eV). A D3 failure is a :class:`DispersionError`
    naming the structure and the library's reason. ``atoms`` has passed :func:`check_d3_input`
    (both callers check before their base model runs).
    """
    wanted = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
    try:
        disp = _results_of(dispersion, atoms, wanted)
    except Exception as err:  # the library wraps its RuntimeError in InputError/CalculationFailed
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise DispersionError(
            f"D3 failed for {atoms.get_chemical_formula()} ({len(atoms)} atoms, "
            f"pbc={atoms.pbc.tolist()}): {err}{cause}"
        ) from err
    summed = dict(base)
    summed["e_dispersion"] = float(disp["energy"])
    summed["energy"] = summed["free_energy"] = float(base["energy"]) + float(disp["energy"])
    summed["forces"] = np.asarray(base["forces"]) + np.asarray(disp["forces"])
    if "stress" in wanted:
        summed["stress"] = _voigt(base["stress"]) + _voigt(disp["stress"])
    return summed


class SideBySideDispersion:
    """A side-by-side evaluator (:class:`~helpers.relax.potentials.ani_side_by_side.SideBySideANI`)
    plus D3 for each crystal: lets the ``-d3`` variants use the fast path.

    The model pass stays one pass for all crystals; D3 is then added crystal by crystal, each with
    its own copy of ``dispersion`` (so simple-dftd3 keeps that crystal's model and only updates
    its geometry between steps). Same interface: :meth:`compute` and :meth:`forget`.
    """

    def __init__(self, evaluator: Any, dispersion: Calculator) -> None:
        self.evaluator = evaluator
        self.dispersion = dispersion
        self._per_crystal: dict[object, Calculator] = {}
        self.time_dispersion = 0.0  # s spent in D3

    def compute(self, atoms_list: list[Atoms], keys: list | None = None) -> list[dict[str, Any]]:
        """One dict per crystal, as the evaluator's, with D3 added and ``e_dispersion`` (eV)."""
        keys = list(range(len(atoms_list))) if keys is None else keys
        for atoms in atoms_list:
            check_d3_input(atoms)
        results = self.evaluator.compute(atoms_list, keys=keys)
        start = time.perf_counter()
        summed = [add_dispersion(res, self._calculator(key), atoms)
                  for key, atoms, res in zip(keys, atoms_list, results)]
        self.time_dispersion += time.perf_counter() - start
        return summed

    def forget(self, key) -> None:
        self.evaluator.forget(key)
        self._per_crystal.pop(key, None)

    def _calculator(self, key) -> Calculator:
        calc = self._per_crystal.get(key)
        if calc is None:
            calc = self._per_crystal[key] = copy_d3(self.dispersion)
        return calc


def _results_of(calc: Calculator, atoms: Atoms, properties: list[str]) -> dict[str, Any]:
    """All ``properties`` of ``calc`` for ``atoms`` in one ``calculate`` call, reusing its cache."""
    changes = calc.check_state(atoms) if calc.atoms is not None else list(all_changes)
    if changes or any(p not in calc.results for p in properties):
        calc.results = {}
        calc.calculate(atoms, properties, changes)
    missing = [p for p in properties if p not in calc.results]
    if missing:
        raise CalculatorSetupError(f"{type(calc).__name__} did not return {missing}")
    return calc.results


def _voigt(stress: np.ndarray) -> np.ndarray:
    stress = np.asarray(stress)
    return full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress


def with_dispersion(base_calc: Calculator, method: str = "wb97x", damping: str = "d3bj",
                    **opts: Any) -> DispersionCorrectedCalculator:
    """Return ``base_calc`` + D3(``method``, ``damping``) as one calculator (see :func:`d3_calculator`)."""
    return DispersionCorrectedCalculator(base_calc, d3_calculator(method, damping, **opts))


def with_model_dispersion(base_calc: Calculator, model_name: str,
                          **opts: Any) -> DispersionCorrectedCalculator:
    """``base_calc`` + the D3 variant :data:`D3_REFERENCE` assigns to ANI model ``model_name``."""
    try:
        ref = D3_REFERENCE[model_name]
    except KeyError:
        raise KeyError(f"no D3 reference for {model_name!r}; known: {', '.join(D3_REFERENCE)}") from None
    return with_dispersion(base_calc, ref.method, ref.damping, **opts)
