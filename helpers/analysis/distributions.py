"""Location and spread of an error distribution: the study's Gaussian fit, bounded, plus robust numbers.

The study fitted a Gaussian to each error histogram. We do the same with a least-squares fit
of ``A * N(x; mu, sigma)`` to the histogram (``scipy.optimize.curve_fit``), because:

- these histograms are skewed with long tails (bad CIFs, cells that blew up). A maximum-
  likelihood normal fit (``scipy.stats.norm.fit``, i.e. the sample mean and standard
  deviation) is pulled by every tail point; the histogram fit follows the peak, which is
  what the study's numbers describe;
- the MLE values are still reported (``mu_mle``, ``sigma_mle``), with the median and the
  median absolute deviation, so the effect of the choice is visible in every table.

A free histogram fit can run away (23 values in 5 bins gave μ at the data's minimum and σ six
times the sample standard deviation), so the fit here is **bounded** and **checked**:

- Window: the histogram spans ``median ± clip_mads · 1.4826 · MAD`` (8 robust standard
  deviations; points outside are counted in ``n`` and ``n_outside``, so a handful of +1000 %
  explosions cannot stretch the axis until the peak is one bin).
- Bins (:func:`histogram_edges`): equal width, Freedman–Diaconis width ``2 IQR n^(-1/3)``, at
  least ``MIN_BINS`` = 5 and at most ``min(max_bins, n // 10)`` bins (≥ 10 values per bin on
  average), so n = 50 gets 5 bins and n = 40,000 about 100–200.
- Bounds: μ inside the window's data (min..max), σ between ``SIGMA_LOW`` × and ``SIGMA_HIGH`` ×
  the data's spread ``s = max(sd, 1.4826·MAD)`` of the windowed values (so never far above it),
  amplitude (area of the Gaussian relative to the histogram) between 0.5 and 1.5.
- Fallback to the normal MLE of the windowed values (mean and standard deviation, ddof = 0),
  with the reason in ``method``, when: fewer than ``min_points`` (50) values; fewer than 4 bins
  with ≥ 5 expected counts (χ² needs them); ``curve_fit`` fails; or the fit ends on one of its
  bounds (it wanted to run away).
- Quality: Pearson χ² per degree of freedom over the bins with ≥ 5 expected counts and the
  largest standardised residual ``(observed − expected)/√expected`` are reported
  (``chi2_ndf``, ``max_residual``); above ``CHI2_POOR`` the method says "poor fit" but the
  bounded fit is kept: the histogram is well determined, the Gaussian just describes only
  its peak (the Q–Q plot of notebook 04 shows how far from normal the data are).
- Spikes: when more than half the values are equal (MAD = 0) but not all, a Gaussian would
  describe the spike only; nothing is fitted (μ = σ = NaN, ``method`` says why) and
  :mod:`helpers.analysis.uncertainty` reports the fraction that changed instead. All values equal:
  μ = that value, σ = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

#: MAD -> standard deviation for normal data.
MAD_TO_SIGMA = 1.482602218505602
#: fewest values for a histogram fit (below: normal MLE)
MIN_HIST_POINTS = 50
MIN_BINS = 5
#: bins need this many expected counts to enter χ²; at least 4 such bins (χ² with ≥ 1 dof)
MIN_EXPECTED = 5.0
#: σ bounds relative to the spread max(sd, 1.4826·MAD) of the windowed values
SIGMA_LOW, SIGMA_HIGH = 0.25, 1.25
AMPLITUDE_BOUNDS = (0.5, 1.5)
#: χ²/ndf above this is reported as a poor fit (kept, flagged)
CHI2_POOR = 3.0
HIST_METHOD = "curve_fit histogram"


@dataclass
class GaussianFit:
    """Result of fitting one error distribution (values in the units of the input)."""

    n: int
    mu: float
    sigma: float
    amplitude: float
    method: str
    median: float
    mad: float
    mu_mle: float
    sigma_mle: float
    n_outside: int = 0
    edges: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)
    chi2_ndf: float = float("nan")
    max_residual: float = float("nan")
    bounds: tuple = field(default=(), repr=False)

    @property
    def sigma_mad(self) -> float:
        """Robust standard deviation, 1.4826 · MAD (equals sigma for normal data)."""
        return MAD_TO_SIGMA * self.mad

    @property
    def histogram(self) -> bool:
        """True when mu/sigma come from the histogram fit (not the MLE fallback)."""
        return self.method.startswith(HIST_METHOD)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """The fitted curve, in the density units of the fitted histogram."""
        return self.amplitude * stats.norm.pdf(x, self.mu, self.sigma)

    def as_dict(self) -> dict[str, float | int | str]:
        return {"n": self.n, "mu": self.mu, "sigma": self.sigma, "median": self.median,
                "mad": self.mad, "sigma_mad": self.sigma_mad, "mu_mle": self.mu_mle,
                "sigma_mle": self.sigma_mle, "fit_method": self.method, "n_outside_fit": self.n_outside,
                "fit_bins": max(len(self.edges) - 1, 0), "fit_chi2_ndf": self.chi2_ndf,
                "fit_max_residual": self.max_residual}


def median_mad(values: np.ndarray) -> tuple[float, float]:
    """Median and raw median absolute deviation (not scaled to sigma)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    median = float(np.median(values))
    return median, float(np.median(np.abs(values - median)))


def histogram_range(values: np.ndarray, clip_mads: float = 8.0) -> tuple[float, float]:
    """Span of the fitted histogram: median ± clip_mads robust sigmas, within the data."""
    lo, hi = float(np.min(values)), float(np.max(values))
    median, mad = median_mad(values)
    if mad > 0 and np.isfinite(clip_mads):
        half = clip_mads * MAD_TO_SIGMA * mad
        lo, hi = max(lo, median - half), min(hi, median + half)
    return lo, hi


def histogram_edges(values: np.ndarray, clip_mads: float = 8.0, max_bins: int = 200) -> np.ndarray:
    """Equal-width bins over :func:`histogram_range`: Freedman–Diaconis, 5 to min(max_bins, n // 10) bins."""
    values = np.asarray(values, dtype=float)
    lo, hi = histogram_range(values, clip_mads)
    if not hi > lo:
        return np.array([lo - 0.5, hi + 0.5])
    inside = values[(values >= lo) & (values <= hi)]
    q75, q25 = np.percentile(inside, [75, 25])
    width = 2.0 * (q75 - q25) * inside.size ** (-1 / 3)
    bins = math.ceil((hi - lo) / width) if width > 0 else MIN_BINS
    cap = max(MIN_BINS, min(int(max_bins), inside.size // 10))
    return np.linspace(lo, hi, int(np.clip(bins, MIN_BINS, cap)) + 1)


def _gauss_bins(edges: np.ndarray, amplitude: float, mu: float, sigma: float) -> np.ndarray:
    """Expected fraction of the histogram's values per bin for the scaled Gaussian."""
    return amplitude * np.diff(stats.norm.cdf(edges, mu, sigma))


def fit_histogram(counts: np.ndarray, edges: np.ndarray, p0, bounds) -> tuple[np.ndarray | None, str]:
    """Least-squares fit of A·N(μ, σ) to a density histogram within bounds; (params, '') or (None, why)."""
    total = counts.sum()
    widths = np.diff(edges)
    density = counts / (total * widths)
    centres = 0.5 * (edges[:-1] + edges[1:])
    lower, upper = (np.asarray(b, dtype=float) for b in bounds)
    start = np.clip(np.asarray(p0, dtype=float), lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
    try:
        params, _ = optimize.curve_fit(lambda x, a, m, s: a * stats.norm.pdf(x, m, s), centres, density,
                                       p0=start, bounds=(lower, upper), maxfev=2000)
    except (RuntimeError, ValueError) as exc:
        return None, f"curve_fit failed: {exc}"
    tol = 1e-3 * (upper - lower)
    names = ("amplitude", "μ", "σ")
    for k, name in enumerate(names):
        if params[k] <= lower[k] + tol[k]:
            return params, f"fit reached its bound {name} = {lower[k]:.3g}"
        if params[k] >= upper[k] - tol[k]:
            return params, f"fit reached its bound {name} = {upper[k]:.3g}"
    return params, ""


def fit_gaussian(values, clip_mads: float = 8.0, max_bins: int = 200,
                 min_points: int = MIN_HIST_POINTS) -> GaussianFit:
    """Bounded Gaussian fit to the histogram of ``values`` (NaN/inf ignored); see module docstring."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = int(values.size)
    nan = float("nan")
    if n == 0:
        return GaussianFit(0, nan, nan, nan, "none (no data)", nan, nan, nan, nan)
    median, mad = median_mad(values)
    edges = histogram_edges(values, clip_mads, max_bins)
    if n == 1:  # one structure has a value, not a spread: σ undefined (not 0)
        return GaussianFit(1, median, nan, nan, "one value: no spread", median, nan, median, nan, 0, edges)
    mu_mle, sigma_mle = (float(v) for v in stats.norm.fit(values))
    lo, hi = float(edges[0]), float(edges[-1])
    inside = values[(values >= lo) & (values <= hi)]
    n_outside = n - int(inside.size)
    if sigma_mle == 0:
        return GaussianFit(n, median, 0.0, 1.0, "constant (all values equal)", median, mad, mu_mle, sigma_mle,
                           0, edges)
    if mad == 0:
        share = float(np.mean(values == median))
        return GaussianFit(n, nan, nan, nan, f"not fitted: spike ({share:.0%} of the values equal {median:.4g})",
                           median, mad, mu_mle, sigma_mle, n_outside, edges)
    window_mu, window_sd = float(inside.mean()), float(inside.std())

    def mle(reason: str) -> GaussianFit:
        scope = f"{inside.size} values within median ± {clip_mads:g}·1.4826·MAD" if n_outside else "all values"
        return GaussianFit(n, window_mu, window_sd, 1.0, f"norm.fit of {scope} ({reason})", median, mad,
                           mu_mle, sigma_mle, n_outside, edges)

    if n < min_points:
        return mle(f"n = {n} < {min_points}: too few for a histogram fit")
    counts, _ = np.histogram(inside, bins=edges)
    spread = max(window_sd, MAD_TO_SIGMA * mad)
    lower = [AMPLITUDE_BOUNDS[0], float(inside.min()), SIGMA_LOW * min(window_sd, MAD_TO_SIGMA * mad)]
    upper = [AMPLITUDE_BOUNDS[1], float(inside.max()), SIGMA_HIGH * spread]
    params, why = fit_histogram(counts, edges, (1.0, median, MAD_TO_SIGMA * mad), (lower, upper))
    if params is None or why:
        return mle(why)
    amplitude, mu, sigma = (float(p) for p in params)
    expected = inside.size * _gauss_bins(edges, amplitude, mu, sigma)
    used = expected >= MIN_EXPECTED
    if used.sum() < 4:
        return mle(f"only {int(used.sum())} bins with ≥ {MIN_EXPECTED:g} expected counts")
    residuals = (counts[used] - expected[used]) / np.sqrt(expected[used])
    chi2_ndf = float(np.sum(residuals**2) / (used.sum() - 3))
    method = HIST_METHOD if chi2_ndf <= CHI2_POOR else f"{HIST_METHOD} (poor fit: χ²/ndf = {chi2_ndf:.1f})"
    return GaussianFit(n, mu, sigma, amplitude, method, median, mad, mu_mle, sigma_mle, n_outside, edges,
                       chi2_ndf, float(np.max(np.abs(residuals))), (tuple(lower), tuple(upper)))
