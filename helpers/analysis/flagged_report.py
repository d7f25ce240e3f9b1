"""The report section that tests the study's explanation of its asymmetric histograms.

The study blames two things at once: missing long-range attraction in ANI, and errors in the CIF
files. This section separates them as far as the data allow: the crystals :mod:`helpers.analysis.consensus`
lists (most potentials agree on a large volume change, the chemistry changed during relaxation, the
filter flagged a bond length, every potential starts far from equilibrium) are candidate CIF problems;
every headline number is given with and without them, and the share of each tail they make up is
counted. What is left is the potentials'. The ids per reason go into ``docs/results.json`` (``flagged``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis import consensus
from helpers.analysis.quantities import display_name
from helpers.analysis.results_json import update_results_json
from helpers.vocabulary import UNFIT_FOR_CRYSTALS

REASON_TEXT = {
    "volume_consensus": (f"at least {consensus.AGREE_FRACTION:.0%} of the potential families that converged it "
                         f"(≥ {consensus.MIN_FAMILIES} families, ≥ {consensus.MIN_POTENTIALS} relaxations) change its "
                         f"volume by more than {consensus.THRESHOLD_PCT:g} % in the same direction (a family votes "
                         "once, as most of its members do: the ANI models and their D3 variants are one witness, "
                         "not six)"),
    "chemistry_changed": (f"at least {consensus.CHEMISTRY_FRACTION:.0%} of the potential families broke or formed a "
                          "covalent bond while relaxing it (a family as most of its members)"),
    "filter_flagged": "02_filter found a bond outside the range of its perceived order (bond_length_outlier)",
    "start_extreme": (f"every potential (≥ {consensus.MIN_START_POTENTIALS}) put its start force among its own "
                      f"top {1 - consensus.START_QUANTILE:.0%}"),
}


def _tables(analysis_dir: Path, read: Mapping[str, pd.DataFrame] | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """errors, the listed crystals and their effect; ``read``: tables the report has read already (errors.csv,
    consensus_outliers.csv by name), not read twice."""
    read = read or {}
    errors = read["errors"] if "errors" in read else pd.read_csv(analysis_dir / "errors.csv", low_memory=False)
    listed_path, effect_path = analysis_dir / "consensus_outliers.csv", analysis_dir / "consensus_effect.csv"
    if listed_path.is_file() and effect_path.is_file():
        listed = read.get("consensus_outliers")
        if listed is None or listed.columns.empty:  # not read, or read as an empty file: as before
            listed = pd.read_csv(listed_path)
        effect = pd.read_csv(effect_path) if effect_path.stat().st_size > 1 else pd.DataFrame()
    else:  # an analysis written before the consensus tables existed
        tables = consensus.consensus_tables(errors)
        listed, effect = tables["consensus_outliers"], tables["consensus_effect"]
    return errors, listed, effect


def _num(value: Any, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def tail_shares(errors: pd.DataFrame, listed: pd.DataFrame, tail_pct: float = consensus.TAIL_PCT) -> pd.DataFrame:
    """Per potential: converged ΔV beyond +tail / −tail, and how many of those are listed crystals."""
    frame = errors.copy()
    frame = frame[frame["converged"].astype(str).str.lower() == "true"] if "converged" in frame else frame
    ids = set(listed.get("structure_id", pd.Series(dtype=str)).astype(str))
    rows = []
    for potential, group in frame.groupby("potential", sort=True):
        dv = pd.to_numeric(group["dV_pct"], errors="coerce")
        mine = group["structure_id"].astype(str).isin(ids)
        up, down = dv > tail_pct, dv < -tail_pct
        rows.append({"potential": potential, "n": int(dv.notna().sum()), "n_listed": int(mine.sum()),
                     "above": int(up.sum()), "above_listed": int((up & mine).sum()),
                     "below": int(down.sum()), "below_listed": int((down & mine).sum())})
    return pd.DataFrame(rows)


def effect_table(effect: pd.DataFrame, shares: pd.DataFrame) -> pd.DataFrame:
    """The headline ΔV numbers per potential, all entries → without the listed ones."""
    if effect.empty:
        return pd.DataFrame()
    wide = effect.set_index(["potential", "subset"])
    rows = []
    for potential in sorted(effect["potential"].unique()):
        a, w = wide.loc[(potential, "all")], wide.loc[(potential, "without_listed")]
        share = shares.set_index("potential").loc[potential] if potential in set(shares["potential"]) else None

        def arrow(col: str, digits: int = 2, pct: bool = False, a=a, w=w) -> str:
            scale = 100 if pct else 1
            return f"{_num(a[col] * scale, digits)} → {_num(w[col] * scale, digits)}"

        rows.append({
            "potential": display_name(potential), "n (left out)": f"{int(a['n'])} ({int(w['n_left_out'])})",
            "median ΔV [%]": arrow("median"), "μ [%]": arrow("mu"), "σ [%]": arrow("sigma"),
            "skewness": arrow("skewness"),
            f"ΔV > +{consensus.TAIL_PCT:g} % [% of n]": arrow("frac_above", 1, pct=True),
            f"ΔV < −{consensus.TAIL_PCT:g} % [% of n]": arrow("frac_below", 1, pct=True),
            "tails that are listed": (f"{share['above_listed']}/{share['above']} up, "
                                      f"{share['below_listed']}/{share['below']} down") if share is not None else "–",
        })
    return pd.DataFrame(rows)


def verdict(effect: pd.DataFrame, shares: pd.DataFrame, n_listed: int) -> str:
    """One paragraph: how much of the spread and asymmetry the listed crystals explain, and what remains."""
    if effect.empty or not n_listed:
        return ("No crystal is listed: the spread and asymmetry of the histograms below are the potentials' "
                "(within what these tests can see).")
    wide = effect.set_index(["potential", "subset"])
    pots = sorted(effect["potential"].unique())
    sd_all = np.array([wide.loc[(p, "all"), "sd"] for p in pots], dtype=float)
    sd_w = np.array([wide.loc[(p, "without_listed"), "sd"] for p in pots], dtype=float)
    sk_all = np.array([wide.loc[(p, "all"), "skewness"] for p in pots], dtype=float)
    sk_w = np.array([wide.loc[(p, "without_listed"), "skewness"] for p in pots], dtype=float)
    ok = np.isfinite(sd_all) & np.isfinite(sd_w) & (sd_all > 0)
    var_share = float(np.median(1 - (sd_w[ok] / sd_all[ok]) ** 2)) if ok.any() else float("nan")
    up, up_listed = int(shares["above"].sum()), int(shares["above_listed"].sum())
    down, down_listed = int(shares["below"].sum()), int(shares["below_listed"].sum())
    fine = np.isfinite(sk_all) & np.isfinite(sk_w)
    text = (f"{n_listed} crystal(s) are listed as candidate CIF problems. Leaving them out removes a median "
            f"{_num(100 * var_share, 0)} % of the variance of ΔV over the potentials (sample SD, converged rows); the "
            f"skewness moves from a median {_num(np.median(sk_all[fine]) if fine.any() else np.nan)} to "
            f"{_num(np.median(sk_w[fine]) if fine.any() else np.nan)}. Of all converged ΔV beyond "
            f"+{consensus.TAIL_PCT:g} % (summed over potentials) {up_listed} of {up} are listed crystals, of those "
            f"beyond −{consensus.TAIL_PCT:g} % {down_listed} of {down}. ")
    explained = (up_listed + down_listed) / max(up + down, 1)
    if explained < 0.5:
        text += ("Most of each tail remains after the listed crystals are left out: on this data the spread and the "
                 "asymmetry are mainly the potentials', not the CIF files'.")
    else:
        text += ("Most of the tails are listed crystals: on this data the CIF files explain a large part of the "
                 "spread and asymmetry.")
    return text


def flagged_section(analysis_dir: str | Path, docs_dir: str | Path | None = None,
                    tables: Mapping[str, pd.DataFrame] | None = None) -> list[str]:
    """Markdown lines of the section; writes ``flagged`` into ``docs_dir/results.json`` when given. ``tables``:
    the analysis tables already read (:func:`helpers.analysis.report.read_tables`), used instead of the files."""
    errors, listed, effect = _tables(Path(analysis_dir), tables)
    shares = tail_shares(errors, listed)
    by_reason = consensus.ids_by_reason(listed)
    if docs_dir is not None:
        update_results_json(docs_dir, "flagged", {
            "reasons": by_reason, "n_listed": len(listed),
            "criteria": {"threshold_pct": consensus.THRESHOLD_PCT, "agree_fraction": consensus.AGREE_FRACTION,
                         "min_potentials": consensus.MIN_POTENTIALS, "min_families": consensus.MIN_FAMILIES,
                         "vote": "one per potential family (registry card), as most of its converged members",
                         "chemistry_fraction": consensus.CHEMISTRY_FRACTION,
                         "filter_flags": list(consensus.FILTER_FLAGS), "start_quantile": consensus.START_QUANTILE},
            "effect": effect.to_dict(orient="records") if not effect.empty else [],
        })
    out = ["## CIF error or potential error?", "",
           "The study explains its asymmetric histograms by missing long-range attraction in ANI *and* by errors in "
           "the CIF files. A crystal is listed here as a candidate CIF problem when " + "; or when ".join(
               f"{REASON_TEXT[r]} (`{r}`, {len(by_reason[r])})" for r in consensus.REASONS) + ". "
           "Potentials unfit for crystals (" + ", ".join(display_name(p) for p in UNFIT_FOR_CRYSTALS) + ") cast no "
           "vote. The list with its evidence is `consensus_outliers.csv`; every number with and without it (and "
           "without each reason) is `consensus_effect.csv`.", ""]
    if len(listed):
        shown = listed.sort_values("structure_id").head(25)
        table = shown[["structure_id", "reasons", "median_dV_pct", "dV_by_potential", "bond_changes",
                       "filter_flags", "start_fmax_min"]].rename(columns={
                           "median_dV_pct": "median ΔV [%]", "dV_by_potential": "ΔV per potential [%]",
                           "start_fmax_min": "smallest start fmax [eV/Å]"})
        for col in ("bond_changes", "filter_flags"):
            table[col] = table[col].astype(object).fillna("").astype(str)  # a float column of NaN too
        for col in ("median ΔV [%]", "smallest start fmax [eV/Å]"):
            table[col] = table[col].map(_num)
        out += [table.to_markdown(index=False), ""]
        if len(listed) > 25:
            out += [f"({len(listed) - 25} more in `consensus_outliers.csv`.)", ""]
    table = effect_table(effect, shares)
    if not table.empty:
        out += ["ΔV of converged relaxations, all entries → without the listed ones:", "",
                table.to_markdown(index=False), ""]
    out += [verdict(effect, shares, len(listed)), ""]
    return out
