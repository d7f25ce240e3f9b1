"""Which crystals can hold conventional hydrogen bonds: the chemical split a reader asks of a ranking.

A potential chosen for a pharmaceutical (amides, acids, alcohols: N–H···O, O–H···O) may not be the one for a
crystal held by dispersion and weak contacts alone (hydrocarbons, ethers, nitro aromatics). The split is read
from the molecules 02_filter found in the cell (their SMILES, with hydrogens as the CIF placed them): a crystal
is in the donor class when one of its molecules has an N or O atom carrying a hydrogen (N–H, O–H: amines,
amides, acids, alcohols, water of crystallisation, ammonium). The rule is deliberately simple and transparent:
no geometry, no acceptor count (every such crystal here also has N or O acceptors), S–H and C–H donors not
counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import pandas as pd

from helpers.analysis.ranking import subset_ranking
from helpers.vocabulary import BONDING_CLASSES, DONORS, NO_DONORS

__all__ = ["BONDING_CLASSES", "DONORS", "NO_DONORS", "bonding_class", "bonding_frame", "by_bonding", "nh_oh_donors"]

#: the atoms that donate a conventional hydrogen bond when they carry a hydrogen
DONOR_ELEMENTS = ("N", "O")


def nh_oh_donors(smiles: Iterable[str]) -> int | None:
    """N or O atoms carrying at least one hydrogen, summed over the distinct molecules given as SMILES (each
    counted once, whatever its multiplicity in the cell); None when there is none or one cannot be read."""
    counts = [_donor_atoms(str(text)) if text else None for text in smiles]
    return sum(counts) if counts and None not in counts else None


@lru_cache(maxsize=4096)
def _donor_atoms(smiles: str) -> int | None:
    """One molecule's N and O atoms carrying H (None: not a SMILES RDKit reads). Cached: the analysis asks once
    per relaxed row, so once per potential for the same molecules."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return sum(1 for atom in mol.GetAtoms() if atom.GetSymbol() in DONOR_ELEMENTS and atom.GetTotalNumHs() > 0)


def bonding_class(n_donors: float | int | None) -> str | None:
    """:data:`DONORS` or :data:`NO_DONORS` from :func:`nh_oh_donors`' count; None when it is unknown (None or
    NaN: the molecules were not read)."""
    if n_donors is None or pd.isna(n_donors):
        return None
    return DONORS if float(n_donors) > 0 else NO_DONORS


def by_bonding(science: pd.DataFrame, ranking: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`helpers.analysis.ranking.subset_ranking` of each bonding class (:mod:`helpers.analysis.bonding`)
    of the shared structures; a class with too few structures is left out. {} without the donor counts."""
    if science.empty or "nh_oh_donors" not in science or not ranking.get("shared"):
        return {}
    donors = pd.to_numeric(science.groupby("structure_id")["nh_oh_donors"].first(), errors="coerce")
    classes = donors.map(bonding_class)
    out = {}
    for name in BONDING_CLASSES:
        result = subset_ranking(science, ranking, set(classes.index[classes == name].astype(str)))
        if result is not None:
            out[name] = result
    return out


def bonding_frame(split: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`by_bonding` as one tidy table: a row per class and ranked potential (``n``, ``metric`` with its
    exact CI, ``bias``, ``failures``, ``rank`` in the class), for a notebook."""
    rows = [{"class": name, "potential": potential, "n": result["n"], **values,
             "rank": result["order"].index(potential) + 1}
            for name, result in split.items() for potential, values in result["potentials"].items()]
    return pd.DataFrame(rows)
