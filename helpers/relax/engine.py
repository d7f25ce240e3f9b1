"""Relax one crystal (atoms and cell) with a potential, the study's way, and say how it ended.

The study: BFGS on atoms + cell to fmax = 5e-4 eV/Å, at most ``300 + x * n_atoms`` steps.
Every relaxation ends with a status instead of an exception: ``converged``, ``step_cap``,
``exploded`` (non-finite energy/forces, cell volume blown up or collapsed, atoms fused),
``timeout`` (wall-time limit) or ``error`` (message kept).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from helpers.internals import capture_optimizer_state, restore_optimizer_state
from helpers.relax import start_tells
from helpers.relax.checkpoint import Checkpoint, structure_fingerprint
from helpers.relax.hessian_seed import seed_hessian, side_by_side_evaluator
from helpers.relax.potentials.registry import MODEL_FILE_HASH, get_potential
from helpers.vocabulary import STUDY_FMAX, STUDY_MAX_STEPS_BASE, Status

#: the fused-atom check (a neighbour search, ~10 ms at 100 atoms) runs every this many steps
DISTANCE_CHECK_EVERY = 10
OPTIMIZERS = ("BFGS", "LBFGS", "FIRE", "PreconLBFGS")
CELL_FILTERS = ("frechet", "fixed")
#: "study": one crystal at a time (relax()); "fast": the same optimizer on many crystals side by
#: side, one model pass per step for all (helpers.relax.side_by_side.relax_many; reported results always
#: come from the full float64 model at the full fmax)
STRATEGIES = ("study", "fast")
DRAFTS = (None, "float32")
#: the external pressure a crystal is relaxed at: None, 0 GPa (the study's); "experimental", the pressure its
#: CIF says it was measured at (0 where none is recorded), so a high-pressure entry is compared in its own state
PRESSURES = (None, "experimental")
#: ``atoms.info`` key of the external pressure (eV/Å³) a crystal is relaxed at, set by the relax stage
EXTERNAL_PRESSURE = "external_pressure"


@dataclass(frozen=True)
class RelaxSettings:
    """Everything that changes a relaxation's answer (hashed to recognise finished work)."""

    potential: str = "ani1x"
    fmax: float = STUDY_FMAX
    max_steps_base: int = STUDY_MAX_STEPS_BASE
    steps_per_atom: int | None = None
    optimizer: str = "BFGS"
    cell_filter: str = "frechet"
    fix_symmetry: bool = False
    hydrostatic: bool = False
    # explosion guards
    max_volume_ratio: float = 2.0
    min_volume_ratio: float = 0.5
    min_pair_distance: float = 0.5
    strategy: str = "fast"
    #: strategy "fast" only: dtype of the draft copy of the model that moves crystals until its
    #: forces pass fmax, before the exact float64 model finishes (None: exact forces throughout)
    draft: str | None = "float32"
    #: a cheap registered potential whose Hessian at the start seeds BFGS (:mod:`helpers.relax.hessian_seed`;
    #: one crystal at a time); None: ASE's default start (70 eV/Å² · I), the study's
    hessian_seed: str | None = None
    #: smallest eigenvalue (eV/Å²) of the seed Hessian
    hessian_seed_floor: float = 5.0
    #: the external pressure (:data:`PRESSURES`): None, 0 GPa as the study; "experimental", the CIF's own
    pressure: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.cell_filter not in CELL_FILTERS:
            raise ValueError(f"unknown cell filter {self.cell_filter!r}; choose from {CELL_FILTERS}")
        if not self.fmax > 0:
            raise ValueError("fmax must be positive")
        if self.draft not in DRAFTS:
            raise ValueError(f"unknown draft {self.draft!r}; choose from {DRAFTS}")
        if self.hessian_seed is not None and self.optimizer != "BFGS":
            raise ValueError(f"hessian_seed seeds BFGS's Hessian; optimizer {self.optimizer!r} keeps none")
        if not self.hessian_seed_floor > 0:
            raise ValueError("hessian_seed_floor must be positive")
        if self.pressure not in PRESSURES:
            raise ValueError(f"unknown pressure {self.pressure!r}; choose from {PRESSURES}")

    def resolved(self, default_steps_per_atom: int) -> RelaxSettings:
        """Fill ``steps_per_atom`` from the potential's default (the study's x)."""
        if self.steps_per_atom is not None:
            return self
        from dataclasses import replace

        return replace(self, steps_per_atom=default_steps_per_atom)

    def max_steps(self, natoms: int) -> int:
        """The study's step cap: ``max_steps_base + steps_per_atom * natoms``."""
        if self.steps_per_atom is None:
            raise ValueError("steps_per_atom unresolved")
        return int(self.max_steps_base + self.steps_per_atom * natoms)

    def hash(self, calculator: Mapping[str, Any] | None = None) -> str:
        """Short stable hash of the settings, the software versions that change results and ``calculator``:
        the calculator options that change them (:meth:`~helpers.relax.potentials.registry.Potential.answer_options`;
        a model file by its content hash). Without options the hash is the one of earlier versions."""
        fields = asdict(self)
        if fields["strategy"] == "study":  # hashes from before these fields existed stay valid
            del fields["strategy"], fields["draft"]
        if fields["hessian_seed"] is None:  # unseeded: the hash of every earlier version
            del fields["hessian_seed"], fields["hessian_seed_floor"]
        if fields["pressure"] is None:  # at 0 GPa: the hash of every earlier version
            del fields["pressure"]
        data = {**fields, "versions": versions(self.potential)}
        options = dict(calculator or {})
        if MODEL_FILE_HASH in options:  # another weights file: it replaces the default file's hash
            data["versions"][MODEL_FILE_HASH] = options.pop(MODEL_FILE_HASH)
        if options:  # only when given: every hash of default options stays what it was
            data["calculator"] = options
        payload = json.dumps(data, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class RelaxResult:
    """How one relaxation ended; ``atoms`` carries the final energy/forces/stress."""

    atoms: Atoms
    status: str
    converged: bool
    steps: int
    max_steps: int
    e_initial: float | None
    e_final: float | None
    fmax_final: float | None
    wall_time: float
    force_calls: int | None = 0  #: None: the calculator keeps no count (``n_calls``)
    message: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def without_relaxing(cls, atoms: Atoms, settings: RelaxSettings, status: Status, message: str,
                         **extra) -> RelaxResult:
        """A structure that never started (an error before the first step, or ``skipped``)."""
        return cls(atoms=atoms.copy(), status=status, converged=False, steps=0,
                   max_steps=settings.max_steps(len(atoms)), e_initial=None, e_final=None, fmax_final=None,
                   wall_time=0.0, message=message, extra=extra)


class Exploded(RuntimeError):
    """The structure left physical territory; relaxing further is wasted time."""


class WallTimeExceeded(RuntimeError):
    """The per-structure wall-time limit was reached."""


def versions(potential: str | None = None) -> dict[str, str]:
    """Versions of the libraries whose changes could change a relaxed structure.

    With ``potential``, also the packages that potential declares (tblite, sevenn, ...; none for ANI,
    so ANI hashes are unchanged); an unregistered name adds nothing.
    """
    import ase
    import torch
    import torchani

    out = {"ase": ase.__version__, "torch": torch.__version__.split("+")[0], "torchani": torchani.__version__}
    if potential is not None:
        from helpers.relax.potentials.registry import REGISTRY

        if potential in REGISTRY:
            out.update(REGISTRY[potential].versions())
    return out


def make_optimizer(name: str, target, logfile=None, trajectory=None, append_trajectory: bool = False):
    """An ASE optimizer by name, attached to ``target`` (Atoms or a cell filter)."""
    from ase import optimize

    files = {"logfile": logfile, "trajectory": trajectory, "append_trajectory": append_trajectory}
    if name == "PreconLBFGS":
        from ase.optimize.precon import Exp, PreconLBFGS

        return PreconLBFGS(target, precon=Exp(), **files)
    return getattr(optimize, name)(target, **files)


def prepare(atoms: Atoms, calc: Calculator, settings: RelaxSettings) -> Atoms:
    """A copy of ``atoms`` with ``calc`` attached and, if asked, its space group held (FixSymmetry)."""
    atoms = atoms.copy()
    atoms.calc = calc
    if settings.fix_symmetry:
        from ase.constraints import FixSymmetry

        atoms.set_constraint(FixSymmetry(atoms))
    return atoms


def external_pressure(atoms: Atoms, settings: RelaxSettings) -> float:
    """The external pressure (eV/Å³) ``atoms`` are relaxed at: ``atoms.info[EXTERNAL_PRESSURE]`` when
    ``settings.pressure`` asks for one, else 0 (the study's)."""
    return float(atoms.info.get(EXTERNAL_PRESSURE, 0.0)) if settings.pressure else 0.0


def wrap_cell(atoms: Atoms, settings: RelaxSettings, cell_filter: type | None = None):
    """Atoms alone (fixed cell) or a Fréchet cell filter (atoms + cell; ``cell_filter`` a subclass), at the
    external pressure ``atoms.info[EXTERNAL_PRESSURE]`` (eV/Å³) when ``settings.pressure`` asks for one: the
    optimizer then minimises the enthalpy E + pV, and converges where the stress balances the pressure."""
    if settings.cell_filter == "fixed":
        return atoms
    if cell_filter is None:
        from ase.filters import FrechetCellFilter as cell_filter
    return cell_filter(atoms, hydrostatic_strain=settings.hydrostatic,
                       scalar_pressure=external_pressure(atoms, settings))


def check_not_fused(closest: float, settings: RelaxSettings) -> None:
    """Raise :class:`Exploded` when the closest pair of atoms is below the guard distance."""
    if closest < settings.min_pair_distance:
        raise Exploded(f"atoms fused: closest pair {closest:.2f} Å < {settings.min_pair_distance} Å")


def min_distance(atoms: Atoms, cutoff: float = 1.2) -> float:
    """Shortest interatomic distance under PBC, inf when no pair is closer than ``cutoff``.

    The explosion guard runs every step, so it asks only for pairs below its own threshold:
    a short cutoff keeps the neighbour search cheap.
    """
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return math.inf
    d = neighbor_list("d", atoms, cutoff)
    return float(d.min()) if len(d) else math.inf


def relax(atoms: Atoms, calc: Calculator, settings: RelaxSettings,
          max_wall_time: float | None = None, trajectory: str | Path | None = None,
          logfile: str | None = None, on_optimizer=None, checkpoint: Checkpoint | None = None) -> RelaxResult:
    """Relax a copy of ``atoms``; never raises for a bad structure (see the module docstring).

    ``settings.steps_per_atom`` must be resolved (see :meth:`RelaxSettings.resolved`).
    ``on_optimizer(opt)`` is called once the optimizer and our observers exist (e.g. to attach another).
    With ``checkpoint``, progress is saved now and then and a saved one is continued exactly
    (:mod:`helpers.relax.checkpoint`); steps, time and force calls count the whole relaxation.
    """
    atoms = prepare(atoms, calc, settings)
    cap = settings.max_steps(len(atoms))
    v0 = atoms.get_volume() if atoms.pbc.all() else None
    start_fingerprint = structure_fingerprint(atoms) if checkpoint is not None else None
    saved = checkpoint.load(start=start_fingerprint) if checkpoint is not None else None
    earlier = saved or {"wall_time": 0.0, "cpu_time": 0.0, "force_calls": 0}
    start, cpu_start = time.perf_counter(), time.process_time()
    counts_calls = hasattr(calc, "n_calls")  # ours do; a plug-in's calculator may not (then None, not 0)
    calls_before = getattr(calc, "n_calls", 0)

    def spent() -> dict[str, float]:
        """Wall time, CPU time (core-seconds, however busy the machine was) and force calls of the whole
        relaxation so far, the runs before a checkpoint included."""
        return {"wall_time": earlier["wall_time"] + time.perf_counter() - start,
                "cpu_time": earlier["cpu_time"] + time.process_time() - cpu_start,
                "force_calls": earlier["force_calls"] + getattr(calc, "n_calls", 0) - calls_before}

    e_initial = e_disp_initial = None
    tells: dict = dict(saved.get("start_tells") or {}) if saved else {}
    seeding: dict = {}
    opt = target = None
    status, message = Status.error, ""
    converged = False
    try:
        if saved:
            e_initial, e_disp_initial = saved["e_initial"], saved["e_dispersion_initial"]
        else:
            e_initial = float(atoms.get_potential_energy())
            if not math.isfinite(e_initial):
                raise Exploded(f"initial energy is {e_initial}")
            e_disp_initial = dispersion_energy(calc, e_initial)
        target = wrap_cell(atoms, settings)  # the cell filter's reference is the experimental cell
        opt = make_optimizer(settings.optimizer, target, logfile=logfile,
                             trajectory=str(trajectory) if trajectory else None, append_trajectory=bool(saved))
        if settings.hessian_seed is not None and not saved:  # a resumed BFGS has its own Hessian back
            seeding = _seed(opt, atoms, settings)
        if checkpoint is not None:
            optimizer_state = capture_optimizer_state(opt)
            if saved:
                _continue_from(saved, atoms, opt)

        calls = iter(range(10**9))

        def guard() -> None:
            # energies/forces/volume every step; the (costlier) fused-atom search every 10th
            _check_physical(atoms, settings, v0, distances=next(calls) % DISTANCE_CHECK_EVERY == 0)
            if max_wall_time is not None and spent()["wall_time"] > max_wall_time:
                raise WallTimeExceeded(f"time limit max_wall_time = {max_wall_time:g} s reached")

        def save_progress() -> None:
            if checkpoint.due() and optimizer_state() is not None:
                checkpoint.save({
                    "nsteps": opt.nsteps, "positions": atoms.get_positions(), "cell": atoms.cell.array.copy(),
                    "optimizer": optimizer_state(), "e_initial": e_initial, "e_dispersion_initial": e_disp_initial,
                    "start_tells": dict(tells), **spent()}, start=start_fingerprint)

        def record_start() -> None:
            # the optimizer's first evaluation is at the experimental geometry: its forces and stress are
            # the start tells (helpers.relax.start_tells), read from the results, no extra model call
            if not saved and not tells and opt.nsteps == 0:
                tells.update(start_tells.from_results(getattr(atoms.calc, "results", None), atoms.numbers))

        opt.attach(record_start, interval=1)
        opt.attach(guard, interval=1)
        if checkpoint is not None:
            opt.attach(save_progress, interval=1)
        if on_optimizer is not None:
            on_optimizer(opt)
        converged = bool(opt.run(fmax=settings.fmax, steps=cap - opt.nsteps))
        status = Status.converged if converged else Status.step_cap
    except Exploded as exc:
        status, message = Status.exploded, str(exc)
    except WallTimeExceeded as exc:
        status, message = Status.timeout, str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, the batch goes on
        status, message = Status.error, f"{type(exc).__name__}: {exc}"
    steps = int(opt.nsteps) if opt is not None else 0
    fmax_final = _fmax(target) if target is not None and status != Status.error else None
    final = _final_atoms(atoms)
    e_final = final.calc.results.get("energy") if final.calc else None
    total = spent()
    extra = {"e_dispersion_initial": e_disp_initial, "e_dispersion": dispersion_energy(calc, e_final),
             "cpu_time": total["cpu_time"], "resumed_at_step": saved["nsteps"] if saved else None, **tells,
             **seeding}
    return RelaxResult(
        atoms=final, status=status, converged=converged and status == Status.converged, steps=steps,
        max_steps=cap, e_initial=e_initial, e_final=e_final,
        fmax_final=fmax_final,
        wall_time=total["wall_time"], force_calls=int(total["force_calls"]) if counts_calls else None, message=message,
        extra={k: v for k, v in extra.items() if v is not None},
    )


def _seed(opt, atoms: Atoms, settings: RelaxSettings) -> dict:
    """Give BFGS the seed potential's Hessian as H0 (:mod:`helpers.relax.hessian_seed`): the row's
    ``hessian_seeded`` (1, or 0 when the seed potential does not cover the crystal's elements: ASE's start)
    and ``hessian_seed_time`` (s)."""
    seed = get_potential(settings.hessian_seed)
    if seed.uncovered(atoms.get_chemical_symbols()):
        return {"hessian_seeded": 0}
    started = time.perf_counter()
    evaluate = side_by_side_evaluator(seed.name) if atoms.pbc.all() else None
    work = atoms.copy()  # the seed's own copy; the cell filter's reference is the same (experimental) cell
    work.calc = None if evaluate else seed.calculator()
    opt.H0 = seed_hessian(wrap_cell(work, settings), settings.hessian_seed_floor, evaluate=evaluate)
    return {"hessian_seeded": 1, "hessian_seed_time": round(time.perf_counter() - started, 3)}


def _continue_from(saved: dict, atoms: Atoms, opt) -> None:
    """Put the atoms, cell, step count and optimizer state of a checkpoint in place (after the cell
    filter took the experimental cell as its reference, as in the run that saved it)."""
    atoms.set_cell(saved["cell"], scale_atoms=False, apply_constraint=False)
    atoms.set_positions(saved["positions"], apply_constraint=False)
    restore_optimizer_state(opt, saved["optimizer"])
    opt.nsteps = saved["nsteps"]


def dispersion_energy(calc: Calculator, energy: float | None) -> float | None:
    """The D3 part (eV) of ``energy`` when ``calc`` is ANI + D3 and its last call gave ``energy``.

    Lets a ``-d3`` row say how much of its energy is dispersion; None for plain ANI.
    """
    contributions = getattr(calc, "energy_contributions", None)
    if contributions is None or energy is None:
        return None
    try:
        parts = contributions()
    except Exception:  # noqa: BLE001 - no complete calculation yet
        return None
    if not math.isclose(sum(parts.values()), energy, rel_tol=1e-12, abs_tol=1e-9):
        return None  # the last call failed half-way: its parts are not this energy's
    return float(parts["dispersion"])


def _check_physical(atoms: Atoms, settings: RelaxSettings, v0: float | None, distances: bool = True) -> None:
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy")
    if energy is not None and not math.isfinite(energy):
        raise Exploded(f"energy became {energy}")
    forces = results.get("forces")
    if forces is not None and not np.isfinite(forces).all():
        raise Exploded("forces became non-finite")
    if v0:
        ratio = atoms.get_volume() / v0
        if not settings.min_volume_ratio <= ratio <= settings.max_volume_ratio:
            raise Exploded(f"cell volume changed by a factor {ratio:.2f}")
    if not distances:
        return
    check_not_fused(min_distance(atoms, cutoff=settings.min_pair_distance), settings)


def _final_atoms(atoms: Atoms) -> Atoms:
    """A plain copy with the last energy/forces/stress attached (storable in ase.db)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    final = atoms.copy()
    final.set_constraint()
    keep = {k: results[k] for k in ("energy", "forces", "stress") if k in results}
    if keep:
        final.calc = SinglePointCalculator(final, **keep)
    return final


def _fmax(target) -> float | None:
    """The optimizer's convergence measure: largest force row, cell rows included for filters."""
    try:
        forces = np.asarray(target.get_forces())
    except Exception:  # noqa: BLE001 - no valid forces (e.g. exploded): unknown
        return None
    if not len(forces) or not np.isfinite(forces).all():
        return None
    return float(np.sqrt((forces**2).sum(axis=1).max()))
