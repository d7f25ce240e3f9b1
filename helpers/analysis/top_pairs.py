"""The first three potentials of the ranking compared crystal by crystal: volume and each cell length.

The ranking (:mod:`helpers.analysis.ranking`) orders potentials by one number, the median |ΔV₀|. A user
choosing between the first few needs to know whether that order holds crystal by crystal, and for the
cell's shape as well as its volume. For every pair of the first :data:`TOP` fit ranked potentials (A the
better ranked), on the ranking's shared structures, per quantity — ΔV₀ and Δ|a1|₀, Δ|a2|₀, Δ|a3|₀ against
the cell extrapolated to 0 K (lengths with α_V/3, the isotropic share; the ranking's temperatures) — the
per-structure difference d = |Δ_A| − |Δ_B| (negative: A closer to experiment):

- a failed relaxation scores |Δ| = ∞ (both failed: a tie); a cell length whose relaxed cell could not be
  matched to the experimental setting is left out of that length's comparison (not the potential's fault);
- the median of d with its exact order-statistic 95 % CI and the exact sign test (the same quantity);
- the Wilcoxon signed-rank test of d, which also weighs how large the differences are (failures ranked as
  the largest differences in their direction);
- both p-values Holm-adjusted over the pairs of each quantity. The verdict names the closer potential when
  *both* adjusted tests reject at 5 %, says which test alone does, or "cannot tell".

The volume rows are the ranking's pairs of these three with the signed-rank test beside the sign test; the
ranking adjusts over every pair of ranked potentials, a larger family, so where the two disagree the
ranking's verdict is the more cautious.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis.exact_stats import holm
from helpers.analysis.quantities import QUANTITIES, display_name
from helpers.analysis.ranking import T_ASSUMED, delta_matrices, dv_zero_kelvin, pair_statistics, ranked_rows
from helpers.vocabulary import THERMAL_EXPANSION_V

#: how many of the ranking's first fit potentials are compared pair by pair
TOP = 3
#: the compared quantities (names of :data:`helpers.analysis.quantities.QUANTITIES`), volume first
TOP_QUANTITIES = ("volume", "a1", "a2", "a3")
ALPHA = 0.05


def top_potentials(ranking: dict[str, Any], k: int = TOP) -> list[str]:
    """The first ``k`` ranked potentials without a fitness note (the ones a verdict can recommend)."""
    ranked = ranked_rows(ranking.get("table"))
    return ranked.loc[ranked["note"].fillna("") == "", "potential"].head(k).tolist()


def _scores(errors: pd.DataFrame, potentials: list[str], ids: list[str], quantity: str) -> np.ndarray:
    """|Δ₀| per structure × potential: ∞ for a failed relaxation, NaN where a length is not comparable."""
    q = QUANTITIES[quantity]
    values, failed, temperature = delta_matrices(errors, potentials, ids, q.column, q.lattice)
    expansion = THERMAL_EXPANSION_V if not q.lattice else THERMAL_EXPANSION_V / 3
    zero = dv_zero_kelvin(values, np.where(np.isnan(temperature), T_ASSUMED, temperature)[:, None], expansion)
    return np.where(failed, np.inf, np.abs(zero))


def top_pairs(errors: pd.DataFrame, ranking: dict[str, Any], k: int = TOP,
              quantities: tuple[str, ...] = TOP_QUANTITIES, level: float = 0.95) -> pd.DataFrame:
    """One row per (quantity, pair of the first ``k`` fit ranked potentials): see the module docstring.

    ``errors``: the science rows the ranking was computed from; ``ranking``: its
    :func:`helpers.analysis.ranking.rank_potentials` result (table and shared structure ids)."""
    potentials, ids = top_potentials(ranking, k), list(ranking.get("shared", []))
    rows = []
    for quantity in quantities:
        if len(potentials) < 2 or QUANTITIES[quantity].column not in errors:
            continue
        scores = _scores(errors, potentials, ids, quantity)
        rows += [{"quantity": quantity, "label": QUANTITIES[quantity].label, "potential_a": a, "potential_b": b,
                  **pair_statistics(scores[:, i], scores[:, j], level)}
                 for (i, a), (j, b) in itertools.combinations(enumerate(potentials), 2)]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in ("sign_p", "signed_rank_p"):  # Holm over the pairs of each quantity
        table[f"holm_{column}"] = table.groupby("quantity")[column].transform(lambda p: holm(p.to_numpy()))
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table


def _verdict(row) -> str:
    """Both adjusted tests reject: the closer one; one of them: which one, in words; neither: cannot tell."""
    by_count, by_size = row.holm_sign_p < ALPHA, row.holm_signed_rank_p < ALPHA  # NaN (no test): False
    a, b = display_name(row.potential_a), display_name(row.potential_b)
    if by_count and by_size and (row.a_closer > row.b_closer) == (row.rank_biserial > 0):
        return f"{a if row.a_closer > row.b_closer else b} closer"
    if by_count:
        return (f"{a if row.a_closer > row.b_closer else b} closer on more crystals; the signed-rank test "
                + ("does not agree" if not by_size else "favours the other by the sizes of the differences"))
    if by_size:
        return (f"{a if row.rank_biserial > 0 else b} closer by the sizes of the differences (signed-rank); "
                "not on more crystals (sign test)")
    return "cannot tell"
