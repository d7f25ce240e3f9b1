"""The report's own figures: small multiples, one colour per potential, n on every panel and interval.

- :func:`histogram_grid`: one panel per potential, its ΔV histogram (the study's bins and window) with the
  Gaussian the study's procedure fits to it — the study's figure type, shown for every potential at once.
- :func:`ranking_intervals`: the ranking metric with its 95 % CI per ranked potential, n beside each.
- :func:`median_intervals`: 04_analysis's per-quantity view, each potential's median with its 95 % CI, n beside
  it (the entries the study counts: every entry; one row per potential).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers.analysis.distributions import fit_gaussian  # noqa: E402
from helpers.analysis.plots import _save  # noqa: E402
from helpers.analysis.quantities import all_entries, display_name  # noqa: E402
from helpers.analysis.ranking import ranked_rows  # noqa: E402


def colours(potentials) -> dict[str, tuple]:
    """One distinct colour per potential (tab20 holds 20; sorted names, so a potential keeps its colour)."""
    cmap = plt.get_cmap("tab20")
    return {p: cmap(k % 20) for k, p in enumerate(sorted(potentials))}


def histogram_grid(errors: pd.DataFrame, path: str | Path, column: str = "dV_pct",
                   xlabel: str = "ΔV = (V_relaxed − V_exp)/V_exp [%]") -> Path | None:
    """Small multiples: each potential's converged histogram of ``column`` (ΔV) with its fitted Gaussian, n in
    the title."""
    data = errors[errors["status"] == "converged"] if "status" in errors else errors
    groups = {p: pd.to_numeric(g[column], errors="coerce").dropna().to_numpy() for p, g in data.groupby("potential")}
    groups = {p: v for p, v in groups.items() if v.size}
    if not groups:
        return None
    colour = colours(groups)
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False, sharex=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (potential, values) in zip(axes.flat, sorted(groups.items())):
        ax.axis("on")
        fit = fit_gaussian(values)
        edges = fit.edges if len(fit.edges) > 1 else np.linspace(values.min() - 0.5, values.max() + 0.5, 6)
        inside = values[(values >= edges[0]) & (values <= edges[-1])]
        ax.hist(inside, bins=edges, density=True, color=colour[potential], alpha=0.75)
        if np.isfinite(fit.mu) and np.isfinite(fit.sigma) and fit.sigma > 0:
            x = np.linspace(edges[0], edges[-1], 200)
            ax.plot(x, fit.pdf(x), color="black", lw=1.2, label=f"μ {fit.mu:.1f}, σ {fit.sigma:.1f}")
            ax.legend(fontsize=6, frameon=False)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_title(f"{display_name(potential)} (n = {values.size})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=7)
    return _save(fig, path, dpi=90)


def ranking_intervals(table: pd.DataFrame, path: str | Path) -> Path | None:
    """The ranking metric (median |ΔV₀|, failures as ∞) with its 95 % CI per ranked potential, n beside it."""
    ranked = ranked_rows(table)
    if ranked.empty:
        return None
    rows = [(r.potential, r.metric, r.metric_ci_low, r.metric_ci_high, r.n_shared) for r in ranked.itertuples()]
    fig, ax = _interval_rows(rows, colours(table["potential"]),
                             "median |ΔV₀| [%], failures as ∞ (95 % CI)")
    ax.set_xlim(left=0)
    return _save(fig, path, dpi=90)


def median_intervals(summary: pd.DataFrame, path: str | Path, quantity: str = "volume") -> Path | None:
    """Each potential's median of ``quantity`` with its 95 % CI (summary.csv, entries "all"), n beside it."""
    from helpers.analysis.quantities import QUANTITIES

    rows = all_entries(summary, quantity)
    rows = rows[np.isfinite(pd.to_numeric(rows["median"], errors="coerce"))].sort_values("potential")
    if rows.empty:
        return None
    q = QUANTITIES[quantity]
    fig, ax = _interval_rows([(r.potential, r.median, r.median_ci_low, r.median_ci_high, r.n)
                              for r in rows.itertuples()],
                             colours(rows["potential"]), f"median {q.label} [{q.unit}] (95 % CI)")
    ax.axvline(0, color="grey", lw=0.6)
    return _save(fig, path, dpi=90)


def _interval_rows(rows: list[tuple], colour: dict, xlabel: str):
    """One row per potential, top to bottom: ``(potential, centre, ci_low, ci_high, n)`` as a point with its
    interval and n at the right. An infinite upper end runs to the axis' edge, an unknown end is left out."""
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(rows) + 1.0))
    for k, (potential, centre, low, high, n) in enumerate(rows):
        y = len(rows) - 1 - k
        if np.isfinite(centre):
            upper = ax.get_xlim()[1] if high == np.inf else high if np.isfinite(high) else centre
            lower = low if np.isfinite(low) else centre
            ax.errorbar(centre, y, xerr=[[centre - lower], [upper - centre]], fmt="o", color=colour[potential],
                        capsize=3)
        ax.text(1.01, y, f"n = {int(n)}", transform=ax.get_yaxis_transform(), va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [display_name(r[0]) for r in rows][::-1], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    return fig, ax


def shrink_png(path: Path, colors: int = 96) -> None:
    """Rewrite a figure as a palette PNG (3-4x smaller, same look for line plots): the report's
    figures are committed, so they stay small."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
