"""The study's step 5 and beyond: errors of relaxed cells against experiment, per potential.

Relative error ΔX = (X_relaxed − X_exp) / X_exp in percent for the volume, |a1|, |a2|, |a3|
and the density; absolute error in degrees for α, β, γ. The experimental reference is the
conventional cell the filter stored (``data["cell_exp"]`` of the relaxed row, else the
``*_exp`` keys, else the clean row's cell). Lattice vectors are compared in the same setting
(see :mod:`helpers.analysis.structure_compare`); ``cell_setting`` says whether the relaxed cell had to be
mapped back, and rows it could not map ("unmatched") are left out of the lattice-vector fits.

Only converged relaxations enter the statistics by default; the counts per status are
reported next to them. Everything :func:`run_analysis` writes is described in its docstring.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.geometry import cell_to_cellpar, cellpar_to_cell

from helpers.analysis import compounds, consensus, ranking_targets, sample_sets, start_backfill
from helpers.analysis.bonding import nh_oh_donors
from helpers.analysis.distributions import median_mad
from helpers.analysis.quantities import (
    BASE_QUANTITIES,
    QUANTITIES,
    STATUSES,
    STUDY_RESULT,
    Quantity,
    display_name,
    thermal_assumption,
    thermal_corrected,
)
from helpers.analysis.structure_compare import STRUCTURE_COLUMNS, compare_structures, match_setting
from helpers.analysis.uncertainty import (
    BOOT_SEED,
    CHANGED_COLUMNS,
    CI_COLUMNS,
    MEDIAN_CI_COLUMNS,
    N_BOOT,
    N_REFIT,
    PAIRED_COLUMNS,
    REFIT_COLUMNS,
    describe,
    paired_stats,
)
from helpers.fetch.cif import compound_name
from helpers.store import db as dbmod
from helpers.store.paths import resolve_many, safe_name
from helpers.vocabulary import (
    FALSE_WORDS,
    OUTLIER_THRESHOLD_PCT,
    T_REF,
    TEMPERATURE_EDGES,
    THERMAL_EXPANSION_V,
    TRUE_WORDS,
    density_g_cm3,
)

log = logging.getLogger(__name__)

ERROR_COLUMNS = [
    "structure_id", "potential", "natoms", "V_exp", "V_relaxed", "dV_pct", "a1_exp", "a1_relaxed", "da1_pct",
    "converged", "steps", "status",
    "a2_exp", "a2_relaxed", "da2_pct", "a3_exp", "a3_relaxed", "da3_pct",
    "alpha_exp", "alpha_relaxed", "dalpha_deg", "beta_exp", "beta_relaxed", "dbeta_deg",
    "gamma_exp", "gamma_relaxed", "dgamma_deg", "density_exp", "density_relaxed", "ddensity_pct",
    "temperature", "cell_setting", "setting_transform", "exp_source", "cod_id", "spacegroup_number",
    "fmax_final", "e_final", "e_dispersion", "optimizer", "cell_filter", "settings_hash", "potential_name", "db",
    "row_id", "note", "compound_key", "r_factor", "wall_time", "cost_time", "cpu_time", "source", "cif_formula",
    # helpers.relax.fallback: "study" where the fast path hit the step cap and the study's method redid the crystal
    "fallback",
    # issue 36: how far from equilibrium the potential found the experimental structure, and the filter's
    # doubts about the entry (flags of its clean row, comma-separated)
    "start_fmax", "start_fmax_heavy", "start_pressure", "start_max_stress", "filter_flags",
    # the chemistry of the entry, for a reader of the worst structures: the CIF's name, 02_filter's molecules
    "compound_name", "molecules",
    # the report's chemical split (helpers.analysis.bonding): N or O atoms carrying H in the distinct molecules
    "nh_oh_donors",
]


# ---------------------------------------------------------------------------------------------
# Collecting errors from the databases


def _exp_cell(row, clean_row) -> tuple[np.ndarray | None, str]:
    """The experimental conventional cell and where it came from."""
    for source, holder in (("relaxed.data", row), ("clean.data", clean_row)):
        if holder is None:
            continue
        cell = (holder.data or {}).get("cell_exp")
        if cell is not None and np.asarray(cell, dtype=float).shape == (3, 3):
            return np.asarray(cell, dtype=float), f"{source}.cell_exp"
    keys = ("a_exp", "b_exp", "c_exp", "alpha_exp", "beta_exp", "gamma_exp")
    if all(row.get(k) is not None for k in keys):
        return cellpar_to_cell([row.get(k) for k in keys]), "relaxed.kvp"
    if clean_row is not None and clean_row.natoms:
        return np.asarray(clean_row.cell, dtype=float), "clean.atoms"
    return None, "none"


def _density(atoms: Atoms, volume: float) -> float:
    density = density_g_cm3(atoms.get_masses().sum(), volume)
    return np.nan if density is None else density


def _pct(calc: float, exp: float) -> float:
    return float((calc - exp) / exp * 100) if exp and np.isfinite(exp) and np.isfinite(calc) else np.nan


def _species(clean_row) -> list[dict]:
    """02_filter's distinct molecules of a clean row (SMILES, formula, count, charge); [] when it has none."""
    return ((clean_row.data or {}).get("molecules") if clean_row is not None else None) or []


def molecules_text(clean_row) -> str | None:
    """02_filter's molecules of a clean row as ``count × SMILES`` (charge when not neutral), joined by ' + '."""
    parts = []
    for sp in _species(clean_row):
        charge = int(sp.get("charge") or 0)
        label = sp.get("smiles") or sp.get("formula") or "?"
        parts.append(f"{sp.get('count', 1)} × {label}" + (f" (charge {charge:+d})" if charge else ""))
    return " + ".join(parts) or None


def _compound_name(row, clean_row) -> str | None:
    """The CIF's compound name: as 01_fetch recorded it (key ``compound_name``), else, for rows fetched before
    it did, read from the clean row's stored CIF text (else the relaxed row's)."""
    for holder in (clean_row, row):
        if holder is not None and holder.get("compound_name"):
            return str(holder.get("compound_name"))
    for holder in (clean_row, row):
        text = ((holder.data or {}).get("cif") if holder is not None else None)
        if text:
            return compound_name(text)
    return None


def _status(row) -> str:
    status = row.get("status")
    if status:
        return str(status)
    converged = row.get("converged")
    return "unknown" if converged is None else ("converged" if converged else "step_cap")


def row_errors(row, clean_row=None, *, structure: bool = False, symprec: float = 1e-2,
               matcher: bool = False) -> dict[str, Any]:
    """One errors.csv record from a relaxed row (and its clean row, when available)."""
    kvp = row.key_value_pairs
    record: dict[str, Any] = {
        "structure_id": kvp.get("structure_id"), "potential_name": kvp.get("potential", "unknown"),
        "status": _status(row), "converged": bool(kvp.get("converged", False)), "steps": kvp.get("steps"),
        "temperature": kvp.get("temperature", clean_row.get("temperature") if clean_row else None),
        "cod_id": kvp.get("cod_id"), "spacegroup_number": kvp.get("spacegroup_number"),
        "fmax_final": kvp.get("fmax_final"), "e_final": kvp.get("e_final"),
        "e_dispersion": kvp.get("e_dispersion"),
        "optimizer": kvp.get("optimizer"), "cell_filter": kvp.get("cell_filter"),
        "wall_time": kvp.get("wall_time"), "cost_time": kvp.get("cost_time", kvp.get("wall_time")),
        "cpu_time": kvp.get("cpu_time"), "fallback": kvp.get("fallback"),
        "settings_hash": kvp.get("settings_hash"), "row_id": row.id,
        # one-per-compound statistics: the filter's compound_key and the R factor choose the entry
        "compound_key": kvp.get("compound_key") or (clean_row.get("compound_key") if clean_row else None),
        "r_factor": compounds.r_factor_of(kvp) if compounds.r_factor_of(kvp) is not None
        else compounds.r_factor_of(clean_row),
        "start_fmax": kvp.get("start_fmax"), "start_fmax_heavy": kvp.get("start_fmax_heavy"),
        "start_pressure": kvp.get("start_pressure"),
        "start_max_stress": kvp.get("start_max_stress"),
        "filter_flags": ",".join(sorted(k[len("flag_"):] for k, v in (clean_row.key_value_pairs if clean_row
                                 else kvp).items() if k.startswith("flag_") and v)),
        # which sample the entry belongs to (helpers.analysis.sample_sets): the CIF path and the formula
        "source": kvp.get("source") or (clean_row.get("source") if clean_row else None),
        "cif_formula": kvp.get("cif_formula") or (clean_row.get("cif_formula") if clean_row else None),
        "compound_name": _compound_name(row, clean_row), "molecules": molecules_text(clean_row),
        "nh_oh_donors": nh_oh_donors(sp.get("smiles") for sp in _species(clean_row)),
    }
    notes = []
    relaxed = row.toatoms()
    exp_atoms = clean_row.toatoms() if clean_row is not None else None
    record["natoms"] = len(relaxed) if len(relaxed) else (len(exp_atoms) if exp_atoms is not None else 0)
    cell_exp, record["exp_source"] = _exp_cell(row, clean_row)
    if cell_exp is None:
        notes.append("no experimental cell")
    else:
        par = cell_to_cellpar(cell_exp)
        v_exp = kvp.get("V_exp") or abs(float(np.linalg.det(cell_exp)))
        record.update(V_exp=v_exp, a1_exp=par[0], a2_exp=par[1], a3_exp=par[2],
                      alpha_exp=par[3], beta_exp=par[4], gamma_exp=par[5])
        density_exp = kvp.get("density_exp")
        if density_exp is None:
            source = exp_atoms if exp_atoms is not None and len(exp_atoms) else relaxed
            density_exp = _density(source, v_exp) if len(source) else np.nan
        record["density_exp"] = density_exp
    if not len(relaxed) or not relaxed.cell.rank == 3:
        notes.append("no relaxed structure")
    elif cell_exp is not None:
        cell_rel = np.asarray(relaxed.cell, dtype=float)
        v_rel = abs(float(np.linalg.det(cell_rel)))
        n_exp = len(exp_atoms) if exp_atoms is not None and len(exp_atoms) else len(relaxed)
        match = match_setting(cell_exp, cell_rel, exp_atoms, relaxed)
        if n_exp != len(relaxed):
            notes.append(f"atom count changed {n_exp} -> {len(relaxed)}; volume compared per atom")
            match.setting = "unmatched"
            v_rel *= n_exp / len(relaxed)
        par = cell_to_cellpar(match.transform @ cell_rel)
        record.update(V_relaxed=v_rel, density_relaxed=_density(relaxed, abs(float(np.linalg.det(cell_rel)))),
                      cell_setting=match.setting,
                      setting_transform=" ".join(str(int(v)) for v in match.transform.ravel()))
        if match.setting != "same":
            notes.append(f"cell setting {match.setting} (length misfit {match.length_misfit:.2f}, "
                         f"angle misfit {match.angle_misfit:.1f}°)")
        for k, name in enumerate(("a1", "a2", "a3", "alpha", "beta", "gamma")):
            record[f"{name}_relaxed"] = par[k]
        record["dV_pct"] = _pct(v_rel, record["V_exp"])
        record["ddensity_pct"] = _pct(record["density_relaxed"], record["density_exp"])
        for name in ("a1", "a2", "a3"):
            record[f"d{name}_pct"] = _pct(record[f"{name}_relaxed"], record[f"{name}_exp"])
        for name in ("alpha", "beta", "gamma"):
            record[f"d{name}_deg"] = float(record[f"{name}_relaxed"] - record[f"{name}_exp"])
        if structure and exp_atoms is not None and len(exp_atoms):
            record.update(compare_structures(exp_atoms, relaxed, match.transform, symprec, matcher))
        elif structure:
            notes.append("no clean structure for structure checks")
    record["note"] = "; ".join(notes)
    return record


def collect_errors(relaxed_dbs: str | Path | Iterable[str | Path], clean_db: str | Path | None = None, *,
                   structure: bool = False, symprec: float = 1e-2, matcher: bool = False,
                   progress: bool = False, settings_hashes: Sequence[str] | None = None,
                   max_atoms: dict[str, int | None] | None = None) -> pd.DataFrame:
    """One row per structure × potential (errors.csv layout) from relaxed databases.

    ``relaxed_dbs``: glob, path, PostgreSQL URL or a list of them. ``clean_db`` (optional)
    supplies the experimental structure when a relaxed row lacks the reference cell, and is
    needed for ``structure=True`` (space group, displacement, bond checks: ~0.05 s per
    48-atom structure; ``matcher`` adds pymatgen's StructureMatcher RMS, ~0.5 s more each).
    When the same potential appears with several ``settings_hash`` values, ``potential``
    becomes ``name[hash7]`` so the runs are not mixed; ``potential_name`` keeps the bare name.
    Duplicate rows of one structure, potential and settings (e.g. overlapping shards) keep the
    converged one, else the last.

    With ``clean_db``, only structures that are clean *now* count: a relaxed row whose structure a
    later 02_filter run rejected (or removed) is left out, and ``frame.attrs["left_out"]`` lists it
    with the reason. With ``settings_hashes`` (hashes printed by 03_relax, or prefixes of 7+ characters),
    only rows made with those settings count; rows of earlier settings are left out the same way. With
    ``max_atoms`` (potential -> largest structure, in the atoms the potential evaluates, as 03_relax's
    ``max_atoms``; needs ``clean_db``), only the structures of each potential's subset count: a run on a
    subset is not analysed with rows of structures outside it.
    """
    from tqdm.auto import tqdm

    names = resolve_many(relaxed_dbs, hint="run 03_relax first?")
    keep = _hash_prefixes(settings_hashes)
    clean = dbmod.connect(clean_db, must_exist=True) if clean_db is not None else None
    clean_ids = dbmod.ids_with(clean, "structure_id") if clean is not None else {}
    records, left_out = [], []
    for name in names:
        database = dbmod.connect(name, must_exist=True)
        for row in tqdm(dbmod.rows(database), total=database.count(), desc=f"errors {Path(name).name}",
                        disable=not progress):
            sid = row.get("structure_id")
            if clean is not None and str(sid) not in clean_ids:
                left_out.append({"structure_id": sid, "potential": row.get("potential"), "db": name,
                                 "reason": "not in the clean database now (rejected or removed by a later "
                                           "02_filter run)"})
                continue
            made_with = str(row.get("settings_hash", ""))
            if keep is not None and not made_with.startswith(keep):
                left_out.append({"structure_id": sid, "potential": row.get("potential"), "db": name,
                                 "reason": f"made with other settings (settings_hash {made_with or 'none'}); "
                                           "this analysis keeps only settings_hashes " + ", ".join(keep)})
                continue
            clean_row = clean.get(id=clean_ids[str(sid)]) if clean is not None else None
            limit = (max_atoms or {}).get(row.get("potential"))
            if limit is not None and clean_row is not None and _atoms_evaluated(row.get("potential"),
                                                                                clean_row) > limit:
                left_out.append({"structure_id": sid, "potential": row.get("potential"), "db": name,
                                 "reason": f"outside this analysis's subset (≤ {limit} atoms)"})
                continue
            try:
                record = row_errors(row, clean_row, structure=structure, symprec=symprec, matcher=matcher)
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the analysis
                record = {"structure_id": sid, "potential_name": row.get("potential", "unknown"),
                          "status": _status(row), "converged": bool(row.get("converged", False)),
                          "row_id": row.id, "note": f"analysis failed: {type(exc).__name__}: {exc}"}
            record["db"] = name
            records.append(record)
    columns = ERROR_COLUMNS + (STRUCTURE_COLUMNS if structure else [])
    frame = pd.DataFrame.from_records(records, columns=columns) if records else pd.DataFrame(columns=columns)
    frame["potential"] = _run_labels(frame)
    frame = _drop_duplicates(frame).reset_index(drop=True)
    frame.attrs["left_out"] = left_out  # records (a list: pandas compares attrs when combining frames)
    return frame


def _atoms_evaluated(potential: str, clean_row) -> int:
    """Atoms ``potential`` evaluates for this clean structure (the rule of 03_relax's ``max_atoms``)."""
    from helpers.relax.potentials.registry import get_potential

    try:
        return get_potential(potential).atoms_evaluated(clean_row)
    except KeyError:  # a potential no longer registered: its own cell
        return clean_row.natoms


def _hash_prefixes(settings_hashes: Sequence[str] | None) -> tuple[str, ...] | None:
    if settings_hashes is None:
        return None
    keep = tuple(str(h).strip() for h in settings_hashes)
    short = [h for h in keep if len(h) < 7]
    if short or not keep:
        raise ValueError("settings_hashes: give whole hashes or prefixes of at least 7 characters, "
                         f"not {short or '[]'}")
    return keep


def _run_labels(frame: pd.DataFrame) -> pd.Series:
    labels = frame["potential_name"].astype(str)
    hashes = frame["settings_hash"].fillna("").astype(str)
    several = frame.assign(h=hashes).groupby("potential_name")["h"].transform("nunique") > 1
    return labels.where(~several, labels + "[" + hashes.str[:7] + "]")


def _drop_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    order = frame.assign(_conv=frame["converged"].fillna(False).astype(bool), _pos=np.arange(len(frame)))
    order = order.sort_values(["_conv", "_pos"])
    kept = order.drop_duplicates(["structure_id", "potential"], keep="last").sort_values("_pos")
    if len(kept) < len(frame):
        log.warning("dropped %d duplicate structure × potential rows", len(frame) - len(kept))
    return kept.drop(columns=["_conv", "_pos"])


# ---------------------------------------------------------------------------------------------
# Statistics


def converged_mask(errors: pd.DataFrame) -> pd.Series:
    """Rows whose relaxation converged (``converged`` true and status not an error)."""
    return errors["converged"].fillna(False).astype(bool) & ~errors["status"].isin(["error", "exploded"])


def _values(errors: pd.DataFrame, quantity: Quantity) -> pd.Series:
    if quantity.column not in errors:
        return pd.Series(dtype=float)
    subset = errors
    if quantity.lattice and "cell_setting" in errors:
        subset = errors[errors["cell_setting"] != "unmatched"]
    return pd.to_numeric(subset[quantity.column], errors="coerce").dropna()


def _select(errors: pd.DataFrame, converged_only: bool) -> pd.DataFrame:
    return errors[converged_mask(errors)] if converged_only and len(errors) else errors


def summarize(errors: pd.DataFrame, converged_only: bool = True, quantities: Sequence[str] = BASE_QUANTITIES,
              by: Sequence[str] = ("potential",), *, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              entries: str = "all", n_refit: int = 0, refit: Sequence[str] = ("volume", "a1")) -> pd.DataFrame:
    """summary.csv: one row per potential × quantity with n, mu, sigma (Gaussian fit), median, MAD, CIs.

    mu/sigma come from :func:`helpers.analysis.distributions.fit_gaussian` (bounded least squares on the
    histogram, like the study, or the normal MLE with the reason in ``fit_method``);
    ``mu_mle``/``sigma_mle`` (scipy.stats.norm.fit of every value) and ``sigma_mad`` (1.4826·MAD)
    sit beside them. ``<stat>_ci_low/high``: seeded 95 % percentile-bootstrap intervals
    (:mod:`helpers.analysis.uncertainty`). Angles are not fitted: ``fraction_changed`` and the median/MAD
    of the changed ones instead. ``entries`` labels the row set ("all", "one_per_compound").
    Below 30 values the median's CI is the exact order-statistic interval (``median_ci_method``,
    ``median_ci_coverage``). ``n_refit`` > 0: the quantities in ``refit`` also get ``mu_refit_ci_*`` /
    ``sigma_refit_ci_*``, a bootstrap that refits window, bins and bounds per resample (the study's view with
    its whole procedure's uncertainty). Units: percent, degrees for angles.
    """
    rows = []
    data = _select(errors, converged_only)
    groups = data.groupby(list(by), sort=True, dropna=False) if len(data) else []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for name in quantities:
            quantity = QUANTITIES[name]
            if quantity.column not in group:
                continue
            record = describe(_values(group, quantity).to_numpy(), unit=quantity.unit,
                              symmetric=quantity.symmetric, n_boot=n_boot, seed=seed,
                              n_refit=n_refit if name in refit else 0)
            rows.append({**dict(zip(by, key)), "quantity": name, "unit": quantity.unit, **record,
                         "entries": entries})
    columns = [*by, "quantity", "unit", "n", "mu", "sigma", "median", "mad", "sigma_mad", "mu_mle",
               "sigma_mle", "fit_method", "n_outside_fit", *CI_COLUMNS, "ci_level", "n_boot", "boot_seed",
               "fit_bins", "fit_chi2_ndf", "fit_max_residual", *CHANGED_COLUMNS, "entries", *MEDIAN_CI_COLUMNS,
               *REFIT_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def study_table(summary: pd.DataFrame, quantities: Sequence[str] = ("volume", "a1"), wide: bool = False,
                counts: pd.DataFrame | None = None, with_study: bool = True) -> pd.DataFrame:
    """μ and σ in the layout of the study's table: rows "ΔV, ANI-1x", columns μ [%], σ [%].

    Adds n, median, MAD, the study's own numbers where the potential and quantity match, the
    95 % bootstrap CIs ("μ CI low" ...), the fit method and (``counts`` from
    :func:`status_counts`) the status counts per potential. ``wide=True`` puts the potentials
    side by side instead: rows per quantity, columns (potential, μ/σ). Only the summary rows
    over all entries (``entries == "all"``, the study's way) are used.
    """
    data = summary[summary["quantity"].isin(quantities)].copy()
    if "entries" in data:
        data = data[data["entries"].fillna("all") == "all"]
    if with_study:
        data = data.merge(STUDY_RESULT, on=["quantity", "potential"], how="left")
    order = {q: k for k, q in enumerate(quantities)}
    data = data.sort_values(["quantity", "potential"],
                            key=lambda s: s.map(order) if s.name == "quantity" else s)
    data["label"] = [f"{QUANTITIES[q].label}, {display_name(p)}"
                     for q, p in zip(data["quantity"], data["potential"])]
    if wide and data.empty:
        return pd.DataFrame()
    if wide:
        data["quantity_label"] = [f"{QUANTITIES[q].label} [{QUANTITIES[q].unit}]" for q in data["quantity"]]
        table = data.pivot(index="quantity_label", columns="potential", values=["mu", "sigma"])
        table = table.swaplevel(axis=1).sort_index(axis=1, level=0)
        table.columns = pd.MultiIndex.from_tuples([(display_name(p), {"mu": "μ", "sigma": "σ"}[s])
                                                   for p, s in table.columns])
        return table.reindex([f"{QUANTITIES[q].label} [{QUANTITIES[q].unit}]" for q in quantities
                              if f"{QUANTITIES[q].label} [{QUANTITIES[q].unit}]" in table.index]).round(2)
    table = data.set_index("label")
    keep = {"mu": "μ", "sigma": "σ", "n": "n", "median": "median", "mad": "MAD"}
    if with_study:
        keep.update(mu_study="μ study", sigma_study="σ study")
    labels = {"mu": "μ", "sigma": "σ", "median": "median", "mad": "MAD"}
    keep.update({f"{s}_ci_{end}": f"{labels[s]} CI {end}" for s in labels for end in ("low", "high")
                 if f"{s}_ci_{end}" in table})
    if "fit_method" in table:
        keep["fit_method"] = "fit method"
    out = table[list(keep)].rename(columns=keep)
    if counts is not None:
        extra = counts.reindex(table["potential"]).set_axis(table.index)
        out = out.join(extra.drop(columns=[c for c in ("total",) if c in extra]))
    out.index.name = "quantity"
    numeric = out.select_dtypes("number").columns
    out[numeric] = out[numeric].round(2)
    return out


def status_counts(errors: pd.DataFrame) -> pd.DataFrame:
    """Relaxations per potential × status (converged, step_cap, exploded, error, then any other); with
    ``study_fallback``, how many of them the fast path left at the step cap and the study's method redid."""
    if errors.empty:
        return pd.DataFrame(columns=[*STATUSES, "total"])
    table = pd.crosstab(errors["potential"], errors["status"])
    columns = [*STATUSES, *sorted(set(table.columns) - set(STATUSES))]
    table = table.reindex(columns=columns, fill_value=0)
    table["total"] = table.sum(axis=1)
    table["converged_fraction"] = (table["converged"] / table["total"]).round(4)
    if "fallback" in errors:  # of these, relaxed again with the study's method after the fast path's step cap
        redone = errors["fallback"].notna() & (errors["fallback"].astype(str) != "")
        table["study_fallback"] = redone.groupby(errors["potential"]).sum().reindex(table.index, fill_value=0)
    table.columns.name = None
    return table


def outliers(errors: pd.DataFrame, threshold_pct: float = OUTLIER_THRESHOLD_PCT, quantity: str = "volume",
             converged_only: bool = True) -> pd.DataFrame:
    """Rows with |Δ| above the threshold, largest first, with db and row_id to open them."""
    column = QUANTITIES[quantity].column
    data = _select(errors, converged_only)
    values = pd.to_numeric(data.get(column, pd.Series(dtype=float)), errors="coerce")
    picked = data[values.abs() > threshold_pct]
    keep = [c for c in ("structure_id", "potential", "status", column, "V_exp", "V_relaxed", "temperature",
                        "cell_setting", "note", "db", "row_id") if c in picked]
    order = picked[column].abs().sort_values(ascending=False).index
    return picked.reindex(order)[keep].reset_index(drop=True)


def outlier_fractions(errors: pd.DataFrame, threshold_pct: float = OUTLIER_THRESHOLD_PCT, quantity: str = "volume",
                      converged_only: bool = True) -> pd.DataFrame:
    """Per potential: n, outliers (|Δ| > threshold), their fraction and structure ids."""
    column = QUANTITIES[quantity].column
    data = _select(errors, converged_only)
    rows = []
    for potential, group in data.groupby("potential") if len(data) else []:
        values = pd.to_numeric(group[column], errors="coerce")
        bad = group[values.abs() > threshold_pct]
        n = int(values.notna().sum())
        rows.append({"potential": potential, "quantity": quantity, "threshold_pct": threshold_pct, "n": n,
                     "n_outliers": len(bad), "fraction": len(bad) / n if n else np.nan,
                     "structure_ids": ",".join(map(str, bad["structure_id"]))})
    columns = ["potential", "quantity", "threshold_pct", "n", "n_outliers", "fraction", "structure_ids"]
    return pd.DataFrame(rows, columns=columns)


def band_labels(edges: Sequence[float]) -> list[str]:
    """'< 150 K', '150–250 K', '≥ 250 K' for edges (150, 250)."""
    edges = list(edges)
    labels = [f"< {edges[0]:g} K"]
    labels += [f"{lo:g}–{hi:g} K" for lo, hi in zip(edges[:-1], edges[1:])]
    return labels + [f"≥ {edges[-1]:g} K"]


def add_temperature_band(errors: pd.DataFrame, edges: Sequence[float] = TEMPERATURE_EDGES) -> pd.DataFrame:
    """Copy with a ``temperature_band`` column ('unknown T' when the CIF gave no temperature)."""
    out = errors.copy()
    temperature = pd.to_numeric(out["temperature"], errors="coerce")
    bins = [-np.inf, *edges, np.inf]
    band = pd.cut(temperature, bins=bins, labels=band_labels(edges), right=False)
    out["temperature_band"] = band.astype(str).where(temperature.notna(), "unknown T")
    return out


def temperature_bands(errors: pd.DataFrame, edges: Sequence[float] = TEMPERATURE_EDGES,
                      quantities: Sequence[str] = ("volume", "a1"),
                      converged_only: bool = True) -> pd.DataFrame:
    """summary.csv statistics split by measurement-temperature band."""
    banded = add_temperature_band(errors, edges)
    table = summarize(banded, converged_only, quantities, by=("potential", "temperature_band"))
    order = {b: k for k, b in enumerate([*band_labels(edges), "unknown T"])}
    table = table.sort_values(["potential", "temperature_band", "quantity"],
                              key=lambda s: s.map(order) if s.name == "temperature_band" else s)
    return table.reset_index(drop=True)


def paired_table(errors: pd.DataFrame, quantity: str = "volume", converged_only: bool = True) -> pd.DataFrame:
    """Structure × potential table of one error, only structures every potential has (converged)."""
    column = QUANTITIES[quantity].column
    data = _select(errors, converged_only)
    if quantity in QUANTITIES and QUANTITIES[quantity].lattice and "cell_setting" in data:
        data = data[data["cell_setting"] != "unmatched"]
    table = data.pivot_table(index="structure_id", columns="potential", values=column, aggfunc="first")
    return table.dropna()


def paired_differences(errors: pd.DataFrame, quantity: str = "volume", converged_only: bool = True, *,
                       n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> pd.DataFrame:
    """Potentials compared on the same structures: one row per pair (A, B).

    Per pair, the structures both converged: n, mean/median/std of Δ_A − Δ_B, the fraction
    where A is closer to experiment (|Δ_A| < |Δ_B|), and the Wilcoxon signed-rank p-value of
    the paired differences (scipy; NaN below 10 pairs or when all differences are zero).
    Then :func:`helpers.analysis.uncertainty.paired_stats`: 95 % bootstrap CIs of the mean and median of
    Δ_A − Δ_B and of |Δ_A| − |Δ_B| (negative: A closer to experiment), the Wilcoxon p-value of
    |Δ_A| − |Δ_B| and a plain ``verdict`` (which is closer, or that the data cannot tell).
    """
    from scipy.stats import wilcoxon

    column = QUANTITIES[quantity].column
    data = _select(errors, converged_only)
    if QUANTITIES[quantity].lattice and "cell_setting" in data:
        data = data[data["cell_setting"] != "unmatched"]
    wide = data.pivot_table(index="structure_id", columns="potential", values=column, aggfunc="first")
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        pair = wide[[a, b]].dropna()
        diff = pair[a] - pair[b]
        p_value = np.nan
        if len(diff) >= 10 and np.any(diff != 0):
            p_value = float(wilcoxon(diff).pvalue)
        rows.append({"quantity": quantity, "potential_a": a, "potential_b": b, "n_common": len(pair),
                     "mu_a": pair[a].mean(), "mu_b": pair[b].mean(), "mean_diff": diff.mean(),
                     "median_diff": diff.median(), "std_diff": diff.std(),
                     "a_closer_fraction": float((pair[a].abs() < pair[b].abs()).mean()) if len(pair)
                     else np.nan,
                     "wilcoxon_p": p_value,
                     **paired_stats(pair[a].to_numpy(), pair[b].to_numpy(), display_name(a), display_name(b),
                                    n_boot=n_boot, seed=seed)})
    columns = ["quantity", "potential_a", "potential_b", "n_common", "mu_a", "mu_b", "mean_diff",
               "median_diff", "std_diff", "a_closer_fraction", "wilcoxon_p", *PAIRED_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def sets_summary(errors: pd.DataFrame, converged_only: bool = True, *, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED) -> pd.DataFrame:
    """ΔV per sample set × potential (science, altered test inputs, ice): the sets the science tables leave
    out, reported apart; ``attempted`` and ``failed`` count every relaxation of the set."""
    if errors.empty:
        return pd.DataFrame(columns=["sample_set", "potential", "attempted", "failed"])
    labelled = errors if "sample_set" in errors else sample_sets.add_sample_set(errors)
    summary = summarize(labelled, converged_only, ("volume",), by=("sample_set", "potential"), n_boot=n_boot,
                        seed=seed)
    tried = labelled.groupby(["sample_set", "potential"]).agg(
        attempted=("structure_id", "size"), failed=("status", lambda s: int((s != "converged").sum())))
    return tried.reset_index().merge(summary, on=["sample_set", "potential"], how="left")


def structure_summary(errors: pd.DataFrame, converged_only: bool = True) -> pd.DataFrame:
    """Per potential: fraction of space groups kept, of molecules intact, median displacement."""
    data = _select(errors, converged_only)
    if "sg_survived" not in data or data.empty:
        return pd.DataFrame(columns=["potential", "n", "sg_survived_fraction", "bonds_intact_fraction",
                                     "molecules_same_fraction", "rmsd_median_A", "rmsd_mad_A",
                                     "rmsd_heavy_median_A", "matcher_matched_fraction"])
    rows = []
    for potential, group in data.groupby("potential"):
        rmsd = pd.to_numeric(group["rmsd_A"], errors="coerce").dropna()
        median, mad = median_mad(rmsd.to_numpy())
        heavy = pd.to_numeric(group["rmsd_heavy_A"], errors="coerce").dropna()
        rows.append({"potential": potential, "n": len(group),
                     "sg_survived_fraction": _fraction(group["sg_survived"]),
                     "bonds_intact_fraction": _fraction(group["bonds_intact"]),
                     "molecules_same_fraction": _fraction(group["molecules_same"]),
                     "rmsd_median_A": median, "rmsd_mad_A": mad,
                     "rmsd_heavy_median_A": float(heavy.median()) if len(heavy) else np.nan,
                     # NaN when StructureMatcher was not run (no row has a value)
                     "matcher_matched_fraction": float(group["matcher_rms"].notna().mean())
                     if data["matcher_rms"].notna().any() else np.nan})
    return pd.DataFrame(rows)


def _fraction(flags: pd.Series) -> float:
    known = flags.dropna()
    return float(known.astype(bool).mean()) if len(known) else np.nan


def load_pair(record: pd.Series | dict, clean_db: str | Path | None = None) -> dict[str, Atoms]:
    """The relaxed (and experimental, with ``clean_db``) Atoms of one errors.csv row, e.g. an outlier.

    For viewing: ``nglview.show_ase(load_pair(outliers(errors).iloc[0], clean_db)["relaxed"])``.
    """
    out = {"relaxed": dbmod.connect(record["db"], must_exist=True).get(id=int(record["row_id"])).toatoms()}
    if clean_db is not None:
        clean = dbmod.connect(clean_db, must_exist=True)
        out["experimental"] = clean.get(structure_id=record["structure_id"]).toatoms()
    return out


# ---------------------------------------------------------------------------------------------
# Everything at once


def run_analysis(relaxed_dbs, clean_db=None, out_dir: str | Path = "data/analysis", *,
                 converged_only: bool = True, quantities: Sequence[str] = BASE_QUANTITIES,
                 threshold_pct: float = OUTLIER_THRESHOLD_PCT, temperature_edges: Sequence[float] = TEMPERATURE_EDGES,
                 alpha_v: float = THERMAL_EXPANSION_V, t_ref: float = T_REF, structure: bool = True,
                 symprec: float = 1e-2, matcher: bool = False, plots: bool = True,
                 progress: bool = False, one_per_compound: Any = compounds.DEFAULT_RULE,
                 n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
                 settings_hashes: Sequence[str] | None = None,
                 max_atoms: dict[str, int | None] | None = None, backfill_start_tells: Any = True) -> dict[str, Any]:
    """Notebook 04 in one call: collect errors, compute every table, write CSVs and figures.

    Writes to ``out_dir``: errors.csv (one row per structure × potential, with the thermal
    correction and structure-check columns), summary.csv, study_table.csv (long, the study's
    layout, with status counts), study_table_wide.csv, status_counts.csv, outliers.csv,
    outlier_fractions.csv, temperature_bands.csv, thermal_summary.csv, paired_volume.csv,
    paired_a1.csv, structure_summary.csv; figures hist_<potential>_<quantity>.png,
    hist_grid_<quantity>.png (every potential's histogram and Gaussian, small multiples), dv_vs_temperature.png,
    paired_<a>_vs_<b>.png, status_counts.png, median_ci_<quantity>.png (median and its 95 % CI per potential).

    ``one_per_compound`` (rule of :mod:`helpers.analysis.compounds`, default "r_factor,temperature";
    None / "" / "None" disables): when clean rows carry ``compound_key``, summary.csv holds every
    statistic twice, ``entries`` = "all" and "one_per_compound". ``n_boot``/``boot_seed``: the
    bootstrap CIs. ``settings_hashes``: analyse only rows made with these settings (the rest are listed in
    left_out.csv); None: every run, told apart by hash when a potential has several. ``max_atoms``: each
    potential's subset (:func:`collect_errors`). ``backfill_start_tells`` (with ``clean_db``): first give the rows
    this analysis uses that lack the start tells one model call each (:mod:`helpers.analysis.start_backfill`,
    written into the relaxed databases; False: off). Parameters may
    arrive as strings (papermill's command line): they are coerced
    and checked here. Returns the DataFrames by name plus ``files`` (name -> path), ``figures``
    (paths), ``entries_note`` (which entry sets summary.csv holds, and why) and ``targets`` (potential -> the
    science structures it is to relax within ``max_atoms``, or None without ``clean_db``: the ranking's
    ``targets``, so a potential still running is listed as partial instead of cutting the shared set).
    """
    compounds.parse_rule(one_per_compound)  # bad parameters fail before any work
    _as_int(n_boot, "n_boot", 0), _as_int(boot_seed, "boot_seed", 0)
    keep = _hash_prefixes(settings_hashes)
    backfill = _as_bool(backfill_start_tells, "backfill_start_tells")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(out)
    if structure and clean_db is None:
        log.warning("structure checks need clean_db; skipped")
        structure = False
    if backfill and clean_db is not None:  # issue 36: rows relaxed before the start tells were recorded
        start_backfill.backfill_for_analysis(resolve_many(relaxed_dbs), clean_db, keep, progress=True)
    errors = collect_errors(relaxed_dbs, clean_db, structure=structure, symprec=symprec, matcher=matcher,
                            progress=progress, settings_hashes=settings_hashes, max_atoms=max_atoms)
    names = sorted(set(errors["potential_name"].astype(str))) if "potential_name" in errors else []
    result = analyse_errors(errors, out, converged_only=converged_only, quantities=quantities,
                            threshold_pct=threshold_pct, temperature_edges=temperature_edges, alpha_v=alpha_v,
                            t_ref=t_ref, plots=plots, one_per_compound=one_per_compound, n_boot=n_boot,
                            boot_seed=boot_seed)
    result["targets"] = ranking_targets.science_targets_in(clean_db, names, max_atoms)
    return result


def analyse_errors(errors: pd.DataFrame, out_dir: str | Path, *, converged_only: bool = True,
                   quantities: Sequence[str] = BASE_QUANTITIES, threshold_pct: float = OUTLIER_THRESHOLD_PCT,
                   temperature_edges: Sequence[float] = TEMPERATURE_EDGES, alpha_v: float = THERMAL_EXPANSION_V,
                   t_ref: float = T_REF, plots: bool = True, one_per_compound: Any = compounds.DEFAULT_RULE,
                   n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED, n_refit: int = N_REFIT) -> dict[str, Any]:
    """Every table and figure of :func:`run_analysis` from an errors table alone (e.g. a saved
    ``errors.csv``): what the report and its tests regenerate numbers from.

    errors.csv keeps every row with its ``sample_set`` (:mod:`helpers.analysis.sample_sets`); every other
    table is computed on the science sample only (all rows when no row records its source), and
    ``sets_summary.csv`` gives ΔV per potential for each set apart (science, altered test inputs, ice)."""
    rule = compounds.parse_rule(one_per_compound)
    n_boot, boot_seed = _as_int(n_boot, "n_boot", 0), _as_int(boot_seed, "boot_seed", 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    left_out = pd.DataFrame(errors.attrs.pop("left_out", []), columns=["structure_id", "potential", "db", "reason"])
    errors = thermal_corrected(errors, alpha_v, t_ref)
    errors = add_temperature_band(errors, temperature_edges)
    everything = sample_sets.add_sample_set(errors)
    errors = sample_sets.science(everything)  # every table below: the science sample
    counts = status_counts(errors)
    boot = {"n_boot": n_boot, "seed": boot_seed}
    summary = summarize(errors, converged_only, quantities, **boot, n_refit=_as_int(n_refit, "n_refit", 0))
    if rule is not None and compounds.has_compound_keys(errors):
        chosen = compounds.one_per_compound(errors, rule)
        summary = pd.concat([summary, summarize(chosen, converged_only, quantities, entries="one_per_compound",
                                                **boot)], ignore_index=True)
        crystals = compounds.one_per_polymorph(errors, rule)
        summary = pd.concat([summary, summarize(crystals, converged_only, quantities, entries="one_per_polymorph",
                                                **boot)], ignore_index=True)
    thermal = summarize(errors, converged_only, ("volume", "volume_thermal", "a1", "a1_thermal"), **boot)
    thermal["assumption"] = thermal_assumption(alpha_v, t_ref)
    results: dict[str, Any] = {
        "errors": everything, "summary": summary, "status_counts": counts,
        "sets_summary": sets_summary(everything, converged_only, **boot),
        "study_table": study_table(summary, counts=counts),
        "study_table_wide": study_table(summary, quantities=quantities, wide=True),
        "outliers": outliers(errors, threshold_pct, converged_only=converged_only),
        "outlier_fractions": outlier_fractions(errors, threshold_pct, converged_only=converged_only),
        "temperature_bands": temperature_bands(errors, temperature_edges, converged_only=converged_only),
        "thermal_summary": thermal,
        "paired_volume": paired_differences(errors, "volume", converged_only, **boot),
        "paired_a1": paired_differences(errors, "a1", converged_only, **boot),
        "structure_summary": structure_summary(errors, converged_only),
        "left_out": left_out,
        **consensus.consensus_tables(errors, converged_only),  # issue 36: CIF error or potential error
    }
    assert {f"{name}.csv" for name in results} <= set(OUTPUT_PATTERNS), "a new table must be in OUTPUT_PATTERNS"
    files = {}
    for name, frame in results.items():
        path = out / f"{name}.csv"
        keep_index = name in ("status_counts", "study_table", "study_table_wide")
        frame.to_csv(path, index=keep_index)
        files[name] = path
    results["files"] = files
    settings = {"threshold_pct": threshold_pct, "alpha_v": alpha_v, "t_ref": t_ref,
                "edges": temperature_edges}
    results["figures"] = _write_figures(results, out, quantities, converged_only, **settings) if plots else []
    results["entries_note"] = compounds.entries_note(errors, rule)
    (out / ANALYSIS_COMPLETE).write_text(json.dumps({"tables": sorted(p.name for p in files.values()),
                                                     "figures": sorted(Path(f).name for f in results["figures"])}))
    return results


#: written last by :func:`analyse_errors` (removed first): the report uses only an analysis that finished
ANALYSIS_COMPLETE = "analysis_complete.json"
#: what run_analysis writes into out_dir: removed first, so a rerun never leaves stale figures or tables
OUTPUT_PATTERNS = (ANALYSIS_COMPLETE,) + tuple(f"{name}.csv" for name in (
    "errors", "summary", "status_counts", "study_table", "study_table_wide", "outliers", "outlier_fractions",
    "temperature_bands", "thermal_summary", "paired_volume", "paired_a1", "structure_summary", "left_out",
    "consensus_outliers", "consensus_effect", "sets_summary")) + (
    "hist_*.png", "median_ci_*.png", "paired_*.png", "dv_vs_temperature.png", "status_counts.png",
    "overlay_*.png", "ci_*.png")  # the last two: figures of earlier versions, removed from an old out_dir


def land_analysis(partial: str | Path, out: str | Path) -> None:
    """Move a finished analysis written to ``partial`` (a folder of its own) into ``out``: the completion
    marker of ``out`` goes first and comes back last, so an analysis stopped half-way (before or during the
    move) is never taken for a whole one; files of ``out`` that are not an analysis's outputs stay."""
    partial, out = Path(partial), Path(out)
    if not (partial / ANALYSIS_COMPLETE).is_file():
        raise FileNotFoundError(f"{partial} holds no complete analysis ({ANALYSIS_COMPLETE} missing)")
    out.mkdir(parents=True, exist_ok=True)
    (out / ANALYSIS_COMPLETE).unlink(missing_ok=True)
    _remove_previous_outputs(out)
    for path in sorted(partial.iterdir(), key=lambda p: p.name == ANALYSIS_COMPLETE):  # the marker last
        path.replace(out / path.name)
    partial.rmdir()


def _remove_previous_outputs(out: Path) -> None:
    for pattern in OUTPUT_PATTERNS:
        for path in out.glob(pattern):
            if path.is_file():
                path.unlink()


def _as_bool(value: Any, name: str) -> bool:
    """A switch that may arrive as a string ("false") from papermill; ValueError otherwise."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in TRUE_WORDS | FALSE_WORDS:
        return value if isinstance(value, bool) else text in TRUE_WORDS
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _as_int(value: Any, name: str, minimum: int) -> int:
    """A count parameter that may arrive as a string ("2000") from papermill; ValueError otherwise."""
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {number}")
    return number


def _write_figures(results: dict[str, Any], out: Path, quantities: Sequence[str], converged_only: bool, *,
                   threshold_pct: float, alpha_v: float, t_ref: float, edges: Sequence[float]) -> list[Path]:
    from helpers.analysis import plots, report_figures

    errors = sample_sets.science(results["errors"])
    data = _select(errors, converged_only)
    figures = []
    summary = results["summary"]
    summary = summary[summary["entries"] == "all"].set_index(["potential", "quantity"])
    for potential, group in data.groupby("potential") if len(data) else []:
        for name in quantities:
            values = _values(group, QUANTITIES[name])
            if values.empty:
                continue
            path = out / f"hist_{safe_name(potential)}_{name}.png"
            record = summary.loc[(potential, name)] if (potential, name) in summary.index else None
            figures.append(plots.histogram_with_fit(values.to_numpy(), path, name, potential, threshold_pct,
                                                    record=record))
    for name in quantities:  # the report's small multiples: one colour per potential, n on every panel
        q = QUANTITIES[name]
        if not q.symmetric and name in summary.index.get_level_values("quantity"):
            figures.append(report_figures.median_intervals(results["summary"], out / f"median_ci_{name}.png", name))
        if not data.empty and data[q.column].notna().any():
            figures.append(report_figures.histogram_grid(data, out / f"hist_grid_{name}.png", q.column,
                                                         f"{q.label} [{q.unit}]"))
    figures = [f for f in figures if f is not None]
    if not data.empty and pd.to_numeric(data["temperature"], errors="coerce").notna().any():
        figures.append(plots.dv_vs_temperature(data, out / "dv_vs_temperature.png", alpha_v, t_ref, edges))
    wide = paired_table(errors, "volume", converged_only)
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        if len(wide):
            path = out / f"paired_{safe_name(a)}_vs_{safe_name(b)}.png"
            figures.append(plots.paired_scatter(wide, a, b, path))
    if not results["status_counts"].empty:
        figures.append(plots.status_bars(results["status_counts"], out / "status_counts.png"))
    return figures
