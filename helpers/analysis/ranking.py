"""The ranking a referee accepts: same structures, failures scored, uncertainty on metric and rank.

- **Fit for crystals.** A potential known to be unfit for molecular crystals (:data:`UNFIT`: AIMNet2) is listed
  with its numbers and the reason, never ranked.
- **Same structures.** Potentials are compared on the structures *every ranked potential attempted*
  (not the ones each converged: that would throw out the hardest cases). A potential that attempted
  fewer than :data:`MIN_RANKED` structures is listed, not ranked; when the shared set is smaller than
  that, the potential with the fewest attempts is set aside, then the next. A potential still running
  (or stopped) has attempted only part of its targets and so limits the shared set: given the targets
  (the structures each potential is to relax), every row says how many it has not reached, and
  :func:`partial_sentence` says which potentials are partial and how large the shared set would be
  without them — the set is never shrunk in silence. When at least two ranked potentials are complete, the
  partial ones are listed, not ranked, until they finish: otherwise a campaign's newest potential (which
  relaxes the largest crystals first) would cut everyone's comparison to those.
- **Failures are failures.** A relaxation that did not converge (step cap, explosion, error) scores
  |ΔV| = ∞: it counts against ``within_5pct`` / ``within_10pct``, raises ``failure_rate``, and pushes
  the ranking metric — the median |ΔV| over the shared structures with failures as ∞ — up.
  ``bias`` (median ΔV) and ``spread`` (MAD) describe the converged ones; the one primary estimator
  pair is median/MAD in every row.
- **Temperature (the primary comparison).** A relaxation is at 0 K; the experiment at T. The primary
  ΔV compares with the cell extrapolated to 0 K, ΔV₀ = ((1 + ΔV/100)(1 + α_V T) − 1)·100, with
  α_V = :data:`helpers.vocabulary.THERMAL_EXPANSION_V` and its spread over organic crystals,
  σ(α_V) = :data:`ALPHA_V_SD` (A. D. Bond, *Acta Cryst.* B77, 357–364 (2021): 6201 CSD structures,
  normal fit 161 ± 51 p.p.m. K⁻¹). Entries without a temperature are kept (the same set before and after):
  they are assumed at room temperature, :data:`T_ASSUMED` K, and drawn from :data:`T_UNKNOWN_RANGE` in the
  bootstrap. The uncorrected ΔV is the second view, beside it.
- **Uncertainty.** A paired bootstrap over the shared structures (every potential resampled on the same
  structures), with α_V drawn per structure from the spread and the unknown temperatures redrawn, gives
  95 % CIs of each metric and of each rank.
- **Pairs.** Every pair of ranked potentials: d = |ΔV₀,A| − |ΔV₀,B| per shared structure (∞ when only A
  failed, tie when both did), the exact sign test of median d = 0 and the exact order-statistic CI of
  median d (the test's own interval: one quantity), p-values Holm-adjusted over all pairs; beside them the
  Wilcoxon signed-rank test of the same d (failures ranked largest), which also weighs the sizes.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from helpers.analysis.exact_stats import holm, median_ci_exact, sign_test, signed_rank
from helpers.analysis.quantities import display_name
from helpers.analysis.uncertainty import BOOT_SEED, CI_LEVEL, N_BOOT
from helpers.vocabulary import THERMAL_EXPANSION_V, UNFIT_FOR_CRYSTALS

MIN_RANKED = 10
ALPHA_V_SD = 0.51e-4  # 1/K, spread of organic-crystal volumetric expansivities (Bond 2021)
ALPHA_V_SOURCE = "A. D. Bond, Acta Cryst. B77, 357–364 (2021): 161 ± 51 p.p.m. K⁻¹ over 6201 CSD structures"
T_ASSUMED = 293.0  # K, an entry without a temperature: most likely measured at room temperature
T_UNKNOWN_RANGE = (90.0, 300.0)  # K, where the bootstrap draws an unknown temperature from
#: potentials not fit for molecular crystals: listed with their numbers, never ranked (issue 35)
UNFIT = UNFIT_FOR_CRYSTALS


def dv_zero_kelvin(dv_pct, temperature, alpha_v=THERMAL_EXPANSION_V):
    """ΔV against the experimental cell extrapolated to 0 K (percent), from ΔV against the cell at T."""
    return ((1 + np.asarray(dv_pct, dtype=float) / 100) * (1 + np.asarray(alpha_v) * np.asarray(temperature))
            - 1) * 100


def unfit_reason(potential: str) -> str:
    """Why ``potential`` (a name or run label ``name[hash7]``) is never ranked (:data:`UNFIT`); "" when it is fit."""
    base = str(potential).split("[")[0].lower()
    return next((why for key, why in UNFIT.items() if base.startswith(key)), "")


def shared_set(errors: pd.DataFrame, min_ranked: int = MIN_RANKED) -> tuple[list[str], list[str], dict[str, str]]:
    """(ranked potentials, shared structure ids, {potential: why not ranked}) from every attempt in ``errors``;
    a potential unfit for crystals (:data:`UNFIT`) is never ranked, and does not limit the shared set."""
    attempted = {p: set(g["structure_id"]) for p, g in errors.groupby("potential")}
    not_ranked = {p: unfit_reason(p) for p in attempted if unfit_reason(p)}
    not_ranked |= {p: f"{len(s)} structures attempted (< {min_ranked})" for p, s in attempted.items()
                   if len(s) < min_ranked and p not in not_ranked}
    ranked = {p: s for p, s in attempted.items() if p not in not_ranked}
    shared = set.intersection(*ranked.values()) if ranked else set()
    while len(shared) < min_ranked and len(ranked) > 2:
        fewest = min(ranked, key=lambda p: (len(ranked[p]), p))
        not_ranked[fewest] = (f"shares too few structures with the others ({len(ranked.pop(fewest))} attempted; "
                              f"< {min_ranked} in common)")
        shared = set.intersection(*ranked.values())
    if len(shared) < min_ranked:
        not_ranked.update({p: f"only {len(shared)} structures shared (< {min_ranked})" for p in ranked})
        ranked = {}
    return sorted(ranked), sorted(shared), not_ranked


def delta_matrices(errors: pd.DataFrame, potentials: list[str], ids: list[str], column: str = "dV_pct",
                   lattice: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Δ at T of ``column`` with NaN for failures, failed flags) as structures × potentials, and the
    temperatures (NaN unknown). A converged row without a volume has no result: a failure. For a cell length
    (``lattice``), one whose relaxed cell could not be matched to the experimental setting is NaN but not a
    failure: it is left out of that length's comparison (not the potential's fault)."""
    rows = errors[errors["potential"].isin(potentials) & errors["structure_id"].isin(ids)].copy()
    rows["dv"] = pd.to_numeric(rows[column], errors="coerce")
    rows["failed"] = rows["status"] != "converged"
    if not lattice:
        rows["failed"] |= rows["dv"].isna()
    elif "cell_setting" in rows:
        rows.loc[rows["cell_setting"] == "unmatched", "dv"] = np.nan
    dv = rows.pivot_table(index="structure_id", columns="potential", values="dv", aggfunc="first", dropna=False)
    failed = rows.pivot_table(index="structure_id", columns="potential", values="failed", aggfunc="first")
    dv, failed = dv.reindex(index=ids, columns=potentials), failed.reindex(index=ids, columns=potentials)
    temperature = pd.to_numeric(rows.groupby("structure_id")["temperature"].first(), errors="coerce").reindex(ids)
    failed_arr = failed.fillna(True).to_numpy(dtype=bool)
    values = np.where(failed_arr, np.nan, dv.to_numpy(dtype=float))
    return values, failed_arr, temperature.to_numpy(dtype=float)


def _scores(dv: np.ndarray) -> np.ndarray:
    """|ΔV| with failures (NaN) as ∞."""
    return np.where(np.isnan(dv), np.inf, np.abs(dv))


def _metric(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.median(scores, axis=axis)


def per_potential(dv: np.ndarray) -> dict[str, np.ndarray]:
    """Per column: failure_rate, within_5pct, within_10pct (failures count as outside), bias, spread and mean
    (of the converged ones), metric."""
    scores = _scores(dv)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column of failures only: NaN bias, as meant
        bias = np.nanmedian(dv, axis=0) if dv.size else np.array([])
        spread = np.nanmedian(np.abs(dv - bias), axis=0) if dv.size else np.array([])
        mean = np.nanmean(dv, axis=0) if dv.size else np.array([])
    return {"failure_rate": np.isnan(dv).mean(axis=0), "within_5pct": (scores < 5).mean(axis=0),
            "within_10pct": (scores < 10).mean(axis=0), "bias": bias, "spread": spread, "mean": mean,
            "metric": _metric(scores)}


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval; with infinite draws (a metric of mostly failures) the nearest draw, not an
    interpolation between ∞ and ∞ (NaN)."""
    tail = (1 - level) / 2 * 100
    method = "linear" if np.isfinite(samples).all() else "nearest"
    return (np.percentile(samples, tail, axis=0, method=method),
            np.percentile(samples, 100 - tail, axis=0, method=method))


def _base(potential: str) -> str:
    """The registered name of a run label (``name[hash7]`` when a potential ran with several settings)."""
    return str(potential).split("[")[0]


def reach(errors: pd.DataFrame, targets: Mapping[str, Iterable[str]] | None) -> dict[str, dict[str, int]]:
    """Per potential of ``errors``: ``n_attempted``, and with ``targets`` (potential -> the structure ids it is
    to relax, in the sample of ``errors``; run labels ``name[hash7]`` use their name's) ``n_targets`` and
    ``n_not_reached`` (targets it has no row for yet)."""
    out = {}
    for p, group in errors.groupby("potential"):
        attempted = set(group["structure_id"].astype(str))
        row = {"n_attempted": len(attempted)}
        wanted = (targets or {}).get(p, (targets or {}).get(_base(p)))
        if wanted is not None:
            wanted = {str(i) for i in wanted}
            row.update(n_targets=len(wanted), n_not_reached=len(wanted - attempted))
        out[p] = row
    return out


def partial_sentence(result: dict[str, Any]) -> str:
    """Which potentials have not reached all their targets, by how many, and what that does to the shared
    set ("" when every potential reached every target, or the targets are unknown)."""
    partial = result.get("partial") or {}
    if not partial:
        return ""
    named = ", ".join(f"{display_name(p)} has not reached {n} of its {m} target structures"
                      for p, (n, m) in sorted(partial.items()))
    ranked = [p for p in partial if p in set(ranked_potentials(result))]
    effect = (f"The shared set holds only what every ranked potential attempted: {len(result['shared'])} structures"
              + (f"; without the partial ones ({', '.join(display_name(p) for p in sorted(ranked))}) it would "
                 f"hold {result['n_shared_complete']}" if ranked and result.get("n_shared_complete") is not None
                 else "") + ".")
    return f"Partial (still running or stopped): {named}. {effect}"


def rank_potentials(errors: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = CI_LEVEL,
                    alpha_v: float = THERMAL_EXPANSION_V, alpha_v_sd: float = ALPHA_V_SD,
                    min_ranked: int = MIN_RANKED, targets: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """The ranking (see the module docstring) of the potentials in ``errors`` (every attempt, one sample set).

    ``targets`` (optional): potential -> the structure ids it is to relax (in this sample); every row then
    says ``n_targets`` and ``n_not_reached``. Returns ``table`` (one row per potential: ranked ones first by
    the 0 K metric, then the listed ones), ``pairs`` (every pair of ranked potentials), ``shared`` (the
    structure ids), ``n_unknown_t``, ``partial`` (potential -> (targets not reached, targets)) and
    ``n_shared_complete`` (the shared set of the ranked potentials that are not partial)."""
    potentials, ids, not_ranked = shared_set(errors, min_ranked)
    reached = reach(errors, targets)
    partial = {p: (r["n_not_reached"], r["n_targets"]) for p, r in reached.items() if r.get("n_not_reached")}
    complete = [p for p in potentials if p not in partial]
    attempted = {p: set(g["structure_id"]) for p, g in errors.groupby("potential")}
    shared_complete = set.intersection(*(attempted[p] for p in complete)) if complete else None
    n_shared_complete = len(shared_complete) if complete else None
    if len(complete) >= 2 and len(complete) < len(potentials) and n_shared_complete >= min_ranked:
        # a campaign still running: its partial potentials would cut every potential's comparison down to the
        # structures they reached first (the largest, in a campaign); they are listed, and ranked once finished
        for p in sorted(set(potentials) - set(complete)):
            n, m = partial[p]
            not_ranked[p] = (f"partial: {n} of its {m} target structures not reached yet (ranked when it finishes; "
                             f"ranked now, it would cut the shared set from {n_shared_complete} to {len(ids)})")
        potentials, ids = complete, sorted(shared_complete)
    rows: list[dict[str, Any]] = []
    pairs = pd.DataFrame()
    n_unknown = 0
    if potentials:
        dv_t, failed, temperature = delta_matrices(errors, potentials, ids)
        n_unknown = int(np.isnan(temperature).sum())
        t_point = np.where(np.isnan(temperature), T_ASSUMED, temperature)
        dv_0 = dv_zero_kelvin(dv_t, t_point[:, None], alpha_v)
        point0, point_t = per_potential(dv_0), per_potential(dv_t)
        rng = np.random.default_rng(seed)
        n = len(ids)
        boot0, boot_t, ranks, means = [], [], [], []
        for _ in range(max(n_boot, 0)):
            pick = rng.integers(0, n, n)
            alpha = np.clip(rng.normal(alpha_v, alpha_v_sd, n), 0, None)
            t_draw = np.where(np.isnan(temperature[pick]), rng.uniform(*T_UNKNOWN_RANGE, n), temperature[pick])
            drawn = dv_zero_kelvin(dv_t[pick], t_draw[:, None], alpha[:, None])
            metric0 = _metric(_scores(drawn))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a draw of failures only: NaN mean, as meant
                means.append(np.nanmean(drawn, axis=0))
            boot0.append(metric0)
            boot_t.append(_metric(_scores(dv_t[pick])))
            ranks.append(rankdata(metric0, method="min"))
        have_boot = n_boot >= 10
        if have_boot:
            low0, high0 = _interval(np.array(boot0), level)
            low_t, high_t = _interval(np.array(boot_t), level)
            rank_low, rank_high = _interval(np.array(ranks, dtype=float), level)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean_low, mean_high = (np.nanpercentile(np.array(means), q, axis=0)
                                       for q in ((1 - level) / 2 * 100, (1 + level) / 2 * 100))
        point_rank = rankdata(point0["metric"], method="min")
        for j, p in enumerate(potentials):
            rows.append({
                "potential": p, "ranked": True, "rank": int(point_rank[j]),
                "rank_ci_low": float(rank_low[j]) if have_boot else np.nan,
                "rank_ci_high": float(rank_high[j]) if have_boot else np.nan,
                "n_shared": n, "n_converged": int((~failed[:, j]).sum()),
                **{f"{k}": float(v[j]) for k, v in point0.items()},
                "mean_ci_low": float(mean_low[j]) if have_boot else np.nan,
                "mean_ci_high": float(mean_high[j]) if have_boot else np.nan,
                "metric_ci_low": float(low0[j]) if have_boot else np.nan,
                "metric_ci_high": float(high0[j]) if have_boot else np.nan,
                "metric_uncorrected": float(point_t["metric"][j]), "bias_uncorrected": float(point_t["bias"][j]),
                "within_5pct_uncorrected": float(point_t["within_5pct"][j]),
                "metric_uncorrected_ci_low": float(low_t[j]) if have_boot else np.nan,
                "metric_uncorrected_ci_high": float(high_t[j]) if have_boot else np.nan,
                "note": unfit_reason(p), **reached[p]})
        pairs = paired_verdicts(dv_0, potentials, level)
    for p, why in sorted(not_ranked.items()):
        own = errors[errors["potential"] == p]
        own_ids = sorted(set(own["structure_id"]))
        dv_t, _, temperature = delta_matrices(errors, [p], own_ids)
        dv_0 = dv_zero_kelvin(dv_t, np.where(np.isnan(temperature), T_ASSUMED, temperature)[:, None], alpha_v)
        stats0 = per_potential(dv_0)
        rows.append({"potential": p, "ranked": False, "rank": np.nan, "n_shared": 0, **reached[p],
                     "n_attempted": len(own_ids), "n_converged": int((~np.isnan(dv_t[:, 0])).sum()),
                     **{k: float(v[0]) for k, v in stats0.items()},
                     "metric_uncorrected": float(per_potential(dv_t)["metric"][0]),
                     "note": f"not ranked: {why}"
                             + (f"; {unfit_reason(p)}" if unfit_reason(p) not in ("", why) else "")})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["ranked", "rank", "potential"], ascending=[False, True, True],
                                  na_position="last").reset_index(drop=True)
    return {"table": table, "pairs": pairs, "shared": ids, "n_unknown_t": n_unknown, "partial": partial,
            "n_shared_complete": n_shared_complete}


def ranked_rows(table: pd.DataFrame | None) -> pd.DataFrame:
    """The ranked rows of a ranking's ``table`` (:func:`rank_potentials`) in rank order, ties by name: the one
    filter every section, figure and verdict reads the order from; empty when nothing is ranked."""
    if table is None or table.empty:
        columns = ["potential", "ranked", "rank", "note"]
        keep = table is not None and set(columns) <= set(table.columns)
        return table.iloc[:0] if keep else pd.DataFrame(columns=columns)
    return table[table["ranked"].astype(bool)].sort_values(["rank", "potential"], kind="stable")


def ranked_potentials(ranking: Mapping[str, Any]) -> list[str]:
    """The ranked potentials of ``ranking`` (:func:`rank_potentials`) in rank order; [] when none is."""
    return ranked_rows(ranking.get("table"))["potential"].tolist()


def per_structure(errors: pd.DataFrame, potentials: list[str], ids: list[str],
                  alpha_v: float = THERMAL_EXPANSION_V) -> dict[str, Any]:
    """Each potential's result on each of ``ids``, aligned with ``ids``: what a user needs to compare a new
    potential with these, crystal by crystal (a paired test), as the ranking does. ``temperature_K`` (None:
    unknown, taken as :data:`T_ASSUMED`), ``status`` (None: not attempted), ``dV_pct`` against the cell at its
    temperature and ``dV0_pct`` against the 0 K-extrapolated cell (None: failed or not attempted, which the
    ranking scores as |ΔV| = ∞)."""
    dv_t, _, temperature = delta_matrices(errors, potentials, ids)
    dv_0 = dv_zero_kelvin(dv_t, np.where(np.isnan(temperature), T_ASSUMED, temperature)[:, None], alpha_v)
    rows = errors[errors["potential"].isin(potentials) & errors["structure_id"].isin(ids)]
    status = (rows.groupby(["structure_id", "potential"])["status"].first().unstack()
              .reindex(index=ids, columns=potentials).astype(object))
    status = status.where(status.notna(), None)
    return {"structure_ids": list(ids), "alpha_v_per_K": alpha_v, "t_assumed_K": T_ASSUMED,
            "temperature_K": temperature,
            "status": {p: status[p].tolist() for p in potentials},
            "dV_pct": {p: dv_t[:, j] for j, p in enumerate(potentials)},
            "dV0_pct": {p: dv_0[:, j] for j, p in enumerate(potentials)}}


def subset_ranking(errors: pd.DataFrame, ranking: Mapping[str, Any], keep: Iterable[str],
                   alpha_v: float = THERMAL_EXPANSION_V, level: float = CI_LEVEL) -> dict[str, Any] | None:
    """The ranked potentials of ``ranking`` on the shared structures in ``keep`` (a class of crystals, or the
    shared set less a doubtful subset): does the order hold there? α_V fixed, unknown temperatures at
    :data:`T_ASSUMED`, failures ∞ as in the ranking. None when fewer than :data:`MIN_RANKED` shared structures
    are in ``keep`` or nothing is ranked.

    Returns ``ids`` (the structures), ``n``, per potential ``metric`` (median |ΔV₀|) with its exact
    order-statistic CI (``metric_ci_low``/``metric_ci_high``), ``bias`` (median ΔV₀ of the converged ones),
    ``failures``; ``order`` (by the metric, ties by the overall rank) and ``first_two``: the overall first
    against the overall second on these structures (:func:`pair_statistics`, not adjusted: descriptive)."""
    potentials = ranked_potentials(ranking)
    wanted = {str(i) for i in keep}
    ids = [i for i in ranking.get("shared", []) if str(i) in wanted]
    if not potentials or len(ids) < MIN_RANKED:
        return None
    dv_t, _, temperature = delta_matrices(errors, potentials, ids)
    dv_0 = dv_zero_kelvin(dv_t, np.where(np.isnan(temperature), T_ASSUMED, temperature)[:, None], alpha_v)
    stats_ = per_potential(dv_0)
    scores = _scores(dv_0)
    rows = {}
    for j, p in enumerate(potentials):
        low, high, _ = median_ci_exact(scores[:, j], level)
        rows[p] = {"metric": float(stats_["metric"][j]), "metric_ci_low": low, "metric_ci_high": high,
                   "bias": float(stats_["bias"][j]), "failures": int(np.isnan(dv_0[:, j]).sum())}
    first_two = None
    if len(potentials) >= 2:
        first_two = {"potential_a": potentials[0], "potential_b": potentials[1],
                     **pair_statistics(scores[:, 0], scores[:, 1], level)}
    return {"ids": ids, "n": len(ids), "potentials": rows, "first_two": first_two,
            "order": sorted(potentials, key=lambda p: (rows[p]["metric"], potentials.index(p)))}


def leave_out_effect(errors: pd.DataFrame, ranking: Mapping[str, Any], leave_out: Iterable[str],
                     alpha_v: float = THERMAL_EXPANSION_V) -> dict[str, Any] | None:
    """The ranked potentials' metric (median |ΔV₀|, failures ∞) on the shared structures without ``leave_out``
    (e.g. the entries measured under pressure, compared with 0 GPa relaxations): how much a doubtful subset
    moves the ranking. None when none of them is shared or fewer than :data:`MIN_RANKED` would remain.

    Returns ``ids`` (those left out), ``n`` (what remains), ``metric`` (potential -> without them),
    ``max_shift`` (the largest |change| of a metric, points) and ``order`` (the ranked potentials by the new
    metric, ties by the old rank)."""
    shared = [str(i) for i in ranking.get("shared", [])]
    dropped = sorted(set(shared) & {str(i) for i in leave_out})
    if not dropped:
        return None
    rest = subset_ranking(errors, ranking, set(shared) - set(dropped), alpha_v)
    if rest is None:
        return None
    table = ranking["table"]
    before = dict(zip(table["potential"], table["metric"]))
    metric = {p: row["metric"] for p, row in rest["potentials"].items()}
    finite = [d for d in (abs(m - float(before[p])) for p, m in metric.items()) if np.isfinite(d)]
    return {"ids": dropped, "n": rest["n"], "metric": metric, "max_shift": max(finite) if finite else float("nan"),
            "order": rest["order"]}


def pair_statistics(score_a: np.ndarray, score_b: np.ndarray, level: float = CI_LEVEL) -> dict[str, Any]:
    """One pair on the same structures, from |Δ| per structure (∞: a failure; NaN: not comparable, left out):
    d = |Δ_A| − |Δ_B| (both failed: a tie), the counts each way, the median of d with its exact CI, the exact
    sign test, and the Wilcoxon signed-rank test with its rank-biserial r."""
    keep = ~np.isnan(score_a) & ~np.isnan(score_b)
    sa, sb = score_a[keep], score_b[keep]
    with np.errstate(invalid="ignore"):
        d = np.where(np.isinf(sa) & np.isinf(sb), 0.0, sa - sb)
    p, negative, nonzero = sign_test(d)
    low, high, coverage = median_ci_exact(d, level)
    rank_p, rank_r = signed_rank(d)
    return {"n": len(d), "a_closer": negative, "b_closer": nonzero - negative, "ties": len(d) - nonzero,
            "median_d": float(np.median(d)) if d.size else np.nan, "median_d_ci_low": low,
            "median_d_ci_high": high, "ci_coverage": coverage, "sign_p": p, "signed_rank_p": rank_p,
            "rank_biserial": rank_r}


def paired_verdicts(dv: np.ndarray, potentials: list[str], level: float = CI_LEVEL,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Every pair on the shared structures: median of d = |Δ_A| − |Δ_B| (failures ∞, both failed: tie),
    its exact CI, the exact sign test and its Holm-adjusted p-value, and the verdict (the sign test's); beside
    it the Wilcoxon signed-rank p (and Holm-adjusted) with its rank-biserial correlation, which weigh the
    sizes of the differences too."""
    scores = _scores(dv)
    rows = [{"potential_a": a, "potential_b": b, **pair_statistics(scores[:, i], scores[:, j], level)}
            for (i, a), (j, b) in itertools.combinations(enumerate(potentials), 2)]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["holm_sign_p"] = holm(table["sign_p"].to_numpy())
    table["holm_signed_rank_p"] = holm(table["signed_rank_p"].to_numpy())

    def verdict(row) -> str:
        a, b = display_name(row.potential_a), display_name(row.potential_b)
        if not row.holm_sign_p < alpha:
            return f"cannot tell (Holm-adjusted p = {row.holm_sign_p:.2g})"
        closer = a if row.a_closer > row.b_closer else b
        return f"{closer} closer (Holm-adjusted p = {row.holm_sign_p:.2g})"

    table["verdict"] = table.apply(verdict, axis=1)
    return table
