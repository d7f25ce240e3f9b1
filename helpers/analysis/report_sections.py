"""The sections of ``docs/results.md`` a referee reads first: verdict, sample, ranking, temperature, glossary.

Every section is a function ``(inputs: ReportInputs) -> list[str]`` (markdown lines);
:func:`helpers.analysis.report.write_report` lists them in order, so a new section is one function and one
line in that list. Sections that publish numbers write their own key of ``docs/results.json``
(:func:`helpers.analysis.results_json.update_results_json`): ``sets`` (the ids in each sample set),
``potentials`` (per potential: failure_rate, within_5pct, within_10pct, bias, spread, the ranking metric
and its CI, the rank and its CI) and ``paired`` (every Holm-corrected pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis import ranking_targets, report_figures, sample_sets, top_pairs
from helpers.analysis.bonding import by_bonding
from helpers.analysis.exact_stats import median_ci_exact
from helpers.analysis.markdown import markdown_table as _markdown
from helpers.analysis.minima_section import checked_summary, verdict_sentence
from helpers.analysis.quantities import STUDY_RESULT, all_entries, display_name
from helpers.analysis.ranking import (
    ALPHA_V_SD,
    ALPHA_V_SOURCE,
    MIN_RANKED,
    T_ASSUMED,
    T_UNKNOWN_RANGE,
    leave_out_effect,
    partial_sentence,
    per_structure,
    rank_potentials,
    ranked_potentials,
    ranked_rows,
    unfit_reason,
)
from helpers.analysis.readme_headline import marked
from helpers.analysis.results_json import update_results_json
from helpers.vocabulary import DONORS, GLOSSARY_HEADING, NO_DONORS, THERMAL_EXPANSION_V

#: size strata (atoms in the cell) for testing whether a shift depends on size
SIZE_EDGES = (50, 100)
#: a stratum needs this many structures before it can explain (or fail to explain) anything
MIN_STRATUM = 10
STUDY_POTENTIALS = ("ani1x", "ani1ccx")


@dataclass
class ReportInputs:
    """Everything a section may use: the analysis tables, the run's plan and counts, where the docs go."""

    tables: dict[str, pd.DataFrame]
    plan: Any
    info: dict[str, Any]
    docs: Path
    figures: Path
    n_boot: int = 2000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> pd.DataFrame:
        """Every relaxed row (every sample set)."""
        return self.tables["errors"]

    @cached_property
    def science(self) -> pd.DataFrame:
        """The rows of the science sample (all rows when none records its source)."""
        return sample_sets.science(self.errors) if len(self.errors) else self.errors

    @cached_property
    def ranking(self) -> dict[str, Any]:
        """:func:`helpers.analysis.ranking.rank_potentials` of the science sample."""
        if self.science.empty or "potential" not in self.science:
            return {"table": pd.DataFrame(), "pairs": pd.DataFrame(), "shared": [], "n_unknown_t": 0}
        return rank_potentials(self.science, n_boot=self.n_boot, seed=self.seed, targets=self.extra.get("targets"))

    @cached_property
    def under_pressure(self) -> dict[str, Any] | None:
        """:func:`helpers.analysis.ranking.leave_out_effect` of the shared entries measured under pressure
        (02_filter's ``high_pressure`` flag): compared with 0 GPa relaxations, as the study did."""
        if self.science.empty or "filter_flags" not in self.science:
            return None
        flags = self.science["filter_flags"].fillna("").astype(str).str.split(",")
        ids = self.science.loc[flags.map(lambda f: PRESSURE_FLAG in f), "structure_id"].astype(str)
        return leave_out_effect(self.science, self.ranking, set(ids))

    @cached_property
    def without_flagged(self) -> dict[str, Any] | None:
        """:func:`helpers.analysis.ranking.leave_out_effect` of the shared entries *CIF error or potential
        error?* lists (``consensus_outliers.csv``): is the order carried by a few doubtful CIFs?"""
        listed = self.tables.get("consensus_outliers", pd.DataFrame())
        if self.science.empty or listed.empty or "structure_id" not in listed:
            return None
        return leave_out_effect(self.science, self.ranking, set(listed["structure_id"].astype(str)))

    @cached_property
    def by_bonding(self) -> dict[str, dict[str, Any]]:
        """The ranking on the crystals with N–H/O–H donors and on those without (:func:`by_bonding`)."""
        return by_bonding(self.science, self.ranking)

    @cached_property
    def minima(self) -> pd.DataFrame:
        """The minimum checks of the converged science rows, per potential (:func:`checked_summary`; empty when
        the minima stage did not run): read once for the verdict and the section."""
        return checked_summary(self)


#: 02_filter's flag for an entry measured under pressure (its check ``high_pressure``)
PRESSURE_FLAG = "high_pressure"


def leave_out_sentence(effect: dict[str, Any] | None, before: list[str], what: str, key: str) -> str:
    """What leaving a doubtful subset of the shared entries out does to the ranking (``effect``:
    :func:`helpers.analysis.ranking.leave_out_effect`; ``before``: the ranked potentials in rank order; ``what``:
    what those entries are, as the sentence's predicate; ``key``: where ``results.json`` keeps it under
    ``ranking``); "" when none is shared."""
    if not effect:
        return ""
    order = "the order is unchanged" if effect["order"] == before else order_change(before, effect["order"])
    return (f"{len(effect['ids'])} of the shared structures {what}; without them "
            f"({effect['n']} structures) the median |ΔV₀| of a ranked potential moves by at most "
            f"{_num(effect['max_shift'])} points and {order} (`results.json` → `ranking.{key}`).")


def order_change(before: list[str], after: list[str]) -> str:
    """How a ranking's order changed, by the potentials that moved: "ranks 1–4 unchanged; ANI-2x-d3 now rank 5
    (was 6), ANI-1ccx now rank 6 (was 5)"."""
    moved = [p for p in after if after.index(p) != before.index(p)]
    kept = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), len(after))
    head = f"ranks 1–{kept} unchanged; " if kept > 1 else ("rank 1 unchanged; " if kept == 1 else "")
    return head + ", ".join(f"{display_name(p)} now rank {after.index(p) + 1} (was {before.index(p) + 1})"
                            for p in moved)


def pressure_sentence(effect: dict[str, Any] | None, before: list[str]) -> str:
    """What the shared entries measured under pressure do to the ranking; "" when none is shared."""
    return leave_out_sentence(effect, before, f"were measured under pressure (02_filter's `{PRESSURE_FLAG}` flag) "
                              "and are compared with 0 GPa relaxations, as the study did (03_relax's "
                              "`pressure = \"experimental\"` relaxes each at its own)", "under_pressure")


def flagged_sentence(effect: dict[str, Any] | None, before: list[str]) -> str:
    """What the shared entries listed as candidate CIF problems do to the ranking; "" when none is shared."""
    return leave_out_sentence(effect, before, "are listed as candidate CIF problems (*CIF error or potential "
                              "error?*: the evidence is in part the potentials' own agreement)", "without_flagged")


def _num(value: Any, digits: int = 2) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isinf(x):
        return "∞ (failures)"
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.0f} %"


def assumption_text() -> str:
    """The temperature assumption of the primary comparison, in words."""
    return (f"experimental cells extrapolated to 0 K with α_V = ({THERMAL_EXPANSION_V * 1e4:.2f} ± "
            f"{ALPHA_V_SD * 1e4:.2f})·10⁻⁴ K⁻¹ (the spread over organic crystals: {ALPHA_V_SOURCE}), constant in "
            f"T and isotropic, zero-point expansion ignored; entries without a temperature taken at {T_ASSUMED:g} K "
            f"(drawn from {T_UNKNOWN_RANGE[0]:g}–{T_UNKNOWN_RANGE[1]:g} K in the bootstrap)")


# ---------------------------------------------------------------------------------------------
# Verdict


def verdict_text(ranking: dict[str, Any]) -> str:
    """The bottom line from the ranking: which potential to trust, how sure, under which assumption."""
    table, pairs = ranking["table"], ranking["pairs"]
    ranked = ranked_rows(table)
    if ranked.empty:
        return (f"No verdict: fewer than {MIN_RANKED} science structures were attempted by at least two potentials, "
                "so nothing is ranked.")
    fit = ranked[ranked["note"].fillna("") == ""]
    best = (fit if len(fit) else ranked).iloc[0]
    name = display_name(best["potential"])
    contenders = [display_name(p) for p, low in zip(ranked["potential"], ranked["rank_ci_low"])
                  if p != best["potential"] and not low > 1]
    beaten, tied = [], []
    for _, pair in pairs.iterrows() if len(pairs) else []:
        if best["potential"] not in (pair.potential_a, pair.potential_b):
            continue
        other = pair.potential_b if pair.potential_a == best["potential"] else pair.potential_a
        (beaten if pair.verdict.startswith(f"{name} closer") else tied).append(display_name(other))
    if len(ranked) == 1:
        lead = f"**Only {name} is ranked so far: there is nothing to compare it with yet.**"
    elif beaten and not tied and not contenders:
        lead = f"**Trust {name} for molecular-crystal geometry among the potentials ranked here.**"
    elif contenders or tied:
        lead = (f"**{name} comes first, but the data cannot single it out: "
                f"{', '.join(sorted(set(contenders) | set(tied)))} may be as close to experiment.**")
    else:
        lead = f"**{name} comes first.**"
    interval = f"[{_num(best['rank_ci_low'], 0)}, {_num(best['rank_ci_high'], 0)}]"
    sure = (f"Its rank's 95 % bootstrap interval is {interval}. "
            + (f"Holm-corrected paired sign tests put it closer to experiment than {', '.join(beaten)}"
               + (f" and cannot separate it from {', '.join(tied)}" if tied else "") if beaten
               else "No Holm-corrected paired sign test puts it closer to experiment than another ranked potential")
            + ".")
    flagged = ranked[ranked["note"].fillna("") != ""]
    runner_up = runner_up_text(best["potential"], ranked, pairs)
    return (f"{lead} On the "
            f"{int(best['n_shared'])} science structures every ranked potential attempted, it has the smallest median "
            f"|ΔV| against the 0 K-extrapolated experiment, {_num(best['metric'])} % (95 % CI "
            f"[{_num(best['metric_ci_low'])}, {_num(best['metric_ci_high'])}]), with {_pct(best['within_5pct'])} of "
            f"the structures within 5 %, bias {_num(best['bias'])} %, spread (MAD) {_num(best['spread'])} % and "
            f"{_pct(best['failure_rate'])} failed relaxations counted as failures. {sure} "
            + (f"{runner_up} " if runner_up else "") +
            f"Assumption: {assumption_text()}. Without the temperature correction the first is "
            f"{display_name(ranked.sort_values('metric_uncorrected').iloc[0]['potential'])} (table below)."
            + (f" Ranked but flagged: {', '.join(display_name(p) for p in flagged['potential'])} "
               "(see the notes)." if len(flagged) else ""))


def runner_up_text(best: str, ranked: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """The paired verdict of the first potential against the next one, crystal by crystal, with the size of
    the difference and its CI ('' when there is no next one)."""
    others = [p for p in ranked["potential"] if p != best]  # ranked: ranked_rows, in rank order
    fit = [p for p in others if p in set(ranked.loc[ranked["note"].fillna("") == "", "potential"])]
    if not (fit or others) or pairs is None or pairs.empty:
        return ""
    second = (fit or others)[0]
    match = pairs[((pairs.potential_a == best) & (pairs.potential_b == second))
                  | ((pairs.potential_a == second) & (pairs.potential_b == best))]
    if match.empty:
        return ""
    row = match.iloc[0]
    flip = row.potential_a != best  # orient d = |Δ₀,best| − |Δ₀,second|
    d, low, high = ((-row.median_d, -row.median_d_ci_high, -row.median_d_ci_low) if flip
                    else (row.median_d, row.median_d_ci_low, row.median_d_ci_high))
    closer, farther = (row.b_closer, row.a_closer) if flip else (row.a_closer, row.b_closer)
    a, b = display_name(best), display_name(second)
    tests = (f"Holm-adjusted sign test p = {row.holm_sign_p:.2g}; Wilcoxon signed-rank p = "
             f"{row.get('holm_signed_rank_p', float('nan')):.2g}")
    favour = f"median difference {_num(-d)} points of |ΔV₀| in {a}'s favour [exact 95 % CI {_num(-high)}, {_num(-low)}]"
    counts = f"{a} is closer to experiment on {closer} of the {int(row.n)} crystals, {b} on {farther}"
    if row.holm_sign_p < 0.05 and closer > farther:
        return f"Against the next, {b}: {counts}; {a} is better, {favour} ({tests})."
    if row.holm_sign_p < 0.05:
        return (f"Against the next, {b}: {counts}, so crystal by crystal {b} is closer more often although {a} "
                f"has the smaller median error; {favour} ({tests}).")
    return f"Against the next, {b}: {counts}, {favour}: on this evidence the two cannot be told apart ({tests})."


def verdict_section(inputs: ReportInputs) -> list[str]:
    """The bottom line, between the markers the README's headline is copied from (:mod:`readme_headline`)."""
    ranked = set(ranked_potentials(inputs.ranking))
    minima = verdict_sentence(inputs, top_pairs.top_potentials(inputs.ranking)) if ranked else ""
    return ["## Verdict", "", *marked([verdict_text(inputs.ranking) + bonding_text(inputs.by_bonding, inputs.ranking)
                                       + minima + unfinished_text(inputs.info.get("coverage"), ranked)]), ""]


def unfinished_text(coverage: dict[str, tuple[int, int]] | None, ranked: set[str] | frozenset[str] = frozenset()
                    ) -> str:
    """The potentials a verdict cannot speak for yet: those the campaign has not finished (``coverage``:
    potential -> (structures to relax, finished)) and the ranking could not rank. A potential ranked on the science
    sample while the rest of its clean set is still to come (the campaign relaxes the science sample first) is in
    the verdict: it is not named. One never ranked (unfit for crystals, :func:`~helpers.analysis.ranking.unfit_reason`)
    is named with that reason instead, finished or not: the campaign is not what keeps it out. Empty when every one
    finished and none is unfit, or nothing is known."""
    unfit = {p: unfit_reason(p) for p in coverage or {} if unfit_reason(p)}
    unfinished = {p: (target, done) for p, (target, done) in (coverage or {}).items()
                  if done < target and p not in ranked and p not in unfit}
    text = ""
    if unfinished:
        listed = ", ".join(f"{display_name(p)} ({done} of {target})" for p, (target, done) in unfinished.items())
        text = (f" Not yet part of this verdict, because the campaign has not finished them: {listed} "
                "(*What was run*); the verdict speaks only for the potentials ranked below.")
    return text + "".join(f" {display_name(p)} is listed, not ranked: {why}." for p, why in unfit.items())


# ---------------------------------------------------------------------------------------------
# The sample


def sample_section(inputs: ReportInputs) -> list[str]:
    """The clean set by source at the top; ``results.json`` ``sets`` lists the ids of each set."""
    errors = inputs.errors
    if errors.empty:
        return []
    update_results_json(inputs.docs, "sets", {"description": {k: v for k, v in sample_sets.SET_TEXT.items()},
                                              "ids": sample_sets.set_ids(errors)})
    table = sample_sets.breakdown(errors)
    lines = ["## The sample", "", _markdown(table), ""]
    if sample_sets.labelled(errors if "sample_set" in errors else sample_sets.add_sample_set(errors)):
        lines += ["Every science table below is computed on the unaltered COD entries only; the COD tool suite's "
                  "test inputs and ice are reported apart (section *Reported apart*); `results.json` → `sets` "
                  "lists the ids of each set.", ""]
    else:
        lines += ["No relaxed row is an unaltered COD entry of `cod-sample/` (or no row records its source CIF "
                  "path), so there is no science sample to separate: every table below uses every clean entry.", ""]
    return lines


def apart_section(inputs: ReportInputs) -> list[str]:
    """ΔV of the sets the science tables leave out, for what they are: the filter's test material and ice."""
    sets = inputs.tables.get("sets_summary", pd.DataFrame())
    if sets.empty or "sample_set" not in sets:
        return []
    others = sets[sets["sample_set"].isin([sample_sets.ALTERED, sample_sets.ICE])]
    if others.empty:
        return []
    rows = [{"set": r.sample_set, "potential": display_name(r.potential), "attempted": int(r.attempted),
             "failed": int(r.failed), "n converged": int(r.n) if not pd.isna(r.n) else 0,
             "median ΔV [%]": _num(r.median), "MAD [%]": _num(r.mad)} for r in others.itertuples()]
    return ["## Reported apart: the COD tool suite's test inputs and ice", "",
            "Not science: the test inputs are mostly modified variants or pre-deposition copies of COD entries "
            "(they exercise the filter), and ice is not a molecular organic crystal. Their ΔV, uncorrected:", "",
            _markdown(pd.DataFrame(rows)), ""]


# ---------------------------------------------------------------------------------------------
# The ranking


def _ranking_n(row: dict[str, Any]) -> int:
    """The structures behind a potential's ranking metric: the shared ones when ranked, else those it attempted."""
    return int(row["n_shared"]) if row["ranked"] else int(row.get("n_attempted", 0) or 0)


def _rank_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in table.itertuples():
        rows.append({
            "rank (95 % CI)": f"{int(r.rank)} [{_num(r.rank_ci_low, 0)}–{_num(r.rank_ci_high, 0)}]" if r.ranked
            else "not ranked",
            "potential": display_name(r.potential),
            "n": _ranking_n(r._asdict()),
            "median |ΔV₀| [%] (95 % CI)": f"{_num(r.metric)} [{_num(r.metric_ci_low)}, {_num(r.metric_ci_high)}]"
            if r.ranked else _num(r.metric),
            "bias: median ΔV₀ [%]": _num(r.bias),
            "mean ΔV₀ [%] (95 % CI)": f"{_num(r.mean)} [{_num(getattr(r, 'mean_ci_low', np.nan))}, "
                                      f"{_num(getattr(r, 'mean_ci_high', np.nan))}]" if r.ranked else _num(r.mean),
            "spread: MAD [%]": _num(r.spread),
            "within 5 %": _pct(r.within_5pct), "within 10 %": _pct(r.within_10pct),
            "failure rate": _pct(r.failure_rate),
            "uncorrected: median |ΔV| [%] (95 % CI)":
                f"{_num(r.metric_uncorrected)} [{_num(getattr(r, 'metric_uncorrected_ci_low', np.nan))}, "
                f"{_num(getattr(r, 'metric_uncorrected_ci_high', np.nan))}]" if r.ranked
                else _num(r.metric_uncorrected),
            "note": r.note or ""})
    return pd.DataFrame(rows)


def _figure(path: Path | None, caption: str) -> list[str]:
    """Markdown lines showing a figure the report drew into its figures folder (shrunk), or none."""
    if path is None:
        return []
    report_figures.shrink_png(path)
    return [f"![{caption}](figures/{path.name})", ""]


def histogram_section_lines(inputs: ReportInputs) -> list[str]:
    """The per-potential histograms with their Gaussians as small multiples (science sample, converged)."""
    return _figure(report_figures.histogram_grid(inputs.science, inputs.figures / "hist_grid_volume.png"),
                   "ΔV histogram and the study's Gaussian fit, one panel per potential")


def publish_ranking(inputs: ReportInputs) -> None:
    """``results.json`` sections ``potentials`` and ``paired`` from the ranking."""
    table, pairs = inputs.ranking["table"], inputs.ranking["pairs"]
    keys = ("ranked", "rank", "rank_ci_low", "rank_ci_high", "n_shared", "n_converged", "failure_rate",
            "within_5pct", "within_10pct", "bias", "spread", "mean", "mean_ci_low", "mean_ci_high", "metric",
            "metric_ci_low", "metric_ci_high",
            "metric_uncorrected", "note", "n_attempted", "n_targets", "n_not_reached")
    payload = {r["potential"]: {"n": _ranking_n(r)} | {k: r.get(k) for k in keys}
               | {"display_name": display_name(r["potential"])} for r in table.to_dict("records")}
    for value in payload.values():  # infinite metrics (more than half failed) as the string JSON can hold
        for k in ("metric", "metric_ci_low", "metric_ci_high", "metric_uncorrected"):
            if isinstance(value.get(k), float) and math.isinf(value[k]):
                value[k] = "inf"
    yardsticks = inputs.extra.get("coverage_sets")
    for potential, value in payload.items():
        value.update(_volume_statistics(inputs.tables.get("summary"), potential),
                     settings_hash=_settings_hashes(inputs.errors, potential),
                     **ranking_targets.science_coverage(inputs.science, potential, yardsticks),
                     targets_reached=_coverage(value))
    update_results_json(inputs.docs, "potentials", payload)
    update_results_json(inputs.docs, "coverage_rule", ranking_targets.COVERAGE_RULE)
    ranked = ranked_potentials(inputs.ranking)
    update_results_json(inputs.docs, "common", {
        "potentials": ranked, "structure_ids": list(inputs.ranking["shared"]),
        "rule": "the science structures every ranked potential attempted; a failed relaxation counts as its "
                "failure (|ΔV| = ∞), not as a drop",
        "per_structure": _per_structure(inputs)})
    update_results_json(inputs.docs, "ranking", {
        "metric": "median |ΔV| against the 0 K-extrapolated cell, failures scored as ∞, on the shared science "
                  "structures", "assumption": assumption_text(), "shared_ids": inputs.ranking["shared"],
        "n_unknown_temperature": inputs.ranking["n_unknown_t"],
        "partial": {p: {"not_reached": n, "targets": m} for p, (n, m) in inputs.ranking.get("partial", {}).items()},
        "under_pressure": inputs.under_pressure, "without_flagged": inputs.without_flagged})
    update_results_json(inputs.docs, "paired", pairs.to_dict("records") if len(pairs) else [])


def _per_structure(inputs: ReportInputs) -> dict[str, Any] | None:
    """Every listed potential's result on each common structure (:func:`ranking.per_structure`); None when
    nothing is shared."""
    table, ids = inputs.ranking["table"], list(inputs.ranking["shared"])
    listed = table["potential"].tolist() if "potential" in table else []
    return per_structure(inputs.science, listed, ids) if ids and listed else None


#: results.json per potential: its ΔV statistics (summary.csv, quantity volume, entries "all") under these names
VOLUME_STATISTICS = {"n": "n", "median": "median", "median_ci_low": "median_ci_low",
                     "median_ci_high": "median_ci_high", "mad": "mad", "mad_ci_low": "mad_ci_low",
                     "mad_ci_high": "mad_ci_high", "mu": "mu", "mu_ci_low": "mu_refit_ci_low",
                     "mu_ci_high": "mu_refit_ci_high", "sigma": "sigma", "sigma_ci_low": "sigma_refit_ci_low",
                     "sigma_ci_high": "sigma_refit_ci_high"}


def _volume_statistics(summary: pd.DataFrame | None, potential: str) -> dict[str, Any]:
    """ΔV [%] of the converged science structures: n, median, MAD, the study's μ and σ, each with its 95 % CI
    (μ and σ: the CI that refits window and bins), under ``volume``; empty when the summary lacks it."""
    if summary is None or summary.empty:
        return {}
    rows = all_entries(summary, "volume")
    rows = rows[rows["potential"] == potential]
    if rows.empty:
        return {}
    row = rows.iloc[0]
    return {"volume": {name: (None if pd.isna(row.get(column)) else float(row.get(column)))
                       for name, column in VOLUME_STATISTICS.items() if column in row}}


def _settings_hashes(errors: pd.DataFrame, potential: str) -> str | list[str] | None:
    """The settings hash of the potential's rows (a list when rows of several settings were analysed)."""
    if "settings_hash" not in errors:
        return None
    hashes = sorted(errors.loc[errors["potential"] == potential, "settings_hash"].dropna().astype(str).unique())
    return hashes[0] if len(hashes) == 1 else hashes or None


def _coverage(row: dict[str, Any]) -> float | None:
    """Targets reached / targets (the science structures its campaign set out to relax, within its own
    subset), or None when the targets are unknown: ``targets_reached``, beside the one-yardstick ``coverage``."""
    targets, not_reached = row.get("n_targets"), row.get("n_not_reached")
    if targets is None or not_reached is None or pd.isna(targets) or not targets:
        return None
    return (float(targets) - float(not_reached)) / float(targets)


def ranking_section(inputs: ReportInputs) -> list[str]:
    table, pairs = inputs.ranking["table"], inputs.ranking["pairs"]
    if table.empty:
        return ["## Ranking on shared structures", "", "_(no data)_", ""]
    publish_ranking(inputs)
    figure = _figure(report_figures.ranking_intervals(table, inputs.figures / "ranking_ci.png"),
                     "Ranking metric with 95 % CIs, n per potential")
    partial = partial_sentence(inputs.ranking)  # potentials still running: how far the shared set is cut
    ranked = ranked_potentials(inputs.ranking)
    pressure = pressure_sentence(inputs.under_pressure, ranked)
    flagged = flagged_sentence(inputs.without_flagged, ranked)
    lines = ["## Ranking on shared structures (primary: against the 0 K-extrapolated experiment)", "",
             f"{len(inputs.ranking['shared'])} science structures attempted by every ranked potential "
             f"({inputs.ranking['n_unknown_t']} of them without a measurement temperature, kept: "
             f"{T_ASSUMED:g} K assumed). Failed relaxations (step cap, explosion, error) count as failures: "
             "|ΔV| = ∞ in the ranking metric and outside 5 % and 10 %. Ranked by the median |ΔV₀| (the primary "
             "estimator: median and MAD in every column; the mean ΔV₀ of the converged ones beside them); CIs: "
             "paired bootstrap over structures with α_V redrawn per structure. Potentials with fewer than "
             f"{MIN_RANKED} structures are listed, not ranked. "
             "Beside it the uncorrected view (the study's, against the cell as measured).", "",
             _markdown(_rank_rows(table)), "", *([partial, ""] if partial else []),
             *([pressure, ""] if pressure else []), *([flagged, ""] if flagged else []), *figure]
    if len(pairs):
        rows = [{"A": display_name(r.potential_a), "B": display_name(r.potential_b), "n": int(r.n),
                 "A closer / B closer / ties": f"{int(r.a_closer)} / {int(r.b_closer)} / {int(r.ties)}",
                 "median |ΔV₀,A| − |ΔV₀,B| [points] (exact 95 % CI)":
                     f"{_num(r.median_d)} [{_num(r.median_d_ci_low)}, {_num(r.median_d_ci_high)}]",
                 "sign-test p": _num(r.sign_p, 3), "Holm p": _num(r.holm_sign_p, 3),
                 "signed-rank p (Holm)": _num(getattr(r, "holm_signed_rank_p", np.nan), 3), "verdict": r.verdict}
                for r in pairs.itertuples()]
        lines += [f"Every pair ({len(pairs)}), on the same shared structures: the exact sign test of the median "
                  "difference and its exact order-statistic CI (the same quantity), p-values Holm-adjusted over "
                  "all pairs; the verdict is the sign test's. Beside it the Wilcoxon signed-rank test of the same "
                  "differences (failures ranked largest), Holm-adjusted too, which also weighs how large they are.",
                  "", _markdown(pd.DataFrame(rows)), ""]
    return lines


def top_pairs_section(inputs: ReportInputs) -> list[str]:
    """The first three fit potentials pair by pair on ΔV₀ and each cell length (:mod:`top_pairs`); publishes
    ``results.json`` → ``paired_top_three``."""
    table = top_pairs.top_pairs(inputs.science, inputs.ranking) if len(inputs.science) else pd.DataFrame()
    update_results_json(inputs.docs, "paired_top_three", table.to_dict("records") if len(table) else [])
    if table.empty:
        return []
    rows = [{"quantity": r.label + "₀", "A": display_name(r.potential_a),
             "B": display_name(r.potential_b), "n": int(r.n),
             "A closer / B closer / ties": f"{int(r.a_closer)} / {int(r.b_closer)} / {int(r.ties)}",
             "median |Δ_A| − |Δ_B| [points] (exact 95 % CI)":
                 f"{_num(r.median_d)} [{_num(r.median_d_ci_low)}, {_num(r.median_d_ci_high)}]",
             "sign test p (Holm)": _num(r.holm_sign_p, 3), "signed-rank p (Holm)": _num(r.holm_signed_rank_p, 3),
             "rank-biserial r": _num(r.rank_biserial), "verdict": r.verdict} for r in table.itertuples()]
    names = ", ".join(display_name(p) for p in top_pairs.top_potentials(inputs.ranking))
    return ["## The first three, crystal by crystal", "",
            f"{names}: every pair on the ranking's shared structures, for the volume and each cell length, "
            "all against the cell extrapolated to 0 K (lengths with α_V/3). Per structure d = |Δ_A| − |Δ_B| "
            "(negative: A closer); a failed relaxation counts as |Δ| = ∞, a length whose cell setting could not be "
            "matched is left out of that length. The exact sign test with its exact CI of the median d, and the "
            "Wilcoxon signed-rank test with its rank-biserial r (+1: A closer on every structure, by rank), "
            "Holm-adjusted over the pairs of each quantity. A verdict names the closer potential when both tests "
            "agree. The ΔV₀ rows repeat the ranking's pairs; the ranking adjusts over every ranked pair, a larger "
            "family, so where the two differ the ranking's verdict is the more cautious.", "",
            _markdown(pd.DataFrame(rows)), ""]


# ---------------------------------------------------------------------------------------------
# Hydrogen-bond donors or not: does the ranking hold for both kinds of crystal?


#: where each bonding class is, in a sentence
BONDING_WHERE = {DONORS: f"the crystals with {DONORS}", NO_DONORS: f"those with {NO_DONORS}"}


def bonding_places(split: dict[str, dict[str, Any]], potential: str) -> str:
    """Where ``potential`` stands in each class: "first among the crystals with … (80) and second among …"."""
    return " and ".join(f"{_ordinal(result['order'].index(potential) + 1)} among {BONDING_WHERE[name]} "
                        f"({result['n']})" for name, result in split.items() if potential in result["order"])


def bonding_text(split: dict[str, dict[str, Any]], ranking: dict[str, Any]) -> str:
    """The headline's clause on the chemical split: where the first stands in each class; "" without it."""
    ranked = ranked_potentials(ranking)
    if not split or not ranked:
        return ""
    first = ranked[0]
    places = bonding_places(split, first)
    return f" By chemistry, {display_name(first)} is {places} (*Hydrogen-bonded or not*)." if places else ""


def bonding_section(inputs: ReportInputs) -> list[str]:
    """The ranked potentials on the crystals with N–H/O–H donors and on those without, side by side, and the
    overall first two compared within each; publishes ``results.json`` → ``by_bonding``."""
    split = inputs.by_bonding
    update_results_json(inputs.docs, "by_bonding", split)
    if not split:
        return []
    order = ranked_potentials(inputs.ranking)
    rows = []
    for r in inputs.ranking["table"].set_index("potential").loc[order].reset_index().itertuples():
        row = {"potential": display_name(r.potential), "overall rank": int(r.rank),
               "overall median |ΔV₀| [%]": _num(r.metric)}
        for name, result in split.items():
            own = result["potentials"][r.potential]
            row[f"{name} (n = {result['n']}): median |ΔV₀| [%] (exact 95 % CI)"] = \
                f"{_num(own['metric'])} [{_num(own['metric_ci_low'])}, {_num(own['metric_ci_high'])}]"
            row[f"{name}: bias [%]"] = _num(own["bias"])
            row[f"{name}: rank"] = result["order"].index(r.potential) + 1
        rows.append(row)
    first = order[0]
    lines = ["## Hydrogen-bonded or not: does the ranking hold for both?", "",
             "The shared structures split by their molecules (02_filter's SMILES): a crystal is in the donor class "
             "when a molecule has an N or O atom carrying a hydrogen (amines, amides, acids, alcohols, water of "
             "crystallisation), otherwise it is held by dispersion and weak contacts alone. Per class the ranking "
             "metric with failures as ∞, its exact order-statistic CI (α_V fixed, unknown temperatures at "
             f"{T_ASSUMED:g} K) and the bias (median ΔV₀ of the converged). Descriptive: the classes were not "
             "designed, and nothing here is adjusted for multiple comparisons.", "",
             _markdown(pd.DataFrame(rows)), "",
             f"{display_name(first)}, first overall, is {bonding_places(split, first)}. The overall first two on "
             "each class:", ""]
    for name, result in split.items():
        pair = result.get("first_two")
        if not pair:
            continue
        a, b = display_name(pair["potential_a"]), display_name(pair["potential_b"])
        lines.append(f"- On {BONDING_WHERE[name]} ({pair['n']}): {a} closer on {pair['a_closer']}, {b} on "
                     f"{pair['b_closer']}, median |ΔV₀,A| − |ΔV₀,B| {_num(pair['median_d'])} points "
                     f"[exact 95 % CI {_num(pair['median_d_ci_low'])}, {_num(pair['median_d_ci_high'])}], "
                     f"sign-test p = {_num(pair['sign_p'], 3)} (unadjusted).")
    return [*lines, "", "(`results.json` → `by_bonding`.)", ""]


def _ordinal(k: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(k, f"{k}th")  # a ranking here has fewer than 21 places


# ---------------------------------------------------------------------------------------------
# Temperature and size: does either explain the shift against the study?


def strata(errors: pd.DataFrame, potential: str, edges_t=(150, 250), edges_n=SIZE_EDGES) -> pd.DataFrame:
    """Median uncorrected ΔV (exact CI) of one potential's converged science rows per temperature band and
    per size stratum (atoms in the cell)."""
    rows = errors[(errors["potential"] == potential) & (errors["status"] == "converged")].copy()
    rows["dv"] = pd.to_numeric(rows["dV_pct"], errors="coerce")
    rows = rows.dropna(subset=["dv"])
    t = pd.to_numeric(rows["temperature"], errors="coerce")
    n = pd.to_numeric(rows["natoms"], errors="coerce")
    band_names = [f"T < {edges_t[0]} K", *[f"T {a}–{b} K" for a, b in zip(edges_t[:-1], edges_t[1:])],
                  f"T ≥ {edges_t[-1]} K"]
    bands = pd.cut(t, [-np.inf, *edges_t, np.inf], right=False, labels=band_names).astype(str)
    bands = bands.where(t.notna(), "T unknown")
    size_names = [f"< {edges_n[0]} atoms", *[f"{a}–{b} atoms" for a, b in zip(edges_n[:-1], edges_n[1:])],
                  f"≥ {edges_n[-1]} atoms"]
    sizes = pd.cut(n, [-np.inf, *edges_n, np.inf], right=False, labels=size_names).astype(str)
    out = [{"kind": "all", "stratum": "all", "values": rows["dv"]}]
    out += [{"kind": "temperature", "stratum": s, "values": rows["dv"][bands == s]}
            for s in [*band_names, "T unknown"] if (bands == s).any()]
    out += [{"kind": "size", "stratum": s, "values": rows["dv"][sizes == s]} for s in size_names if (sizes == s).any()]
    records = []
    for item in out:
        low, high, _ = median_ci_exact(item["values"])
        records.append({"potential": potential, "kind": item["kind"], "stratum": item["stratum"],
                        "n": len(item["values"]), "median": float(np.median(item["values"])) if len(item["values"])
                        else np.nan, "ci_low": low, "ci_high": high})
    return pd.DataFrame(records)


def shift_sentence(table: pd.DataFrame, study_mu: float, potential: str) -> str:
    """Whether temperature or size explains the shift of one potential's ΔV against the study's μ, from the rows
    themselves: a factor explains it only if a stratum of ≥ MIN_STRATUM structures reaches the study's value
    while the whole sample does not."""
    name = display_name(potential)
    whole = table[table["kind"] == "all"].iloc[0]
    if not np.isnan(whole["ci_low"]) and whole["ci_low"] <= study_mu <= whole["ci_high"]:
        return (f"{name}: the study's μ = {study_mu:.1f} % lies inside our median's 95 % CI "
                f"[{_num(whole['ci_low'])}, {_num(whole['ci_high'])}]: there is no shift to explain.")
    side = "below" if whole["median"] < study_mu else "above"
    reached = []
    for kind in ("temperature", "size"):
        big = table[(table["kind"] == kind) & (table["n"] >= MIN_STRATUM)]
        hits = big[(big["ci_low"] <= study_mu) & (study_mu <= big["ci_high"])]
        reached += [f"{r.stratum} (n = {r.n}, median {_num(r.median)} %)" for r in hits.itertuples()]
    strata_rows = table[(table["kind"] != "all") & (table["n"] >= MIN_STRATUM)]
    spread = (f"stratum medians {_num(strata_rows['median'].min())} to {_num(strata_rows['median'].max())} %"
              if len(strata_rows) else f"no stratum has {MIN_STRATUM} structures")
    if reached:
        return (f"{name}: median ΔV {_num(whole['median'])} % is {side} the study's μ = {study_mu:.1f} %, but in "
                f"{'; '.join(reached)} the study's value is inside the stratum's 95 % CI. A smaller stratum has a "
                "wider interval, so this alone does not show that the factor causes the shift; the rows neither "
                f"establish nor exclude it ({spread}).")
    return (f"{name}: median ΔV {_num(whole['median'])} % (95 % CI [{_num(whole['ci_low'])}, "
            f"{_num(whole['ci_high'])}], n = {int(whole['n'])}) stays {side} the study's μ = {study_mu:.1f} % in every "
            f"temperature band and size stratum of ≥ {MIN_STRATUM} structures ({spread}): neither measurement "
            "temperature nor crystal size accounts for the shift; it is unexplained by these rows.")


def temperature_section(inputs: ReportInputs) -> list[str]:
    science = inputs.science
    study = STUDY_RESULT.query("quantity == 'volume'").set_index("potential")["mu_study"]
    present = [p for p in STUDY_POTENTIALS if "potential" in science and p in set(science["potential"])]
    if not present:
        return []
    tables = {p: strata(science, p) for p in present}
    wide = pd.concat(tables.values())
    rows = [{"potential": display_name(r.potential), "stratum": r.stratum, "n": r.n,
             "median ΔV [%] (exact 95 % CI)": f"{_num(r.median)} [{_num(r.ci_low)}, {_num(r.ci_high)}]"}
            for r in wide.itertuples()]
    return ["## Temperature and size: do they explain the shift against the study?", "",
            "The study compared 0 K relaxations with cells as measured, as the uncorrected view does. Its μ is a "
            "Gaussian-fit mean; here the primary estimator, the median, is compared with it per measurement-"
            "temperature band and per size stratum (atoms in the cell), with exact order-statistic CIs.", "",
            _markdown(pd.DataFrame(rows)), "",
            *[f"- {shift_sentence(tables[p], float(study[p]), p)}" for p in present], ""]


# ---------------------------------------------------------------------------------------------
# Glossary


GLOSSARY = {
    "ΔV, ΔV₀": "(V_relaxed − V_exp)/V_exp in %; ΔV₀ compares with the experimental cell extrapolated to 0 K.",
    "bias, spread": "the median of ΔV and its median absolute deviation (MAD) over the converged structures.",
    "failure": "a relaxation that hit its step cap, exploded (cell or energy out of bounds) or raised an error; "
               "scored as |ΔV| = ∞.",
    "step cap (step_cap)": "the optimizer's step limit, 300 + x·n_atoms; a relaxation still moving then is "
                           "not converged.",
    "fast path": "the relaxation moves atoms and cell on float32 forces first, then finishes in float64 to the "
                 "study's fmax = 5·10⁻⁴ eV/Å; every reported number comes from the float64 finish. A crystal it "
                 "leaves at the step cap is relaxed again with the study's method, whose result is reported.",
    "space group lost": "the relaxed cell's space group (spglib, symprec 0.01 Å) is not the experiment's: the "
                        "potential did not hold the crystal's symmetry. There a ΔV can depend on the optimizer's "
                        "path (another minimum, or a saddle where the forces vanish; docs/reliability.md).",
    "settings hash": "a short fingerprint of every relaxation setting (optimizer, fmax, cap, potential options) "
                     "stored on each row, so rows made with different settings are never mixed.",
    "exact CI (order statistics)": "the median's interval [x_(k), x_(n−k+1)] with k from the binomial "
                                   "distribution: valid for any distribution at any n.",
    "Holm correction": "p-values of many comparisons adjusted so that the chance of any false 'closer' verdict "
                       "stays ≤ 5 %.",
    "sign test": "counts the structures where A is closer and where B is; tests whether the median difference "
                 "is zero.",
    "signed-rank test (Wilcoxon)": "ranks the sizes of the per-structure differences and tests whether those "
                                   "where A is closer outweigh those where B is; the rank-biserial r (−1 to +1) "
                                   "says how far, +1 when A is closer on every structure.",
    "coverage": f"the share of the unaltered clean crystals of ≤ {ranking_targets.COVERAGE_MAX_ATOMS} atoms whose "
                "elements a potential covers that it attempted (a failure counts as attempted).",
    "unfit for crystals": "a potential whose crystals are wrong for a reason of the model, not of the set-up "
                          "(AIMNet2: docs/aimnet2.md): listed with its numbers, never ranked, no vote on CIFs.",
    "science sample": "unaltered COD entries (`cod-sample/`); the COD tool suite's altered test inputs and ice "
                      "are reported apart.",
    "potential family": "potentials of one architecture and training lineage (ANI with its D3 variants, "
                        "SevenNet, CHGNet, GFN-FF, xTB): one witness, so each family casts one vote when the "
                        "potentials' agreement is taken as evidence about a CIF.",
    "under pressure": "an entry whose CIF records a measurement above 1 MPa (02_filter's high_pressure flag); "
                      "the study's relaxations are at 0 GPa, so its cell is compared in another state.",
    "N–H/O–H donors": "a crystal one of whose molecules (as 02_filter read them) has an N or O atom carrying a "
                      "hydrogen: it can hold conventional hydrogen bonds; the others are held by dispersion and "
                      "weak contacts. The report's chemical split of the ranking.",
    "polymorph": "a different crystal packing of the same compound: a different crystal, kept as its own entry "
                 "when duplicates are collapsed.",
    "Γ point, supercell": "tight-binding codes here have no k-points; each crystal is evaluated in a supercell "
                          "≥ 8 Å wide instead.",
}


def glossary_section(inputs: ReportInputs) -> list[str]:
    return [GLOSSARY_HEADING, "", *[f"- **{term}**: {text}" for term, text in GLOSSARY.items()], ""]
