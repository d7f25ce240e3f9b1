"""The fast relax path: optional cheap pre-relaxation stages, then the exact final stage.

The final stage always uses the full 8-member float64 ensemble (one-pass calculator, per-cell
neighbour list) at the study's fmax and step cap; the reported result comes from it alone, only
the step and force-call counts add up all stages. Cheap stages (one ensemble member, float32,
to a loose fmax) can run first, with BFGS's Hessian handed from stage to stage.

Measured here (ANI-1x, fmax 5e-4, steps cheap + final vs the study's BFGS): a cheap LBFGS stage
to 0.01 then BFGS: 132 + 269 vs 234 steps (30 atoms), 116 + 350 vs 117 (48 atoms) — BFGS
restarts from 70 eV/Å²·I and re-learns the soft modes, so the cheap stage is pure loss; with the
Hessian handed over: 148 + 177 vs 234 — break-even at best. So the default has no cheap stage
(:data:`DEFAULT_STAGES`); the gains of ``strategy="fast"`` are the one-pass calculator, the
per-cell neighbour list and one crystal per core (``benchmarks/relax_throughput.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import lru_cache

from ase import Atoms
from ase.calculators.calculator import Calculator

from helpers.relax import RelaxResult, RelaxSettings, relax

#: statuses of a cheap stage after which the final stage may start from its structure
_USABLE = ("converged", "step_cap")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged relaxation: which model, which optimizer, how far."""

    optimizer: str = "LBFGS"
    fmax: float = 0.01
    model_index: int | None = 0  # None: the full ensemble
    dtype: str = "float32"
    max_steps: int | None = None  # None: the study's cap for this crystal


#: a cheap stage: one network, float32, LBFGS to 0.01 eV/Å
CHEAP_STAGE = Stage()
#: the stages run before the final one by default: none (see the module docstring)
DEFAULT_STAGES: tuple[Stage, ...] = ()


@lru_cache(maxsize=8)
def stage_calculator(potential: str, model_index: int | None, dtype: str) -> Calculator:
    """A cached calculator for a stage (loading a model costs ~1 s; reuse it across crystals)."""
    import torch

    from helpers.potentials import get_potential

    return get_potential(potential).calculator(dtype=getattr(torch, dtype), model_index=model_index)


def relax_fast(atoms: Atoms, potential: str, settings: RelaxSettings, final_calc: Calculator | None = None,
               stages: tuple[Stage, ...] = DEFAULT_STAGES, final_optimizer: str | None = None,
               max_wall_time: float | None = None, trajectory=None) -> RelaxResult:
    """Relax ``atoms`` through the cheap ``stages``, then exactly with ``final_calc`` (full float64).

    ``settings`` (resolved) fixes the final fmax, step cap and cell filter; ``final_optimizer``
    overrides its optimizer for stage 2. A cheap stage that explodes or errors is discarded and
    the final stage starts from the input structure. ``extra["stages"]`` lists every stage.
    """
    start = time.perf_counter()
    final_calc = final_calc or stage_calculator(potential, None, "float64")
    e_initial = _energy(atoms, final_calc) if stages else None  # the full model's, not a cheap one
    current = atoms
    steps = calls = 0
    log = []
    hessian = _HessianRelay()
    for stage in stages:
        calc = stage_calculator(potential, stage.model_index, stage.dtype)
        cheap = replace(settings, optimizer=stage.optimizer, fmax=stage.fmax)
        if stage.max_steps is not None:
            cheap = replace(cheap, max_steps_base=stage.max_steps, steps_per_atom=0)
        result = relax(current, calc, cheap, max_wall_time=_left(max_wall_time, start), on_optimizer=hessian)
        steps += result.steps
        calls += result.force_calls
        log.append(_stage_log(stage, result))
        if result.status in _USABLE:
            current = result.atoms
            hessian.keep()
            continue
        hessian.drop()
        if result.status == "timeout":
            return replace(result, e_initial=e_initial, steps=steps, force_calls=calls,
                           wall_time=time.perf_counter() - start, extra={"stages": log})
    final_settings = replace(settings, optimizer=final_optimizer) if final_optimizer else settings
    result = relax(current, final_calc, final_settings, max_wall_time=_left(max_wall_time, start),
                   trajectory=trajectory, on_optimizer=hessian)
    final = Stage(final_settings.optimizer, final_settings.fmax, None, "float64")
    log.append(_stage_log(final, result))
    return replace(result, e_initial=e_initial if stages else result.e_initial, steps=steps + result.steps,
                   force_calls=calls + result.force_calls + (1 if stages else 0), wall_time=time.perf_counter() - start,
                   extra={"stages": log, "final_steps": result.steps})


class _HessianRelay:
    """Hands the BFGS Hessian learned in one stage to the BFGS of the next stage.

    ASE's BFGS starts every run from ``70 eV/Å² · I`` and spends most of its steps at the
    study's tolerance re-learning the soft intermolecular and cell modes; the cheap stage's
    Hessian already knows them (same structure, nearly the same model).
    """

    def __init__(self) -> None:
        self.opt = None
        self.hessian = None

    def __call__(self, opt) -> None:
        from ase.optimize import BFGS

        if not isinstance(opt, BFGS):
            self.opt = None
            return
        if self.hessian is not None and self.hessian.shape == opt.H0.shape:
            opt.H0 = self.hessian.copy()
        self.opt = opt

    def keep(self) -> None:
        state = getattr(self.opt, "state", None)
        if state is not None:
            self.hessian = state.hessian
        self.opt = None

    def drop(self) -> None:
        self.opt, self.hessian = None, None


def _energy(atoms: Atoms, calc: Calculator) -> float | None:
    try:
        probe = atoms.copy()
        probe.calc = calc
        return float(probe.get_potential_energy())
    except Exception:  # noqa: BLE001 - the final stage records the failure
        return None


def _left(limit: float | None, start: float) -> float | None:
    return None if limit is None else max(0.0, limit - (time.perf_counter() - start))


def _stage_log(stage: Stage, result: RelaxResult) -> dict:
    return {"optimizer": stage.optimizer, "fmax": stage.fmax, "model_index": stage.model_index,
            "dtype": stage.dtype, "status": result.status, "steps": result.steps,
            "force_calls": result.force_calls, "fmax_final": result.fmax_final,
            "wall_time": round(result.wall_time, 3)}
