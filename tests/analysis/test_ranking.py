"""Issue 34: the science sample, exact small-n intervals, a ranking with failures scored, Holm-corrected pairs —
every number recomputed by hand from the fixed errors table of tests/data/results_errors.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers.analysis import sample_sets
from helpers.analysis.exact_stats import holm, median_ci_exact, sign_test

ERRORS = Path(__file__).parents[1] / "data" / "results_errors.csv"


def test_sample_sets_from_the_cif_path_and_the_compound(sourced_errors):
    assert sample_sets.sample_set("/work/shared/data/cod-sample/2000000.cif") == "science"
    assert sample_sets.sample_set("/work/shared/data/cod/1000001.cif") == "altered"
    assert sample_sets.sample_set("/work/shared/data/cod/1011063.cif", None, "H2 O") == "ice"
    assert sample_sets.sample_set("/x/cod-sample/1.cif", sample_sets.WATER_INCHIKEY) == "ice"
    assert sample_sets.sample_set("/x/cod/2228759.cif", "A.B." + sample_sets.WATER_INCHIKEY, "C22 H40 N10 O8") \
        == "altered"  # a hydrate is not ice
    assert sample_sets.sample_set(None) == "unknown source"
    errors = sourced_errors
    ids = sample_sets.set_ids(errors)
    assert (len(ids["science"]), len(ids["altered"]), len(ids["ice"])) == (34, 5, 1)
    assert set(sample_sets.science(errors).structure_id) == set(ids["science"])
    plain = pd.read_csv(ERRORS)  # no source recorded: no split, every row stays
    assert len(sample_sets.science(plain)) == len(plain)


def test_exact_median_interval_by_hand():
    x = np.array([5.0, -1.0, 3.0, 2.0, 8.0, 0.5])
    low, high, coverage = median_ci_exact(x)
    assert (low, high) == (-1.0, 8.0) and coverage == pytest.approx(1 - 2 / 64)  # n = 6: [x(1), x(6)]
    y = np.arange(10.0)[::-1]
    low, high, coverage = median_ci_exact(y)  # P(B ≤ 1) = 11/1024 ≤ 0.025 < P(B ≤ 2) = 56/1024: k = 2
    assert (low, high) == (1.0, 8.0) and coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert np.isnan(median_ci_exact(x[:5])[0])  # n = 5: no 95 % interval exists
    # the exact interval covers at least its level on skewed data, where a bootstrap of n = 8 falls short
    rng = np.random.default_rng(1)
    truth = np.log(2)  # median of Exp(1)
    hits = [(lambda lo, hi: lo <= truth <= hi)(*median_ci_exact(rng.exponential(size=8))[:2]) for _ in range(2000)]
    assert np.mean(hits) >= 0.95


def test_sign_test_and_holm_by_hand():
    d = np.array([-1.0, -2.0, -0.5, 3.0, -np.inf, 0.0, -4.0, -1.5, -0.1, -0.2, -3.0, np.inf])
    p, negative, nonzero = sign_test(d)
    assert (negative, nonzero) == (9, 11) and p == pytest.approx(stats.binomtest(9, 11).pvalue)
    assert list(holm([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.02, np.nan])[1]) and holm([0.02, np.nan])[0] == pytest.approx(0.02)


def test_small_n_median_ci_in_summary_is_exact():
    from helpers.analysis.stage import summarize

    errors = pd.read_csv(ERRORS)
    small = errors[errors.potential == "ani1x"].head(8)
    row = summarize(small, quantities=("volume",), n_boot=200).iloc[0]
    dv = np.sort(small.dV_pct.to_numpy())
    assert (row.median_ci_low, row.median_ci_high) == (dv[0], dv[-1])  # n = 8: k = 1 (P(B ≤ 1) = 9/256 > .025)
    assert row.median_ci_method.startswith("exact order statistics") and row.median_ci_coverage > 0.99


def test_refitting_bootstrap_is_wider_than_fixed_bins():
    from helpers.analysis.uncertainty import describe

    values = pd.read_csv(ERRORS).query("potential == 'ani1x'").dV_pct.to_numpy()
    record = describe(values, n_boot=300, n_refit=60)
    assert record["n_refit"] == 60
    assert record["mu_refit_ci_low"] < record["mu"] < record["mu_refit_ci_high"]
    assert record["sigma_refit_ci_high"] - record["sigma_refit_ci_low"] > 0


def test_ranking_scores_failures_and_recomputes_by_hand(sourced_errors):
    from helpers.analysis.ranking import T_ASSUMED, dv_zero_kelvin, rank_potentials

    errors = sample_sets.science(sourced_errors).copy()
    errors.loc[errors.index[:3], "temperature"] = np.nan  # three entries without a temperature: kept
    small = errors[(errors.potential == "ani1x")].head(4).assign(potential="gfn2-xtb")
    aimnet = errors[errors.potential == "ani1x"].assign(potential="aimnet2")
    result = rank_potentials(pd.concat([errors, small, aimnet]), n_boot=200)
    table = result["table"].set_index("potential")
    ranked = table[table.ranked]
    assert list(ranked.index) == list(ranked.sort_values("metric").index)
    assert not table.loc["gfn2-xtb", "ranked"]
    assert "not ranked: 4 structures attempted (< 10)" in table.loc["gfn2-xtb", "note"]
    assert not table.loc["aimnet2", "ranked"] and table.loc["aimnet2", "note"].startswith("not ranked: unfit for "
                                                                                         "crystals")
    assert table.loc["aimnet2", "metric"] == pytest.approx(table.loc["ani1x", "metric"])  # listed with its numbers
    assert len(result["shared"]) == 34 and result["n_unknown_t"] == 1  # 3 rows = 1 structure × 3 potentials
    for potential in ("ani1ccx", "ani2x"):
        rows = errors[errors.potential == potential].set_index("structure_id").loc[result["shared"]]
        t = rows.temperature.fillna(T_ASSUMED).to_numpy()
        dv0 = np.where(rows.status == "converged", dv_zero_kelvin(rows.dV_pct, t), np.nan)
        score = np.where(np.isnan(dv0), np.inf, np.abs(dv0))
        row = table.loc[potential]
        assert row.failure_rate == pytest.approx((rows.status != "converged").mean())
        assert row.within_5pct == pytest.approx((score < 5).mean())
        assert row.within_10pct == pytest.approx((score < 10).mean())
        assert row.metric == pytest.approx(np.median(score)) and row.bias == pytest.approx(np.nanmedian(dv0))
        assert row["mean"] == pytest.approx(np.nanmean(dv0)) and row.mean_ci_low <= row["mean"] <= row.mean_ci_high
        assert row.metric_ci_low <= row.metric <= row.metric_ci_high
        assert row.rank_ci_low <= row["rank"] <= row.rank_ci_high
        assert row.metric_uncorrected == pytest.approx(np.median(np.where(rows.status == "converged",
                                                                          rows.dV_pct.abs(), np.inf)))
    # one pair by hand: the exact sign test, its exact CI of the median difference, Holm over the three pairs
    pairs = result["pairs"]
    assert len(pairs) == 3  # 3 ranked potentials (aimnet2, unfit for crystals, is listed, not ranked)
    a = errors[errors.potential == "ani1ccx"].set_index("structure_id").loc[result["shared"]]
    b = errors[errors.potential == "ani2x"].set_index("structure_id").loc[result["shared"]]
    def score_of(r):
        return np.where(r.status == "converged", np.abs(dv_zero_kelvin(r.dV_pct, r.temperature.fillna(T_ASSUMED))),
                        np.inf)

    d = score_of(a) - score_of(b)
    d = np.where(np.isnan(d), 0, d)
    row = pairs[(pairs.potential_a == "ani1ccx") & (pairs.potential_b == "ani2x")].iloc[0]
    p = stats.binomtest(int((d < 0).sum()), int((d != 0).sum())).pvalue
    assert row.sign_p == pytest.approx(p) and row.median_d == pytest.approx(np.median(d))
    assert (row.median_d_ci_low, row.median_d_ci_high) == median_ci_exact(d)[:2]
    # Holm by hand: the k-th smallest times (m − k), running maximum, capped at 1; m counts the pairs tested
    ordered = sorted(pairs.sign_p.dropna())
    assert len(ordered) == 3
    by_hand = np.minimum(1, np.maximum.accumulate([(len(ordered) - k) * q for k, q in enumerate(ordered)]))
    assert row.holm_sign_p == pytest.approx(by_hand[ordered.index(row.sign_p)])
    assert row.verdict.startswith("cannot tell") == (not row.holm_sign_p < 0.05)


@pytest.mark.slow
def test_a_partial_potential_is_named_and_its_failures_still_count(small_clean_db, tmp_path, model_dir):
    """Real rows: ANI-1x relaxed all four small crystals; ANI-1ccx, still running, reached three of its four
    and stopped each at a 3-step cap. The shared set is what both attempted (3), the partial potential is
    named with the target it has not reached, and its step-capped attempts count as failures (∞)."""
    from helpers.analysis.ranking import T_ASSUMED, dv_zero_kelvin, partial_sentence, rank_potentials
    from helpers.analysis.ranking_targets import science_targets
    from helpers.analysis.stage import collect_errors
    from helpers.relax.engine import RelaxSettings
    from helpers.relax.stage import run_batch

    out = str(tmp_path / "relaxed_{potential}.db")
    run_batch(small_clean_db, out.format(potential="ani1x"), "ani1x", progress=False, n_threads=1,
              settings=RelaxSettings(potential="ani1x", fmax=0.05, max_steps_base=150, steps_per_atom=0))
    run_batch(small_clean_db, out.format(potential="ani1ccx"), "ani1ccx", progress=False, n_threads=1, limit=3,
              settings=RelaxSettings(potential="ani1ccx", fmax=0.05, max_steps_base=3, steps_per_atom=0))
    errors = collect_errors([out.format(potential=p) for p in ("ani1x", "ani1ccx")], small_clean_db)
    plan = type("Plan", (), {"dbs": {"clean_db": small_clean_db}, "max_atoms": {}, "potentials": ["ani1x", "ani1ccx"]})
    targets = science_targets(plan)
    assert {p: len(ids) for p, ids in targets.items()} == {"ani1x": 4, "ani1ccx": 4}  # no source: every clean one

    result = rank_potentials(errors, n_boot=50, min_ranked=2, targets=targets)
    table = result["table"].set_index("potential")
    attempted = set(errors[errors.potential == "ani1ccx"].structure_id)
    assert len(attempted) == 3 and sorted(result["shared"]) == sorted(attempted)  # what both attempted
    assert result["partial"] == {"ani1ccx": (1, 4)} and result["n_shared_complete"] == 4
    assert (table.loc["ani1ccx", "n_not_reached"], table.loc["ani1x", "n_not_reached"]) == (1, 0)
    assert table.loc["ani1ccx", "n_targets"] == 4 and table.loc["ani1ccx", "n_attempted"] == 3
    assert table.loc["ani1ccx", "failure_rate"] == 1.0 and np.isinf(table.loc["ani1ccx", "metric"])
    rows = errors[errors.potential == "ani1x"].set_index("structure_id").loc[result["shared"]]
    dv0 = np.where(rows.status == "converged", dv_zero_kelvin(rows.dV_pct, rows.temperature.astype(float)
                                                              .fillna(T_ASSUMED)), np.nan)
    assert table.loc["ani1x", "metric"] == pytest.approx(np.median(np.where(np.isnan(dv0), np.inf, np.abs(dv0))))
    sentence = partial_sentence(result)
    assert "ANI-1ccx has not reached 1 of its 4 target structures" in sentence
    assert "3 structures" in sentence and "it would hold 4" in sentence
    # the same rows without targets: the same numbers, nothing called partial
    plain = rank_potentials(errors, n_boot=50, min_ranked=2)
    assert plain["partial"] == {} and partial_sentence(plain) == ""
    pd.testing.assert_series_equal(plain["table"]["metric"], result["table"]["metric"])


def test_a_partial_potential_waits_when_two_complete_ones_can_be_ranked():
    """A fixed errors table: ANI-1x and ANI-1ccx reached all 40 targets, ANI-2x only 12 (a campaign still
    running). ANI-2x is listed, not ranked, and the ranking is the two complete potentials' on all 40 — the same
    numbers as a ranking without ANI-2x at all; given no targets, all three are ranked on the 12 (as before)."""
    from helpers.analysis.ranking import partial_sentence, rank_potentials

    errors = pd.read_csv(ERRORS)
    ids = sorted(set(errors.structure_id))
    running = errors[(errors.potential != "ani2x") | errors.structure_id.isin(ids[:12])]
    targets = {p: set(ids) for p in ("ani1x", "ani1ccx", "ani2x")}
    result = rank_potentials(running, n_boot=50, min_ranked=10, targets=targets)
    table = result["table"].set_index("potential")
    assert not table.loc["ani2x", "ranked"] and table.loc[["ani1x", "ani1ccx"], "ranked"].all()
    assert "partial: 28 of its 40 target structures not reached yet" in table.loc["ani2x", "note"]
    assert "from 40 to 12" in table.loc["ani2x", "note"]
    assert len(result["shared"]) == 40 and result["partial"] == {"ani2x": (28, 40)}
    alone = rank_potentials(errors[errors.potential != "ani2x"], n_boot=50, min_ranked=10).get("table")
    alone = alone.set_index("potential")
    for p in ("ani1x", "ani1ccx"):
        assert table.loc[p, "metric"] == alone.loc[p, "metric"] and table.loc[p, "n_shared"] == 40
    assert "40 structures" in partial_sentence(result)
    everyone = rank_potentials(running, n_boot=50, min_ranked=10)  # no targets known: nothing is partial
    assert everyone["table"]["ranked"].all() and len(everyone["shared"]) == 12


def test_signed_rank_with_failures_by_hand():
    from helpers.analysis.exact_stats import signed_rank

    d = np.array([-1.0, -2.0, -0.5, 3.0, -np.inf, 0.0, -4.0, -1.5, -0.1, -0.2, -3.0, np.inf, np.nan])
    p, r = signed_rank(d)
    finite = np.array([-1.0, -2.0, -0.5, 3.0, -9.0, -4.0, -1.5, -0.1, -0.2, -3.0, 9.0])  # ±∞ ranked largest
    assert p == pytest.approx(stats.wilcoxon(finite).pvalue)
    ranks = stats.rankdata(np.abs(finite))  # the two failures tie at the top: 10.5 each
    assert r == pytest.approx((ranks[finite < 0].sum() - ranks[finite > 0].sum()) / ranks.sum())
    assert signed_rank(-np.arange(1.0, 11.0))[1] == 1.0  # every difference negative: A closer on every one
    assert np.isnan(signed_rank([1.0, -2.0, 0.0, 0.0, 3.0])[0])  # three non-zero differences: no test


def test_the_first_three_pair_by_pair_on_volume_and_lengths(sourced_errors):
    """The top-three table: its ΔV₀ rows are the ranking's pairs (oriented by rank), its Δ|a1|₀ rows recomputed by
    hand with α_V/3; a failed relaxation is ∞, an unmatched cell setting leaves that length out."""
    from helpers.analysis.exact_stats import signed_rank
    from helpers.analysis.ranking import T_ASSUMED, rank_potentials
    from helpers.analysis.top_pairs import _verdict, top_pairs, top_potentials
    from helpers.vocabulary import THERMAL_EXPANSION_V

    errors = sample_sets.science(sourced_errors).copy()
    unmatched = (errors.potential == "ani2x") & (errors.structure_id == errors.structure_id.iloc[0])
    errors.loc[unmatched, "cell_setting"] = "unmatched"
    errors = pd.concat([errors, errors[errors.potential == "ani1x"].assign(potential="aimnet2")])  # unfit: not top
    ranking = rank_potentials(errors, n_boot=50)
    top = top_potentials(ranking)
    assert "aimnet2" not in top and len(top) == 3
    assert top == ranking["table"].query("note == ''").sort_values("rank").potential.head(3).tolist()
    table = top_pairs(errors, ranking)
    assert set(table.quantity) == {"volume", "a1"}  # the fixed table has no a2/a3 columns: those are skipped
    pairs = ranking["pairs"].set_index(["potential_a", "potential_b"])
    for row in table[table.quantity == "volume"].itertuples():
        assert (row.potential_a, row.potential_b) in {(top[0], top[1]), (top[0], top[2]), (top[1], top[2])}
        key = tuple(sorted((row.potential_a, row.potential_b)))
        same = pairs.loc[key]
        sign = 1 if key == (row.potential_a, row.potential_b) else -1
        assert row.median_d == pytest.approx(sign * same.median_d) and row.sign_p == pytest.approx(same.sign_p)
        assert row.signed_rank_p == pytest.approx(same.signed_rank_p)
    shared = ranking["shared"]

    def length_score(potential):
        r = errors[errors.potential == potential].set_index("structure_id").loc[shared]
        t = r.temperature.fillna(T_ASSUMED)
        score = np.abs(((1 + r.da1_pct / 100) * (1 + THERMAL_EXPANSION_V / 3 * t) - 1) * 100)
        score = np.where(r.status == "converged", score, np.inf)
        return np.where((r.status == "converged") & (r.cell_setting == "unmatched"), np.nan, score)

    for row in table[table.quantity == "a1"].itertuples():
        sa, sb = length_score(row.potential_a), length_score(row.potential_b)
        keep = ~np.isnan(sa) & ~np.isnan(sb)
        d = np.where(np.isinf(sa[keep]) & np.isinf(sb[keep]), 0.0, sa[keep] - sb[keep])
        assert row.n == keep.sum() == len(shared) - ("ani2x" in (row.potential_a, row.potential_b))
        assert row.median_d == pytest.approx(np.median(d))
        assert (row.median_d_ci_low, row.median_d_ci_high) == pytest.approx(median_ci_exact(d)[:2])
        assert (row.signed_rank_p, row.rank_biserial) == pytest.approx(signed_rank(d))
    for _, group in table.groupby("quantity"):  # Holm over the three pairs of each quantity
        assert group.holm_sign_p.tolist() == pytest.approx(list(holm(group.sign_p.to_numpy())))
    # the verdict: both tests agree -> the closer one; one alone -> said which; neither -> cannot tell
    from types import SimpleNamespace as Row

    base = dict(potential_a="ani1x", potential_b="ani2x", a_closer=30, b_closer=10)
    assert _verdict(Row(**base, holm_sign_p=0.01, holm_signed_rank_p=0.02, rank_biserial=0.5)) == "ANI-1x closer"
    assert _verdict(Row(**base, holm_sign_p=0.01, holm_signed_rank_p=0.2, rank_biserial=0.1)).endswith(
        "the signed-rank test does not agree")
    assert _verdict(Row(**base, holm_sign_p=0.2, holm_signed_rank_p=0.01, rank_biserial=-0.4)).startswith(
        "ANI-2x closer by the sizes")
    assert _verdict(Row(**base, holm_sign_p=0.2, holm_signed_rank_p=np.nan, rank_biserial=np.nan)) == "cannot tell"


def test_the_headline_names_the_runner_up_with_the_size_of_the_difference(sourced_errors):
    from helpers.analysis.ranking import rank_potentials
    from helpers.analysis.report_sections import runner_up_text, verdict_text

    ranking = rank_potentials(sample_sets.science(sourced_errors), n_boot=50)
    ranked = ranking["table"][ranking["table"].ranked]
    best, second = ranked.potential.iloc[0], ranked.potential.iloc[1]
    text = runner_up_text(best, ranked, ranking["pairs"])
    row = ranking["pairs"].set_index(["potential_a", "potential_b"]).loc[tuple(sorted((best, second)))]
    favour = -row.median_d if row.name[0] == best else row.median_d  # d oriented as |best| − |second|, negated
    assert text.startswith("Against the next, ") and f"{favour:.2f} points of |ΔV₀| in" in text
    closer = row.a_closer if row.name[0] == best else row.b_closer
    assert f"closer to experiment on {closer} of the {int(row.n)} crystals" in text
    assert ("cannot be told apart" in text) == (not row.holm_sign_p < 0.05)
    assert text in verdict_text(ranking)


def test_a_bootstrap_interval_of_mostly_failures_is_infinite_not_nan():
    from helpers.analysis.ranking import _interval

    draws = np.array([[1.0, 2.0], [np.inf, 3.0], [np.inf, 4.0], [np.inf, 5.0]] * 25)
    low, high = _interval(draws, 0.95)
    assert low[0] == 1.0 and np.isinf(high[0])  # not NaN (∞ − ∞ in an interpolation)
    finite_low, finite_high = _interval(draws[:, 1:], 0.95)  # finite draws: the usual interpolated percentiles
    assert (finite_low[0], finite_high[0]) == (np.percentile(draws[:, 1], 2.5), np.percentile(draws[:, 1], 97.5))


def test_leaving_out_the_entries_under_pressure_by_hand(sourced_errors):
    """The ranked potentials' median |ΔV₀| without the shared entries 02_filter flagged high_pressure (compared
    with 0 GPa relaxations), recomputed by hand; the report's sentence says how far it moved."""
    from helpers.analysis.ranking import T_ASSUMED, dv_zero_kelvin, leave_out_effect, rank_potentials
    from helpers.analysis.report_sections import pressure_sentence

    errors = sample_sets.science(sourced_errors).copy()
    result = rank_potentials(errors, n_boot=0)
    squeezed = sorted(result["shared"])[:3]
    effect = leave_out_effect(errors, result, {*squeezed, "cod-not-shared"})
    assert effect["ids"] == squeezed and effect["n"] == len(result["shared"]) - 3
    before = result["table"].set_index("potential")
    for potential in ("ani1x", "ani1ccx", "ani2x"):
        rows = errors[errors.potential == potential].set_index("structure_id")
        rows = rows.loc[[i for i in result["shared"] if i not in squeezed]]
        dv0 = dv_zero_kelvin(rows.dV_pct, rows.temperature.fillna(T_ASSUMED))
        score = np.where(rows.status == "converged", np.abs(dv0), np.inf)
        assert effect["metric"][potential] == pytest.approx(np.median(score))
    shifts = [abs(effect["metric"][p] - before.loc[p, "metric"]) for p in effect["metric"]]
    assert effect["max_shift"] == pytest.approx(max(shifts))
    assert effect["order"] == sorted(effect["metric"], key=effect["metric"].get)
    order = before[before.ranked].sort_values("rank").index.tolist()
    text = pressure_sentence(effect, order)
    assert text.startswith("3 of the shared structures were measured under pressure") and f"({effect['n']} " in text
    assert ("the order is unchanged" in text) == (effect["order"] == order)
    assert leave_out_effect(errors, result, {"cod-not-shared"}) is None and pressure_sentence(None, order) == ""


def test_an_order_change_names_who_moved():
    from helpers.analysis.report_sections import order_change

    assert order_change(["ani1x", "ani2x", "ani1ccx"], ["ani1x", "ani1ccx", "ani2x"]) == \
        "rank 1 unchanged; ANI-1ccx now rank 2 (was 3), ANI-2x now rank 3 (was 2)"
    assert order_change(["ani1x", "ani2x"], ["ani2x", "ani1x"]) == \
        "ANI-2x now rank 1 (was 2), ANI-1x now rank 2 (was 1)"
