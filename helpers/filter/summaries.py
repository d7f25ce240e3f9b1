"""Small tables and charts of database contents for the notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from helpers.store import db as dbmod


def db_table(name: str, columns: Sequence[str] | None = None, **selection) -> pd.DataFrame:
    """One row per database row: id, natoms and the key-value pairs (optionally only ``columns``)."""
    db = dbmod.connect(name, must_exist=True)
    records = [{"id": row.id, "natoms": row.natoms, **row.key_value_pairs}
               for row in db.select(columns=["id", "numbers", "key_value_pairs"], **selection)]
    frame = pd.DataFrame(records)
    if columns is not None:
        frame = frame.reindex(columns=list(columns))
    return frame


def rejection_bar_chart(counts: pd.DataFrame, ax=None):
    """Horizontal bar chart of a filter report's counts (index: check; columns ``kind``, ``n``).

    Rejecting checks are red, flags (recorded, not rejected) grey; totals are left out.
    """
    import matplotlib.pyplot as plt

    shown = counts[counts["kind"].isin(["reject", "flag"])] if "kind" in counts else counts
    series = shown["n"].sort_values()
    colors = ["tab:grey" if shown.loc[i, "kind"] == "flag" else "tab:red" for i in series.index] \
        if "kind" in shown else "tab:red"
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.35 * len(series) + 1))
    series.plot.barh(ax=ax, color=colors)
    ax.set_xlabel("structures")
    ax.set_title("Structures per failed check (red: rejected, grey: flagged; one can fail several)")
    for i, value in enumerate(series):
        ax.text(value, i, f" {value}", va="center")
    return ax
