"""Which entries the science tables stand on: the unaltered COD sample, apart from test material and ice.

The shared data holds two folders. ``cod-sample/`` is byte-identical COD entries: the science sample.
``cod/`` is the COD tool suite's own test inputs, most of them modified variants or pre-deposition copies
(its manifest says so): they test the filter, they do not measure a potential. Ice (a crystal of H2O
alone) is not a molecular organic crystal of the kind the study measures. Every errors row gets a
``sample_set`` from its clean row's ``source`` (the CIF path) and compound:

- ``science``: from a ``cod-sample/`` folder, not ice;
- ``altered``: from a ``cod/`` folder (the tool suite's test inputs), not ice;
- ``ice``: the compound is water alone (InChIKey or formula), whatever the folder;
- ``unknown source``: the row carries no ``source`` (an errors table from before it was recorded).

When no row is of the science sample (no row carries a source, or a run on ``cod/`` alone), the split
cannot be made and every row stays in the tables (:func:`science` returns all of them); the report says so.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

import pandas as pd

from helpers.vocabulary import SAMPLE_SETS

SCIENCE, ALTERED, ICE = SAMPLE_SETS
UNKNOWN = "unknown source"
SETS = (SCIENCE, ALTERED, ICE, UNKNOWN)
#: folder name of the unaltered COD entries, and of the COD tool suite's test inputs
SCIENCE_FOLDER, ALTERED_FOLDER = "cod-sample", "cod"
WATER_INCHIKEY = "XLYOFNOQVPJJNP-UHFFFAOYSA-N"
SET_TEXT = {SCIENCE: "unaltered COD entries (`cod-sample/`): the science sample",
            ALTERED: "COD tool-suite test inputs (`cod/`), mostly modified variants: the filter's test material",
            ICE: "ice (H2O alone): not a molecular organic crystal",
            UNKNOWN: "no source recorded"}


def is_water(compound_key: Any = None, formula: Any = None) -> bool:
    """True for a crystal of water alone: its compound key is water's InChIKey, or its formula is H2O."""
    if isinstance(compound_key, str) and compound_key.strip():
        return compound_key.strip() == WATER_INCHIKEY
    if isinstance(formula, str) and formula.strip():
        counts = dict(re.findall(r"([A-Z][a-z]?)\s*(\d*)", formula.replace(" ", "")))
        return set(counts) == {"H", "O"} and (counts["H"] or "1") == "2" and (counts["O"] or "1") == "1"
    return False


def sample_set(source: Any, compound_key: Any = None, formula: Any = None) -> str:
    """The set of one entry from its CIF path and compound (see the module docstring)."""
    if is_water(compound_key, formula):
        return ICE
    if not isinstance(source, str) or not source.strip():
        return UNKNOWN
    folders = PurePath(source).parts[:-1]
    if SCIENCE_FOLDER in folders:
        return SCIENCE
    if ALTERED_FOLDER in folders:
        return ALTERED
    return UNKNOWN


def add_sample_set(errors: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``errors`` with a ``sample_set`` column (from ``source``, ``compound_key``, ``cif_formula``)."""
    out = errors.copy()
    column = lambda name: out[name] if name in out else pd.Series(None, index=out.index, dtype=object)  # noqa: E731
    out["sample_set"] = [sample_set(s, k, f) for s, k, f in
                         zip(column("source"), column("compound_key"), column("cif_formula"))]
    return out


def labelled(errors: pd.DataFrame) -> bool:
    """True when the split can be made: some row is of the science sample. Rows from ``cod/`` alone (a
    filter test run) have no science sample, and every table then uses every row, as before the split."""
    return "sample_set" in errors and (errors["sample_set"] == SCIENCE).any()


def science(errors: pd.DataFrame) -> pd.DataFrame:
    """The rows of the science sample; every row when no row knows its source."""
    if "sample_set" not in errors:
        errors = add_sample_set(errors)
    return errors[errors["sample_set"] == SCIENCE] if labelled(errors) else errors


def set_ids(errors: pd.DataFrame) -> dict[str, list[str]]:
    """The structure ids in each set (``docs/results.json`` section ``sets``)."""
    if "sample_set" not in errors:
        errors = add_sample_set(errors)
    structures = errors.drop_duplicates("structure_id")
    return {name: sorted(map(str, structures.loc[structures["sample_set"] == name, "structure_id"]))
            for name in SETS if (structures["sample_set"] == name).any()}


def breakdown(errors: pd.DataFrame) -> pd.DataFrame:
    """The clean structures relaxed, counted by set: what each set is and whether the science tables use it."""
    ids = set_ids(errors)
    science_used = SCIENCE if labelled(errors if "sample_set" in errors else add_sample_set(errors)) else UNKNOWN
    return pd.DataFrame([{"set": name, "what it is": SET_TEXT[name], "structures": len(members),
                          "in the science tables": "yes" if name == science_used else "no (reported apart)"}
                         for name, members in ids.items()])
