"""Where a campaign stands, read from its databases while it runs (``codani results --status``).

Per potential: the structures it is to relax and those it finished (also on the science sample, which a
``sample_first`` campaign relaxes first), how many of them did not converge, which relaxations are in flight
(running now, or stopped and resuming from their checkpoint at the next run), the core-hours spent and an
estimate of those left. Nothing is locked or written: safe beside a running campaign, on any machine that
sees its work folder.

The estimate fits cost = c · n_atoms^k to the potential's own finished relaxations (k by least squares in
log-log, kept in [0, 3]; c so that the fit adds up to what they cost) and sums it over the structures it has
still to relax; with fewer than
:data:`MIN_FIT` finished it uses their mean cost, with none it gives no number. A pass runs its largest
structures first, so an early estimate leans on the expensive end and the fit is what keeps it honest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and pandas load when a status is asked for, not with the command line
    import numpy as np
    import pandas as pd

#: finished relaxations a potential needs before its cost is fitted against the atom count
MIN_FIT = 8
#: the estimate's exponent range: a relaxation's cost grows with the atoms, at most as the cube
EXPONENT_RANGE = (0.0, 3.0)


def _cost(row) -> float | None:
    """Core-seconds of one relaxation: CPU time where recorded, else the wall-clock share."""
    import numpy as np

    for key in ("cpu_time", "cost_time", "wall_time"):
        value = row.get(key)
        if value is not None and np.isfinite(float(value)):
            return float(value)
    return None


def finished_rows(config: Any) -> dict[str, pd.DataFrame]:
    """Per potential, its final rows with this campaign's settings (database and shards): structure_id, natoms,
    converged, cost [core-s]; one row per structure (the last written wins, as in the merge)."""
    import pandas as pd

    from helpers.relax.fallback import is_final
    from helpers.run.campaign import result_paths, settings_hashes
    from helpers.store import db as dbmod

    hashes = settings_hashes(config)
    out = {}
    for p in config.potentials:
        records: dict[str, dict[str, Any]] = {}
        for path in result_paths(config, p):
            try:
                rows = list(dbmod.connect(path, must_exist=True).select(
                    settings_hash=hashes[p], columns=["key_value_pairs", "numbers"]))
            except Exception:  # noqa: BLE001 - a shard being created: counted at the next look
                continue
            for row in rows:
                if is_final(row):
                    records[str(row.structure_id)] = {"structure_id": str(row.structure_id), "natoms": row.natoms,
                                                      "converged": row.get("status") == "converged",
                                                      "cost": _cost(row)}
        out[p] = pd.DataFrame(list(records.values()),
                              columns=["structure_id", "natoms", "converged", "cost"])
    return out


def in_flight(config: Any) -> dict[str, list[str]]:
    """Per potential, the structures its relax jobs have begun and not finished (the jobs' marks beside their
    SQLite shards, :mod:`helpers.relax.inflight`): running now, or resuming from a checkpoint next run."""
    from helpers.store.db import is_url

    out_db, found = config.dbs["out_db"], {}
    for p in config.potentials:
        path = Path(out_db.format(potential=p))
        if is_url(str(path)) or not path.parent.is_dir():
            continue
        ids = []
        for mark in sorted(path.parent.glob(f"{path.stem}.batch*.inflight.json")):
            try:
                ids.append(str(json.loads(mark.read_text())["structure_id"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        found[p] = ids
    return found


def cost_left(done: pd.DataFrame, natoms_left: np.ndarray) -> tuple[float | None, str]:
    """(core-seconds the structures of ``natoms_left`` will take, how it was estimated) from ``done``'s
    costs (see the module docstring); (None, why) when nothing finished has a cost."""
    import numpy as np

    if not len(natoms_left):
        return 0.0, "none left"
    known = done.dropna(subset=["cost"])
    known = known[(known["cost"] > 0) & (known["natoms"] > 0)]
    if known.empty:
        return None, "no finished relaxation yet"
    if len(known) < MIN_FIT or known["natoms"].nunique() < 2:
        return float(known["cost"].mean() * len(natoms_left)), f"mean of {len(known)}"
    k, log_c = np.polyfit(np.log(known["natoms"].to_numpy(float)), np.log(known["cost"].to_numpy(float)), 1)
    k = float(np.clip(k, *EXPONENT_RANGE))
    # c so that the fit adds up to what the finished ones cost (a log-log fit alone undershoots the sum)
    c = float(known["cost"].sum() / np.sum(known["natoms"].to_numpy(float) ** k))
    return float(c * np.sum(np.asarray(natoms_left, float) ** k)), f"fit on {len(known)}: n^{k:.2f}"


def campaign_status(config: Any) -> pd.DataFrame:
    """One row per potential of ``config`` (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from helpers.analysis.sample_sets import SCIENCE
    from helpers.relax.stage import relax_targets
    from helpers.store import db as dbmod

    clean = dbmod.connect(config.dbs["clean_db"], must_exist=True)
    natoms = {str(row.structure_id): row.natoms for row in clean.select(columns=["key_value_pairs", "numbers"])}
    targets = relax_targets(clean, config.potentials, config.max_atoms, config.sample)
    science = relax_targets(clean, config.potentials, config.max_atoms, SCIENCE)
    rows, flying = finished_rows(config), in_flight(config)
    out = []
    for p in config.potentials:
        if p not in targets:
            continue
        done = rows[p][rows[p]["structure_id"].isin(targets[p])]
        left = sorted(targets[p] - set(done["structure_id"]))
        seconds, how = cost_left(rows[p], np.array([natoms[s] for s in left if s in natoms]))
        out.append({"potential": p, "to relax": len(targets[p]), "finished": len(done),
                    "science finished": f"{len(set(done['structure_id']) & science[p])}/{len(science[p])}",
                    "not converged": int((~done["converged"].astype(bool)).sum()),
                    "in flight": ", ".join(flying.get(p, [])) or "–",
                    "core-hours spent": float(done["cost"].sum()) / 3600,
                    "core-hours left (est.)": None if seconds is None else seconds / 3600,
                    "estimate": how})
    return pd.DataFrame(out)


def status_text(config: Any, parallel: int) -> str:
    """The status table and a closing line: core-hours left and what they take on ``parallel`` jobs at once."""
    import pandas as pd

    table = campaign_status(config)
    if table.empty:
        return "nothing to relax: no registered potential in this campaign"
    with pd.option_context("display.max_colwidth", 40, "display.width", 250):
        text = table.to_string(index=False, na_rep="–", float_format=lambda x: f"{x:.2f}")
    left = pd.to_numeric(table["core-hours left (est.)"], errors="coerce")
    unknown = table.loc[left.isna(), "potential"].tolist()
    total = float(left.fillna(0).sum())
    line = (f"left: ~{total:.1f} core-hours, ~{total / max(parallel, 1):.1f} h on {parallel} parallel jobs"
            + (f" (not counting {', '.join(unknown)}: nothing finished to estimate from)" if unknown else "")
            + "; the largest crystal bounds the tail")
    return f"{text}\n\n{line}"
