"""``docs/results.md``: the study's table on real COD crystals, for every potential, from one campaign.

Every number in the report is read from the campaign's own analysis tables (``summary.csv``,
``errors.csv``, ``status_counts.csv``, ``thermal_summary.csv``, ``paired_volume.csv``), which
:func:`helpers.analysis.stage.analyse_errors` computes from ``errors.csv``; the tests regenerate the
report from a small fixed ``errors.csv`` and recompute its numbers by hand.
"""

from __future__ import annotations

import math
import platform
import shutil
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis import sample_sets
from helpers.analysis.flagged_report import flagged_section
from helpers.analysis.minima_section import minima_section
from helpers.analysis.quantities import QUANTITIES, STUDY_RESULT, display_name
from helpers.analysis.ranking import ranked_rows
from helpers.analysis.ranking_targets import (
    COVERAGE_MAX_ATOMS,
    coverage_goal_sentence,
    coverage_sets,
    science_coverage,
    science_targets,
)
from helpers.analysis.readme_headline import sync_readme
from helpers.analysis.report_figures import shrink_png
from helpers.analysis.report_sections import (
    ReportInputs,
    _markdown,
    apart_section,
    bonding_section,
    glossary_section,
    histogram_section_lines,
    ranking_section,
    sample_section,
    temperature_section,
    top_pairs_section,
    verdict_section,
)
from helpers.lattice.report import lattice_energy_section
from helpers.vocabulary import REPORT_NAME

#: COD entries made only of C, H, N and O (the study's count) — what the cost is projected to
COD_CHNO_ENTRIES = 42_748
STUDY_POTENTIALS = ("ani1x", "ani1ccx")
WORST_PER_POTENTIAL = 10
#: why our numbers may differ from the study's: said in every report, beside the computed comparison
CAVEATS = """Why the numbers may differ from the study's, in plain words:

- **Sample.** The study relaxed 3000 of ~35,000 clean COD entries; the science tables here rest on the clean
  unaltered entries of `cod-sample/` (a published force-field benchmark list), which are not a random sample
  of COD: typical small organic crystals, few large or disordered ones. The COD tool suite's test inputs
  (`cod/`), altered on purpose, are the filter's material and are reported apart.
- **Temperature.** Most COD cells are measured at 100–300 K; a 0 K relaxation should come out smaller by
  roughly 1.65·10⁻⁴ K⁻¹ × T. The thermal-corrected table removes this first-order effect; it does not remove
  zero-point expansion.
- **Duplicates.** Redeterminations and polymorphs of one compound count once each in "all entries"; the
  one-per-compound rows show whether they move μ and σ.
- **The float32 draft (ANI).** ANI's fast path moves crystals on float32 forces first, but every reported
  energy, force, stress and convergence verdict comes from the float64 model at fmax = 5·10⁻⁴ eV/Å; on the
  benchmark crystals volumes agree with the study's one-at-a-time method within 0.003 % (README).
- **The seed Hessian (SevenNet, CHGNet, GFN-FF).** Their BFGS starts from the Hessian ANI-2x computes at the
  start geometry instead of ASE's guess: about half the steps, the same minimum on the benchmark crystals
  (volumes within 0.01 %, docs/throughput.md) and on GFN-FF's first campaign crystals (within 0.04 %), where
  BFGS from ASE's guess had stalled at the step cap on 3 of 13. Every reported number is the potential's own.
  The ANI models keep the study's start, so a step-capped ANI row is the study's procedure failing, counted
  as a failure like any other. The graph models run in float32 (SevenNet's layers compiled): their forces
  carry float32 rounding near the fmax threshold.
- **The optimizer.** BFGS on a flat surface can stop in different nearby minima (NOTES: a urea supercell
  ends at +0.6 % or +7.8 % depending on tolerance and optimizer); step-capped rows are excluded from μ/σ.
- **The potentials.** ANI sees nothing beyond its 5.2 Å cutoff (no long-range dispersion); D3 added on top
  also repeats the short-range part the networks learned, and the `-d3` rows come out much smaller (README).
  The graph potentials (SevenNet, CHGNet) learned PBE (SevenNet-MF-0's head: r²SCAN) on the Materials
  Project's relaxations, mostly inorganic solids, and get their dispersion from D3(BJ) for that functional:
  their errors are the functional's with D3 as much as the network's. GFN-FF (molecular-crystal parameters)
  keeps the start's bonding topology; AIMNet2 is shown for completeness only (docs/aimnet2.md).
- **Γ-point tight binding.** tblite (GFN1-/GFN2-xTB) has no k-points: each crystal is evaluated on its
  supercell of ≥ 8 Å perpendicular widths (the equivalent k-point mesh). Solved at Γ in their own 3.4–5 Å
  cells, as an earlier run of this campaign did, tetrazole collapsed by 46 % and the relaxed cells were under
  up to 31 GPa once evaluated on the mesh (`benchmarks/xtb_gamma_point.py`); those rows are left out.
"""


def read_tables(analysis_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The analysis CSVs the report is made of."""
    folder = Path(analysis_dir)
    names = ("summary", "errors", "status_counts", "thermal_summary", "paired_volume", "structure_summary",
             "left_out", "sets_summary", "consensus_outliers")
    tables = {}
    for name in names:
        path = folder / f"{name}.csv"
        # an empty table may be written as an empty file (no header): nothing listed
        tables[name] = pd.read_csv(path, index_col=0 if name == "status_counts" else None) \
            if path.is_file() and path.stat().st_size > 1 else pd.DataFrame()
    return tables


def _num(value: Any, digits: int = 2) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _ci(row: pd.Series, stat: str, digits: int = 2) -> str:
    return f"[{_num(row.get(f'{stat}_ci_low'), digits)}, {_num(row.get(f'{stat}_ci_high'), digits)}]"


def _rows(summary: pd.DataFrame, quantity: str, entries: str = "all") -> pd.DataFrame:
    if summary.empty:
        return summary
    chosen = summary[(summary["quantity"] == quantity) & (summary.get("entries", "all") == entries)]
    return chosen.set_index("potential")


def study_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """The study's table beside ours for ANI-1x and ANI-1ccx: ΔV and Δ|a1|, μ and σ with 95 % CIs."""
    rows = []
    for quantity in ("volume", "a1"):
        ours = _rows(summary, quantity)
        for potential in STUDY_POTENTIALS:
            study = STUDY_RESULT.query("quantity == @quantity and potential == @potential").iloc[0]
            row = ours.loc[potential] if potential in ours.index else pd.Series(dtype=object)
            rows.append({
                "quantity": f"{QUANTITIES[quantity].label} [%]", "potential": display_name(potential),
                "study μ": _num(study.mu_study, 1), "study σ": _num(study.sigma_study, 1),
                "μ": _num(row.get("mu")), "μ 95 % CI": _ci(row, "mu"),
                "μ CI, bins refitted": _ci(row, "mu_refit"),
                "σ": _num(row.get("sigma")), "σ 95 % CI": _ci(row, "sigma"),
                "σ CI, bins refitted": _ci(row, "sigma_refit"),
                "median": _num(row.get("median")), "MAD": _num(row.get("mad")),
                "n": int(row["n"]) if "n" in row and not pd.isna(row["n"]) else 0,
                "fit": str(row.get("fit_method", "–")),
            })
    return pd.DataFrame(rows)


def ranking(summary: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """Every potential on ΔV, ranked by the median |ΔV| of its converged structures (closest first)."""
    ours = _rows(summary, "volume")
    converged = errors[errors["status"] == "converged"]
    rows = []
    for potential, row in ours.iterrows():
        dv = pd.to_numeric(converged.loc[converged["potential"] == potential, "dV_pct"], errors="coerce").dropna()
        rows.append({"potential": display_name(potential), "n": int(row["n"]),
                     "median abs ΔV [%]": float(dv.abs().median()) if len(dv) else np.nan,
                     "median ΔV [%]": row["median"], "median 95 % CI": _ci(row, "median"),
                     "MAD [%]": row["mad"], "μ [%]": row["mu"], "σ [%]": row["sigma"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("median abs ΔV [%]", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    for column in ("median abs ΔV [%]", "median ΔV [%]", "MAD [%]", "μ [%]", "σ [%]"):
        table[column] = table[column].map(_num)
    return table


#: fewer structures than this in common and the same-structures ranking is not shown
MIN_COMMON = 5


def common_ranking(errors: pd.DataFrame) -> tuple[pd.DataFrame, int, list[tuple[str, int]]]:
    """Every potential on the structures all of them relaxed to convergence: a fair ranking when the
    potentials ran on different subsets. When fewer than :data:`MIN_COMMON` structures are common, the
    potential with the fewest converged structures is left out, then the next, until enough are (one
    small-subset potential must not leave the others without a fair ranking). Returns the table, the number
    of common structures and the potentials left out with their converged counts."""
    converged = errors[errors["status"] == "converged"].copy()
    converged["dV_pct"] = pd.to_numeric(converged["dV_pct"], errors="coerce")
    converged = converged.dropna(subset=["dV_pct"])
    done = {p: set(converged.loc[converged.potential == p, "structure_id"])
            for p in sorted(set(errors.get("potential", [])))}
    left_out: list[tuple[str, int]] = []
    common = set.intersection(*done.values()) if done else set()
    while len(common) < MIN_COMMON and len(done) > 2:
        fewest = min(done, key=lambda p: (len(done[p]), p))
        left_out.append((fewest, len(done.pop(fewest))))
        common = set.intersection(*done.values())
    if len(common) < MIN_COMMON:
        return pd.DataFrame(), len(common), left_out
    rows = []
    for potential in done:
        dv = converged[(converged.potential == potential) & converged.structure_id.isin(common)]["dV_pct"]
        rows.append({"potential": display_name(potential), "n": len(dv), "median abs ΔV [%]": dv.abs().median(),
                     "median ΔV [%]": dv.median(), "mean ΔV [%]": dv.mean(), "worst ΔV [%]": dv.loc[dv.abs().idxmax()]})
    table = pd.DataFrame(rows).sort_values("median abs ΔV [%]", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    for column in ("median abs ΔV [%]", "median ΔV [%]", "mean ΔV [%]", "worst ΔV [%]"):
        table[column] = table[column].map(_num)
    return table, len(common), left_out


def lattice_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per potential: median (MAD) of Δ|a1|, Δ|a2|, Δ|a3|, Δρ, and how many angles changed at all."""
    potentials = sorted(set(summary.get("potential", [])))
    rows = []
    for potential in potentials:
        record = {"potential": display_name(potential)}
        for quantity in ("a1", "a2", "a3", "density"):
            ours = _rows(summary, quantity)
            row = ours.loc[potential] if potential in ours.index else pd.Series(dtype=object)
            record[f"{QUANTITIES[quantity].label} median (MAD) [%]"] = \
                f"{_num(row.get('median'))} ({_num(row.get('mad'))})"
        for quantity in ("alpha", "beta", "gamma"):
            ours = _rows(summary, quantity)
            row = ours.loc[potential] if potential in ours.index else pd.Series(dtype=object)
            record[f"{QUANTITIES[quantity].label}: fraction changed / median of changed [°]"] = \
                f"{_num(row.get('fraction_changed'))} / {_num(row.get('median_changed'))}"
        rows.append(record)
    return pd.DataFrame(rows)


def thermal_table(thermal: pd.DataFrame) -> pd.DataFrame:
    """ΔV and Δ|a1| before and after extrapolating the experiment to 0 K."""
    if thermal.empty:
        return thermal
    rows = []
    for potential, group in thermal.groupby("potential"):
        by = group.set_index("quantity")
        record = {"potential": display_name(potential)}
        for quantity in ("volume", "volume_thermal", "a1", "a1_thermal"):
            row = by.loc[quantity] if quantity in by.index else pd.Series(dtype=object)
            record[f"{QUANTITIES[quantity].label} median [%]"] = _num(row.get("median"))
        rows.append(record)
    return pd.DataFrame(rows)


def compound_table(summary: pd.DataFrame) -> pd.DataFrame:
    """ΔV over every entry (the study's way) and over one entry per compound."""
    rows = []
    for entries in ("all", "one_per_compound", "one_per_polymorph"):
        for potential, row in _rows(summary, "volume", entries).iterrows():
            rows.append({"entries": entries, "potential": display_name(potential), "n": int(row["n"]),
                         "μ [%]": _num(row["mu"]), "σ [%]": _num(row["sigma"]), "median [%]": _num(row["median"]),
                         "median 95 % CI": _ci(row, "median"), "MAD [%]": _num(row["mad"]),
                         "median CI": str(row.get("median_ci_method", "percentile bootstrap"))})
    return pd.DataFrame(rows)


def status_table(counts: pd.DataFrame) -> pd.DataFrame:
    """How the relaxations ended, per potential."""
    if counts.empty:
        return counts
    table = counts.reset_index().rename(columns={"index": "potential"})
    table["potential"] = table["potential"].map(display_name)
    return table


def _short(text: Any, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis ('–' when missing): the full text is in errors.csv."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return "–"
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def worst(errors: pd.DataFrame, potential: str, k: int = WORST_PER_POTENTIAL) -> pd.DataFrame:
    """The ``k`` structures with the largest |ΔV| (any status), what they are (the CIF's name, else its
    formula; 02_filter's molecules and flags) and what went wrong with each."""
    rows = errors[errors["potential"] == potential].copy()
    rows["abs_dv"] = pd.to_numeric(rows["dV_pct"], errors="coerce").abs()
    rows = rows.sort_values(["abs_dv", "structure_id"], ascending=[False, True], na_position="last").head(k)
    out = []
    for _, row in rows.iterrows():
        problems = []
        if row["status"] != "converged":
            problems.append(str(row["status"]))
        if row.get("sg_survived") is False or str(row.get("sg_survived")) == "False":
            problems.append(f"space group lost ({row.get('sg_exp_symbol')} → {row.get('sg_relaxed_symbol')})")
        if str(row.get("molecules_same")) == "False" or str(row.get("bonds_intact")) == "False":
            problems.append("molecules broken or bonded")
        if row["abs_dv"] > 20:
            problems.append("|ΔV| > 20 %")
        name = row.get("compound_name")
        out.append({"structure_id": row["structure_id"],
                    "compound": _short(name if isinstance(name, str) and name else row.get("cif_formula"), 48),
                    "molecules (02_filter)": _short(row.get("molecules"), 72), "natoms": row.get("natoms"),
                    "ΔV [%]": _num(row.get("dV_pct")), "Δ|a1| [%]": _num(row.get("da1_pct")),
                    "T [K]": _num(row.get("temperature"), 0), "filter flags": _short(row.get("filter_flags"), 40),
                    "what went wrong": "; ".join(problems) or "large ΔV"})
    return pd.DataFrame(out)


def cost_table(errors: pd.DataFrame, clean_fraction: float | None,
               max_atoms: dict[str, int | None] | None = None,
               coverage: dict[str, tuple[int, int]] | None = None) -> pd.DataFrame:
    """Cost per crystal on this machine (one core each) and the projection to every C/H/N/O COD entry.

    The cost is the crystal's CPU time (core-seconds: its share of every side-by-side pass plus its own
    work) where the row records one; older rows have only the wall-clock share, which counts higher
    when the machine was shared (the ``clock`` column says which).

    A potential run on small structures only (``max_atoms``) gets a projection marked as a lower bound:
    its mean cost comes from the cheap end of the sample. One that has not finished its structures
    (``coverage``) gets none: which of them finished first decides its mean."""
    rows = []
    for potential, group in errors.groupby("potential"):
        cpu = pd.to_numeric(group.get("cpu_time", pd.Series(index=group.index, dtype=float)), errors="coerce")
        wall = pd.to_numeric(group.get("cost_time"), errors="coerce")
        cost = cpu.fillna(wall).dropna()  # CPU time where recorded (rows from before it: wall-clock share)
        if cost.empty:
            continue
        n_cpu = int(cpu.notna().sum())
        clock = "CPU" if n_cpu == len(cost) else "wall" if n_cpu == 0 else f"CPU ({n_cpu}), wall ({len(cost) - n_cpu})"
        projected = COD_CHNO_ENTRIES * (clean_fraction or 1.0) * cost.mean() / 3600
        subset = (max_atoms or {}).get(potential)
        target, done = (coverage or {}).get(potential, (0, 0))
        partial = done < target
        structures = subset_text(potential, subset) or "all"
        rows.append({"potential": display_name(potential), "crystals": len(cost), "clock": clock,
                     "structures": f"{structures}, {done} of {target} done" if partial else structures,
                     "median s/crystal": _num(cost.median(), 1), "mean s/crystal": _num(cost.mean(), 1),
                     "total core-hours": _num(cost.sum() / 3600, 2),
                     "projected core-hours, all C/H/N/O COD": "– (partial run)" if partial
                     else f"{'> ' if subset else ''}{projected:,.0f}"})
    return pd.DataFrame(rows)


def subset_text(potential: str, max_atoms: int | None) -> str | None:
    """A subset in words: "≤ 60 atoms", or for a Γ-point code (tblite), whose cost grows with the supercell
    it evaluates, "≤ 100 atoms in its 8 Å supercell"; None for every structure."""
    from helpers.relax.potentials.registry import REGISTRY

    if not max_atoms:
        return None
    width = getattr(REGISTRY.get(potential), "supercell_min_width", 0.0)
    return f"≤ {max_atoms} atoms" + (f" in its {width:g} Å supercell" if width else "")


def coverage_table(coverage: dict[str, tuple[int, int]], max_atoms: dict[str, int | None],
                   yardstick: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """What each potential was to relax and what it finished: the report's honesty about a partial run; with
    ``yardstick`` (potential -> :func:`helpers.analysis.ranking_targets.coverage`) its coverage on the one
    yardstick every potential shares."""
    rows = []
    for potential, (target, done) in coverage.items():
        subset = max_atoms.get(potential)
        row = {"potential": display_name(potential),
               "structures": f"clean, {subset_text(potential, subset)}" if subset else "every clean",
               "to relax": target, "finished": done,
               "state": "complete" if done >= target else ("not started" if done == 0 else "partial")}
        if yardstick is not None:
            got = yardstick.get(potential) or {}
            row[f"coverage: science ≤ {COVERAGE_MAX_ATOMS} atoms"] = (
                f"{got['n_covered']} of {got['n_yardstick']} ({got['coverage']:.0%})" if got.get("n_yardstick")
                else "–")
        rows.append(row)
    return pd.DataFrame(rows)


def yardstick_coverage(inputs: ReportInputs) -> dict[str, dict[str, Any]] | None:
    """Per potential, :func:`helpers.analysis.ranking_targets.coverage` of its science rows on its yardstick."""
    sets = inputs.extra.get("coverage_sets")
    if sets is None:
        return None
    column = "potential_name" if "potential_name" in inputs.science else "potential"
    return {p: science_coverage(inputs.science, p, sets, column) for p in sets}


def coverage_sentence(coverage: pd.DataFrame) -> str:
    """What the rows below stand for: everything the campaign set out to relax, or only what it finished."""
    unfinished = coverage[coverage["state"] != "complete"]
    if unfinished.empty:
        return "Every potential finished every structure it was to relax: the rows below are the whole campaign."
    return (f"Not finished: {', '.join(unfinished['potential'])}. Rows below count only finished relaxations: a "
            "partial potential's numbers describe the structures it finished, which need not be representative (a "
            "small-structure pass may have run first; within a pass the largest go first).")


def worst_picture(errors: pd.DataFrame, potential: str, path: Path, k: int = WORST_PER_POTENTIAL) -> Path | None:
    """One small PNG: the relaxed cells of the ``k`` worst structures (from their databases)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.visualize.plot import plot_atoms

    from helpers.store import db as dbmod

    chosen = worst(errors, potential, k)
    if chosen.empty or "db" not in errors:
        return None
    lookup = errors[errors["potential"] == potential].set_index("structure_id")
    n = len(chosen)
    cols = min(5, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(2.2 * cols, 2.3 * math.ceil(n / cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sid in zip(axes.flat, chosen["structure_id"]):
        record = lookup.loc[sid]
        try:
            atoms = dbmod.connect(record["db"], must_exist=True).get(id=int(record["row_id"])).toatoms()
            plot_atoms(atoms, ax, radii=0.4, rotation="10x,20y,0z", show_unit_cell=2)
        except Exception:  # noqa: BLE001 - a missing database only loses the picture
            pass
        ax.set_title(f"{sid}\nΔV {_num(record.get('dV_pct'), 1)} %", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def discussion(summary: pd.DataFrame, errors: pd.DataFrame, paired: pd.DataFrame | None = None,
               thermal: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None) -> str:
    """Plain-words comparison with the study, each statement computed from the tables. ``pairs``: the ranking's
    Holm-corrected sign tests (:func:`helpers.analysis.ranking.paired_verdicts`); ANI-1ccx against ANI-1x is
    told from them when given (the test and its interval about one quantity), else from ``paired``."""
    lines = []
    for quantity in ("volume", "a1"):
        ours = _rows(summary, quantity)
        for potential in STUDY_POTENTIALS:
            if potential not in ours.index:
                continue
            row = ours.loc[potential]
            study = STUDY_RESULT.query("quantity == @quantity and potential == @potential").iloc[0]
            low, high = row.get("mu_ci_low"), row.get("mu_ci_high")
            inside = (not pd.isna(low)) and low <= study.mu_study <= high
            s_low, s_high = row.get("sigma_ci_low"), row.get("sigma_ci_high")
            s_inside = (not pd.isna(s_low)) and s_low <= study.sigma_study <= s_high
            lines.append(
                f"- {QUANTITIES[quantity].label}, {display_name(potential)}: μ = {_num(row['mu'])} % "
                f"(95 % CI {_ci(row, 'mu')}, n = {int(row['n'])}) against the study's {study.mu_study:.1f} %: "
                f"the study's value is {'inside' if inside else 'outside'} our interval; σ = {_num(row['sigma'])} % "
                f"(95 % CI {_ci(row, 'sigma')}) against {study.sigma_study:.1f} %, "
                f"{'inside' if s_inside else 'outside'} it.")
    volume = _rows(summary, "volume")
    study = STUDY_RESULT.query("quantity == 'volume'").set_index("potential")["mu_study"]
    if all(p in volume.index for p in STUDY_POTENTIALS):
        shifts = {p: volume.loc[p, "mu"] - study[p] for p in STUDY_POTENTIALS}
        same_sign = len({np.sign(v) for v in shifts.values()}) == 1
        lines.append(
            "- Both study potentials against the study: μ(ΔV) is shifted by "
            + " and ".join(f"{v:+.1f} points ({display_name(p)})" for p, v in shifts.items())
            + (". Both shifted the same way; whether measurement temperature or crystal size accounts for it is "
               "tested in *Temperature and size* above, and the duplicates' effect is in *Duplicates*: no cause is "
               "claimed here beyond what those rows show." if same_sign else
               ". The shifts have opposite signs: the sample alone does not explain the difference."))
    pair = pd.DataFrame()
    if pairs is not None and len(pairs):
        pair = pairs[(pairs["potential_a"] == "ani1ccx") & (pairs["potential_b"] == "ani1x")]
    if len(pair):
        row = pair.iloc[0]
        lines.append(
            f"- ANI-1ccx against ANI-1x on the same {int(row['n'])} shared structures (failures as ∞): ANI-1ccx closer "
            f"on {int(row['a_closer'])}, ANI-1x on {int(row['b_closer'])}; median |ΔV₀| difference "
            f"{_num(row['median_d'])} points (exact 95 % CI [{_num(row['median_d_ci_low'])}, "
            f"{_num(row['median_d_ci_high'])}]), sign test Holm-adjusted over all pairs: {row['verdict']}.")
    elif paired is not None and len(paired):
        pair = paired[(paired.get("potential_a") == "ani1ccx") & (paired.get("potential_b") == "ani1x")]
        if len(pair):
            row = pair.iloc[0]
            lines.append(
                f"- ANI-1ccx against ANI-1x on the same {int(row['n_common'])} structures: ΔV differs by a median "
                f"{_num(row['median_diff'])} percentage points (95 % CI [{_num(row['median_diff_ci_low'])}, "
                f"{_num(row['median_diff_ci_high'])}]); the study's μ differ by "
                f"{study['ani1ccx'] - study['ani1x']:+.1f} points. "
                + ("Same direction: ANI-1ccx gives the smaller cells in both."
                   if np.sign(row["median_diff"]) == np.sign(study["ani1ccx"] - study["ani1x"])
                   else "Opposite directions.")
                + f" Which is closer to experiment: {row['verdict']}.")
    if thermal is not None and len(thermal):
        for potential in STUDY_POTENTIALS:
            rows = thermal[thermal.get("potential") == potential].set_index("quantity")
            if {"volume", "volume_thermal"} <= set(rows.index):
                before, after = rows.loc["volume"], rows.loc["volume_thermal"]
                lines.append(
                    f"- Temperature, {display_name(potential)}: comparing with the cell extrapolated to 0 K moves the "
                    f"median ΔV from {_num(before['median'])} % to {_num(after['median'])} % "
                    f"(n = {int(after['n'])}, entries with a temperature); the study did not correct, so its μ "
                    "should be compared with the uncorrected row.")
    if "entries" in summary.columns:
        for potential in STUDY_POTENTIALS:
            both = summary[(summary.quantity == "volume") & (summary.potential == potential)].set_index("entries")
            if {"all", "one_per_compound"} <= set(both.index):
                lines.append(
                    f"- Duplicates, {display_name(potential)}: one entry per compound moves μ from "
                    f"{_num(both.loc['all', 'mu'])} % to {_num(both.loc['one_per_compound', 'mu'])} % "
                    f"(n {int(both.loc['all', 'n'])} → {int(both.loc['one_per_compound', 'n'])}).")
    structures = errors.drop_duplicates("structure_id") if "structure_id" in errors else errors
    temperature = pd.to_numeric(structures.get("temperature"), errors="coerce").dropna()
    if len(temperature):
        lines.append(f"- Measurement temperatures of the sample: median {temperature.median():.0f} K "
                     f"({(temperature < 150).mean():.0%} below 150 K). A 0 K relaxation with a perfect potential "
                     "comes out a few % smaller than a room-temperature cell (≈ 1.65·10⁻⁴ K⁻¹ · ΔT); the "
                     "thermal-corrected table shows how much of ΔV this explains.")
    return "\n".join(lines)


def left_out_sentence(left_out: pd.DataFrame) -> str:
    """What the analysis did not use (left_out.csv), counted per reason and potential; "" when nothing."""
    if left_out.empty:
        return ""
    kinds = left_out.assign(kind=left_out["reason"].astype(str).str.split(" (", regex=False).str[0])
    parts = [f"{n} {kind} ({', '.join(f'{p} {k}' for p, k in group['potential'].value_counts().sort_index().items())})"
             for kind, group in kinds.groupby("kind") for n in [len(group)]]
    return (f"Left out of every table below ({len(left_out)} relaxed rows, listed with their reason in the "
            f"analysis's `left_out.csv`): {'; '.join(parts)}.")


def _common_section(errors: pd.DataFrame) -> list[str]:
    table, n_common, left_out = common_ranking(errors)
    if table.empty:
        were = "structure was" if n_common == 1 else "structures were"
        return [f"Only {n_common} {were} relaxed to convergence by every potential: no same-structures ranking.", ""]
    heading = (f"The same ranking on the {n_common} structures every potential relaxed to convergence (the fair "
               "comparison when the potentials ran on different subsets)")
    if left_out:
        heading += ("; left out of it for too few structures in common: "
                    + ", ".join(f"{display_name(p)} ({n} converged)" for p, n in left_out))
    return [heading + ":", "", _markdown(table), ""]


def header_section(inputs: ReportInputs) -> list[str]:
    """Title and what was run, with which settings and estimators."""
    info, plan = inputs.info, inputs.plan
    return [
        "# Results: ANI and other potentials against experimental COD crystals",
        "",
        f"Generated by `make results` on {date.today().isoformat()} ({platform.node()}, "
        f"{info.get('cores', '?')} cores). Sources: {', '.join(f'`{Path(s).name}/`' for s in plan.sources)} "
        f"of the shared real COD data ({info.get('n_files', '?')} CIF files, {info.get('n_raw', '?')} entries, "
        f"{info.get('n_clean', '?')} clean after 02_filter). Settings: the study's (BFGS, atoms + cell, "
        "fmax = 5·10⁻⁴ eV/Å, cap 300 + x·n_atoms), the fast path with its exact float64 finish. "
        "Every number below is read from this run's analysis tables (`errors.csv`, `summary.csv`, "
        "`sets_summary.csv`, `status_counts.csv`, `thermal_summary.csv`). The primary estimator is the median "
        "(spread: MAD); medians of fewer than 30 values get exact order-statistic 95 % CIs, larger ones seeded "
        "bootstrap CIs. The study's Gaussian fit (μ, σ) is kept as the study's view, with a bootstrap that refits "
        "window and bins too. Terms are explained in the glossary.",
        "",
    ]


def run_section(inputs: ReportInputs) -> list[str]:
    """What each potential was to relax and finished, what was left out, how long it took."""
    info, tables = inputs.info, inputs.tables
    yardstick = yardstick_coverage(inputs)
    coverage = (coverage_table(info["coverage"], inputs.plan.max_atoms, yardstick)
                if info.get("coverage") else None)
    goal = coverage_goal_sentence(yardstick or {}, {p: display_name(p) for p in yardstick or {}})
    return [
        *(["## What was run", "", _markdown(coverage), "", coverage_sentence(coverage) + (f" {goal}" if goal else ""),
           ""] if coverage is not None else []),
        *([left_out_sentence(tables["left_out"]), ""] if not tables["left_out"].empty else []),
        *(["Campaign wall time on this machine (every run added: resumed relaxations, each regeneration of the "
           "analysis and report): "
           + ", ".join(f"{stage} {minutes / 60:.1f} h" if minutes >= 60 else f"{stage} {minutes:.1f} min"
                       for stage, minutes in info["stage_minutes"].items()) + ".", ""]
          if info.get("stage_minutes") else []),
    ]


def study_section(inputs: ReportInputs) -> list[str]:
    """The study's table beside ours (the study's view: its Gaussian fit), with the per-potential histograms."""
    lines = ["## The study's table beside ours", "", _markdown(study_comparison(inputs.tables["summary"])), "",
             "μ and σ: the study's Gaussian fit to the histogram (or the normal MLE where the histogram cannot "
             "support one: `fit`); '95 % CI' keeps the bins fixed, 'CI, bins refitted' resamples the whole "
             "procedure (window, bins, bounds) and is the honest one. The science sample only.", ""]
    return lines + histogram_section_lines(inputs)


def duplicates_section(inputs: ReportInputs) -> list[str]:
    """ΔV over every entry, one per compound and one per polymorph (compound and packing)."""
    return ["## Duplicates: all entries, one per compound, one per polymorph", "",
            _markdown(compound_table(inputs.tables["summary"])), "",
            "One per polymorph: entries of one compound (InChIKeys) are the same crystal when they share the "
            "space group and their volume per atom, extrapolated to 0 K, agrees within 3 %; polymorphs (other "
            "packings) stay apart. Representative: lowest R factor, then lowest temperature.", ""]


def discussion_section(inputs: ReportInputs) -> list[str]:
    tables = inputs.tables
    return ["## Discussion", "",
            discussion(tables["summary"], inputs.science, tables["paired_volume"], tables["thermal_summary"],
                       pairs=inputs.ranking["pairs"]), ""]


def flagged_report_section(inputs: ReportInputs) -> list[str]:
    """Issue 36's section: how much of each tail is entries whose CIF is in doubt (consensus outliers)."""
    return flagged_section(inputs.extra["analysis_dir"], inputs.docs, inputs.tables)


def lattice_section(inputs: ReportInputs) -> list[str]:
    """Issue 30's section: lattice energies beside the volumes, the best on COD volumes named from the ranking."""
    ranked = ranked_rows(inputs.ranking["table"])
    from helpers.relax.potentials.registry import REGISTRY

    return lattice_energy_section(inputs.docs, ranked if len(ranked) else None, expected=list(REGISTRY))


def appendix_section(inputs: ReportInputs) -> list[str]:
    """Details: per-potential tables on each potential's own converged structures, lattice, temperature,
    status, cost, the worst structures, the caveats."""
    tables, plan, science = inputs.tables, inputs.plan, inputs.science
    summary, errors = tables["summary"], inputs.errors
    out = [
        "## Appendix", "",
        "### Each potential on its own converged structures (not a ranking: different populations)", "",
        _markdown(ranking(summary, science)), "",
        "Subsets: " + (", ".join(f"{display_name(p)} {subset_text(p, n)}" for p, n in plan.max_atoms.items() if n)
                       or "every potential relaxed every clean structure") + ".",
        "", *_common_section(science),
        "### Cell lengths, angles and density", "", _markdown(lattice_table(summary)), "",
        "### Before and after the temperature correction (α_V fixed, entries with a temperature)", "",
        _markdown(thermal_table(tables["thermal_summary"])), "",
        *_figure_link("ΔV against measurement temperature", "dv_vs_temperature.png", inputs.extra.get("copied", [])),
        "### How the relaxations ended", "", _markdown(status_table(tables["status_counts"])), "",
        *(["`study_fallback`: of these, the crystals the fast path left at its step cap and the study's method "
           "(float64, one crystal at a time, ASE's BFGS from its default Hessian) relaxed again; its result is the "
           "one counted (docs/reliability.md).", ""] if "study_fallback" in tables["status_counts"] else []),
        "### Cost on this machine", "",
        _markdown(cost_table(errors, inputs.extra.get("clean_fraction"), plan.max_atoms,
                             inputs.info.get("coverage"))), "",
        f"Projection: {COD_CHNO_ENTRIES:,} C/H/N/O COD entries × the clean fraction of this sample "
        f"({_num(inputs.extra.get('clean_fraction')) if inputs.extra.get('clean_fraction') else '–'}) × the mean "
        "cost per crystal, one core each. `clock`: CPU = the crystal's CPU time (core-seconds, its share of every "
        "side-by-side pass), the same on a busy or an idle machine; wall = its wall-clock share, recorded before "
        "CPU time was, which counts higher when other work shared the cores.",
        "",
        "### Where each potential fails: its ten worst science structures", "",
        "By |ΔV| (failures included), with what each crystal is: the CIF's name (else its formula) and the "
        "molecules 02_filter found in it (count in the cell × SMILES; `errors.csv` → `compound_name`, "
        "`molecules` hold them in full), the filter's doubts about the entry, and what went wrong in the "
        "relaxation.", "",
    ]
    for potential in inputs.extra.get("potentials", []):
        out += [f"#### {display_name(potential)}", "", _markdown(worst(science, potential)), ""]
        if inputs.extra.get("pictures", {}).get(potential):
            out += [f"![worst {potential}](figures/worst_{potential}.png)", ""]
    return out + ["### Caveats", "", CAVEATS, ""]


def write_report(analysis_dir: str | Path, plan: Any, docs_dir: str | Path = "docs",
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``docs_dir/results.md`` and its figures (``docs_dir/figures/``) from the analysis tables."""
    require_complete_analysis(analysis_dir)
    tables = read_tables(analysis_dir)
    errors = tables["errors"]
    docs = Path(docs_dir)
    figures = docs / "figures"
    figures.mkdir(parents=True, exist_ok=True)  # may be a symlink; the files in it that are not ours stay
    copied = []
    for name in ("dv_vs_temperature.png",):  # the analysis's figures the report shows (it draws the others)
        source = Path(analysis_dir) / name
        if source.is_file():
            _replace_file(figures / name, lambda tmp, source=source: shutil.copyfile(source, tmp))
            copied.append(name)
    info = extra or {}
    clean_fraction = info.get("clean_fraction")
    potentials = sorted(set(errors.get("potential", [])))
    science = sample_sets.science(errors) if len(errors) else errors  # the worst structures are science ones
    pictures = {p: _replace_file(figures / f"worst_{p}.png", lambda tmp, p=p: worst_picture(science, p, tmp))
                for p in potentials}
    for path in [figures / name for name in copied] + [path for path in pictures.values() if path]:
        shrink_png(path)  # our own file, just put in place
    inputs = ReportInputs(tables=tables, plan=plan, info=info, docs=docs, figures=figures,
                          extra={"pictures": pictures, "clean_fraction": clean_fraction, "potentials": potentials,
                                  "copied": copied, "analysis_dir": Path(analysis_dir),
                                  # what "partial" means in the ranking, and the one coverage yardstick
                                  "targets": science_targets(plan), "coverage_sets": coverage_sets(plan)})
    # the report, section by section; a new section is one function (inputs -> markdown lines) and one line here
    sections = [
        header_section,
        verdict_section,
        sample_section,
        run_section,
        study_section,
        ranking_section,
        top_pairs_section,
        minima_section,  # the rattle test on converged crystals, where the minima stage ran
        bonding_section,
        temperature_section,
        duplicates_section,
        apart_section,
        discussion_section,
        flagged_report_section,  # issue 36: CIF error or potential error?
        lattice_section,  # issue 30: X23 / ICE13 lattice energies (empty without docs/lattice_energy.csv)
        glossary_section,
        appendix_section,
    ]
    out = [line for section in sections for line in section(inputs)]
    path = docs / REPORT_NAME
    path.write_text("\n".join(out))
    sync_readme(docs.parent / "README.md", path)  # the README's headline block, when it has one
    return path


class IncompleteAnalysis(RuntimeError):
    """The analysis folder has no completion marker: an analysis was interrupted or never ran there."""


def require_complete_analysis(analysis_dir: str | Path) -> None:
    """Refuse to report from an analysis that did not finish (its tables and figures may be missing or mixed)."""
    from helpers.analysis.stage import ANALYSIS_COMPLETE

    if not (Path(analysis_dir) / ANALYSIS_COMPLETE).is_file():
        raise IncompleteAnalysis(f"{analysis_dir} holds no complete analysis ({ANALYSIS_COMPLETE} missing: "
                                 "interrupted or never run); run the analysis stage again, then the report")


def _replace_file(path: Path, write) -> Path | None:
    """Write ``path`` through ``write(tmp)`` and rename it into place (a symlink at ``path`` is replaced, not
    followed); the report's own files only. None, and ``path`` removed, when ``write`` made nothing."""
    tmp = path.with_name(f".tmp-{path.name}")  # same suffix: writers pick the format from it
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        if not tmp.is_file():
            path.unlink(missing_ok=True)  # a stale figure of ours would otherwise stay beside a report without it
            return None
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure_link(caption: str, name: str, copied: list[str]) -> list[str]:
    """A figure's Markdown line, only when the figure is there."""
    return [f"![{caption}](figures/{name})", ""] if name in copied else []


def dataset_info(work_dir: str | Path, sources: Sequence[str]) -> dict[str, Any]:
    """Counts of the campaign's inputs (files, raw entries, clean entries) for the report header."""
    import os

    from helpers.store import db as dbmod
    from helpers.store.paths import work_layout

    layout = work_layout(work_dir)
    n_raw, n_clean = (dbmod.connect(layout[key], must_exist=True).count() if Path(layout[key]).is_file() else 0
                      for key in ("raw_db", "clean_db"))
    n_files = sum(1 for s in sources for p in Path(s).rglob("*") if p.suffix.lower() == ".cif")
    return {"n_files": n_files, "n_raw": n_raw, "n_clean": n_clean, "cores": os.cpu_count(),
            "clean_fraction": n_clean / n_raw if n_raw else None}
