"""Figures of the analysis stage are written, non-empty, and carry the fitted numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.analysis import plots
from helpers.analysis import stage as analysis


@pytest.fixture(scope="module")
def synthetic_errors() -> pd.DataFrame:
    """Two potentials on the same 300 structures, skewed like the study's histograms."""
    rng = np.random.default_rng(7)
    n = 300
    temperature = rng.choice([100.0, 173.0, 293.0, np.nan], size=n)
    rows = []
    for potential, shift in (("ani1x", 3.0), ("ani1ccx", 1.6)):
        dv = np.concatenate([rng.normal(shift, 6.0, n - 15), rng.uniform(25, 60, 15)])
        da1 = rng.normal(shift / 2, 4.0, n)
        for k in range(n):
            rows.append({"structure_id": f"cod-{k:07d}", "potential": potential, "dV_pct": dv[k],
                         "da1_pct": da1[k], "V_exp": 1000.0, "V_relaxed": 1000.0 * (1 + dv[k] / 100),
                         "a1_exp": 10.0, "a1_relaxed": 10.0 * (1 + da1[k] / 100),
                         "temperature": temperature[k],
                         "converged": k % 20 != 0, "status": "converged" if k % 20 else "step_cap",
                         "cell_setting": "same"})
    return pd.DataFrame(rows)


def image_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_histogram_with_fit_is_written(tmp_path):
    values = np.random.default_rng(0).normal(3.0, 8.4, 500)
    path = plots.histogram_with_fit(values, tmp_path / "hist_ani1x_volume.png", "volume", "ani1x")
    assert path.stat().st_size > 10_000
    width, height = image_size(path)
    assert width > 400 and height > 300


def test_histogram_copes_with_few_or_equal_values(tmp_path):
    assert plots.histogram_with_fit([1.0, 1.0, 1.0], tmp_path / "h1.png").stat().st_size > 0
    assert plots.histogram_with_fit([2.0], tmp_path / "h2.png", "alpha").stat().st_size > 0


def test_grid_temperature_paired_and_status_figures(tmp_path, synthetic_errors):
    from helpers.analysis import report_figures

    data = synthetic_errors[analysis.converged_mask(synthetic_errors)]
    paths = [report_figures.histogram_grid(data, tmp_path / "hist_grid_volume.png"),
             plots.dv_vs_temperature(data, tmp_path / "dv_vs_temperature.png", alpha_v=1.65e-4),
             plots.paired_scatter(analysis.paired_table(synthetic_errors), "ani1ccx", "ani1x",
                                  tmp_path / "paired.png"),
             plots.status_bars(analysis.status_counts(synthetic_errors), tmp_path / "status.png")]
    for path in paths:
        assert path.stat().st_size > 10_000, path


def test_study_numbers_from_synthetic_errors(synthetic_errors):
    summary = analysis.summarize(synthetic_errors, quantities=("volume", "a1"))
    summary = summary.set_index(["potential", "quantity"])
    assert summary.loc[("ani1x", "volume"), "mu"] == pytest.approx(3.0, abs=1.5)
    assert summary.loc[("ani1x", "volume"), "mu_mle"] > summary.loc[("ani1x", "volume"), "mu"]
    assert summary.loc[("ani1ccx", "volume"), "n"] == 285


def test_histogram_has_a_qq_panel_and_ci_figure(tmp_path, synthetic_errors):
    from scipy import stats

    from helpers.analysis.uncertainty import normal_quantiles

    z = normal_quantiles(7)
    np.testing.assert_allclose(z, stats.norm.ppf((np.arange(1, 8) - 0.375) / 7.25), atol=1e-12)
    values = synthetic_errors.query("potential == 'ani1x'").dV_pct.to_numpy()
    path = plots.histogram_with_fit(values, tmp_path / "h.png", "volume", "ani1x")
    width, height = image_size(path)
    assert width > 1.8 * height  # histogram and Q–Q plot side by side
    angles = np.concatenate([np.zeros(40), np.random.default_rng(0).normal(0, 0.3, 10)])
    assert plots.histogram_with_fit(angles, tmp_path / "a.png", "alpha", "ani1x").stat().st_size > 10_000
    summary = analysis.summarize(synthetic_errors, quantities=("volume",), n_boot=200)
    from helpers.analysis.report_figures import median_intervals

    assert median_intervals(summary, tmp_path / "ci.png", "volume").stat().st_size > 5000
