"""The COD REST search: which entries to fetch, with COD's own metadata for each.

COD's search (``<base>/result``) can require elements (``el1..el8``), forbid a few
(``nel1..nel4``) and bound the number of distinct elements (``strictmin``/``strictmax``), but it
cannot say "no element outside C, H, N, O". So we ask broadly (must contain C and H, at most
``len(elements)`` distinct elements) and keep the rows whose formula's element set is a subset of
``elements``, parsing formulas with whole element symbols (``N`` is not ``Ni``/``Na``/``Nb``).
Every row that is not kept gets a reason, and the reasons are counted.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from helpers.fetch.cif import cif_number
from helpers.fetch.download import RateLimiter, RetryPolicy, decode, get_text, new_session, write_atomic
from helpers.fetch.formula import parse_formula

#: COD ``data`` table columns kept for every entry (stored as ``cod_<lower-case name>``).
#: Note ``vol`` is the cell volume (Å^3); ``volume`` would be the journal volume.
KEEP_COLUMNS = (
    "formula", "calcformula", "nel", "a", "b", "c", "alpha", "beta", "gamma", "vol",
    "sg", "sgHall", "sgNumber", "Z", "Zprime", "celltemp", "diffrtemp", "cellpressure",
    "diffrpressure", "Rall", "Robs", "Rref", "wRall", "wRobs", "wRref", "duplicateof", "optimal",
    "method", "radiation", "radType", "wavelength", "doi", "year", "journal", "flags", "status",
)
NUMERIC_COLUMNS = {
    "nel", "a", "b", "c", "alpha", "beta", "gamma", "vol", "sgNumber", "Z", "Zprime", "celltemp",
    "diffrtemp", "cellpressure", "diffrpressure", "Rall", "Robs", "Rref", "wRall", "wRobs", "wRref",
    "duplicateof", "optimal", "wavelength", "year",
}
INTEGER_COLUMNS = {"nel", "sgNumber", "Z", "duplicateof", "optimal", "year"}


class CodSearchError(RuntimeError):
    """The search answered, but not with a list of entries (HTML page, error message, bad JSON)."""


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


def search_params(elements: Sequence[str], must_contain: Sequence[str] | None = None,
                  exclude: Sequence[str] = (), max_elements: int | None = None,
                  min_elements: int | None = None, fmt: str = "json") -> dict[str, str]:
    """Query parameters for COD's search: broad enough to contain every wanted entry.

    ``must_contain`` defaults to C and H (the study's organic crystals; entries without C or H,
    like ice or N2, need ``must_contain=("H",)`` or ``()``).
    """
    allowed = list(dict.fromkeys(elements))
    if must_contain is None:
        must_contain = [e for e in ("C", "H") if e in allowed]
    if not must_contain and not exclude and max_elements is None:
        raise ValueError("refusing an unbounded COD search: give must_contain, exclude or max_elements")
    outside = [e for e in must_contain if e not in allowed]
    if outside:
        raise ValueError(f"must_contain {outside} is not within elements {allowed}: nothing could match")
    if len(must_contain) > 8 or len(exclude) > 4:
        raise ValueError("COD allows at most 8 required (el1..el8) and 4 excluded (nel1..nel4) elements")
    params = {f"el{i}": e for i, e in enumerate(must_contain, 1)}
    params.update({f"nel{i}": e for i, e in enumerate(exclude, 1)})
    params["strictmax"] = str(max_elements or len(allowed))
    if min_elements:
        params["strictmin"] = str(min_elements)
    params["format"] = fmt
    return params


def parse_search(text: str, fmt: str = "json") -> list[dict[str, Any]]:
    """COD search response (``json`` or ``csv``) -> list of row dicts; raises CodSearchError."""
    stripped = text.lstrip()
    if stripped[:1] == "<":
        raise CodSearchError(f"COD search returned an HTML page, not {fmt}: {stripped[:120]!r}")
    if fmt == "json":
        try:
            rows = json.loads(text) if stripped else []
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


def entry_from_row(row: dict[str, Any]) -> CodEntry:
    """A search row -> :class:`CodEntry` with numbers parsed (``'4.59(3)'`` -> 4.59)."""
    formula, elements = row_elements(row)
    meta = {}
    for column in KEEP_COLUMNS:
        value = _value(column, row.get(column))
        if value is not None:
            meta[f"cod_{column.lower()}"] = value
    return CodEntry(cod_id=int(str(row["file"]).strip()), formula=formula, elements=elements, meta=meta)


@dataclass
class Selection:
    """Entries to fetch, and why the others were not (reason -> count; id -> reason)."""

    queried: int = 0
    entries: list[CodEntry] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_ids: dict[int, str] = field(default_factory=dict)
    unknown_formula: int = 0


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
    """
    allowed = frozenset(elements)
    selection = Selection()
    seen: set[int] = set()

    def skip(entry: CodEntry, reason: str) -> None:
        selection.skipped[reason] += 1
        selection.skipped_ids[entry.cod_id] = reason

    for item in rows:
        entry = item if isinstance(item, CodEntry) else entry_from_row(item)
        selection.queried += 1
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


def search(base_url: str, params: dict[str, str], *, policy: RetryPolicy | None = None,
           limiter: RateLimiter | None = None, session: requests.Session | None = None,
           ) -> list[dict[str, Any]]:
    """Run one COD search (retried like any download); returns the raw rows."""
    fmt = params.get("format", "json")

    def problem(text: str) -> str | None:
        try:
            parse_search(text, fmt)
        except CodSearchError as exc:
            return str(exc)
        return None

    own = session is None
    session = session or new_session()
    try:
        body, _ = get_text(session, search_url(base_url), params=params, policy=policy or RetryPolicy(),
                           limiter=limiter or RateLimiter(None), check=problem)
    finally:
        if own:
            session.close()
    return parse_search(decode(body), fmt)


def save_search(path: str | Path, params: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Keep the search answer next to the cache (provenance, and a fallback when COD is down)."""
    record = {"params": params, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    write_atomic(Path(path), json.dumps(record).encode())


def load_search(path: str | Path, params: dict[str, str]) -> tuple[list[dict[str, Any]], str] | None:
    """Rows and time of a saved search with the same parameters, else None."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if record.get("params") != params:
        return None
    return record["rows"], record.get("time", "?")
