"""Where a fast-path batch's time went: draft passes, exact passes, pair lists, optimizer and bookkeeping.

One dict per batch, from the side-by-side evaluators' own counters (:class:`SideBySideANI` times its model
pass and its pair lists), and one printed line that a benchmark reads back from an executed 03_relax
notebook (``benchmarks/relax_throughput.py --small``): a job run by hand tells where its time went.
"""

from __future__ import annotations

import json
from typing import Any

#: the printed line starts with this; :func:`read_time_split` finds it in a notebook's output
PREFIX = "fast path time split: "


def _ani(evaluator: Any) -> Any:
    """The torchani evaluator inside a D3 wrapper (``SideBySideDispersion``), or the evaluator itself."""
    return getattr(evaluator, "evaluator", evaluator)


def time_split(exact: Any, draft: Any | None, wall: float) -> dict[str, float | int]:
    """Seconds and counts of one side-by-side run of ``wall`` seconds with evaluators ``exact`` and ``draft``.

    ``draft_s``/``exact_s``: the model's forward and backward passes; ``pairs_s``: building and checking the
    pair lists of both; ``dispersion_s``: D3 (the ``-d3`` variants); ``optimizer_s``: the rest of ``wall`` —
    the optimizer's steps, the cell filter, moving numbers between torch and ASE, writing rows.
    """
    both = [e for e in (exact, draft) if e is not None]
    split: dict[str, float | int] = {
        "wall_s": wall,
        "draft_passes": _ani(draft).n_calls if draft is not None else 0,
        "draft_s": _ani(draft).time_model if draft is not None else 0.0,
        "exact_passes": _ani(exact).n_calls, "exact_s": _ani(exact).time_model,
        "pairs_s": sum(_ani(e).time_pairs for e in both), "pair_builds": sum(_ani(e).n_rebuilds for e in both),
        "dispersion_s": sum(getattr(e, "time_dispersion", 0.0) for e in both),
    }
    split["optimizer_s"] = wall - split["draft_s"] - split["exact_s"] - split["pairs_s"] - split["dispersion_s"]
    return split


def format_time_split(split: dict[str, float | int]) -> str:
    """One line: :data:`PREFIX` and the dict as JSON (seconds to the millisecond)."""
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in split.items()}
    return PREFIX + json.dumps(rounded)


def read_time_split(text: str) -> dict[str, float | int] | None:
    """The split of the last :func:`format_time_split` line in ``text`` (None if there is none)."""
    lines = [line for line in text.splitlines() if line.startswith(PREFIX)]
    return json.loads(lines[-1][len(PREFIX):]) if lines else None
