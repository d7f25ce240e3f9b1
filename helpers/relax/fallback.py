"""The study's method as the fast path's fallback: a crystal our faster settings leave at the step cap is
relaxed again the study's way, and that answer is recorded.

Why: the fast path (a float32 draft side by side, or a Hessian-seeded BFGS) reaches the study's minimum whenever
it converges, but near the step cap its path depends on rounding that changes with which crystals share a
pass, so whether it converges there does not repeat from run to run (docs/reliability.md). The study's method
(float64, one crystal at a time, ASE's BFGS from its default Hessian) is deterministic; relaxing with it what
the fast path left at the cap makes "converged" mean what it means in the study, and the same in every run.
A converged fast row is already the study's answer, so the settings hash is kept: the fallback's row replaces
the fast one under the same hash, marked ``fallback = "study"``, its cost the two relaxations' sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from helpers.relax.engine import RelaxResult, RelaxSettings
from helpers.vocabulary import FINAL_STATUSES, Status

#: row key (and its value) of a relaxation the study's method redid after the fast path reached the step cap
FALLBACK, STUDY_FALLBACK = "fallback", "study"


def is_study_method(settings: RelaxSettings) -> bool:
    """Do these settings relax the study's way (one crystal, float64, ASE's default start Hessian)?"""
    return settings.strategy == "study" and settings.hessian_seed is None


def study_method(settings: RelaxSettings) -> RelaxSettings:
    """``settings`` with the study's method: everything that defines the minimum (fmax, step cap, cell filter,
    pressure, ...) kept, the speed-ups off."""
    return replace(settings, strategy="study", draft=None, hessian_seed=None)


def took_a_shortcut(record: Mapping[str, Any]) -> bool:
    """Did this relaxation leave the study's method: side by side with others (only that path counts draft
    calls, 0 without a draft) or from a seeded BFGS Hessian? ``record``: a result's ``extra`` or a row's
    key-value pairs. A potential relaxed one crystal at a time without a seed (xTB, AIMNet2, ``study``) ran
    the study's method whatever its ``strategy`` says: its step cap is the study's."""
    return record.get("side_by_side") is True or record.get("draft_calls") is not None \
        or record.get("hessian_seeded") == 1


def needs_study_fallback(result: RelaxResult, settings: RelaxSettings) -> bool:
    """Did a shortcut (:func:`took_a_shortcut`) leave this crystal at the step cap, so that the study's method
    should try it? ``settings``: those it ran with (the study's method itself never needs it)."""
    return result.status == Status.step_cap and not is_study_method(settings) and took_a_shortcut(result.extra)


def awaits_fallback(row: Mapping[str, Any]) -> bool:
    """A result row a shortcut left at the step cap whose study's-method relaxation has not been recorded
    (e.g. a run stopped between the two, or a row written before the fallback existed)."""
    return row.get("status") == Status.step_cap and took_a_shortcut(row) and row.get(FALLBACK) is None


def is_final(row: Mapping[str, Any]) -> bool:
    """Is this result row a final answer (a rerun skips it, a campaign counts it done)?"""
    return row.get("status") in FINAL_STATUSES and not awaits_fallback(row)


def with_fast_cost(study: RelaxResult, fast: Mapping[str, Any]) -> RelaxResult:
    """The study's-method result carrying the fallback mark and the whole cost of the crystal: the fast
    relaxation's (``fast``: its row's key-value pairs) added to the study's time and calls."""
    extra = dict(study.extra)
    extra.update({FALLBACK: STUDY_FALLBACK, "fast_steps": fast.get("steps"),
                  "cost_time": extra.get("cost_time", study.wall_time) + (fast.get("cost_time") or 0.0)})
    if "cpu_time" in extra and fast.get("cpu_time") is not None:
        extra["cpu_time"] += fast["cpu_time"]
    message = f"the fast path reached the step cap after {fast.get('steps')} steps; relaxed again with the " \
              f"study's method" + (f": {study.message}" if study.message else "")
    return replace(study, extra=extra, message=message)
