"""CIF error or potential error? Crystals whose evidence points at the entry, not at one potential.

A crystal is listed (``consensus_outliers.csv``) for any of these reasons, each with its evidence:

- ``volume_consensus``: most potential *families* that relaxed it to convergence (at least ``agree_fraction``
  of them, and at least ``min_families``) change its volume by more than ``threshold_pct`` in the same
  direction. Potentials with different physics agreeing on a large change says the experimental
  structure (or its CIF) is not what the potentials' common chemistry expects. Members of one family (the six
  ANI models and their D3 variants: one architecture, one training lineage; the three SevenNet models) are not
  independent witnesses, and three D3 variants of ANI contract the typical crystal by 10–17 %: counted one by
  one they would outvote everyone else with their shared bias. So a family votes once, in the direction most
  of its converged members (more than half) move the crystal far, and not at all otherwise; a potential
  without a family (a plug-in) is its own;
- ``chemistry_changed``: at least ``chemistry_fraction`` of the potential families that relaxed it broke or
  formed covalent bonds (``bonds_intact`` False; ``bond_changes`` names them; a family counts as most of its
  members with a bond check do): the molecule of the CIF is not a minimum of their chemistry (a mislabelled
  atom, an impossible bond length);
- ``filter_flagged``: 02_filter flagged its clean row for a reason in ``filter_flags`` (default: a bond
  outside the range of its perceived order, :mod:`helpers.filter.bond_lengths`);
- ``start_extreme``: every potential with start tells (at least ``min_start_potentials``) found it
  among its largest start forces (rank ≥ ``start_quantile``; ``start_fmax_heavy``, the largest force on a
  non-H atom, where recorded, else ``start_fmax``; :mod:`helpers.relax.start_tells`).
  Ranks, not eV/Å: X-ray C–H bonds alone give ANI start forces of several eV/Å, and potentials differ.

A potential unfit for crystals (:data:`helpers.vocabulary.UNFIT_FOR_CRYSTALS`: AIMNet2, which expands every crystal)
does not vote on any reason: its numbers say nothing about the entry.

:func:`with_and_without` then gives every headline number (per potential n, median, μ and σ of the
study's Gaussian fit, skewness, fraction beyond ±10 %) for all entries, without the listed ones, and
without each reason's, so a reader sees how much of each tail is the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from helpers.vocabulary import UNFIT_FOR_CRYSTALS

REASONS = ("volume_consensus", "chemistry_changed", "filter_flagged", "start_extreme")
THRESHOLD_PCT = 10.0
AGREE_FRACTION = 2 / 3
#: families that must agree: two independent ones at least (the study's ANI-1x and ANI-1ccx alone cannot tell a
#: CIF error from their shared one)
MIN_FAMILIES = 2
#: converged relaxations a crystal needs before its volume is voted on at all
MIN_POTENTIALS = 3
CHEMISTRY_FRACTION = 0.5
FILTER_FLAGS = ("bond_length_outlier",)
START_QUANTILE = 0.9
MIN_START_POTENTIALS = 2
#: the asymmetry measure of the report: fraction of ΔV beyond ± this (%)
TAIL_PCT = 10.0

OUTLIER_COLUMNS = ["structure_id", "reasons", "n_potentials", "n_converged", "n_families", "n_families_up",
                   "n_families_down", "n_far_up", "n_far_down",
                   "median_dV_pct", "dV_by_potential", "n_bonds_changed", "bond_changes", "filter_flags",
                   "start_fmax_min", "start_rank_min", "start_fmax_by_potential"]


def _truthy(value) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    return bool(value)


def potential_families(potentials) -> dict[str, str]:
    """Potential (or run label ``name[hash7]``) -> its registry card's family; its own name for one without."""
    from helpers.relax.potentials.registry import REGISTRY

    out = {}
    for label in potentials:
        card = REGISTRY.get(str(label).split("[")[0])
        out[label] = getattr(card, "family", "") or str(label).split("[")[0]
    return out


def families_agreeing(potentials, hits, families: dict[str, str]) -> tuple[int, int]:
    """(families among ``potentials``, those in which more than half of the members hit): one vote per family,
    ``hits`` a flag per potential row (e.g. ΔV beyond +10 %, a bond broken)."""
    members: dict[str, list[bool]] = {}
    for p, hit in zip(potentials, hits):
        members.setdefault(families.get(p, p), []).append(bool(hit))
    return len(members), sum(sum(v) * 2 > len(v) for v in members.values())


def consensus_outliers(errors: pd.DataFrame, *, threshold_pct: float = THRESHOLD_PCT,
                       agree_fraction: float = AGREE_FRACTION, min_families: int = MIN_FAMILIES,
                       families: dict[str, str] | None = None, min_potentials: int = MIN_POTENTIALS,
                       chemistry_fraction: float = CHEMISTRY_FRACTION, filter_flags: Sequence[str] = FILTER_FLAGS,
                       start_quantile: float = START_QUANTILE,
                       min_start_potentials: int = MIN_START_POTENTIALS,
                       ignore: Sequence[str] = tuple(UNFIT_FOR_CRYSTALS)) -> pd.DataFrame:
    """One row per listed crystal (:data:`OUTLIER_COLUMNS`), ``reasons`` comma-separated in :data:`REASONS` order.
    The potentials in ``ignore`` (default: those unfit for crystals) are no evidence about an entry: their rows
    do not vote. ``families``: potential -> family for the volume vote (default: the registry's cards,
    :func:`potential_families`); ``min_potentials``: converged relaxations a volume vote needs at all."""
    if errors.empty or "structure_id" not in errors:
        return pd.DataFrame(columns=OUTLIER_COLUMNS)
    frame = errors.copy()
    frame["potential"] = frame.get("potential", frame.get("potential_name"))
    base = frame["potential"].astype(str).str.split("[").str[0]  # a run label name[hash7] is its potential's
    frame = frame[~base.isin(set(ignore))]
    if frame.empty:
        return pd.DataFrame(columns=OUTLIER_COLUMNS)
    converged = frame["converged"].map(_truthy).fillna(False).astype(bool) if "converged" in frame else True
    frame["_dv"] = pd.to_numeric(frame.get("dV_pct"), errors="coerce").where(converged)
    # heavy-atom start forces where recorded (X-ray H positions dominate the all-atom ones), else all atoms
    start = pd.to_numeric(frame.get("start_fmax", pd.Series(np.nan, index=frame.index)), errors="coerce")
    if "start_fmax_heavy" in frame:
        start = pd.to_numeric(frame["start_fmax_heavy"], errors="coerce").fillna(start)
    # the share of the potential's own start forces at or below this one (1.0: its largest)
    frame["_start_rank"] = start.groupby(frame["potential"]).rank(pct=True, method="max").where(start.notna())
    frame["_start"] = start
    wanted = set(filter_flags)
    families = {**potential_families(frame["potential"].unique()), **(families or {})}
    rows = []
    for sid, group in frame.groupby("structure_id", sort=True):
        dv = group.dropna(subset=["_dv"])
        up, down = int((dv["_dv"] > threshold_pct).sum()), int((dv["_dv"] < -threshold_pct).sum())
        n_conv = len(dv)
        n_fam, fam_up = families_agreeing(dv["potential"], dv["_dv"] > threshold_pct, families)
        fam_down = families_agreeing(dv["potential"], dv["_dv"] < -threshold_pct, families)[1]
        reasons = []
        if (n_conv >= min_potentials and n_fam >= min_families
                and max(fam_up, fam_down) >= max(min_families, math.ceil(agree_fraction * n_fam - 1e-9))):
            reasons.append("volume_consensus")
        intact = group.get("bonds_intact", pd.Series(dtype=object)).map(_truthy)
        known = intact.dropna()
        changed = group.loc[known.index[~known.astype(bool)]] if len(known) else group.iloc[0:0]
        # by family too: a family changed the chemistry when more than half of its members with a bond check did
        checked = intact.notna().to_numpy()
        n_checked, n_broke = families_agreeing(group["potential"].to_numpy()[checked],
                                               ~intact.to_numpy()[checked].astype(bool), families)
        if n_checked and n_broke >= max(1, math.ceil(chemistry_fraction * n_checked - 1e-9)):
            reasons.append("chemistry_changed")
        flags = sorted({f for text in group.get("filter_flags", pd.Series(dtype=object)).dropna().astype(str)
                        for f in text.split(",") if f})
        if wanted & set(flags):
            reasons.append("filter_flagged")
        ranked = group.dropna(subset=["_start_rank"])
        if len(ranked) >= min_start_potentials and (ranked["_start_rank"] >= start_quantile).all():
            reasons.append("start_extreme")
        if not reasons:
            continue
        rows.append({
            "structure_id": sid, "reasons": ",".join(reasons), "n_potentials": int(group["potential"].nunique()),
            "n_converged": n_conv, "n_families": n_fam, "n_families_up": fam_up, "n_families_down": fam_down,
            "n_far_up": up, "n_far_down": down,
            "median_dV_pct": float(dv["_dv"].median()) if n_conv else np.nan,
            "dV_by_potential": "; ".join(f"{p} {v:+.1f}" for p, v in zip(dv["potential"], dv["_dv"])),
            "n_bonds_changed": len(changed),
            "bond_changes": "; ".join(f"{p}: {c}" for p, c in zip(changed["potential"],
                                                                   changed.get("bond_changes", [""] * len(changed)))),
            "filter_flags": ",".join(flags),
            "start_fmax_min": float(ranked["_start"].min()) if len(ranked) else np.nan,
            "start_rank_min": float(ranked["_start_rank"].min()) if len(ranked) else np.nan,
            "start_fmax_by_potential": "; ".join(f"{p} {v:.2f}" for p, v in zip(ranked["potential"], ranked["_start"])),
        })
    return pd.DataFrame(rows, columns=OUTLIER_COLUMNS)


def ids_by_reason(outliers: pd.DataFrame) -> dict[str, list[str]]:
    """Listed structure ids per reason (every reason present, possibly empty), for results.json."""
    out: dict[str, list[str]] = {r: [] for r in REASONS}
    for sid, reasons in zip(outliers.get("structure_id", []), outliers.get("reasons", [])):
        for r in str(reasons).split(","):
            if r in out:
                out[r].append(str(sid))
    return {r: sorted(ids) for r, ids in out.items()}


def _stats(values: np.ndarray) -> dict[str, float]:
    from scipy import stats

    from helpers.analysis.distributions import fit_gaussian

    values = values[np.isfinite(values)]
    n = len(values)
    nan = float("nan")
    fit = fit_gaussian(values)
    return {"n": n, "median": float(np.median(values)) if n else nan, "mu": fit.mu, "sigma": fit.sigma,
            "mean": float(values.mean()) if n else nan, "sd": float(values.std(ddof=1)) if n > 1 else nan,
            "skewness": float(stats.skew(values, bias=False)) if n > 2 else nan,
            "frac_above": float(np.mean(values > TAIL_PCT)) if n else nan,
            "frac_below": float(np.mean(values < -TAIL_PCT)) if n else nan}


def with_and_without(errors: pd.DataFrame, outliers: pd.DataFrame, converged_only: bool = True) -> pd.DataFrame:
    """ΔV statistics per potential for ``all`` entries, ``without_listed`` and ``without_<reason>``.

    Columns: potential, subset, n, n_left_out, median, mu, sigma (the study's Gaussian fit), mean, sd,
    skewness, frac_above / frac_below (share of ΔV beyond ±:data:`TAIL_PCT` %).
    """
    if errors.empty:
        return pd.DataFrame()
    frame = errors.copy()
    frame["potential"] = frame.get("potential", frame.get("potential_name"))
    if converged_only and "converged" in frame:
        frame = frame[frame["converged"].map(_truthy).fillna(False).astype(bool)]
    by_reason = ids_by_reason(outliers)
    subsets = {"all": set(), "without_listed": set(outliers.get("structure_id", pd.Series(dtype=str)).astype(str))}
    subsets.update({f"without_{r}": set(ids) for r, ids in by_reason.items()})
    rows = []
    for potential, group in frame.groupby("potential", sort=True):
        ids = group["structure_id"].astype(str)
        for subset, drop in subsets.items():
            keep = ~ids.isin(drop)
            values = pd.to_numeric(group.loc[keep, "dV_pct"], errors="coerce").to_numpy(dtype=float)
            rows.append({"potential": potential, "subset": subset, "n_left_out": int((~keep).sum()),
                         **_stats(values)})
    columns = ["potential", "subset", "n", "n_left_out", "median", "mu", "sigma", "mean", "sd", "skewness",
               "frac_above", "frac_below"]
    return pd.DataFrame(rows, columns=columns)  # no converged row: the columns, empty


def consensus_tables(errors: pd.DataFrame, converged_only: bool = True, **options) -> dict[str, pd.DataFrame]:
    """``consensus_outliers`` and ``consensus_effect`` (the analysis stage writes both as CSV)."""
    listed = consensus_outliers(errors, **options)
    return {"consensus_outliers": listed, "consensus_effect": with_and_without(errors, listed, converged_only)}
