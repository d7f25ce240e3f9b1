"""What each potential of a campaign is to relax, in the science sample: the ranking's yardstick for
"partial" (:func:`helpers.analysis.ranking.rank_potentials`'s ``targets``).

A potential still running has attempted only part of its targets; the ranking's shared set (the structures
every ranked potential attempted) is then small, and the report says why instead of shrinking it in silence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.analysis import sample_sets


def science_targets(plan: Any) -> dict[str, set[str]] | None:
    """Per potential of ``plan`` (a :class:`helpers.run.config.CampaignConfig`), the clean structure ids it is to
    relax (within its ``max_atoms``) that belong to the science sample (every one when no clean row records
    its source, as :func:`helpers.analysis.sample_sets.science`); None when the plan has no clean database."""
    from helpers.relax.stage import relax_targets
    from helpers.store import db as dbmod

    try:
        clean_path = plan.dbs["clean_db"]
    except (AttributeError, KeyError, TypeError):
        return None
    if not Path(clean_path).is_file():
        return None
    clean = dbmod.connect(clean_path, must_exist=True)
    sets = {str(row.get("structure_id")): sample_sets.sample_set(row.get("source"), row.get("compound_key"),
                                                                  row.get("cif_formula"))
            for row in clean.select("structure_id", columns=["id", "key_value_pairs"])}
    labelled = sample_sets.SCIENCE in sets.values()
    wanted = {sid for sid, s in sets.items() if s == sample_sets.SCIENCE or not labelled}
    return {p: ids & wanted for p, ids in relax_targets(clean, plan.potentials, plan.max_atoms).items()}
