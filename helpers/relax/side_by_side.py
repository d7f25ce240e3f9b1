"""The fast relax path: the study's optimizer on many crystals at once, one model pass per step.

Each crystal keeps its own ASE optimizer (BFGS by default) on its own FrechetCellFilter, with
the study's fmax and step cap: without a draft, the trajectory of every crystal is the one
``relax()`` follows, to floating-point summation order. What changes is how forces are computed:
every step, the crystals still running are evaluated together in one torchani pass
(:class:`SideBySideANI`), a finished crystal leaves the batch at once and the next one from the
queue takes its place. The optimizer's arithmetic is done once and cheaply: the cell filter's
forces once per step (ASE's ``run`` asks three times), its matrix logarithm by a series, and the
BFGS step by a Cholesky solve while the Hessian is positive definite.

With a ``draft`` evaluator (the same ensemble in float32, 1.5-2x cheaper per pass) the crystal
moves on draft forces until they pass fmax (or the step cap); the exact float64 model then
re-evaluates that geometry and BFGS continues on exact forces, Hessian kept, until the exact
forces pass fmax. The first and the last evaluation are always exact, so the initial energy and
everything reported comes from the full float64 model at the full tolerance (a crystal that
explodes or errors during the draft phase keeps the draft's last numbers; its status says why).

``relax_many`` yields ``(key, RelaxResult)`` as each crystal ends, so callers commit finished
work immediately; statuses and guards are those of :func:`helpers.relax.engine.relax`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from helpers.internals import bfgs_method_class, set_cell_filter_algebra
from helpers.relax import start_tells
from helpers.relax.engine import (
    Exploded,
    RelaxResult,
    RelaxSettings,
    _check_physical,
    _final_atoms,
    _fmax,
    check_not_fused,
    make_optimizer,
    prepare,
    wrap_cell,
)
from helpers.relax.potentials.ani_side_by_side import SideBySideANI
from helpers.vocabulary import Status

#: optimizers that can be stepped one step at a time from outside (PreconLBFGS line-searches)
LOCKSTEP_OPTIMIZERS = ("BFGS", "LBFGS", "FIRE")
#: atoms evaluated together per model pass; per-atom cost stops falling beyond a few hundred
DEFAULT_ATOMS_IN_FLIGHT = 512


class SideBySideResults(Calculator):
    """Holds the results the side-by-side pass computed for this crystal's current geometry."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def store(self, atoms: Atoms, results: dict) -> None:
        self.atoms = atoms.copy()
        self.results = {k: v for k, v in results.items() if k in self.implemented_properties}

    def check_state(self, atoms, tol=1e-15):  # noqa: D102 - exact equality; ASE's compare_atoms is slow
        same = (np.array_equal(atoms.positions, self.atoms.positions)
                and np.array_equal(atoms.cell.array, self.atoms.cell.array))
        return [] if same else ["positions"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("geometry changed after the side-by-side evaluation (internal error)")


def logm_near_identity(matrix: np.ndarray) -> np.ndarray:
    """Matrix logarithm of a multiple of a near-identity matrix (series; scipy's logm otherwise).

    scipy's general ``logm`` costs ~3 ms for a 3x3 matrix, more than a model pass on a small
    crystal; the Mercator series is exact to 1e-16 here (tested against scipy).
    """
    from scipy.linalg import logm

    scale = np.trace(matrix) / len(matrix)  # the filter also asks for logm(n_atoms * F)
    if not scale > 0:
        return logm(matrix)
    x = matrix / scale - np.eye(len(matrix))
    radius = np.linalg.norm(x, 2)
    if radius > 0.25:
        return logm(matrix)
    out = np.log(scale) * np.eye(len(matrix))
    term = np.eye(len(matrix))
    for k in range(1, 80):
        term = term @ x
        out += ((-1) ** (k + 1) / k) * term
        if radius ** (k + 1) / (k + 1) < 1e-18:
            break
    return out


def expm_frechet_block(a: np.ndarray, e: np.ndarray, compute_expm: bool = False) -> np.ndarray:
    """Fréchet derivative of expm at ``a`` in direction ``e``: a block of expm([[a, e], [0, a]]).

    Same value as scipy's ``expm_frechet`` (to 1e-16) at a quarter of its cost for 3x3 input.
    """
    from scipy.linalg import expm

    n = len(a)
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = block[n:, n:] = a
    block[:n, n:] = e
    return expm(block)[:n, n:]


class OncePerStepFrechetFilter(FrechetCellFilter):
    """FrechetCellFilter whose forces are computed once per new geometry, not once per request.

    Its cell algebra uses the fast, equally exact :func:`logm_near_identity` and
    :func:`expm_frechet_block`.
    """

    generation = 0
    _cache: tuple[int, np.ndarray] | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        set_cell_filter_algebra(self, logm_near_identity, expm_frechet_block)

    def get_forces(self, *args, **kwargs):  # noqa: D102
        if self._cache is None or self._cache[0] != self.generation:
            self._cache = (self.generation, super().get_forces(*args, **kwargs))
        return self._cache[1].copy()


class CholeskyBFGSMethod(bfgs_method_class()):
    """ASE's BFGS step, solved by Cholesky while the Hessian is positive definite.

    ASE diagonalises the Hessian every step (``eigh``, ~9n³ flops: 15 ms at 116 atoms, more
    than the model pass) to take ``V |ω|⁻¹ Vᵀ g``; for a positive-definite Hessian that is
    ``H⁻¹ g``, which a Cholesky solve gives at 1/27 of the cost. An indefinite Hessian falls
    back to ASE's own step.
    """

    def compute_step(self, gradient: np.ndarray) -> np.ndarray:
        from scipy.linalg import LinAlgError, cho_factor, cho_solve

        try:
            factor = cho_factor(self.hessian, check_finite=False)
        except LinAlgError:
            return super().compute_step(gradient)
        return -cho_solve(factor, gradient, check_finite=False)


class CholeskyBFGS(BFGS):
    """ASE's BFGS with :class:`CholeskyBFGSMethod` (same steps, cheaper linear algebra)."""

    def update(self, pos, forces, pos0, forces0):  # noqa: D102
        if self.state is None:
            self.state = CholeskyBFGSMethod(self.H0)
            return
        super().update(pos, forces, pos0, forces0)


@dataclass
class _Slot:
    """One crystal in flight."""

    key: object
    atoms: Atoms
    settings: RelaxSettings
    max_wall_time: float | None
    start: float = field(default_factory=time.perf_counter)
    drafting: bool = False  # allowed to move on draft forces (until they converge once)
    exact_next: bool = True  # which model evaluates the current geometry
    calls: int = 0
    draft_calls: int = 0
    e_initial: float | None = None
    #: the D3 part (eV) of the first and of the latest energy, when the evaluator adds one
    e_dispersion_initial: float | None = None
    e_dispersion: float | None = None
    #: forces and stress at the experimental geometry (the first evaluation, always exact float64)
    tells: dict = field(default_factory=dict)
    status: str | None = None
    message: str = ""
    #: seconds of this process spent on this crystal: its share (by atoms) of every pass it was in,
    #: plus its own optimizer work; what ``max_wall_time`` limits (in flight it shares the time)
    cost: float = 0.0
    #: CPU seconds of this process spent on this crystal, shared the same way: its cost in core-seconds,
    #: whatever else the machine was doing (``cpu_time`` of the row)
    cpu: float = 0.0

    def __post_init__(self) -> None:
        self.atoms = prepare(self.atoms, SideBySideResults(), self.settings)
        self.cap = self.settings.max_steps(len(self.atoms))
        self.v0 = self.atoms.get_volume()
        self.target = wrap_cell(self.atoms, self.settings, OncePerStepFrechetFilter)
        if self.settings.optimizer == "BFGS":
            self.opt = CholeskyBFGS(self.target, logfile=None)
        else:
            self.opt = make_optimizer(self.settings.optimizer, self.target)

    def receive(self, results: dict) -> None:
        """New energy/forces/stress for the current geometry; decide whether and how to step on."""
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            self._receive(results)
        finally:
            self.cost += time.perf_counter() - started
            self.cpu += time.process_time() - cpu_started

    def _receive(self, results: dict) -> None:
        exact = self.exact_next
        self.calls += 1
        self.draft_calls += not exact
        self.atoms.calc.store(self.atoms, results)
        self.e_dispersion = results.get("e_dispersion")
        if isinstance(self.target, OncePerStepFrechetFilter):
            self.target.generation += 1
        try:
            if self.e_initial is None:
                self.e_initial = float(results["energy"])
                self.e_dispersion_initial = self.e_dispersion
                self.tells = start_tells.from_results(results, self.atoms.numbers)
                if not math.isfinite(self.e_initial):
                    raise Exploded(f"initial energy is {self.e_initial}")
            else:  # after a step, as relax()'s per-step guard; the pass measured the closest pair
                _check_physical(self.atoms, self.settings, self.v0, distances=False)
                check_not_fused(results["closest_pair"], self.settings)
            optimizable = self.opt.optimizable
            converged = optimizable.converged(optimizable.get_gradient(), self.settings.fmax)
            out_of_time = self.max_wall_time is not None and self.cost > self.max_wall_time
            if not exact:
                if converged or self.opt.nsteps >= self.cap or out_of_time:
                    self.drafting, self.exact_next = False, True  # judge this geometry with the exact model
                    return
            elif converged:
                self.status = Status.converged
                return
            elif self.opt.nsteps >= self.cap:
                self.status = Status.step_cap
                return
            elif out_of_time:
                self.status, self.message = Status.timeout, (
                    f"time limit max_wall_time = {self.max_wall_time:g} s reached by this crystal's cost "
                    "(its share of the side-by-side passes + its optimizer work)")
                return
            self.opt.step()
            self.opt.nsteps += 1
            self.exact_next = not self.drafting
        except Exploded as exc:
            self.status, self.message = Status.exploded, str(exc)
        except Exception as exc:  # noqa: BLE001 - one crystal's failure never stops the batch
            self.status, self.message = Status.error, f"{type(exc).__name__}: {exc}"

    def fail(self, message: str) -> None:
        self.status, self.message = Status.error, message

    def result(self) -> RelaxResult:
        has_results = bool(self.atoms.calc.results)
        fmax_final = _fmax(self.target) if has_results and self.status != Status.error else None
        final = _final_atoms(self.atoms) if has_results else self.atoms.copy()
        if not has_results:
            final.calc = None
        return RelaxResult(
            atoms=final, status=self.status, converged=self.status == Status.converged, steps=int(self.opt.nsteps),
            max_steps=self.cap, e_initial=self.e_initial,
            e_final=final.calc.results.get("energy") if final.calc else None, fmax_final=fmax_final,
            wall_time=time.perf_counter() - self.start, force_calls=self.calls, message=self.message,
            extra={"side_by_side": True, "draft_calls": self.draft_calls, "cost_time": self.cost, "cpu_time": self.cpu,
                   **self.tells,
                   **({"e_dispersion_initial": self.e_dispersion_initial, "e_dispersion": self.e_dispersion}
                      if self.e_dispersion is not None and has_results else {})},
        )


def relax_many(items: Iterable[tuple[object, Atoms]], evaluator: SideBySideANI, settings: RelaxSettings,
               max_atoms_in_flight: int = DEFAULT_ATOMS_IN_FLIGHT, max_wall_time: float | None = None,
               draft: SideBySideANI | None = None, on_pass=None) -> Iterator[tuple[object, RelaxResult]]:
    """Relax every ``(key, atoms)`` with ``settings`` (resolved), yielding each as soon as it ends.

    ``evaluator`` is the exact model; ``draft`` an optional cheaper copy (see the module
    docstring). At most ``max_atoms_in_flight`` atoms (or one crystal, if larger) are in flight.
    ``on_pass()`` is called before every pass (e.g. to take cores other jobs left idle).
    """
    if settings.optimizer not in LOCKSTEP_OPTIMIZERS:
        raise ValueError(f"the side-by-side path steps {LOCKSTEP_OPTIMIZERS}, not {settings.optimizer!r}")
    queue = iter(items)
    running: list[_Slot] = []
    exhausted = False
    while running or not exhausted:
        while not exhausted and (not running or sum(len(s.atoms) for s in running) < max_atoms_in_flight):
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            key, atoms = item
            try:
                running.append(_Slot(key, atoms, settings, max_wall_time, drafting=draft is not None))
            except Exception as exc:  # noqa: BLE001 - e.g. a non-periodic structure
                yield key, RelaxResult.without_relaxing(atoms, settings, Status.error,
                                                        f"{type(exc).__name__}: {exc}", side_by_side=True)
        if not running:
            break
        if on_pass is not None:
            on_pass()
        exact_group = [s for s in running if s.exact_next]
        draft_group = [s for s in running if not s.exact_next]
        for model, group in ((evaluator, exact_group), (draft, draft_group)):
            if group:
                _one_pass(model, group)
        for slot in [s for s in running if s.status is not None]:
            running.remove(slot)
            for model in (evaluator, draft):
                if model is not None:
                    model.forget(slot.key)
            yield slot.key, slot.result()


def _one_pass(evaluator: SideBySideANI, slots: list[_Slot]) -> None:
    """One pass for all; if the pass fails, find the culprit crystal by evaluating one by one."""
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        results = evaluator.compute([s.atoms for s in slots], keys=[s.key for s in slots])
    except Exception:  # noqa: BLE001
        for slot in slots:
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                res = evaluator.compute([slot.atoms], keys=[slot.key])[0]
                slot.cost += time.perf_counter() - started
                slot.cpu += time.process_time() - cpu_started
                slot.receive(res)
            except Exception as exc:  # noqa: BLE001
                slot.fail(f"{type(exc).__name__}: {exc}")
        return
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    n_atoms = sum(len(s.atoms) for s in slots)
    for slot, res in zip(slots, results):
        slot.cost += elapsed * len(slot.atoms) / n_atoms
        slot.cpu += cpu * len(slot.atoms) / n_atoms
        slot.receive(res)

