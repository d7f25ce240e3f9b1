"""The report's minimum-check section: how many of each potential's converged crystals are minima of it.

Reads the campaign's ``minima/`` folder (:mod:`helpers.run.minima`, the opt-in ``minima`` stage) and keeps the
checks of the rows the report uses (same potential, structure and settings hash, converged, science sample).
Publishes ``results.json`` → ``minima``. A campaign that did not run the check gets two lines saying how to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from helpers.analysis.markdown import markdown_table
from helpers.analysis.quantities import display_name
from helpers.relax.minima import FILE_PREFIX, minima_summary, minima_table
from helpers.vocabulary import Status

HEADING = "## Are the end points minima? (the rattle test)"


def checked_rows(folder: str | Path | None, science: pd.DataFrame) -> pd.DataFrame:
    """Every check in ``folder`` of a converged row of ``science`` (matched on potential, structure id and the
    relaxed row's settings hash)."""
    tables = [minima_table(str(path)) for path in sorted(Path(folder).glob(f"{FILE_PREFIX}*.db"))] \
        if folder is not None and Path(folder).is_dir() else []
    tables = [t for t in tables if len(t)]
    if not tables or science.empty:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    converged = science[science["status"] == Status.converged]
    keys = set(zip(converged["potential"], converged["structure_id"], converged["settings_hash"], strict=True))
    keep = [k in keys for k in zip(table["potential"], table["structure_id"], table["relaxed_hash"], strict=True)]
    return table[keep]


def checked_summary(inputs: Any) -> pd.DataFrame:
    """:func:`~helpers.relax.minima.minima_summary` of the checks of the report's converged science rows
    (``inputs``: the report's, whose ``minima`` holds this once read)."""
    from helpers.store.paths import work_layout

    work = getattr(inputs.plan, "work_path", None)
    table = checked_rows(work_layout(work)["minima"] if work else None, inputs.science)
    return minima_summary(table) if len(table) else pd.DataFrame()


def verdict_sentence(inputs: Any, potentials: list[str]) -> str:
    """For the verdict: how many of the converged end points of ``potentials`` (the first ones) are not minima,
    where they were checked; empty when none of them was."""
    summary = inputs.minima
    if summary.empty:
        return ""
    summary = summary.set_index("potential")
    said = [f"{display_name(p)} {int(summary.loc[p, 'not_minima'])} of {int(summary.loc[p, 'checked'])}"
            for p in potentials if p in summary.index]
    if not said:
        return ""
    unchecked = [display_name(p) for p in potentials if p not in summary.index]
    return (" End points that are not minima (a 0.01 Å kick relaxes them lower; *Are the end points minima?*): "
            + ", ".join(said) + (f"; not checked: {', '.join(unchecked)}" if unchecked else "") + ".")


def minima_section(inputs: Any) -> list[str]:
    """Per checked potential: crystals checked of its converged science crystals, the non-minima by name, and
    its median ΔV and |ΔV| at the end points and with the kicked ends in the non-minima's place."""
    from helpers.analysis.results_json import update_results_json

    science, summary = inputs.science, inputs.minima
    converged = science[science["status"] == Status.converged].groupby("potential").size() \
        if len(science) else pd.Series(dtype=int)
    update_results_json(inputs.docs, "minima", {
        r.potential: {"checked": int(r.checked), "converged": int(converged.get(r.potential, 0)),
                      "not_minima": int(r.not_minima), "failed": int(r.failed), "structure_ids": list(r.saddles),
                      "median_dv": r.median_dv, "median_dv_kicked": r.median_dv_kicked,
                      "median_abs_dv": r.median_abs_dv, "median_abs_dv_kicked": r.median_abs_dv_kicked}
        for r in summary.itertuples()})
    how = ("`python -m helpers.cli results --stages minima --potentials NAME,...` runs it (one more relaxation "
           "per converged crystal, from a 0.01 Å kick; resumable), then `--stages analysis,report`.")
    if summary.empty:
        return [HEADING, "", "Not run for this report: no end point was checked. " + how, ""]
    rows = [{"potential": display_name(r.potential),
             "checked / converged": f"{int(r.checked)} / {int(converged.get(r.potential, 0))}",
             "not minima": int(r.not_minima), "failed checks": int(r.failed),
             "median ΔV: end → kicked (%)": f"{r.median_dv:+.2f} → {r.median_dv_kicked:+.2f}",
             "median |ΔV|: end → kicked (%)": f"{r.median_abs_dv:.2f} → {r.median_abs_dv_kicked:.2f}",
             "which": ", ".join(r.saddles) or "–"} for r in summary.itertuples()]
    unchecked = sorted(set(converged.index) - set(summary["potential"]))
    return [HEADING, "",
            "A relaxation stops where the forces vanish, which can be a saddle its symmetry held it on "
            "(docs/reliability.md). Each converged crystal of the sample is kicked (0.01 Å, seeded) and relaxed "
            "again with its own settings, one crystal at a time on the exact model; an end point is **not a "
            "minimum** when the kicked relaxation ends more than 0.1 meV/atom lower. The tables above keep the "
            "end points (the study's convention); the medians here show how much they move with the kicked ends "
            "in the non-minima's place.", "",
            markdown_table(pd.DataFrame(rows)), "",
            *([f"Not checked: {', '.join(display_name(p) for p in unchecked)}. {how}", ""] if unchecked else [])]
