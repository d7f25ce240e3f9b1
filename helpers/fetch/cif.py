"""Read CIF text into entries: ASE Atoms per data block plus the metadata the study needs.

One *entry* is one structure: a COD file is one entry (its first data block with atoms);
a multi-block file from elsewhere gives one entry per block with atoms. A block that
``ase.io`` cannot turn into Atoms is still an entry, with the exception text recorded, so
nothing is dropped silently.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms
from ase.io.cif import CIFBlock, parse_cif

from helpers.fetch.formula import parse_formula

#: CIF tags (lower case, as ASE stores them) -> our metadata key; first present wins.
METADATA_TAGS: dict[str, tuple[str, ...]] = {
    "cif_formula": ("_chemical_formula_sum",),
    "cif_moiety": ("_chemical_formula_moiety",),
    "spacegroup": ("_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m"),
    "spacegroup_number": ("_space_group_it_number", "_symmetry_int_tables_number"),
    "cell_temperature": ("_cell_measurement_temperature",),
    "diffrn_temperature": ("_diffrn_ambient_temperature",),
    "pressure": ("_diffrn_ambient_pressure", "_cell_measurement_pressure"),
    "r_factor": ("_refine_ls_r_factor_gt", "_refine_ls_r_factor_obs", "_refine_ls_r_factor_all"),
    "z_formula": ("_cell_formula_units_z",),
    "cod_database_code": ("_cod_database_code",),
    "doi": ("_journal_paper_doi",),
    "radiation": ("_diffrn_radiation_type",),
    "compound_name": ("_chemical_name_common", "_chemical_name_systematic"),
}
NUMERIC = {"spacegroup_number", "cell_temperature", "diffrn_temperature", "pressure",
           "r_factor", "z_formula", "cod_database_code"}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\(\d+\))?")


@dataclass
class CifEntry:
    """One structure from a CIF file: Atoms (or why there are none) and metadata."""

    block: str
    atoms: Atoms | None
    error: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def cif_number(value: Any) -> float | None:
    """Parse a CIF number with an optional standard uncertainty: ``'0.0412(3)'`` -> 0.0412."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _NUMBER.match(value)
    return float(match.group(1)) if match else None


def sha256(text: str | bytes) -> str:
    """Hex SHA-256 of the file contents, to detect changed or corrupted files."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def block_metadata(block: CIFBlock) -> dict[str, Any]:
    """Our metadata keys from a CIF block; numbers parsed, unknown values (``?``, ``.``) left out."""
    out: dict[str, Any] = {}
    for key, tags in METADATA_TAGS.items():
        for tag in tags:
            value = block.get(tag)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is None or (isinstance(value, str) and value.strip() in ("", "?", ".")):
                continue
            if key in NUMERIC:
                value = cif_number(value)
                if value is None:
                    continue
            elif not isinstance(value, str):
                value = str(value)
            out[key] = (" ".join(value.split()) if key == "compound_name"  # a multi-line text field
                        else value.strip() if isinstance(value, str) else value)
            break
    temperature = temperature_kelvin(out)
    if temperature is not None:
        out["temperature"] = temperature
    if "cif_formula" in out:
        try:
            out["cif_elements"] = ",".join(sorted(parse_formula(out["cif_formula"])))
        except ValueError:
            pass
    return out


def temperature_kelvin(meta: dict[str, Any]) -> float | None:
    """Measurement temperature in K: cell measurement first, then diffraction ambient.

    A value <= 0 cannot be Kelvin (COD has Celsius written as K, e.g. -173): returned None,
    so it is reported as unknown rather than trusted.
    """
    for key in ("cell_temperature", "diffrn_temperature"):
        value = meta.get(key)
        if value is not None and value > 0:
            return float(value)
    return None


def _block_atoms(block: CIFBlock) -> tuple[Atoms | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = block.get_atoms()
    except Exception as exc:  # noqa: BLE001 - any reader failure is a recorded reason
        return None, f"{type(exc).__name__}: {exc}"
    return atoms, None


def cif_blocks(text: str) -> list[CIFBlock]:
    """ASE's parse of CIF text into data blocks, its warnings silenced (a bad CIF raises, as ASE does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(parse_cif(io.StringIO(text)))


@functools.lru_cache(maxsize=4096)
def compound_name(text: str) -> str | None:
    """The compound's name from CIF text (its first block that names one; the common name first, else the
    systematic one: metadata key ``compound_name``, which 01_fetch records), whitespace collapsed; None when
    no block names it or the text cannot be parsed. For rows fetched before the key was recorded. Cached: the
    same entry is named once per analysis."""
    try:
        blocks = cif_blocks(text)
    except Exception:  # noqa: BLE001 - a name is a courtesy; an unreadable CIF was reported by 01_fetch
        return None
    return next((name for block in blocks if (name := block_metadata(block).get("compound_name"))), None)


def read_entries(text: str, one_entry: bool = False) -> list[CifEntry]:
    """Split CIF text into entries; never raises for bad content.

    ``one_entry``: the file is a single COD entry, so keep only its first block with atoms.
    A file with no readable block yields one entry with ``atoms=None`` and the reason.
    """
    try:
        blocks = cif_blocks(text)
    except Exception as exc:  # noqa: BLE001
        return [CifEntry(block="", atoms=None, error=f"{type(exc).__name__}: {exc}")]
    if not blocks:
        return [CifEntry(block="", atoms=None, error="no CIF data block found")]
    structural = [b for b in blocks if _has_structure(b)]
    if not structural:
        meta = block_metadata(blocks[0])
        return [CifEntry(block=blocks[0].name, atoms=None, metadata=meta,
                         error="no data block with atom sites and a cell")]
    if one_entry:
        structural = structural[:1]
    entries = []
    for block in structural:
        atoms, error = _block_atoms(block)
        entries.append(CifEntry(block=block.name, atoms=atoms, error=error,
                                metadata=block_metadata(block)))
    return entries


def _has_structure(block: CIFBlock) -> bool:
    try:
        return bool(block.has_structure())
    except Exception:  # noqa: BLE001
        return False


def single_block_text(text: str, block: str) -> str:
    """The text of one data block of a multi-block CIF (for pymatgen, which reads all blocks)."""
    parts = re.split(r"(?im)^(?=data_)", text)
    name = re.compile(rf"(?i)data_{re.escape(block)}(\s|$)")  # the whole name: 'mol1' is not 'mol10'
    for part in parts:
        if name.match(part):
            return part
    return text
