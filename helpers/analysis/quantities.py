"""What the analysis compares: the quantities, their labels, the study's own numbers.

Shared by the tables (:mod:`helpers.analysis.stage`) and the figures (:mod:`helpers.analysis.plots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from helpers.vocabulary import T_REF, THERMAL_EXPANSION_V, Status


@dataclass(frozen=True)
class Quantity:
    """One compared quantity: the errors.csv column holding its error, and how to label it."""

    name: str
    column: str
    unit: str
    label: str
    lattice: bool  # depends on the cell setting (excluded when the setting is unmatched)
    symmetric: bool = False  # mostly fixed by symmetry: fraction changed + robust numbers, no Gaussian


QUANTITIES: dict[str, Quantity] = {q.name: q for q in [
    Quantity("volume", "dV_pct", "%", "ΔV", False),
    Quantity("a1", "da1_pct", "%", "Δ|a1|", True),
    Quantity("a2", "da2_pct", "%", "Δ|a2|", True),
    Quantity("a3", "da3_pct", "%", "Δ|a3|", True),
    Quantity("alpha", "dalpha_deg", "°", "Δα", True, True),
    Quantity("beta", "dbeta_deg", "°", "Δβ", True, True),
    Quantity("gamma", "dgamma_deg", "°", "Δγ", True, True),
    Quantity("density", "ddensity_pct", "%", "Δρ", False),
    # filled by thermal_corrected(): experiment extrapolated to the reference temperature
    Quantity("volume_thermal", "dV_thermal_pct", "%", "ΔV (thermal-corrected)", False),
    Quantity("a1_thermal", "da1_thermal_pct", "%", "Δ|a1| (thermal-corrected)", True),
]}
BASE_QUANTITIES = ("volume", "a1", "a2", "a3", "alpha", "beta", "gamma", "density")
#: status columns of the status-count table, in this order (then any others)
STATUSES = tuple(Status)
#: The study's table (the thesis this project reproduces), μ and σ in percent, for side-by-side comparison.
STUDY_RESULT = pd.DataFrame(
    [("volume", "ani1x", 3.0, 8.4), ("volume", "ani1ccx", 1.6, 10.0),
     ("a1", "ani1x", 1.2, 6.1), ("a1", "ani1ccx", 1.2, 6.8)],
    columns=["quantity", "potential", "mu_study", "sigma_study"])
#: how the papers write each registered potential (a "-d3" suffix is kept: "ANI-1x-d3", "SevenNet-0-d3")
DISPLAY_NAMES = {"ani1x": "ANI-1x", "ani1ccx": "ANI-1ccx", "ani2x": "ANI-2x", "gfn2-xtb": "GFN2-xTB",
                 "gfn1-xtb": "GFN1-xTB", "gfn-ff": "GFN-FF", "sevennet0": "SevenNet-0",
                 "sevennet-l3i5": "SevenNet-l3i5", "sevennet-mf0-r2scan": "SevenNet-MF-0 (r²SCAN)",
                 "chgnet": "CHGNet", "aimnet2": "AIMNet2"}


def all_entries(summary: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """summary.csv's rows of ``quantity`` over all entries (``entries == "all"``, the study's way; every row
    when the summary has no ``entries`` column)."""
    rows = summary[summary["quantity"] == quantity]
    return rows[rows["entries"] == "all"] if "entries" in rows else rows


def display_name(potential: str) -> str:
    """'ani1x' -> 'ANI-1x', 'gfn-ff' -> 'GFN-FF' (unknown names unchanged), for tables and plot labels."""
    base, _, rest = str(potential).partition("[")
    for key, nice in DISPLAY_NAMES.items():
        if base.lower().startswith(key):
            return nice + base[len(key):] + (f"[{rest}" if rest else "")
    return str(potential)


def thermal_assumption(alpha_v: float = THERMAL_EXPANSION_V, t_ref: float = T_REF) -> str:
    """The thermal-expansion assumption in words, for tables and plots."""
    return (f"V_exp extrapolated to {t_ref:g} K: V_ref = V_exp / (1 + α_V (T − {t_ref:g} K)), "
            f"α_V = {alpha_v * 1e4:.3g} × 10⁻⁴ K⁻¹ constant and isotropic (|a1| scaled by the cube root); "
            "α_V really falls towards 0 K, so this over-corrects low-temperature data a little")


def thermal_corrected(errors: pd.DataFrame, alpha_v: float = THERMAL_EXPANSION_V, t_ref: float = T_REF) -> pd.DataFrame:
    """Copy with errors against experiment extrapolated to ``t_ref`` (0 K relaxations vs 0 K cells).

    Organic crystals expand by α_V ≈ 1.6–1.7 × 10⁻⁴ K⁻¹ (CSD surveys). Adds V_exp_ref,
    dV_thermal_pct, a1_exp_ref, da1_thermal_pct (NaN without a temperature) and the assumption
    text in ``attrs["assumption"]``.
    """
    out = errors.copy()
    temperature = pd.to_numeric(out["temperature"], errors="coerce")
    factor = 1 + alpha_v * (temperature - t_ref)
    out["V_exp_ref"] = pd.to_numeric(out["V_exp"], errors="coerce") / factor
    out["a1_exp_ref"] = pd.to_numeric(out["a1_exp"], errors="coerce") / factor ** (1 / 3)
    v_rel = pd.to_numeric(out["V_relaxed"], errors="coerce")
    a_rel = pd.to_numeric(out["a1_relaxed"], errors="coerce")
    out["dV_thermal_pct"] = (v_rel - out["V_exp_ref"]) / out["V_exp_ref"] * 100
    out["da1_thermal_pct"] = (a_rel - out["a1_exp_ref"]) / out["a1_exp_ref"] * 100
    out.attrs["assumption"] = thermal_assumption(alpha_v, t_ref)
    return out
