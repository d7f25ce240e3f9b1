"""The COD REST search: which entries to fetch, with COD's own metadata for each.

COD's search (``<base>/result``) can require elements (``el1..el8``), forbid a few
(``nel1..nel4``) and bound the number of distinct elements (``strictmin``/``strictmax``), but it
cannot say "no element outside C, H, N, O". The web fetch therefore asks one query per exact
element set (:mod:`helpers.fetch.cod_search`); every answer still goes through :func:`select`, which keeps
the rows whose formula's element set is a subset of ``elements``, parsing formulas with whole
element symbols (``N`` is not ``Ni``/``Na``/``Nb``). Every row that is not kept gets a reason, and
the reasons are counted.

COD's answers are all text (``"Z": "4"``, ``"a": "14.9131"``, ``"formula": "- C6 H6 -"`` or ``"?"``);
numbers are parsed here, and an answer that is empty or not in the requested format is an error
(:class:`CodSearchError`), never "no entries".
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from helpers.fetch.cif import cif_number
from helpers.fetch.formula import parse_formula

#: COD ``data`` table columns kept for every entry (stored as ``cod_<lower-case name>``).
#: Note ``vol`` is the cell volume (Å^3); ``volume`` would be the journal volume.
KEEP_COLUMNS = (
    "formula", "calcformula", "cellformula", "nel", "a", "b", "c", "alpha", "beta", "gamma", "vol",
    "sg", "sgHall", "sgNumber", "Z", "Zprime", "celltemp", "diffrtemp", "cellpressure",
    "diffrpressure", "Rall", "Robs", "Rref", "wRall", "wRobs", "wRref", "duplicateof", "optimal",
    "method", "radiation", "radType", "wavelength", "doi", "year", "journal", "flags", "status",
    "svnrevision",
)
NUMERIC_COLUMNS = {
    "nel", "a", "b", "c", "alpha", "beta", "gamma", "vol", "sgNumber", "Z", "Zprime", "celltemp",
    "diffrtemp", "cellpressure", "diffrpressure", "Rall", "Robs", "Rref", "wRall", "wRobs", "wRref",
    "duplicateof", "optimal", "wavelength", "year", "svnrevision",
}
INTEGER_COLUMNS = {"nel", "sgNumber", "Z", "duplicateof", "optimal", "year", "svnrevision"}


class CodSearchError(RuntimeError):
    """The search answered, but not with a list of entries (empty body, HTML page, bad JSON)."""


class CodRowError(ValueError):
    """A search row that cannot be used (its ``file`` is not a COD id)."""


@dataclass
class CodEntry:
    """One COD search row: the id, the formula's elements (None if unparseable), ``cod_*`` metadata."""

    cod_id: int
    formula: str | None
    elements: frozenset[str] | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def pressure_kpa(self) -> float | None:
        values = [self.meta.get(k) for k in ("cod_cellpressure", "cod_diffrpressure")]
        values = [v for v in values if isinstance(v, (int, float))]
        return max(values) if values else None

    @property
    def r_factor(self) -> float | None:
        for key in ("cod_robs", "cod_rall", "cod_rref"):
            if isinstance(self.meta.get(key), (int, float)):
                return self.meta[key]
        return None


def parse_search(text: str, fmt: str = "json") -> list[dict[str, Any]]:
    """COD search response (``json`` or ``csv``) -> list of row dicts; raises CodSearchError."""
    stripped = text.lstrip()
    if not stripped:
        raise CodSearchError(f"COD search returned an empty body, not {fmt} (no answer is not 'no entries')")
    if stripped[:1] == "<":
        raise CodSearchError(f"COD search returned an HTML page, not {fmt}: {stripped[:120]!r}")
    if fmt == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CodSearchError(f"COD search returned invalid JSON ({exc}): {stripped[:120]!r}") from exc
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(f"unsupported search format {fmt!r} (json or csv)")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "file" in r for r in rows):
        raise CodSearchError(f"COD search returned no list of entries: {stripped[:120]!r}")
    return rows


def _value(column: str, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() in ("", "?", ".", "NULL")):
        return None
    if column in NUMERIC_COLUMNS:
        number = cif_number(value)
        if column in INTEGER_COLUMNS and number is not None and number.is_integer():
            return int(number)
        return number
    text = str(value).strip()
    if column in ("formula", "calcformula"):
        text = text.strip("-").strip()
    return text or None


def row_elements(row: dict[str, Any]) -> tuple[str | None, frozenset[str] | None]:
    """(formula, element set) from ``formula``, else ``calcformula``; set None when unparseable."""
    for column in ("formula", "calcformula"):
        formula = _value(column, row.get(column))
        if formula is None:
            continue
        try:
            return formula, frozenset(parse_formula(formula))
        except ValueError:
            continue
    return _value("formula", row.get("formula")), None


def row_cod_id(row: dict[str, Any]) -> int:
    """The COD id of a search row; :class:`CodRowError` when ``file`` is not a positive integer."""
    value = row.get("file")
    text = str(value).strip() if value is not None else ""
    if not re.fullmatch(r"0*[1-9]\d{0,8}", text):
        raise CodRowError(f"search row whose file {value!r} is not a COD id")
    return int(text)


def entry_from_row(row: dict[str, Any]) -> CodEntry:
    """A search row -> :class:`CodEntry` with numbers parsed (``'4.59(3)'`` -> 4.59).

    Raises :class:`CodRowError` for a row without a valid COD id.
    """
    cod_id = row_cod_id(row)
    formula, elements = row_elements(row)
    meta = {}
    for column in KEEP_COLUMNS:
        value = _value(column, row.get(column))
        if value is not None:
            meta[f"cod_{column.lower()}"] = value
    return CodEntry(cod_id=cod_id, formula=formula, elements=elements, meta=meta)


@dataclass
class Selection:
    """Entries to fetch, and why the others were not (reason -> count; id -> reason)."""

    queried: int = 0
    entries: list[CodEntry] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_ids: dict[int, str] = field(default_factory=dict)
    unknown_formula: int = 0
    #: rows that could not be used at all (``file`` not a COD id): (the row's file value, reason)
    invalid: list[tuple[str, str]] = field(default_factory=list)


def select(rows: Iterable[dict[str, Any] | CodEntry], elements: Iterable[str], *,
           max_pressure_kpa: float | None = None, drop_duplicates: bool = False,
           max_r_factor: float | None = None, keep_unknown_formula: bool = True,
           limit: int | None = None) -> Selection:
    """Keep rows made only of ``elements``, plus the optional selections on COD metadata.

    - ``max_pressure_kpa``: skip entries measured above this pressure (ambient is 101.325 kPa;
      entries without a pressure are ambient).
    - ``drop_duplicates``: skip entries COD flags as a duplicate of another entry.
    - ``max_r_factor``: skip entries with R (Robs, else Rall) above this (a fraction, e.g. 0.1).
    - ``keep_unknown_formula``: entries whose formula cannot be parsed are kept (their elements are
      checked again from the atoms when loaded) and counted in ``unknown_formula``.
    - ``limit``: the first ``limit`` selected entries by COD id.

    Entries COD has retracted (``status = retracted``) are always skipped, with that reason. A row
    whose ``file`` is not a COD id is recorded in ``invalid`` and counted, never fatal.
    """
    allowed = frozenset(elements)
    selection = Selection()
    seen: set[int] = set()

    def skip(entry: CodEntry, reason: str) -> None:
        selection.skipped[reason] += 1
        selection.skipped_ids[entry.cod_id] = reason

    for item in rows:
        selection.queried += 1
        try:
            entry = item if isinstance(item, CodEntry) else entry_from_row(item)
        except CodRowError as exc:
            selection.invalid.append((str(item.get("file")), str(exc)))
            selection.skipped["search row without a COD id"] += 1
            continue
        if entry.cod_id in seen:
            selection.skipped["repeated in search result"] += 1
            continue
        seen.add(entry.cod_id)
        if entry.elements is None:
            if not keep_unknown_formula:
                skip(entry, "formula unknown")
                continue
            selection.unknown_formula += 1
        elif not entry.elements <= allowed:
            skip(entry, f"elements outside {','.join(sorted(allowed))}")
            continue
        if str(entry.meta.get("cod_status", "")).lower() == "retracted":
            skip(entry, "retracted by COD (status = retracted)")
            continue
        pressure = entry.pressure_kpa
        if max_pressure_kpa is not None and pressure is not None and pressure > max_pressure_kpa:
            skip(entry, f"pressure > {max_pressure_kpa:g} kPa")
            continue
        if drop_duplicates and entry.meta.get("cod_duplicateof"):
            skip(entry, "COD duplicate of another entry")
            continue
        r_factor = entry.r_factor
        if max_r_factor is not None and r_factor is not None and r_factor > max_r_factor:
            skip(entry, f"R factor > {max_r_factor:g}")
            continue
        selection.entries.append(entry)
    selection.entries.sort(key=lambda e: e.cod_id)
    if limit is not None and len(selection.entries) > limit:
        for entry in selection.entries[limit:]:
            skip(entry, "beyond limit")
        selection.entries = selection.entries[:limit]
    return selection


def search_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/result"
