"""One entry per compound: COD holds redeterminations and polymorphs of the same molecules.

The filter (02) stores ``compound_key`` on each clean row: the sorted InChIKeys of the distinct
molecules, joined with '.'. Polymorphs and redeterminations of a compound share it, so a
well-studied compound (paracetamol, glycine, ...) enters the study's statistics many times.
Notebook 04 therefore reports every statistic twice when the key exists: over all entries (the
study's way) and over one entry per compound (``entries`` column of summary.csv).

Which entry represents a compound is a rule: an ordered list of keys, each minimised in turn,
missing values last, ties broken by the lowest ``structure_id``. The default
``"r_factor,temperature"`` takes the best-refined structure, then the coldest measurement:

- ``r_factor``: the conventional R factor as a fraction. Clean rows carry it from the CIF
  (``r_factor`` = ``_refine_ls_R_factor_gt``, else ``_refine_ls_R_factor_obs``, else
  ``_refine_ls_R_factor_all``; see :data:`helpers.cif.METADATA_TAGS`); rows fetched through the COD
  search without it fall back to COD's ``Robs`` then ``Rall`` (stored as ``cod_robs``/``cod_rall``).
- ``temperature``: the measurement temperature in K (colder: less thermal motion, and closer
  to the 0 K relaxation).

The choice depends only on the experiment, never on how a relaxation went, so every potential
is judged on the same entries. Rows without a ``compound_key`` count as compounds of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_RULE = "r_factor,temperature"
RULE_KEYS = ("r_factor", "temperature")
#: strings that switch the selection off (papermill passes parameters as strings)
OFF = {"", "none", "null", "false", "off", "no", "0"}
R_FACTOR_KEYS = ("r_factor", "cod_robs", "cod_rall")


def parse_rule(rule: Any) -> tuple[str, ...] | None:
    """The ``one_per_compound`` parameter as a key tuple, or None when disabled.

    Accepts "r_factor,temperature", "r_factor then temperature", a list of keys, or
    None / "" / "None" / False (disabled). Unknown keys raise ValueError naming the allowed ones.
    """
    if rule is None or rule is False:
        return None
    if isinstance(rule, str):
        if rule.strip().lower() in OFF:
            return None
        parts = [p for chunk in rule.replace(" then ", ",").split(",") for p in [chunk.strip()] if p]
    elif isinstance(rule, Sequence):
        parts = [str(p).strip() for p in rule]
    else:
        raise ValueError(f"one_per_compound must be a string like {DEFAULT_RULE!r} or None, got {rule!r}")
    if not parts:
        return None
    unknown = [p for p in parts if p not in RULE_KEYS]
    if unknown:
        raise ValueError(f"one_per_compound: unknown key(s) {unknown}; use some of {list(RULE_KEYS)} "
                         f"(e.g. {DEFAULT_RULE!r}) or None to disable")
    return tuple(parts)


def r_factor_of(row) -> float | None:
    """R factor of an ASE row (or dict): the CIF's, else COD's Robs, else Rall; None when unknown."""
    for key in R_FACTOR_KEYS:
        value = row.get(key) if row is not None else None
        if isinstance(value, (int, float)) and np.isfinite(value):
            return float(value)
    return None


def has_compound_keys(errors: pd.DataFrame) -> bool:
    """True when at least one row carries a compound_key."""
    return "compound_key" in errors and errors["compound_key"].fillna("").astype(str).str.len().gt(0).any()


def choose(errors: pd.DataFrame, rule: Sequence[str] = ("r_factor", "temperature")) -> pd.DataFrame:
    """One structure per compound_key: columns compound_key, structure_id, and the rule's keys."""
    keys = list(rule)
    frame = errors[["structure_id", "compound_key", *keys]].copy()
    frame["compound_key"] = frame["compound_key"].fillna("").astype(str)
    frame.loc[frame["compound_key"] == "", "compound_key"] = "structure:" + frame["structure_id"].astype(str)
    for key in keys:
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    # one line per structure (the experiment is the same for every potential)
    per_structure = frame.groupby("structure_id", as_index=False).agg(
        {"compound_key": "first", **{k: "min" for k in keys}})
    ordered = per_structure.sort_values([*keys, "structure_id"], na_position="last", kind="mergesort")
    return ordered.drop_duplicates("compound_key", keep="first").sort_values("compound_key").reset_index(drop=True)


def one_per_compound(errors: pd.DataFrame, rule: Any = DEFAULT_RULE) -> pd.DataFrame:
    """The rows of ``errors`` (all potentials) of the one chosen structure per compound."""
    keys = parse_rule(rule)
    if keys is None or not has_compound_keys(errors):
        return errors
    chosen = set(choose(errors, keys)["structure_id"])
    return errors[errors["structure_id"].isin(chosen)]


def entries_note(errors: pd.DataFrame, rule: Any) -> str:
    """One sentence for the notebook: which entry sets summary.csv holds, and why."""
    keys = parse_rule(rule)
    n_structures = errors["structure_id"].nunique() if "structure_id" in errors else 0
    if keys is None:
        return "summary.csv: entries = 'all' only (one_per_compound disabled)."
    if not has_compound_keys(errors):
        return ("summary.csv: entries = 'all' only: the clean rows carry no compound_key (made by 02_filter "
                "from the molecules' InChIKeys), so redeterminations and polymorphs cannot be grouped.")
    n_compounds = len(choose(errors, keys))
    return (f"summary.csv: entries = 'all' ({n_structures} structures) and 'one_per_compound' ({n_compounds} "
            f"compounds; representative: lowest {' then lowest '.join(keys)}, missing values last).")


# ---------------------------------------------------------------------------------------------
# Polymorphs: one compound, different crystals

#: two entries of one compound and space group are the same crystal when their 0 K volumes per atom agree
#: within this fraction (redeterminations agree within ~1 %; polymorphs of one space group differ by 2–10 %)
POLYMORPH_TOL = 0.03


def polymorph_keys(errors: pd.DataFrame, tol: float = POLYMORPH_TOL, alpha_v: float | None = None) -> pd.Series:
    """structure_id -> "<compound_key>|sg<number>|p<k>": the crystal (compound *and* packing) of each entry.

    Within one compound key and space group (when known), entries whose experimental volume per atom,
    extrapolated to 0 K with ``alpha_v`` (default: :data:`helpers.vocabulary.THERMAL_EXPANSION_V`; a
    measurement without a temperature is used as measured), agrees within ``tol`` of its neighbour are one
    crystal (single linkage on the sorted volumes); another space group or packing density is another
    polymorph. Rows without a compound key are crystals of their own."""
    from helpers.vocabulary import THERMAL_EXPANSION_V

    alpha = THERMAL_EXPANSION_V if alpha_v is None else alpha_v
    frame = errors.drop_duplicates("structure_id").set_index("structure_id")
    compound = frame.get("compound_key", pd.Series(None, index=frame.index)).fillna("").astype(str)
    compound = compound.where(compound != "", "structure:" + frame.index.astype(str))
    group = pd.to_numeric(frame.get("spacegroup_number", pd.Series(np.nan, index=frame.index)), errors="coerce")
    temperature = pd.to_numeric(frame.get("temperature"), errors="coerce").fillna(0.0)
    per_atom = pd.to_numeric(frame.get("V_exp"), errors="coerce") / pd.to_numeric(frame.get("natoms"), errors="coerce")
    volume = per_atom / (1 + alpha * temperature)
    keys = {}
    for (name, sg), members in pd.DataFrame({"c": compound, "sg": group.fillna(-1), "v": volume}).groupby(["c", "sg"]):
        members = members.sort_values("v", na_position="last")
        label, previous = 0, None
        for sid, v in members["v"].items():
            if previous is not None and not (np.isfinite(v) and np.isfinite(previous) and v <= previous * (1 + tol)):
                label += 1
            keys[sid] = f"{name}|sg{int(sg) if sg >= 0 else '?'}|p{label}"
            previous = v
    return pd.Series(keys, name="polymorph_key").reindex(frame.index)


def one_per_polymorph(errors: pd.DataFrame, rule: Any = DEFAULT_RULE, tol: float = POLYMORPH_TOL) -> pd.DataFrame:
    """The rows of ``errors`` of one chosen entry per crystal (compound and polymorph), by ``rule``."""
    keys = parse_rule(rule)
    if keys is None or not has_compound_keys(errors):
        return errors
    relabelled = errors.assign(compound_key=errors["structure_id"].map(polymorph_keys(errors, tol)))
    chosen = set(choose(relabelled, keys)["structure_id"])
    return errors[errors["structure_id"].isin(chosen)]
