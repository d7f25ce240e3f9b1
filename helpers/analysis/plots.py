"""Figures of notebook 04: error histograms with their Gaussian fit, overlays, ΔV against temperature.

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

from helpers.analysis.distributions import fit_gaussian, histogram_range  # noqa: E402
from helpers.analysis.stage import QUANTITIES, display_name, thermal_assumption  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _axis_label(quantity: str) -> str:
    q = QUANTITIES[quantity]
    return f"{q.label} [{q.unit}]" if q.unit == "°" else f"{q.label} = (X_calc − X_exp)/X_exp [{q.unit}]"


def histogram_with_fit(values, path: str | Path, quantity: str = "volume", potential: str = "",
                       threshold_pct: float | None = 20.0) -> Path:
    """Histogram of one potential's errors with the fitted Gaussian; μ, σ, median, MAD in the legend."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fit = fit_gaussian(values)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lo, hi = fit.edges[0], fit.edges[-1]
    inside = values[(values >= lo) & (values <= hi)]
    sns.histplot(x=inside, bins=fit.edges, stat="density", ax=ax, color="C0", alpha=0.5,
                 label=f"{display_name(potential)} (n = {fit.n})")
    x = np.linspace(lo, hi, 400)
    if fit.sigma > 0:
        ax.plot(x, fit.pdf(x), color="C3", lw=2,
                label=f"Gaussian fit: μ = {fit.mu:.2f}, σ = {fit.sigma:.2f}\n({fit.method})")
    ax.axvline(fit.median, color="k", ls="--", lw=1,
               label=f"median = {fit.median:.2f}, MAD = {fit.mad:.2f}")
    notes = []
    if fit.n_outside:
        notes.append(f"{fit.n_outside} beyond the plotted range")
    if threshold_pct is not None and QUANTITIES[quantity].unit == "%":
        n_out = int(np.sum(np.abs(values) > threshold_pct))
        notes.append(f"|Δ| > {threshold_pct:g} %: {n_out} ({n_out / max(fit.n, 1):.1%})")
    if notes:
        ax.plot([], [], " ", label="; ".join(notes))
    ax.set_xlabel(_axis_label(quantity))
    ax.set_ylabel("density")
    ax.set_title(f"{QUANTITIES[quantity].label}, {display_name(potential)}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def overlay(errors: pd.DataFrame, path: str | Path, quantity: str = "volume") -> Path:
    """All potentials' histograms of one error on shared bins, each with its fitted Gaussian."""
    column = QUANTITIES[quantity].column
    data = errors[["potential", column]].copy()
    data[column] = pd.to_numeric(data[column], errors="coerce")
    data = data.dropna()
    lo, hi = histogram_range(data[column].to_numpy()) if len(data) else (-1.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 61)
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    x = np.linspace(lo, hi, 400)
    for k, (potential, group) in enumerate(data.groupby("potential")):
        values = group[column].to_numpy()
        fit = fit_gaussian(values)
        shown = values[(values >= lo) & (values <= hi)]
        color = f"C{k % 10}"
        ax.hist(shown, bins=bins, density=True, histtype="step", color=color, lw=1.2)
        # the fit is normalised to the values inside its own range; rescale to those shown here
        in_fit = np.sum((values >= fit.edges[0]) & (values <= fit.edges[-1])) if fit.n else 0
        curve = fit.pdf(x) * in_fit / max(len(shown), 1) if fit.sigma > 0 else np.full_like(x, np.nan)
        ax.plot(x, curve, color=color, lw=2,
                label=f"{display_name(potential)}: μ = {fit.mu:.2f}, σ = {fit.sigma:.2f} (n = {fit.n})")
    ax.set_xlabel(_axis_label(quantity))
    ax.set_ylabel("density")
    ax.set_title(f"{QUANTITIES[quantity].label}: all potentials")
    ax.legend(fontsize=8)
    return _save(fig, path)


def dv_vs_temperature(errors: pd.DataFrame, path: str | Path, alpha_v: float = 1.65e-4, t_ref: float = 0.0,
                      edges: Sequence[float] = (150, 250)) -> Path:
    """ΔV against measurement temperature, raw and thermal-corrected, with the assumption stated."""
    from helpers.analysis.stage import thermal_corrected

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
