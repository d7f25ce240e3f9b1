"""Location and spread of an error distribution: the study's Gaussian fit, plus robust numbers.

The study fitted a Gaussian to each error histogram. We do the same with a least-squares fit
of ``A * N(x; mu, sigma)`` to the histogram (``scipy.optimize.curve_fit``), because:

- these histograms are skewed with long tails (bad CIFs, cells that blew up). A maximum-
  likelihood normal fit (``scipy.stats.norm.fit``, i.e. the sample mean and standard
  deviation) is pulled by every tail point; the histogram fit follows the peak, which is
  what the study's numbers describe;
- the MLE values are still reported (``mu_mle``, ``sigma_mle``), with the median and the
  median absolute deviation, so the effect of the choice is visible in every table.

Binning: the histogram spans ``median ± clip_mads · 1.4826 · MAD`` (8 robust standard
deviations by default; points outside are counted in ``n`` and in ``n_outside``, but a
handful of +1000 % explosions cannot stretch the axis until the peak is one bin), with
Freedman–Diaconis bins capped at ``max_bins``. Below ``min_points`` values a histogram
has too few counts per bin to fit, so the MLE is used and ``method`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

#: MAD -> standard deviation for normal data.
MAD_TO_SIGMA = 1.482602218505602


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

    @property
    def sigma_mad(self) -> float:
        """Robust standard deviation, 1.4826 · MAD (equals sigma for normal data)."""
        return MAD_TO_SIGMA * self.mad

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """The fitted curve, in the density units of the fitted histogram."""
        return self.amplitude * stats.norm.pdf(x, self.mu, self.sigma)

    def as_dict(self) -> dict[str, float | int | str]:
        return {"n": self.n, "mu": self.mu, "sigma": self.sigma, "median": self.median,
                "mad": self.mad, "sigma_mad": self.sigma_mad, "mu_mle": self.mu_mle,
                "sigma_mle": self.sigma_mle, "fit_method": self.method, "n_outside_fit": self.n_outside}


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
    """Freedman–Diaconis bin edges over :func:`histogram_range`, at most ``max_bins`` bins."""
    lo, hi = histogram_range(values, clip_mads)
    if not hi > lo:
        return np.array([lo - 0.5, hi + 0.5])
    inside = values[(values >= lo) & (values <= hi)]
    edges = np.histogram_bin_edges(inside, bins="fd", range=(lo, hi))
    if len(edges) - 1 > max_bins:
        edges = np.linspace(lo, hi, max_bins + 1)
    if len(edges) - 1 < 5:
        edges = np.linspace(lo, hi, 6)
    return edges


def fit_gaussian(values, clip_mads: float = 8.0, max_bins: int = 200, min_points: int = 10) -> GaussianFit:
    """Gaussian fitted to the histogram of ``values`` (NaN/inf ignored); see module docstring."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = int(values.size)
    nan = float("nan")
    if n == 0:
        return GaussianFit(0, nan, nan, nan, "none (no data)", nan, nan, nan, nan)
    median, mad = median_mad(values)
    mu_mle, sigma_mle = (float(v) for v in stats.norm.fit(values))
    edges = histogram_edges(values, clip_mads, max_bins)
    lo, hi = edges[0], edges[-1]
    inside = values[(values >= lo) & (values <= hi)]
    n_outside = n - int(inside.size)

    def mle(reason: str) -> GaussianFit:
        return GaussianFit(n, mu_mle, sigma_mle, inside.size / n if n else nan, f"norm.fit ({reason})",
                           median, mad, mu_mle, sigma_mle, n_outside, edges)

    if n < min_points:
        return mle(f"n<{min_points}")
    if sigma_mle == 0:
        return mle("all values equal")
    counts, _ = np.histogram(inside, bins=edges)
    widths = np.diff(edges)
    density = counts / (inside.size * widths)
    centres = 0.5 * (edges[:-1] + edges[1:])
    spread = MAD_TO_SIGMA * mad if mad > 0 else sigma_mle
    try:
        (amplitude, mu, sigma), _ = optimize.curve_fit(
            lambda x, a, m, s: a * stats.norm.pdf(x, m, s), centres, density,
            p0=(1.0, median, spread), bounds=([0, lo, 1e-12], [np.inf, hi, np.inf]), maxfev=5000)
    except (RuntimeError, ValueError) as exc:
        return mle(f"curve_fit failed: {exc}")
    return GaussianFit(n, float(mu), float(sigma), float(amplitude), "curve_fit histogram", median, mad,
                       mu_mle, sigma_mle, n_outside, edges)
