"""Cross-check a downloaded CIF against what COD's search row says about that entry.

Why: a CIF cut short on the way (a connection closed early on an answer without Content-Length,
a proxy ending a chunked answer cleanly) can still be a valid CIF, just with fewer atom sites:
real cases kept 708 of 1156, 56 of 100 and 72 of 416 atoms. The search row was computed by COD from
the complete file, so it tells what the file must contain: the cell (``a b c alpha beta gamma``),
``Z``, the formula (``_chemical_formula_sum``) and the atoms (``cellformula``, or ``calcformula`` x
``Z``, counted from the atom sites with their occupancies). A file that disagrees is downloaded
again; see :func:`helpers.fetch.download.download_cifs` for what happens when COD keeps serving the same
bytes (then the file is what COD has, and it is kept with the disagreement recorded).

:class:`VerifiedIndex` remembers which cached files already passed (by content hash and search row),
so a rerun over tens of thousands of cached files re-reads only new or changed ones.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from helpers.fetch.cif import cif_number, sha256
from helpers.fetch.formula import parse_formula
from helpers.process.atomic import write_atomic

CELL = (("cod_a", "_cell_length_a"), ("cod_b", "_cell_length_b"), ("cod_c", "_cell_length_c"),
        ("cod_alpha", "_cell_angle_alpha"), ("cod_beta", "_cell_angle_beta"),
        ("cod_gamma", "_cell_angle_gamma"))
#: the row's keys the check uses (a changed row means the file must be checked again)
ROW_KEYS = tuple(k for k, _ in CELL) + ("cod_z", "cod_formula", "cod_calcformula", "cod_cellformula")
#: a file may hold at most this fraction fewer atoms than COD counted (rounding of fractional
#: occupancies); a cut file misses whole rows of the atom loop
ATOMS_RTOL = 0.02


def _tag(block, tag: str) -> Any:
    value = block.get(tag)
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str) and value.strip() in ("", "?", "."):
        return None
    return value


def _formula(text: Any) -> dict[str, float] | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_formula(text)
    except ValueError:
        return None


def _cell_counts(block) -> dict[str, float] | None:
    """Occupancy-weighted element counts of the whole cell (None when ASE cannot build the atoms)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = block.get_atoms()
    except Exception:  # noqa: BLE001 - unreadable files are the filter's business, not a cut transfer
        return None
    occupancy = atoms.info.get("occupancy") or {}
    kinds = atoms.arrays.get("spacegroup_kinds")
    counts: dict[str, float] = {}
    for i, symbol in enumerate(atoms.get_chemical_symbols()):
        weight = 1.0
        if kinds is not None:
            weight = float(occupancy.get(str(int(kinds[i])), {}).get(symbol, 1.0))
        counts[symbol] = counts.get(symbol, 0.0) + weight
    return counts


def expected_cell_counts(meta: dict[str, Any]) -> tuple[dict[str, float], str] | None:
    """Element counts of the whole cell according to the row, and which column said so."""
    cell = _formula(meta.get("cod_cellformula"))
    if cell:
        return cell, "cellformula"
    calc, z = _formula(meta.get("cod_calcformula")), meta.get("cod_z")
    if calc and isinstance(z, (int, float)) and z > 0:
        return {el: n * z for el, n in calc.items()}, "calcformula x Z"
    return None


def row_mismatch(text: str, meta: dict[str, Any]) -> str | None:
    """How ``text`` disagrees with the search row ``meta`` (``cod_*`` keys), None when it agrees.

    Only what the row states is checked (a column COD left empty checks nothing).
    """
    from helpers.fetch.cif import cif_blocks

    try:
        block = next(iter(cif_blocks(text)))
    except Exception as exc:  # noqa: BLE001
        return f"CIF parse error ({type(exc).__name__}: {exc})"
    problems = []
    for key, tag in CELL:
        want = meta.get(key)
        if not isinstance(want, (int, float)):
            continue
        have = cif_number(_tag(block, tag))
        if have is None:
            problems.append(f"{tag} missing (COD: {want:g})")
        elif abs(have - want) > max(1e-3, 1e-4 * abs(want)):
            problems.append(f"{tag} {have:g} vs COD {want:g}")
    z_want, z_have = meta.get("cod_z"), cif_number(_tag(block, "_cell_formula_units_z"))
    if isinstance(z_want, (int, float)) and z_have is not None and abs(z_have - z_want) > 1e-6:
        problems.append(f"Z {z_have:g} vs COD {z_want:g}")
    formula_want = _formula(meta.get("cod_formula"))
    if formula_want:
        raw = _tag(block, "_chemical_formula_sum")
        formula_have = _formula(raw)
        if raw is None:
            problems.append(f"_chemical_formula_sum missing (COD: {meta.get('cod_formula')})")
        elif formula_have is not None and (
                set(formula_have) != set(formula_want)
                or any(abs(formula_have[e] - formula_want[e]) > 1e-3 for e in formula_want)):
            problems.append(f"formula {raw!r} vs COD {meta.get('cod_formula')!r}")
    expected = expected_cell_counts(meta)
    if expected is not None:
        want_counts, source = expected
        have_counts = _cell_counts(block)
        if have_counts is not None:
            total_want, total_have = sum(want_counts.values()), sum(have_counts.values())
            short = {el: (have_counts.get(el, 0.0), n) for el, n in want_counts.items()
                     if have_counts.get(el, 0.0) < n * (1 - ATOMS_RTOL) - 0.5}
            if total_have < total_want * (1 - ATOMS_RTOL) or short:
                detail = ", ".join(f"{el} {h:g}/{n:g}" for el, (h, n) in sorted(short.items()))
                problems.append(f"atoms cut short: {total_have:g} of {total_want:g} in the cell "
                                f"(COD's {source}{'; ' + detail if detail else ''})")
    return "; ".join(problems) or None


def row_fingerprint(meta: dict[str, Any]) -> str:
    """A digest of the row's columns the check uses."""
    return sha256(json.dumps({k: meta.get(k) for k in ROW_KEYS}, sort_keys=True, default=str))


class VerifiedIndex:
    """``<cache>/verified.json``: COD id -> the file hash and row fingerprint that passed the check
    (and the disagreement kept, for a file COD serves that way)."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / "verified.json"
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def passed(self, cod_id: int, digest: str, meta: dict[str, Any]) -> bool:
        entry = self.entries.get(str(cod_id))
        return bool(entry) and entry.get("sha256") == digest and entry.get("row") == row_fingerprint(meta)

    def note(self, cod_id: int) -> str | None:
        return (self.entries.get(str(cod_id)) or {}).get("mismatch")

    def add(self, cod_id: int, digest: str, meta: dict[str, Any], mismatch: str | None = None,
            url: str | None = None) -> None:
        self.entries[str(cod_id)] = {"sha256": digest, "row": row_fingerprint(meta), "mismatch": mismatch,
                                     "url": url}

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.entries, sort_keys=True).encode())
