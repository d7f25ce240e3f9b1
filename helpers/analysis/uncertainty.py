"""Uncertainty of the headline numbers: seeded bootstrap CIs, symmetry-fixed quantities, paired tests.

Every summary number (μ, σ, median, MAD) gets a 95 % percentile-bootstrap confidence interval:
the values are resampled with replacement ``n_boot`` times (seeded, so a re-run gives the same
interval), the *same estimator* is recomputed on each resample, and the 2.5 and 97.5
percentiles of the recomputed values are the interval. It says how much the number would move
if the same number of structures had been drawn again from the same population; it does not
cover systematic errors (COD selection, the experimental temperature, the relaxation settings).

- median and MAD: recomputed exactly per resample (vectorised, in chunks);
- μ, σ from the normal MLE fallback: mean and standard deviation of the resampled values inside
  the (fixed) fit window;
- μ, σ from the histogram fit: the bin edges are kept, each resample's bin counts are drawn
  (multinomially, which is what resampling the values does to a fixed histogram) and the same
  bounded Gaussian is refitted to all resamples at once by a vectorised Levenberg–Marquardt;
  resamples are clipped to the point fit's bounds, as the point fit is.

Quantities mostly fixed by symmetry (cell angles of any system above triclinic) are not fitted:
they get ``fraction_changed`` (|Δ| above ``FIXED_TOL``) and the median / MAD of the values
that changed. The same happens to any quantity where more than half the values are equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import special

from helpers.analysis.distributions import GaussianFit, fit_gaussian, median_mad
from helpers.analysis.exact_stats import EXACT_BELOW, median_ci_exact

#: |Δ| at or below this counts as "unchanged" (per unit): angles fixed by symmetry come back
#: within ~1e-4° of the experiment after a tight relaxation
FIXED_TOL = {"°": 1e-2, "%": 1e-3}
CI_LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0
CI_STATS = ("mu", "sigma", "median", "mad")
CI_COLUMNS = [f"{s}_ci_{end}" for s in CI_STATS for end in ("low", "high")]
CHANGED_COLUMNS = ["n_changed", "fraction_changed", "median_changed", "mad_changed"]
#: the study's view with its whole procedure resampled (window, bins, bounds refitted per resample)
REFIT_COLUMNS = ["mu_refit_ci_low", "mu_refit_ci_high", "sigma_refit_ci_low", "sigma_refit_ci_high", "n_refit"]
#: how the median's CI was made, and its coverage (exact intervals cover at least the level)
MEDIAN_CI_COLUMNS = ["median_ci_method", "median_ci_coverage"]
#: resamples of the refitting bootstrap (each is a full fit_gaussian: ~10–30 ms)
N_REFIT = 200
#: values per chunk of bootstrap resamples (memory: 8 bytes each)
_CHUNK = 2_000_000


def _resamples(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``values`` as (chunk, n) arrays, at most _CHUNK numbers at a time."""
    n = values.size
    per = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < n_boot:
        size = min(per, n_boot - done)
        yield values[rng.integers(0, n, size=(size, n))]
        done += size


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size < 10:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _norm_pdf(x, mu, sigma):
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def fit_many(density: np.ndarray, centres: np.ndarray, start: np.ndarray, lower: np.ndarray, upper: np.ndarray,
             iterations: int = 40) -> np.ndarray:
    """Least-squares fits of a·N(x; μ, σ) to many histograms at once (rows of ``density``), bounded.

    A vectorised Levenberg–Marquardt on the same model and bounds as the point fit
    (:func:`helpers.analysis.distributions.fit_histogram`), started at the point estimate; parameters
    are clipped to the bounds after every step. Returns (n_hist, 3): amplitude, μ, σ.
    """
    n_hist = density.shape[0]
    params = np.tile(np.clip(start, lower, upper), (n_hist, 1))
    damping = np.full(n_hist, 1e-3)

    def residual(p):
        return p[:, :1] * _norm_pdf(centres[None, :], p[:, 1:2], p[:, 2:3]) - density

    cost = np.sum(residual(params) ** 2, axis=1)
    for _ in range(iterations):
        a, m, s = params[:, :1], params[:, 1:2], params[:, 2:3]
        z = (centres[None, :] - m) / s
        phi = _norm_pdf(centres[None, :], m, s)
        jac = np.stack([phi, a * phi * z / s, a * phi * (z**2 - 1) / s], axis=2)  # (B, bins, 3)
        r = a * phi - density
        jtj = np.einsum("bki,bkj->bij", jac, jac)
        jtr = np.einsum("bki,bk->bi", jac, r)
        diag = np.einsum("bii->bi", jtj)
        system = jtj + damping[:, None, None] * (np.eye(3)[None] * (diag[:, :, None] + 1e-12))
        try:
            step = np.linalg.solve(system, -jtr[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        trial = np.clip(params + step, lower, upper)
        trial_cost = np.sum(residual(trial) ** 2, axis=1)
        better = np.isfinite(trial_cost) & (trial_cost < cost)
        params = np.where(better[:, None], trial, params)
        cost = np.where(better, trial_cost, cost)
        damping = np.where(better, damping / 3, damping * 4)
    return params


def bootstrap(values: np.ndarray, fit: GaussianFit, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              level: float = CI_LEVEL) -> dict[str, float]:
    """Percentile-bootstrap CIs (``<stat>_ci_low/high``) for μ, σ, median and MAD of ``values``.

    ``fit`` is :func:`helpers.analysis.distributions.fit_gaussian` of the same values; μ/σ are
    resampled with the estimator that produced them (see the module docstring). NaN where the
    statistic is NaN, or below 3 values.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    out = dict.fromkeys(CI_COLUMNS, float("nan"))
    if values.size < 3 or n_boot < 10:
        return out
    rng = np.random.default_rng(seed)
    medians, mads, mus, sigmas = [], [], [], []
    hist = fit.histogram and np.isfinite(fit.mu)
    lo, hi = (fit.edges[0], fit.edges[-1]) if len(fit.edges) else (-np.inf, np.inf)
    for chunk in _resamples(values, n_boot, rng):
        med = np.median(chunk, axis=1)
        medians.append(med)
        mads.append(np.median(np.abs(chunk - med[:, None]), axis=1))
        if not hist and np.isfinite(fit.mu):
            inside = (chunk >= lo) & (chunk <= hi)
            count = inside.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(inside, chunk, 0).sum(axis=1) / count
                var = np.where(inside, (chunk - mean[:, None]) ** 2, 0).sum(axis=1) / count
            mus.append(mean)
            sigmas.append(np.sqrt(var))
    out["median_ci_low"], out["median_ci_high"] = _interval(np.concatenate(medians), level)
    out["mad_ci_low"], out["mad_ci_high"] = _interval(np.concatenate(mads), level)
    if hist:
        mus, sigmas = _bootstrap_histogram_fit(values, fit, n_boot, rng)
        out["mu_ci_low"], out["mu_ci_high"] = _interval(mus, level)
        out["sigma_ci_low"], out["sigma_ci_high"] = _interval(sigmas, level)
    elif mus:
        out["mu_ci_low"], out["mu_ci_high"] = _interval(np.concatenate(mus), level)
        out["sigma_ci_low"], out["sigma_ci_high"] = _interval(np.concatenate(sigmas), level)
    elif fit.sigma == 0:  # constant values: every resample is the same
        out.update(mu_ci_low=fit.mu, mu_ci_high=fit.mu, sigma_ci_low=0.0, sigma_ci_high=0.0)
    return out


def _bootstrap_histogram_fit(values: np.ndarray, fit: GaussianFit, n_boot: int,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    edges = fit.edges
    counts, _ = np.histogram(values[(values >= edges[0]) & (values <= edges[-1])], bins=edges)
    outside = values.size - counts.sum()
    draws = rng.multinomial(values.size, np.append(counts, outside) / values.size, size=n_boot)[:, :-1]
    total = draws.sum(axis=1, keepdims=True).astype(float)
    density = draws / (np.maximum(total, 1) * np.diff(edges)[None, :])
    centres = 0.5 * (edges[:-1] + edges[1:])
    lower, upper = (np.asarray(b, dtype=float) for b in fit.bounds)
    params = fit_many(density, centres, np.array([fit.amplitude, fit.mu, fit.sigma]), lower, upper)
    return params[:, 1], params[:, 2]


def refit_bootstrap(values, n_refit: int = N_REFIT, seed: int = BOOT_SEED, level: float = CI_LEVEL) -> dict[str, Any]:
    """CIs of the study's μ and σ with the *whole* fit resampled: each resample of the values gets its own
    window, bins and bounds (:func:`fit_gaussian` from scratch), so the interval includes the uncertainty
    the fixed-bins bootstrap of :func:`bootstrap` leaves out. NaN below 10 values or ``n_refit`` < 10."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    out: dict[str, Any] = {**dict.fromkeys(REFIT_COLUMNS[:-1], float("nan")), "n_refit": 0}
    if values.size < 10 or n_refit < 10:
        return out
    rng = np.random.default_rng(seed)
    fits = [fit_gaussian(values[rng.integers(0, values.size, values.size)]) for _ in range(n_refit)]
    out["mu_refit_ci_low"], out["mu_refit_ci_high"] = _interval(np.array([f.mu for f in fits]), level)
    out["sigma_refit_ci_low"], out["sigma_refit_ci_high"] = _interval(np.array([f.sigma for f in fits]), level)
    out["n_refit"] = n_refit
    return out


def median_interval(values, bootstrap_ci: tuple[float, float], level: float = CI_LEVEL) -> dict[str, Any]:
    """The median's CI: exact order statistics below :data:`EXACT_BELOW` values, else the bootstrap's."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < EXACT_BELOW:
        low, high, coverage = median_ci_exact(values, level)
        return {"median_ci_low": low, "median_ci_high": high, "median_ci_coverage": coverage,
                "median_ci_method": f"exact order statistics (n = {values.size} < {EXACT_BELOW})"
                if np.isfinite(coverage) else f"none: n = {values.size} too small for a {level:.0%} interval"}
    return {"median_ci_low": bootstrap_ci[0], "median_ci_high": bootstrap_ci[1], "median_ci_coverage": level,
            "median_ci_method": "percentile bootstrap"}


def describe(values, *, unit: str = "%", symmetric: bool = False, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
             level: float = CI_LEVEL, n_refit: int = 0) -> dict[str, Any]:
    """One summary.csv record: the bounded fit, robust numbers, CIs and (spikes) the changed fraction.

    ``symmetric`` (angles): never fitted; μ = σ = NaN, ``fit_method`` says why, and
    ``fraction_changed`` / ``median_changed`` / ``mad_changed`` describe the values with |Δ| >
    ``FIXED_TOL[unit]``. Everything else gets :func:`fit_gaussian` and :func:`bootstrap`.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fit = fit_gaussian(values)
    tol = FIXED_TOL.get(unit, 0.0)
    changed = values[np.abs(values) > tol]
    median_c, mad_c = median_mad(changed)
    record: dict[str, Any] = {**fit.as_dict(), "n_changed": int(changed.size),
                              "fraction_changed": changed.size / values.size if values.size else float("nan"),
                              "median_changed": median_c, "mad_changed": mad_c}
    spike = fit.method.startswith("not fitted")
    if values.size and (symmetric or spike):
        why = "mostly fixed by symmetry" if symmetric else "spike"
        record.update(mu=float("nan"), sigma=float("nan"),
                      fit_method=f"not fitted ({why}): {changed.size} of {values.size} changed by more than "
                                 f"{tol:g} {unit}; see fraction_changed, median_changed, mad_changed")
        fit = GaussianFit(fit.n, float("nan"), float("nan"), float("nan"), record["fit_method"], fit.median,
                          fit.mad, fit.mu_mle, fit.sigma_mle, fit.n_outside, fit.edges)
    record.update(bootstrap(values, fit, n_boot, seed, level))
    record.update(median_interval(values, (record["median_ci_low"], record["median_ci_high"]), level))
    record.update(refit_bootstrap(values, n_refit, seed, level) if n_refit and not symmetric and not spike
                  else {**dict.fromkeys(REFIT_COLUMNS[:-1], float("nan")), "n_refit": 0})
    record.update(ci_level=level, n_boot=n_boot, boot_seed=seed)
    return record


# ---------------------------------------------------------------------------------------------
# Paired comparison of two potentials


def _median_ci(diff: np.ndarray, rng: np.random.Generator, n_boot: int, level: float, stat=np.median):
    if diff.size < 3:
        return float("nan"), float("nan")
    samples = np.concatenate([stat(chunk, axis=1) for chunk in _resamples(diff, n_boot, rng)])
    return _interval(samples, level)


def paired_stats(a: np.ndarray, b: np.ndarray, name_a: str = "A", name_b: str = "B", n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED, level: float = CI_LEVEL, alpha: float = 0.05) -> dict[str, Any]:
    """A vs B on the same structures: Δ_A − Δ_B and |Δ_A| − |Δ_B| with CIs, Wilcoxon tests, a verdict.

    The verdict is about closeness to experiment: A is called better only when the Wilcoxon
    signed-rank test of |Δ_A| − |Δ_B| rejects at ``alpha`` *and* the bootstrap CI of its
    median excludes 0 (and likewise B); otherwise "the data cannot tell". Fewer than 10 pairs:
    no test.
    """
    from scipy.stats import rankdata, wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff, absdiff = a - b, np.abs(a) - np.abs(b)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for key, d in (("diff", diff), ("absdiff", absdiff)):
        out[f"mean_{key}_ci_low"], out[f"mean_{key}_ci_high"] = _median_ci(d, rng, n_boot, level, np.mean)
        out[f"median_{key}_ci_low"], out[f"median_{key}_ci_high"] = _median_ci(d, rng, n_boot, level)
    out["mean_absdiff"] = float(absdiff.mean()) if absdiff.size else float("nan")
    out["median_absdiff"] = float(np.median(absdiff)) if absdiff.size else float("nan")
    out["wilcoxon_abs_p"] = float("nan")
    if absdiff.size >= 10 and np.any(absdiff != 0):
        out["wilcoxon_abs_p"] = float(wilcoxon(absdiff).pvalue)
    p, low, high = out["wilcoxon_abs_p"], out["median_absdiff_ci_low"], out["median_absdiff_ci_high"]
    if absdiff.size < 10:
        verdict = f"cannot tell: {absdiff.size} common structures (< 10)"
    elif p < alpha and high < 0:
        verdict = f"{name_a} closer to experiment (median |Δ| lower by {-out['median_absdiff']:.2f}, p = {p:.2g})"
    elif p < alpha and low > 0:
        verdict = f"{name_b} closer to experiment (median |Δ| lower by {out['median_absdiff']:.2f}, p = {p:.2g})"
    elif not p < alpha:
        verdict = (f"cannot tell: the Wilcoxon test of |Δ {name_a}| − |Δ {name_b}| is not significant "
                   f"(p = {p:.2g} ≥ {alpha:g})")
    else:
        nonzero = absdiff[absdiff != 0]
        signed_ranks = np.sum(np.sign(nonzero) * rankdata(np.abs(nonzero)))  # the test's own direction
        leans = name_a if signed_ranks < 0 else name_b
        verdict = (f"cannot tell: the Wilcoxon test leans to {leans} (p = {p:.2g}) but the 95 % CI of the median "
                   f"|Δ {name_a}| − |Δ {name_b}|, [{low:.2f}, {high:.2f}] points, includes 0")
    out["verdict"] = verdict
    return out


PAIRED_COLUMNS = ["mean_diff_ci_low", "mean_diff_ci_high", "median_diff_ci_low", "median_diff_ci_high",
                  "mean_absdiff", "mean_absdiff_ci_low", "mean_absdiff_ci_high", "median_absdiff",
                  "median_absdiff_ci_low", "median_absdiff_ci_high", "wilcoxon_abs_p", "verdict"]


def normal_quantiles(n: int) -> np.ndarray:
    """Theoretical standard-normal quantiles for a Q–Q plot of n sorted values (Blom positions)."""
    positions = (np.arange(1, n + 1) - 0.375) / (n + 0.25)
    return np.sqrt(2) * special.erfinv(2 * positions - 1)
