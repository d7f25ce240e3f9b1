"""The start tells of rows relaxed before they were recorded, filled in when the analysis runs.

The consensus and flagged sections (issue 36) rank crystals by their start forces; rows relaxed before the
engines recorded them (:mod:`helpers.relax.start_tells`) would leave gaps there. The analysis fills them
first: one model call per such row, on the rows it will use (clean now, made with the settings it keeps),
resumable (each row written when done), a failure recorded on its row and never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from helpers.relax.start_tells import fill_start_tells

log = logging.getLogger(__name__)


def backfill_for_analysis(relaxed_dbs: Iterable[str], clean_db: str, hash_prefixes: tuple[str, ...] | None = None,
                          progress: bool = False) -> dict[str, dict[str, int]]:
    """Fill the start tells of every row of ``relaxed_dbs`` the analysis will use that lacks them.

    ``hash_prefixes``: only rows whose ``settings_hash`` starts with one of them (None: every row). Returns
    the counts of :func:`~helpers.relax.start_tells.fill_start_tells` per database."""
    def keep(row) -> bool:
        return hash_prefixes is None or str(row.get("settings_hash", "")).startswith(hash_prefixes)

    out = {}
    for name in relaxed_dbs:
        counts = fill_start_tells(str(name), str(clean_db), progress=progress, keep=keep)
        if any(counts.values()):
            log.warning("start tells back-filled in %s: %s", name, counts)
            if progress:
                print(f"start tells back-filled in {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        out[str(name)] = counts
    return out
