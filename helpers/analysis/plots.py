"""Figures of notebook 04: error histograms with their Gaussian fit, ΔV against temperature, paired scatter.

Every function saves one PNG and returns its path (the figure is closed, so batch runs do not
pile up memory; show it in a notebook with ``IPython.display.Image(path)``). Without a display
and outside Jupyter the Agg backend is used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from helpers.analysis.distributions import fit_gaussian  # noqa: E402
from helpers.analysis.quantities import (  # noqa: E402
    QUANTITIES,
    display_name,
    thermal_assumption,
    thermal_corrected,
)
from helpers.analysis.uncertainty import describe, normal_quantiles  # noqa: E402
from helpers.vocabulary import T_REF, TEMPERATURE_EDGES, THERMAL_EXPANSION_V  # noqa: E402


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _axis_label(quantity: str) -> str:
    q = QUANTITIES[quantity]
    return f"{q.label} [{q.unit}]" if q.unit == "°" else f"{q.label} = (X_calc − X_exp)/X_exp [{q.unit}]"


def histogram_with_fit(values, path: str | Path, quantity: str = "volume", potential: str = "",
                       threshold_pct: float | None = 20.0, record: pd.Series | dict | None = None) -> Path:
    """Histogram with the fitted Gaussian and its 95 % CI bands, and beside it a normal Q–Q plot.

    ``record``: this potential × quantity's summary.csv row (computed here when not given). The
    left panel shades the bootstrap CIs of μ and of the median; the right panel shows the sorted
    values against standard-normal quantiles with the fitted line μ + σ·z and the robust line
    median + 1.4826·MAD·z, so a reader sees at once whether "Gaussian" describes the data (and
    where the tails leave it). Angles (mostly fixed by symmetry) get no curve: the fraction that
    changed is in the legend instead.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    q = QUANTITIES[quantity]
    fit = fit_gaussian(values)
    if record is None:
        record = describe(values, unit=q.unit, symmetric=q.symmetric)
    mu, sigma = float(record["mu"]), float(record["sigma"])
    fig, (ax, qq) = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    lo, hi = fit.edges[0], fit.edges[-1]
    inside = values[(values >= lo) & (values <= hi)]
    sns.histplot(x=inside, bins=fit.edges, stat="density", ax=ax, color="C0", alpha=0.5,
                 label=f"{display_name(potential)} (n = {fit.n})")
    x = np.linspace(lo, hi, 400)
    if np.isfinite(sigma) and sigma > 0 and np.isfinite(fit.amplitude):
        ax.plot(x, fit.pdf(x), color="C3", lw=2,
                label=f"Gaussian: μ = {mu:.2f} [{record['mu_ci_low']:.2f}, {record['mu_ci_high']:.2f}], "
                      f"σ = {sigma:.2f} [{record['sigma_ci_low']:.2f}, {record['sigma_ci_high']:.2f}]\n"
                      f"({record['fit_method'][:70]})")
        if np.isfinite(record["mu_ci_low"]):
            ax.axvspan(record["mu_ci_low"], record["mu_ci_high"], color="C3", alpha=0.15, label="95 % CI of μ")
    elif q.symmetric or str(record["fit_method"]).startswith("not fitted"):
        ax.plot([], [], " ", label=f"not fitted: {record['fraction_changed']:.0%} changed; their median "
                                    f"{record['median_changed']:.3g}, MAD {record['mad_changed']:.3g}")
    ax.axvline(fit.median, color="k", ls="--", lw=1,
               label=f"median = {fit.median:.2f} [{record['median_ci_low']:.2f}, {record['median_ci_high']:.2f}], "
                     f"MAD = {fit.mad:.2f}")
    if np.isfinite(record["median_ci_low"]) and record["median_ci_high"] > record["median_ci_low"]:
        ax.axvspan(record["median_ci_low"], record["median_ci_high"], color="k", alpha=0.1)
    notes = []
    if fit.n_outside:
        notes.append(f"{fit.n_outside} beyond the plotted range")
    if threshold_pct is not None and q.unit == "%":
        n_out = int(np.sum(np.abs(values) > threshold_pct))
        notes.append(f"|Δ| > {threshold_pct:g} %: {n_out} ({n_out / max(fit.n, 1):.1%})")
    if notes:
        ax.plot([], [], " ", label="; ".join(notes))
    ax.set_xlabel(_axis_label(quantity))
    ax.set_ylabel("density")
    ax.set_title(f"{q.label}, {display_name(potential)}")
    ax.legend(fontsize=7)
    _qq_panel(qq, values, mu, sigma, fit.median, fit.sigma_mad, q)
    return _save(fig, path)


def _qq_panel(ax, values: np.ndarray, mu: float, sigma: float, median: float, sigma_mad: float, q) -> None:
    """Normal Q–Q plot: sorted values against standard-normal quantiles, with the fitted and robust lines."""
    ordered = np.sort(values)
    z = normal_quantiles(ordered.size)
    ax.scatter(z, ordered, s=8, alpha=0.6, color="C0", label="data")
    if ordered.size:
        span = np.array([z.min(), z.max()]) if ordered.size > 1 else np.array([-1.0, 1.0])
        if np.isfinite(sigma) and sigma > 0:
            ax.plot(span, mu + sigma * span, color="C3", lw=1.5, label="fitted μ + σ z")
        if sigma_mad > 0:
            ax.plot(span, median + sigma_mad * span, color="k", ls="--", lw=1, label="median + 1.4826 MAD z")
    ax.set_xlabel("standard normal quantile z")
    ax.set_ylabel(f"{q.label} [{q.unit}]")
    ax.set_title("normal Q–Q plot")
    ax.legend(fontsize=7)


def dv_vs_temperature(errors: pd.DataFrame, path: str | Path, alpha_v: float = THERMAL_EXPANSION_V,
                      t_ref: float = T_REF, edges: Sequence[float] = TEMPERATURE_EDGES) -> Path:
    """ΔV against measurement temperature, raw and thermal-corrected, with the assumption stated."""
    data = errors.copy()
    data["temperature"] = pd.to_numeric(data["temperature"], errors="coerce")
    data = data.dropna(subset=["temperature"])
    data = thermal_corrected(data, alpha_v, t_ref)
    data["potential"] = data["potential"].map(display_name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, column, title in ((axes[0], "dV_pct", "ΔV vs experiment at T"),
                              (axes[1], "dV_thermal_pct", f"ΔV vs experiment extrapolated to {t_ref:g} K")):
        sns.scatterplot(data=data, x="temperature", y=column, hue="potential", ax=ax, s=14, alpha=0.7,
                        hue_order=sorted(data["potential"].unique()))
        for edge in edges:
            ax.axvline(edge, color="grey", ls=":", lw=1)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("measurement temperature [K]")
        ax.set_ylabel("ΔV [%]")
        ax.set_title(title, fontsize=10)
    t_min, t_max = float(data["temperature"].min()), float(data["temperature"].max())
    t = np.linspace(max(0.0, t_min - 10), t_max + 10, 100)
    axes[0].plot(t, (1 / (1 + alpha_v * (t - t_ref)) - 1) * 100, color="C3", lw=1.5,
                 label=f"perfect potential at {t_ref:g} K (expected)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.text(0.5, 0.005, "Assumption: " + thermal_assumption(alpha_v, t_ref), ha="center", va="bottom",
             fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def paired_scatter(wide: pd.DataFrame, a: str, b: str, path: str | Path, quantity: str = "volume") -> Path:
    """Δ of potential A against Δ of potential B on the structures both converged."""
    pair = wide[[a, b]].dropna()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pair[b], pair[a], s=10, alpha=0.6)
    if len(pair):
        lo = float(np.nanmin(pair.to_numpy()))
        hi = float(np.nanmax(pair.to_numpy()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="equal error")
    label = QUANTITIES[quantity].label
    ax.set_xlabel(f"{label}, {display_name(b)} [{QUANTITIES[quantity].unit}]")
    ax.set_ylabel(f"{label}, {display_name(a)} [{QUANTITIES[quantity].unit}]")
    ax.set_title(f"same {len(pair)} structures")
    ax.legend(fontsize=8)
    return _save(fig, path)


def status_bars(counts: pd.DataFrame, path: str | Path) -> Path:
    """Stacked bars of relaxation outcomes per potential."""
    statuses = [c for c in counts.columns if c not in ("total", "converged_fraction")]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    counts[statuses].rename(index=display_name).plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("structures")
    ax.set_xlabel("")
    ax.set_title("relaxation outcome per potential")
    return _save(fig, path)
