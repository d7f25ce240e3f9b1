"""The summary statistics on synthetic data of known shape: sane fits at any n, honest CIs, labelled fallbacks.

Stated guarantees checked here (helpers/analysis/distributions.py, helpers/analysis/uncertainty.py):
- every reported μ lies inside the data (min..max);
- every reported σ lies within a factor ``SIGMA_FACTOR`` = 3 of the robust spread 1.4826·MAD;
- a fallback to the MLE says so and why in ``fit_method``;
- spikes and symmetry-fixed quantities are not fitted; constant values give σ = 0;
- seeded 95 % bootstrap CIs cover the true value at about the nominal rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import stage as analysis
from helpers.analysis.distributions import MAD_TO_SIGMA, MIN_BINS, fit_gaussian, histogram_edges
from helpers.analysis.uncertainty import bootstrap, describe, paired_stats

SIGMA_FACTOR = 3.0


def shapes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"normal n={n}": rng.normal(1.5, 8.0, n) for n in (10, 23, 100, 3000)}
    out["lognormal n=300"] = 10 * (rng.lognormal(0.0, 0.6, 300) - 1)
    out["lognormal n=3000"] = 10 * (rng.lognormal(0.0, 0.6, 3000) - 1)
    for n in (23, 100, 3000):
        base = rng.normal(1.5, 5.0, n)
        k = max(1, round(0.05 * n))
        base[:k] = rng.normal(50.0, 2.0, k)  # 5 % outliers at +50 %
        out[f"mixture n={n}"] = base
    return out


def check_sane(name: str, values: np.ndarray, record: dict) -> None:
    robust = MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))
    assert values.min() <= record["mu"] <= values.max(), (name, record["mu"], record["fit_method"])
    assert robust / SIGMA_FACTOR <= record["sigma"] <= SIGMA_FACTOR * robust, (name, record["sigma"], robust,
                                                                               record["fit_method"])
    for stat in ("mu", "sigma", "median", "mad"):
        low, high = record[f"{stat}_ci_low"], record[f"{stat}_ci_high"]
        assert low <= record[stat] <= high or np.isclose(record[stat], low) or np.isclose(record[stat], high), \
            (name, stat, low, record[stat], high)


@pytest.mark.parametrize("seed", range(40))
def test_fit_is_sane_for_every_shape_and_size(seed):
    """Old code: 23 normal values in 5 bins let the free fit run to σ = 225 % (seed 21) — as in issue 16."""
    for name, values in shapes(seed).items():
        fit = fit_gaussian(values)
        record = {**fit.as_dict(), **bootstrap(values, fit, n_boot=200, seed=seed)}
        check_sane(name, values, record)


def test_the_issue_23_value_case_is_not_a_flat_curve():
    values = np.random.default_rng(21).normal(-0.6, 7.7, 23)
    fit = fit_gaussian(values)
    assert fit.method.startswith("norm.fit") and "n = 23 < 50" in fit.method
    assert fit.mu == pytest.approx(values.mean()) and fit.sigma == pytest.approx(values.std())


def test_large_normal_samples_are_histogram_fits_that_recover_the_truth():
    for n, tol_mu, tol_sigma in ((3000, 0.6, 0.05), (40_000, 0.15, 0.02)):
        values = np.random.default_rng(n).normal(1.5, 8.0, n)
        record = describe(values, n_boot=300)
        assert record["fit_method"] == "curve_fit histogram", record["fit_method"]
        assert record["mu"] == pytest.approx(1.5, abs=tol_mu)
        assert record["sigma"] == pytest.approx(8.0, rel=tol_sigma)
        assert record["mu_ci_low"] < 1.5 < record["mu_ci_high"]
        assert record["fit_chi2_ndf"] < 3 and MIN_BINS <= record["fit_bins"] <= n // 10


def test_outliers_leave_the_window_and_skew_is_flagged():
    values = shapes(3)["mixture n=3000"]
    fit = fit_gaussian(values)
    assert fit.mu == pytest.approx(1.5, abs=0.6) and fit.sigma == pytest.approx(5.0, rel=0.1)
    assert fit.n_outside == 150 and fit.mu_mle > 3.5
    skewed = describe(shapes(3)["lognormal n=3000"], n_boot=100)
    assert "poor fit" in skewed["fit_method"] and skewed["fit_chi2_ndf"] > 3


def test_small_samples_fall_back_to_the_mle_and_say_why():
    for n in (10, 23, 49):
        values = np.random.default_rng(n).normal(0, 1, n)
        fit = fit_gaussian(values)
        assert fit.method == f"norm.fit of all values (n = {n} < 50: too few for a histogram fit)"
        assert fit.mu == pytest.approx(values.mean())


def test_a_flat_histogram_cannot_make_the_fit_run_away():
    values = np.random.default_rng(0).uniform(-12.7, 12.6, 400)
    fit = fit_gaussian(values)
    sd = values.std()
    assert fit.sigma <= 1.25 * sd + 1e-9 and values.min() < fit.mu < values.max()
    if not fit.histogram:
        assert "bound" in fit.method or "bins" in fit.method


def test_spike_plus_noise_and_angles_are_not_fitted():
    rng = np.random.default_rng(4)
    values = np.concatenate([np.zeros(170), rng.normal(0.0, 0.8, 30)])
    record = describe(values, unit="°", symmetric=True, n_boot=200)
    assert np.isnan(record["mu"]) and np.isnan(record["sigma"]) and np.isnan(record["mu_ci_low"])
    assert record["fit_method"].startswith("not fitted (mostly fixed by symmetry)")
    assert record["n_changed"] == int(np.sum(np.abs(values) > 0.01)) and record["fraction_changed"] < 0.2
    changed = values[np.abs(values) > 0.01]
    assert record["median_changed"] == pytest.approx(np.median(changed))
    assert record["median"] == 0.0 and record["mad"] == 0.0
    spike = describe(values + 3.0, unit="%", n_boot=200)  # a spike away from zero, not an angle
    assert spike["fit_method"].startswith("not fitted (spike)") and np.isnan(spike["mu"])


def test_constant_values():
    record = describe(np.full(40, 2.5), n_boot=100)
    assert record["mu"] == 2.5 and record["sigma"] == 0 and record["fit_method"] == "constant (all values equal)"
    assert record["mu_ci_low"] == record["mu_ci_high"] == 2.5 and record["median_ci_low"] == 2.5


def test_one_value_has_no_spread():
    """A potential that finished one crystal (GFN2-xTB in a partial campaign): its value, σ undefined —
    not 0, which would read as a perfectly reproducible potential."""
    record = describe(np.array([-12.28]), unit="%", n_boot=100)
    assert record["n"] == 1 and record["mu"] == record["median"] == -12.28
    assert np.isnan(record["sigma"]) and np.isnan(record["mad"]) and record["fit_method"] == "one value: no spread"


def test_one_value_still_gets_its_histogram(tmp_path):
    from helpers.analysis.plots import histogram_with_fit

    assert histogram_with_fit(np.array([-12.28]), tmp_path / "one.png", "volume", "gfn2-xtb").stat().st_size > 0


def test_bins_from_10_to_40000_values():
    rng = np.random.default_rng(0)
    previous = 0
    for n in (10, 23, 50, 100, 1000, 3000, 40_000):
        edges = histogram_edges(rng.normal(0, 1, n))
        bins = len(edges) - 1
        assert MIN_BINS <= bins <= max(MIN_BINS, n // 10) and bins >= previous
        assert np.allclose(np.diff(edges), np.diff(edges)[0])
        previous = bins
    assert previous > 60  # Freedman–Diaconis, not the cap, sets the width at large n


def test_bootstrap_is_seeded():
    values = np.random.default_rng(1).normal(0, 1, 300)
    fit = fit_gaussian(values)
    assert bootstrap(values, fit, 200, seed=5) == bootstrap(values, fit, 200, seed=5)
    assert bootstrap(values, fit, 200, seed=5) != bootstrap(values, fit, 200, seed=6)


@pytest.mark.parametrize(("n", "repeats", "floor"), [(23, 200, {"mu": 0.85, "sigma": 0.78, "median": 0.85,
                                                                "mad": 0.85}),
                                                     (300, 60, {"mu": 0.85, "sigma": 0.85, "median": 0.85,
                                                                "mad": 0.85})])
def test_confidence_intervals_cover_the_truth_at_about_the_nominal_rate(n, repeats, floor):
    """95 % percentile-bootstrap intervals over seeded repeats (n = 23: MLE; n = 300: histogram fit)."""
    truth = {"mu": 2.0, "sigma": 5.0, "median": 2.0, "mad": 5.0 / MAD_TO_SIGMA}
    rng = np.random.default_rng(100 + n)
    hits = dict.fromkeys(truth, 0)
    for k in range(repeats):
        record = describe(rng.normal(2.0, 5.0, n), n_boot=300, seed=k)
        for stat, value in truth.items():
            hits[stat] += record[f"{stat}_ci_low"] <= value <= record[f"{stat}_ci_high"]
    for stat in truth:
        assert floor[stat] <= hits[stat] / repeats <= 1.0, (stat, hits[stat] / repeats)
    assert sum(hits.values()) / (4 * repeats) < 0.995  # not trivially wide


def test_paired_verdict_names_the_closer_potential_or_says_it_cannot_tell():
    rng = np.random.default_rng(2)
    truth = rng.normal(0, 1, 200)
    a = truth * 2.0 + rng.normal(0, 0.5, 200)
    b = truth * 6.0 + rng.normal(3.0, 2.0, 200)  # B errs more
    out = paired_stats(a, b, "ANI-1x", "ANI-1ccx", n_boot=500)
    assert out["verdict"].startswith("ANI-1x closer") and out["median_absdiff_ci_high"] < 0
    assert out["wilcoxon_abs_p"] < 1e-6
    swapped = paired_stats(b, a, "ANI-1ccx", "ANI-1x", n_boot=500)
    assert swapped["verdict"].startswith("ANI-1x closer")
    same = paired_stats(a, a[rng.permutation(200)], n_boot=500)
    assert same["verdict"].startswith("cannot tell")
    assert paired_stats(a[:6], b[:6])["verdict"].startswith("cannot tell: 6 common structures")
    assert "is not significant (p = " in same["verdict"]
    # A much closer on 49 structures, slightly worse on 51: the signed-rank test is clear, the median is not
    d = np.concatenate([rng.normal(0.05, 0.01, 51), rng.normal(-0.9, 0.05, 49)])
    split = paired_stats(1.0 + d, np.ones(100), "ANI-1x", "ANI-1ccx", n_boot=500)
    assert split["wilcoxon_abs_p"] < 0.05 and split["median_absdiff_ci_low"] < 0 < split["median_absdiff_ci_high"]
    assert split["verdict"].startswith("cannot tell: the Wilcoxon test leans to ANI-1x (p = ")
    mean_diff = np.mean(a - b)
    assert out["mean_diff_ci_low"] < mean_diff < out["mean_diff_ci_high"]


def test_summary_of_synthetic_errors_has_the_new_columns_and_keeps_the_old():
    rng = np.random.default_rng(8)
    n = 120
    frame = pd.DataFrame({"structure_id": [f"s{k}" for k in range(n)] * 2,
                          "potential": ["ani1x"] * n + ["ani1ccx"] * n, "converged": True, "status": "converged",
                          "dV_pct": np.concatenate([rng.normal(3, 8, n), rng.normal(1.6, 10, n)]),
                          "dalpha_deg": np.where(rng.random(2 * n) < 0.8, 0.0, rng.normal(0, 0.5, 2 * n)),
                          "cell_setting": "same"})
    summary = analysis.summarize(frame, quantities=("volume", "alpha"), n_boot=200)
    assert list(summary.columns[:14]) == ["potential", "quantity", "unit", "n", "mu", "sigma", "median", "mad",
                                          "sigma_mad", "mu_mle", "sigma_mle", "fit_method", "n_outside_fit",
                                          "mu_ci_low"]
    assert set(summary.entries) == {"all"}
    alpha = summary[summary.quantity == "alpha"]
    assert alpha.mu.isna().all() and (alpha.fraction_changed < 0.35).all()
    table = analysis.study_table(summary, quantities=("volume",))
    assert {"μ", "σ", "n", "median", "MAD", "μ CI low", "μ CI high", "σ CI low", "fit method"} <= set(table.columns)
    assert list(table.columns[:5]) == ["μ", "σ", "n", "median", "MAD"]


def test_angles_all_unchanged_are_still_not_a_gaussian():
    record = describe(np.zeros(30), unit="°", symmetric=True, n_boot=100)
    assert np.isnan(record["mu"]) and record["fraction_changed"] == 0 and record["n_changed"] == 0
    assert record["fit_method"].startswith("not fitted (mostly fixed by symmetry): 0 of 30 changed")
