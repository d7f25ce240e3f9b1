"""What each potential of a campaign is to relax, in the science sample: the ranking's yardstick for
"partial" (:func:`helpers.analysis.ranking.rank_potentials`'s ``targets``), and the one its coverage is
measured on.

A potential still running has attempted only part of its targets; the ranking's shared set (the structures
every ranked potential attempted) is then small, and the report says why instead of shrinking it in silence.

Coverage (:func:`coverage_sets`) uses one yardstick for every potential, whatever subset its campaign chose:
the unaltered clean crystals (the science sample) of at most :data:`COVERAGE_MAX_ATOMS` atoms in the cell whose
elements the potential covers. A crystal a potential attempted and failed counts as covered (its failure is
scored in the ranking), one it never reached does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from helpers.analysis import sample_sets

#: coverage is measured on the science crystals of at most this many atoms in the cell
COVERAGE_MAX_ATOMS = 150
#: the coverage a potential needs before its row speaks for the sample (issue 35)
COVERAGE_GOAL = 0.95
COVERAGE_RULE = (f"attempted ∩ yardstick / yardstick; yardstick: the unaltered clean COD crystals (`cod-sample/`) "
                 f"of ≤ {COVERAGE_MAX_ATOMS} atoms in the cell whose elements the potential covers; a failed "
                 "relaxation counts as attempted")


def _clean_and_science(clean_path: Any):
    """(the clean database at ``clean_path``, the science structure ids in it) or None when there is none."""
    from helpers.store import db as dbmod

    if clean_path is None or not (dbmod.is_url(str(clean_path)) or Path(clean_path).is_file()):
        return None
    clean = dbmod.connect(clean_path, must_exist=True)
    sets = {str(row.get("structure_id")): sample_sets.sample_set(row.get("source"), row.get("compound_key"),
                                                                  row.get("cif_formula"))
            for row in clean.select("structure_id", columns=["id", "key_value_pairs"])}
    labelled = sample_sets.SCIENCE in sets.values()
    return clean, {sid for sid, s in sets.items() if s == sample_sets.SCIENCE or not labelled}


def _plan_clean_db(plan: Any) -> Any:
    try:
        return plan.dbs["clean_db"]
    except (AttributeError, KeyError, TypeError):
        return None


def coverage_sets(plan: Any, max_atoms: int = COVERAGE_MAX_ATOMS) -> dict[str, set[str]] | None:
    """Per potential of ``plan``, its coverage yardstick (see the module docstring): science structure ids of at
    most ``max_atoms`` atoms in the cell whose elements it covers; None without a clean database."""
    from helpers.relax.potentials.registry import get_potential

    found = _clean_and_science(_plan_clean_db(plan))
    if found is None:
        return None
    clean, science = found
    small = {str(row.get("structure_id")): set(row.symbols) for row in
             clean.select("structure_id", columns=["id", "key_value_pairs", "numbers"])
             if row.natoms <= max_atoms and str(row.get("structure_id")) in science}
    out = {}
    for p in plan.potentials:
        try:
            card = get_potential(p)
        except KeyError:  # a plug-in not installed here: its elements are unknown
            continue
        out[p] = {sid for sid, symbols in small.items() if not card.uncovered(symbols)}
    return out


def coverage(attempted: set[str], yardstick: set[str] | None) -> dict[str, Any]:
    """``coverage`` (a fraction; None without a yardstick), ``n_covered`` and ``n_yardstick``."""
    if not yardstick:
        return {"coverage": None, "n_covered": None, "n_yardstick": len(yardstick) if yardstick is not None else None}
    covered = len(set(attempted) & yardstick)
    return {"coverage": covered / len(yardstick), "n_covered": covered, "n_yardstick": len(yardstick)}


def science_coverage(science: Any, label: str, yardsticks: dict[str, set[str]] | None,
                     column: str = "potential") -> dict[str, Any]:
    """:func:`coverage` of the science rows whose ``column`` is ``label`` (a run label, ``name[hash7]`` when a
    potential ran with several settings, or a bare ``potential_name``) on its potential's yardstick: the one
    count results.json and the report's *What was run* both show."""
    attempted = (set(science.loc[science[column] == label, "structure_id"].astype(str))
                 if len(science) and column in science else set())
    found = (yardsticks or {}).get(label, (yardsticks or {}).get(label.split("[")[0]))
    return coverage(attempted, found if yardsticks is not None else None)


def coverage_goal_sentence(coverage_by_potential: dict[str, dict[str, Any]], names: dict[str, str]) -> str:
    """Which potentials reach :data:`COVERAGE_GOAL` of their yardstick, which do not (``names``: display names)."""
    known = {p: c for p, c in coverage_by_potential.items() if c.get("coverage") is not None}
    if not known:
        return ""
    short = {p: c for p, c in known.items() if c["coverage"] < COVERAGE_GOAL}
    goal = f"{COVERAGE_GOAL:.0%} of the science crystals of ≤ {COVERAGE_MAX_ATOMS} atoms whose elements it covers"
    if not short:
        return f"Every potential covers at least {goal}."
    listed = ", ".join(f"{names.get(p, p)} {c['n_covered']} of {c['n_yardstick']}" for p, c in sorted(short.items()))
    return f"Below {goal}: {listed}; the rest reach it."


def science_targets(plan: Any) -> dict[str, set[str]] | None:
    """Per potential of ``plan`` (a :class:`helpers.run.config.CampaignConfig`), the clean structure ids it is to
    relax (within its ``max_atoms``) that belong to the science sample (every one when no clean row records
    its source, as :func:`helpers.analysis.sample_sets.science`); None when the plan has no clean database."""
    clean_db = _plan_clean_db(plan)
    return None if clean_db is None else science_targets_in(clean_db, plan.potentials, plan.max_atoms)


def science_targets_in(clean_db: Any, potentials: Iterable[str],
                       max_atoms: Mapping[str, int | None] | None = None) -> dict[str, set[str]] | None:
    """:func:`science_targets` without a campaign plan: what 04_analysis ranks with, from its clean database and
    ``max_atoms`` (a potential absent from it: every clean structure), so a potential still running is listed
    as partial there as in the report instead of cutting the shared set; None without a clean database."""
    from helpers.relax.stage import relax_targets

    found = _clean_and_science(clean_db)
    if found is None:
        return None
    clean, wanted = found
    return {p: ids & wanted for p, ids in relax_targets(clean, list(potentials), dict(max_atoms or {})).items()}
