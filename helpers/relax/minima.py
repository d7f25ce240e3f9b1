"""The minimum check of a relaxed database: the rattle test (:mod:`helpers.relax.stability`) on its converged rows.

Why: a ΔV read at a saddle says where the optimizer stopped, not where the potential holds the crystal
(docs/reliability.md, "saddles and path-dependent minima"). Before a verdict rests on a potential's volumes, its
end points are checked: each converged row's structure is kicked (0.01 Å, seeded) and relaxed again one crystal
at a time on the exact model, with the row's own fmax, step cap, cell filter and pressure (no side-by-side
batch, no float32 draft; a Hessian seed is kept: it only sets where BFGS starts, so the graph potentials need
half the steps). One row per checked crystal goes to a database of its own (``minima_<potential>.db``): the
kicked end point and what the test found, keyed by the relaxed row (structure id + settings hash). Resumable
(a checked row is not checked again); a failure is recorded on its row (status ``error``) and never raised.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.relax.engine import EXTERNAL_PRESSURE, RelaxSettings
from helpers.relax.stability import ENERGY_TOLERANCE, KICK, rattle_test
from helpers.store import db as dbmod
from helpers.vocabulary import Status

#: each potential's check in a campaign's ``minima/`` folder
FILE_PREFIX = "minima_"
#: the columns of :func:`minima_table`, one line per checked crystal
COLUMNS = ("potential", "structure_id", "relaxed_hash", "natoms", "status", "is_minimum", "energy_drop_mev",
           "dv_end", "dv_kicked", "steps", "seconds", "seed", "kick", "message")


def minima_path(folder: str | Path, potential: str) -> str:
    """The check database of ``potential`` in ``folder`` (a campaign's ``minima/``)."""
    return str(Path(folder) / f"{FILE_PREFIX}{potential}.db")


def check_settings(settings: RelaxSettings) -> RelaxSettings:
    """The settings a kicked crystal is relaxed with: the row's, one crystal at a time on the exact model."""
    return replace(settings, strategy="study", draft=None)


def rows_to_check(relaxed_db: str, settings_hash: str | None = None, sample: str | None = "science",
                  batch: int = 0, n_batches: int = 1) -> list:
    """The converged rows of ``relaxed_db`` (of ``settings_hash`` when given; of ``sample`` when given: the
    analysis' sample sets), smallest cells first; ``batch`` of ``n_batches`` takes every n-th of them."""
    from helpers.analysis.sample_sets import sample_set  # the sets are the analysis's

    db = dbmod.connect(relaxed_db, must_exist=True)
    query = {"status": Status.converged, **({"settings_hash": settings_hash} if settings_hash else {})}
    rows = [r for r in db.select(**query)
            if sample is None or sample_set(r.get("source"), formula=r.get("cif_formula")) == sample]
    rows.sort(key=lambda r: (r.natoms, r.structure_id))
    return rows[batch::n_batches]


def checked_keys(minima_db: str) -> set[tuple[str, str]]:
    """The (structure id, relaxed settings hash) pairs ``minima_db`` holds a finished check of."""
    if not dbmod.is_url(minima_db) and not Path(minima_db).is_file():
        return set()
    db = dbmod.connect(minima_db)
    return {(r.structure_id, r.relaxed_hash) for r in db.select(columns=["key_value_pairs"])
            if r.get("status") != Status.error}


def check_minima(relaxed_db: str, minima_db: str, settings_hash: str | None = None, sample: str | None = "science",
                 batch: int = 0, n_batches: int = 1, seed: int = 0, kick: float = KICK,
                 limit: int | None = None, progress: bool = False) -> dict[str, int]:
    """The rattle test on every converged row of ``relaxed_db`` (:func:`rows_to_check`) not yet in ``minima_db``;
    each result written as it ends. Returns counts: ``checked`` (this call), ``not_minima`` (of them), ``failed``
    and ``already`` (checked by an earlier call). ``relaxed_db`` is only read."""
    from tqdm.auto import tqdm

    from helpers.relax.potentials.registry import get_potential

    rows = rows_to_check(relaxed_db, settings_hash, sample, batch, n_batches)
    done = checked_keys(minima_db)
    todo = [r for r in rows if (r.structure_id, r.settings_hash) not in done][:limit]
    out = dbmod.connect(minima_db)
    already = sum((r.structure_id, r.settings_hash) in done for r in rows)
    counts = {"checked": 0, "not_minima": 0, "failed": 0, "already": already}
    calcs: dict[str, Any] = {}
    for row in tqdm(todo, desc=f"minimum check {Path(str(relaxed_db)).stem}", unit="crystal", disable=not progress):
        started = time.perf_counter()
        found, error = None, None
        try:
            settings = check_settings(RelaxSettings(**row.data["settings"]))
            if row.potential not in calcs:
                calcs[row.potential] = get_potential(row.potential).calculator(
                    **row.data.get("calculator_options", {}))
            atoms = row.toatoms()
            if settings.pressure:  # relaxed at its CIF's pressure: kicked and compared (in enthalpy) at it too
                from ase.units import GPa

                atoms.info[EXTERNAL_PRESSURE] = (row.get("relax_pressure_gpa") or 0.0) * GPa
            found = rattle_test(atoms, calcs[row.potential], settings, kick=kick, seed=seed)
        except Exception as err:  # noqa: BLE001 - recorded on its row; the next crystal goes on
            error = f"{type(err).__name__}: {err}"[:500]
        _write(out, row, found, error, seed, kick, time.perf_counter() - started)
        if error:
            counts["failed"] += 1
        else:
            counts["checked"] += 1
            counts["not_minima"] += int(not found.is_minimum)
    return counts


def _write(out, row, found, error: str | None, seed: int, kick: float, seconds: float) -> None:
    v_exp = row.get("V_exp")

    def dv(volume: float) -> float | None:
        return 100 * (volume / v_exp - 1) if v_exp else None

    atoms = found.atoms if found is not None else row.toatoms()
    kvp = {"potential": row.potential, "relaxed_hash": row.settings_hash, "seed": seed, "kick": kick,
           "seconds": round(seconds, 1), "dv_end": dv(row.toatoms().get_volume()), "V_exp": v_exp,
           "tolerance_mev": 1000 * ENERGY_TOLERANCE}
    if error:
        kvp.update(status=Status.error, message=error)
    else:
        kvp.update(status=found.status, is_minimum=found.is_minimum, energy_drop_mev=1000 * found.energy_drop,
                   dv_kicked=dv(found.atoms.get_volume()), steps=found.steps)
    dbmod.upsert(out, atoms, {"structure_id": row.structure_id, "relaxed_hash": row.settings_hash},
                 **dbmod.clean_kvp(kvp))


def minima_table(minima_db: str) -> pd.DataFrame:
    """One line per checked crystal of ``minima_db`` (:data:`COLUMNS`; an empty table when there is none)."""
    if not dbmod.is_url(minima_db) and not Path(minima_db).is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    db = dbmod.connect(minima_db)
    lines = [{**{c: r.get(c) for c in COLUMNS}, "natoms": r.natoms} for r in db.select()]
    return pd.DataFrame(lines, columns=list(COLUMNS))


def finished_checks(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The lines of ``table`` whose check ran (not ``error``) and, for them, which end points are not minima."""
    ok = table[table["status"] != Status.error]
    return ok, ok["is_minimum"].astype(bool).eq(False)


def minima_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per potential (:func:`minima_table` lines, several potentials allowed): crystals ``checked``, ``not_minima``
    (and ``saddles``, their ids), ``failed`` checks, and over the checked crystals the median ΔV and |ΔV| (%) at
    the recorded end points and with the kicked ends in the non-minima's place (``*_kicked``): how much the
    potential's numbers depend on where its optimizer stopped."""
    out = []
    for potential, group in table.groupby("potential", sort=False):
        ok, saddle = finished_checks(group)
        end = ok["dv_end"].astype(float).to_numpy()
        kicked = ok["dv_kicked"].astype(float).where(saddle, ok["dv_end"]).to_numpy()
        out.append({"potential": potential, "checked": len(ok), "not_minima": int(saddle.sum()),
                    "failed": len(group) - len(ok), "saddles": sorted(ok.loc[saddle, "structure_id"]),
                    "median_dv": _median(end), "median_dv_kicked": _median(kicked),
                    "median_abs_dv": _median(abs(end)), "median_abs_dv_kicked": _median(abs(kicked))})
    return pd.DataFrame(out, columns=["potential", "checked", "not_minima", "failed", "saddles", "median_dv",
                                      "median_dv_kicked", "median_abs_dv", "median_abs_dv_kicked"])


def _median(values) -> float:
    import numpy as np

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def kicked_figure(table: pd.DataFrame, path: str | Path | None = None):
    """ΔV at the recorded end point against ΔV where the kicked relaxation ended, one point per checked crystal
    (non-minima in red, named): on the diagonal the kick came back. Saved to ``path`` when given; the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok, saddle = finished_checks(table)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.scatter(ok.loc[~saddle, "dv_end"], ok.loc[~saddle, "dv_kicked"], s=14, color="0.45", label="minimum")
    ax.scatter(ok.loc[saddle, "dv_end"], ok.loc[saddle, "dv_kicked"], s=28, color="tab:red",
               label="not a minimum")
    for _, line in ok[saddle].iterrows():
        ax.annotate(line["structure_id"], (line["dv_end"], line["dv_kicked"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    values = pd.concat([ok["dv_end"], ok["dv_kicked"]]).astype(float)
    if len(values):
        low, high = values.min() - 1, values.max() + 1
        ax.plot([low, high], [low, high], lw=0.8, color="0.7", zorder=0)
    ax.set_xlabel("ΔV at the end point (%)")
    ax.set_ylabel("ΔV after the kick (%)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
