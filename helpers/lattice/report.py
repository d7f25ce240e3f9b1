"""The lattice-energy tables, figure and report section (``docs/results.md``, ``docs/results.json``).

Per potential: X23 lattice-energy MAE with a 95 % bootstrap CI over the crystals, mean signed error (positive =
overbinding), worst crystal, the same at the fixed starting geometry, X23 volume errors against experiment; ICE13
absolute MAE, mean signed error and Spearman ρ of the polymorph ordering against DMC. kJ/mol per molecule.

How failures count: a crystal enters the MAE when both its molecule and crystal have an energy (converged, or the
last energy of a step-capped relaxation, flagged); one without (exploded, error, identity mismatch, element not
covered) cannot, and is counted in ``n`` and listed with its status, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.vocabulary import GLOSSARY_HEADING, REPORT_NAME

#: typical dispersion-corrected DFT on X23 (kJ/mol; ~1 kcal/mol: Reilly & Tkatchenko 2013, Otero-de-la-Roza &
#: Johnson 2012, Dolgonos et al. 2019)
DFT_D_X23_MAE_KJMOL = 4.0
CSV_NAME = "lattice_energy.csv"
FIGURE_NAME = "lattice_energy.png"
N_BOOT = 2000
BOOT_SEED = 0
#: the report section's first line: :func:`refresh_report_section` replaces from it to the next ``## `` heading
SECTION_HEADING = "## Lattice energies: X23 and ICE13"
#: statuses whose energy is a finished answer (a relaxed minimum, or the DFT crystal of a fixed-geometry run)
FINISHED = ("converged", "fixed_geometry")
#: the figure's marker, colour and legend per benchmark
MARKERS = {"x23": ("o", "tab:blue", "X23 (X23b)"), "ice13": ("^", "tab:orange", "ICE13 (DMC)")}


def _bootstrap_mae(errors: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean absolute error, resampling crystals (scipy)."""
    if len(errors) < 2:
        return (np.nan, np.nan)
    from scipy.stats import bootstrap

    result = bootstrap((np.abs(errors),), np.mean, n_resamples=n_boot, method="percentile",
                       random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _with_energy(frame: pd.DataFrame, column: str = "E_latt_kJmol") -> pd.DataFrame:
    return frame[np.isfinite(pd.to_numeric(frame[column], errors="coerce"))]


def potential_summary(table: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> pd.DataFrame:
    """One row per potential: the X23 and ICE13 numbers of the module docstring (kJ/mol, %)."""
    rows = []
    for potential, own in table.groupby("potential", sort=False):
        row: dict[str, Any] = {"potential": potential, "geometry": ", ".join(sorted(set(own["geometry"])))}
        x23, ice = own[own["benchmark"] == "x23"], own[own["benchmark"] == "ice13"]
        x = _with_energy(x23)
        err = x["error_kJmol"].to_numpy(float)
        low, high = _bootstrap_mae(err, n_boot, seed)
        worst = x.loc[x["error_kJmol"].abs().idxmax()] if len(x) else None
        fixed = _with_energy(x23, "E_latt_fixed_kJmol")
        at_dft = _with_energy(x23, "E_latt_dft_geometry_kJmol") if "E_latt_dft_geometry_kJmol" in x23 else x23[:0]
        dv = pd.to_numeric(x23["dV_exp_pct"], errors="coerce").dropna()
        dv_dft = pd.to_numeric(x23["dV_dft_pct"], errors="coerce").dropna() if "dV_dft_pct" in x23 else pd.Series()
        row.update({
            "x23_n": len(x23), "x23_n_in_mae": len(x), "x23_n_converged": int((x23["status"] == "converged").sum()),
            "x23_mae": float(np.abs(err).mean()) if len(err) else np.nan, "x23_mae_ci_low": low,
            "x23_mae_ci_high": high, "x23_mse": float(err.mean()) if len(err) else np.nan,
            "x23_worst": worst["crystal"] if worst is not None else None,
            "x23_worst_error": float(worst["error_kJmol"]) if worst is not None else np.nan,
            "x23_mae_fixed": float(fixed["error_fixed_kJmol"].abs().mean()) if len(fixed) else np.nan,
            "x23_mae_dft_geometry": float(at_dft["error_dft_geometry_kJmol"].abs().mean()) if len(at_dft) else np.nan,
            "x23_dV_mean_pct": float(dv.mean()) if len(dv) else np.nan,
            "x23_dV_mae_pct": float(dv.abs().mean()) if len(dv) else np.nan,
            # against the reference group's B86bPBE-XDM cells: a 0 K minimum against a 0 K minimum
            "x23_dV_dft_mean_pct": float(dv_dft.mean()) if len(dv_dft) else np.nan,
        })
        i = _with_energy(ice)
        ierr = i["error_kJmol"].to_numpy(float)
        rho = np.nan
        if len(i) >= 3:
            from scipy.stats import spearmanr

            rho = float(spearmanr(i["E_latt_kJmol"], i["ref_kJmol"]).statistic)
        row.update({
            "ice13_n": len(ice), "ice13_n_in_mae": len(i),
            "ice13_mae": float(np.abs(ierr).mean()) if len(ierr) else np.nan,
            "ice13_mse": float(ierr.mean()) if len(ierr) else np.nan,
            # the polymorphs relative to their mean: the ordering without the common offset
            "ice13_mae_relative": float(np.abs(ierr - ierr.mean()).mean()) if len(ierr) else np.nan,
            "ice13_spearman": rho,
        })
        bad = own[~own["status"].isin(FINISHED)]
        row["not_converged"] = "; ".join(f"{r.crystal}: {r.status}" for r in bad.itertuples()) or None
        rows.append(row)
    return pd.DataFrame(rows)


def parity_figure(table: pd.DataFrame, path: str | Path | None = None, columns: int = 4):
    """Predicted against reference lattice energy, one panel per potential (the table's order; a potential that
    was not relaxed is titled "DFT geometry"), X23 and ICE13 in each, step-capped crystals as open markers. Each
    panel spans its own points: one potential's outliers never squeeze the others."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.analysis.quantities import display_name

    potentials = list(dict.fromkeys(table["potential"]))
    rows = max(1, -(-len(potentials) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(potentials):]:
        ax.set_visible(False)
    for ax, potential in zip(axes.flat, potentials, strict=False):
        own = _with_energy(table[table["potential"] == potential])
        for benchmark, (marker, colour, _) in MARKERS.items():
            part = own[own["benchmark"] == benchmark]
            done = part["status"].isin(FINISHED)
            ax.scatter(part.loc[done, "ref_kJmol"], part.loc[done, "E_latt_kJmol"], s=16, marker=marker,
                       color=colour)
            if (~done).any():
                ax.scatter(part.loc[~done, "ref_kJmol"], part.loc[~done, "E_latt_kJmol"], s=30, marker=marker,
                           facecolors="none", edgecolors=colour, linewidths=0.9)
        span = pd.concat([own["ref_kJmol"], own["E_latt_kJmol"]])
        lo, hi = (float(span.min()) - 5, float(span.max()) + 5) if len(span) else (0.0, 1.0)
        line = np.array([lo, hi])
        ax.plot(line, line, "k-", lw=0.7)
        ax.fill_between(line, line - DFT_D_X23_MAE_KJMOL, line + DFT_D_X23_MAE_KJMOL, color="0.85", zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        fixed = set(own["geometry"]) == {"fixed"} if "geometry" in own else False
        ax.set_title(display_name(potential) + (" (DFT geometry)" if fixed else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("reference E_latt [kJ/mol]", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("predicted E_latt [kJ/mol]", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=m, color=c, label=label) for m, c, label in MARKERS.values()]
    handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", color="0.3",
                          label="open: not converged (step cap: last energy)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
               title="line: predicted = reference; band: ±4 kJ/mol (dispersion-corrected DFT on X23, typical)",
               title_fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _fmt(value: Any, digits: int = 1) -> str:
    try:
        return "–" if value is None or not np.isfinite(float(value)) else f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def summary_markdown_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per potential, formatted."""
    from helpers.analysis.quantities import display_name

    rows = []
    for r in summary.sort_values("x23_mae", na_position="last").itertuples():
        rows.append({
            "potential": display_name(r.potential) + (" (DFT geometry)" if r.geometry == "fixed" else ""),
            "X23 MAE [95 % CI]": f"{_fmt(r.x23_mae)} [{_fmt(r.x23_mae_ci_low)}, {_fmt(r.x23_mae_ci_high)}]",
            "X23 MSE": _fmt(r.x23_mse), "X23 worst": f"{r.x23_worst} ({_fmt(r.x23_worst_error)})",
            "X23 MAE expt geom.": _fmt(r.x23_mae_fixed),
            "X23 MAE DFT geom.": _fmt(getattr(r, "x23_mae_dft_geometry", np.nan)),
            "X23 ΔV mean / MAE [%]": f"{_fmt(r.x23_dV_mean_pct)} / {_fmt(r.x23_dV_mae_pct)}",
            "X23 ΔV vs DFT [%]": _fmt(r.x23_dV_dft_mean_pct),
            "X23 n (in MAE/all)": f"{r.x23_n_in_mae}/{r.x23_n}",
            "ICE13 MAE": _fmt(r.ice13_mae), "ICE13 MSE": _fmt(r.ice13_mse),
            "ICE13 rel. MAE": _fmt(r.ice13_mae_relative), "ICE13 ρ": _fmt(r.ice13_spearman, 2),
            "ICE13 n": f"{r.ice13_n_in_mae}/{r.ice13_n}",
        })
    return pd.DataFrame(rows)


def lattice_energy_section(docs_dir: str | Path, volume_ranking: pd.DataFrame | None = None,
                           n_boot: int = N_BOOT, expected: Sequence[str] = ()) -> list[str]:
    """Markdown lines of the report's lattice-energy section from ``docs_dir/lattice_energy.csv`` (none when
    absent), the figure ``figures/lattice_energy.png`` and the ``lattice_energy`` key of ``results.json``.
    ``volume_ranking``: the report's ΔV ranking (first row best on COD volume) for the closing sentence;
    ``expected``: the potentials that should have a table (the registry): those without one are named, so a
    benchmark not yet run is never mistaken for a potential left out."""
    from helpers.analysis.quantities import display_name
    from helpers.analysis.report_sections import _markdown
    from helpers.analysis.results_json import update_results_json

    docs = Path(docs_dir)
    csv = docs / CSV_NAME
    if not csv.is_file():
        return []
    table = pd.read_csv(csv)
    if table.empty:
        return []
    summary = potential_summary(table, n_boot=n_boot)
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    parity_figure(table, docs / "figures" / FIGURE_NAME)
    missing = not_run(table, expected)
    update_results_json(docs, "lattice_energy", {
        "units": "kJ/mol per molecule", "mae_counts": "crystals with both energies (step-capped: last energy)",
        "anchor_dft_d_x23_mae_kJmol": DFT_D_X23_MAE_KJMOL,
        "potentials": summary.set_index("potential").to_dict(orient="index"), "not_run": missing})
    bad = table[~table["status"].isin(FINISHED)]
    out = [
        SECTION_HEADING,
        "",
        "E_latt = E_mol − E_cryst / Z per molecule, in kJ/mol (kcal/mol beside it in `docs/lattice_energy.csv`), "
        "positive = bound; error = predicted − reference (positive: overbinding). X23: references back-corrected "
        "from experimental sublimation enthalpies (X23b, Dolgonos, Hoja & Boese 2019), crystals relaxed from the "
        "experimental CIF (hexamine's CIF has no H: from the reference DFT crystal) with the study's settings, the "
        "molecule relaxed in vacuum from the reference DFT geometry; ΔV = relaxed against the experimental cell "
        "(mean signed / mean absolute; `vs DFT`: mean signed against the "
        "reference B86bPBE-XDM cell, both 0 K minima, whereas the experiment carries thermal expansion). "
        "ICE13: absolute lattice energies from DMC (Della Pia et al. 2022), polymorphs relaxed from the DFT "
        "structures (ice IX has no reference in the data and is not run); ρ = Spearman rank correlation of the 12 "
        "polymorphs' lattice energies with DMC's (1: same ordering), rel. MAE = MAE after removing the mean offset. "
        "MAE CIs: 95 % bootstrap over crystals. Single points with the relaxed molecule: `expt geom.` the "
        "experimental crystal with each H moved along its bond to the mean neutron X–H distance (C–H 1.089, N–H "
        "1.015, O–H 0.993 Å; Allen & Bruno 2010 — X-ray H positions are 0.1–0.15 Å short, which alone costs tens "
        "of kJ/mol), `DFT geom.` the reference B86bPBE-XDM crystal; their difference to the relaxed MAE is how much "
        "of the error is the minimum moving. A potential marked `(DFT geometry)` was not relaxed (too slow here): "
        "its E_latt is at the DFT crystal. "
        "Crystals without an energy are not in the MAE: n counts them and they are listed below.",
        "",
        _markdown(summary_markdown_table(summary)),
        "",
        f"Anchors: typical dispersion-corrected DFT is within ~{DFT_D_X23_MAE_KJMOL:g} kJ/mol (1 kcal/mol) of X23 "
        "(e.g. B86bPBE-XDM, PBE-D3, PBE+MBD); DMC agrees with X23b within its error bars. A potential without "
        "long-range dispersion is expected to underbind (negative MSE).",
        "",
        f"![predicted against reference lattice energy](figures/{FIGURE_NAME})",
        "",
    ]
    if missing:
        out += [f"Not yet run (no lattice-energy table, so not in this section): "
                f"{', '.join(display_name(p) for p in missing)}.", ""]
    if len(bad):
        listing = bad[["potential", "benchmark", "crystal", "status", "E_latt_kJmol"]].copy()
        listing["potential"] = listing["potential"].map(display_name)
        listing["E_latt_kJmol"] = listing["E_latt_kJmol"].map(_fmt)
        out += ["Not converged or not computed (step-capped ones keep their last energy and are in the MAE; the "
                "others are not):", "", _markdown(listing), ""]
    sentence = best_on_both_counts(summary, volume_ranking)
    if sentence:
        out += [sentence, ""]
    return out


def best_on_both_counts(summary: pd.DataFrame, volume_ranking: pd.DataFrame | None) -> str:
    """The sentence that names the best potential on X23 lattice energies and the best on COD volumes (the
    report's ranking: first row, ``metric`` = median |ΔV₀|), and whether one potential is best on both."""
    from helpers.analysis.quantities import display_name

    best = summary.dropna(subset=["x23_mae"]).sort_values("x23_mae")
    if not len(best):
        return ""
    top = best.iloc[0]
    where = " at the DFT geometry" if top.get("geometry") == "fixed" else ""  # not relaxed: said where it is named
    sentence = (f"Best on X23 lattice energies: {display_name(top['potential'])}{where} (MAE {_fmt(top['x23_mae'])} "
                f"[{_fmt(top['x23_mae_ci_low'])}, {_fmt(top['x23_mae_ci_high'])}] kJ/mol)")
    if volume_ranking is None or not len(volume_ranking):
        return sentence + "."
    first = volume_ranking.iloc[0]
    sentence += (f"; best on COD volumes: {display_name(first['potential'])} (median |ΔV₀| "
                 f"{_fmt(first.get('metric'), 2)} % [{_fmt(first.get('metric_ci_low'), 2)}, "
                 f"{_fmt(first.get('metric_ci_high'), 2)}])")
    both = [p for p in volume_ranking["potential"] if p in set(best["potential"])]
    if not both:
        return sentence + ". No potential ranked on COD volumes has a lattice-energy table yet."
    on_x23 = [p for p in best["potential"] if p in both]
    if both[0] == on_x23[0]:
        sentence += (f". {display_name(both[0])} is best on both counts, among the {len(both)} potentials ranked on "
                     "both so far")
        if top["potential"] not in both:
            sentence += f" ({display_name(top['potential'])}, best on X23, is not ranked on COD volumes yet)"
        return sentence + "."
    order = ", ".join(f"{display_name(p)} {i + 1}/{on_x23.index(p) + 1}" for i, p in enumerate(both))
    return sentence + (". No potential is best on both counts; place on COD volumes / on X23 among the potentials "
                       f"with both: {order}.")


def not_run(table: pd.DataFrame, expected: Sequence[str]) -> list[str]:
    """The potentials of ``expected`` without a row in the combined table, in ``expected``'s order."""
    present = set(table["potential"]) if "potential" in table else set()
    return [p for p in expected if p not in present]


def volume_ranking_from_json(docs_dir: str | Path) -> pd.DataFrame | None:
    """The report's COD-volume ranking as ``docs_dir/results.json`` recorded it (ranked potentials, best first;
    ``potential``, ``metric`` and its CI), for the closing sentence when the volumes are not recomputed."""
    from helpers.analysis.results_json import read_results_json

    potentials = read_results_json(docs_dir).get("potentials", {})
    rows = [{"potential": name, "rank": entry.get("rank"), "metric": entry.get("metric"),
             "metric_ci_low": entry.get("metric_ci_low"), "metric_ci_high": entry.get("metric_ci_high")}
            for name, entry in potentials.items() if isinstance(entry, dict) and entry.get("ranked")]
    return pd.DataFrame(rows).sort_values("rank", kind="stable").reset_index(drop=True) if rows else None


def refresh_report_section(docs_dir: str | Path, expected: Sequence[str] = (), n_boot: int = N_BOOT) -> Path:
    """Rewrite only the lattice-energy section of ``docs_dir/results.md`` (and the ``lattice_energy`` key of
    ``results.json``, the figure) from ``docs_dir/lattice_energy.csv`` and the volume ranking the report
    recorded: what a lattice stage run on its own leaves, so the report never disagrees with the CSV beside it.
    Every other section is kept byte for byte; a report without the section gets it before the glossary."""
    docs = Path(docs_dir)
    report = docs / REPORT_NAME
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no report to refresh (run the report stage first)")
    lines = report.read_text(encoding="utf-8").split("\n")
    section = lattice_energy_section(docs, volume_ranking_from_json(docs), n_boot=n_boot, expected=expected)
    if SECTION_HEADING in lines:
        start = lines.index(SECTION_HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line == GLOSSARY_HEADING), len(lines))
    from helpers.process.atomic import write_atomic

    write_atomic(report, "\n".join(lines[:start] + section + lines[end:]).encode("utf-8"))
    return report


def combine_tables(paths: Sequence[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """The per-potential tables in one CSV (``docs/lattice_energy.csv``); missing files are skipped."""
    frames = [pd.read_csv(p) for p in paths if Path(p).is_file()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in table.columns:  # counts stay integers where a fixed-geometry potential has none (not 189.0)
        values = table[column]
        if values.dtype.kind == "f" and values.notna().any() and (values.dropna() % 1 == 0).all() \
                and any(pd.api.types.is_integer_dtype(f[column]) for f in frames if column in f):
            table[column] = values.astype("Int64")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return table
