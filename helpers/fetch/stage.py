"""Notebook 01's entry point: fetch CIFs from a source into the raw ASE database.

Sources:
- the COD web service (default; ``COD_SOURCE`` overrides): with ``cod_ids`` just those entries
  (the demo path), otherwise a COD search narrowed to ``elements`` (:mod:`helpers.fetch.cod`), downloaded
  politely into a resumable cache (:mod:`helpers.fetch.download`);
- a local directory (any folder of CIFs at any depth, e.g. an rsync mirror of COD with layout
  ``1/00/00/1000000.cif``), selected on ``elements`` from the files themselves.

Either way every entry goes to the raw database through :func:`helpers.fetch.raw.load_files`, keyed by
``structure_id``: re-running never duplicates rows and does not re-parse unchanged entries.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.fetch.cif import sha256
from helpers.fetch.cod import load_search, save_search, search, search_params, select
from helpers.fetch.download import (
    FetchError,
    RateLimiter,
    RetryPolicy,
    cif_url,
    decode,
    download_cifs,
)
from helpers.fetch.formula import parse_formula
from helpers.fetch.raw import CifFile, LoadReport, cod_id_from_name, load_files
from helpers.fetch.sources import directory_files, is_url, read_text, resolve_source
from helpers.store import db as dbmod

_FORMULA_SUM = re.compile(r"(?im)^[ \t]*_chemical_formula_sum[ \t]+(?:'([^'\n]*)'|\"([^\"\n]*)\"|(\S+))")
_DATA_BLOCK = re.compile(r"(?im)^[ \t]*data_")


@dataclass
class FetchReport:
    """What happened to every entry: queried, selected, fetched, failed (with reasons), in the raw DB."""

    source: str
    queried: int = 0
    selected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unknown_formula: int = 0
    downloaded: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    already_in_raw_db: int = 0
    load: LoadReport | None = None
    in_raw_db: int = 0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """Ordered counts for the notebook table (skip and failure reasons on their own rows)."""
        rows: dict[str, Any] = {"source": self.source, "queried": self.queried}
        rows.update({f"skipped: {reason}": n for reason, n in sorted(self.skipped.items())})
        rows.update({"selected": self.selected, "selected, formula unknown": self.unknown_formula,
                     "downloaded": self.downloaded, "cached": self.cached, "failed": len(self.failed)})
        reasons = Counter(self.failed.values())
        rows.update({f"failed: {reason}": n for reason, n in reasons.most_common()})
        rows["already in raw DB (unchanged)"] = self.already_in_raw_db
        if self.load:
            rows.update(self.load.as_dict())
        rows["in_raw_db"] = self.in_raw_db
        return rows

    def table(self):
        import pandas as pd

        return pd.Series(self.counts(), name="count").to_frame()

    def failures(self):
        """One row per failed entry with its reason."""
        import pandas as pd

        return pd.DataFrame({"entry": list(self.failed), "reason": list(self.failed.values())})


def default_cache_dir(raw_db: str | Path) -> Path:
    """``cif_cache`` next to the raw database file (``data/cif_cache`` for server databases)."""
    if dbmod.is_url(raw_db):
        return Path("data") / "cif_cache"
    return Path(raw_db).parent / "cif_cache"


def fetch(source: str | None, raw_db: str, elements: Sequence[str] = ("C", "H", "N", "O"),
          cod_ids: Iterable[int] | None = None, limit: int | None = None,
          progress: bool = True, *, cache_dir: str | Path | None = None, rate: float | None = 1.0,
          concurrency: int = 4, retry: RetryPolicy | None = None,
          must_contain: Sequence[str] | None = None, exclude: Sequence[str] = (),
          max_pressure_kpa: float | None = None, drop_duplicates: bool = False,
          max_r_factor: float | None = None, keep_unknown_formula: bool = True,
          search_format: str = "json", n_workers: int | None = 1) -> FetchReport:
    """Fetch CIFs from ``source`` (``COD_SOURCE`` overrides) into ``raw_db``; idempotent, resumable.

    Web options: ``cache_dir`` (default ``cif_cache`` beside ``raw_db``), ``rate`` (requests/s for
    the whole run), ``concurrency`` (threads), ``retry`` (attempts, backoff, timeouts). Search
    options: ``must_contain``/``exclude`` (COD ``el``/``nel``), and the pre-download selection
    ``max_pressure_kpa``, ``drop_duplicates``, ``max_r_factor``, ``keep_unknown_formula``
    (see :func:`helpers.fetch.cod.select`). ``n_workers`` processes parse the CIFs (None: every core).
    """
    source = resolve_source(source)
    report = FetchReport(source=source)
    db = dbmod.connect(raw_db)
    existing = existing_digests(db)
    if is_url(source):
        files = _web_files(report, source, elements, cod_ids, limit, progress, existing,
                           cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(raw_db),
                           rate=rate, concurrency=concurrency, policy=retry or RetryPolicy(),
                           must_contain=must_contain, exclude=exclude, search_format=search_format,
                           selection=dict(max_pressure_kpa=max_pressure_kpa, drop_duplicates=drop_duplicates,
                                          max_r_factor=max_r_factor,
                                          keep_unknown_formula=keep_unknown_formula))
    else:
        files = _directory_files(report, source, elements, cod_ids, limit, existing)
    report.load = load_files(db, files, elements, progress=progress, n_workers=n_workers)
    report.in_raw_db = db.count()
    return report


def existing_digests(db) -> dict[str, str]:
    """``structure_id`` -> ``sha256`` of every row already in the raw database."""
    return {str(row.get("structure_id")): row.get("sha256")
            for row in db.select("structure_id", columns=["id", "key_value_pairs"])}


def _unchanged(report: FetchReport, existing: dict[str, str], cod_id: int | None, text: str) -> bool:
    """True (and counted) when this COD entry is already in the raw DB with identical text."""
    if cod_id is not None and existing.get(f"cod-{cod_id}") == sha256(text):
        report.already_in_raw_db += 1
        return True
    return False


def _web_files(report: FetchReport, base: str, elements: Sequence[str], cod_ids: Iterable[int] | None,
               limit: int | None, progress: bool, existing: dict[str, str], *, cache_dir: Path,
               rate: float | None, concurrency: int, policy: RetryPolicy,
               must_contain: Sequence[str] | None, exclude: Sequence[str], search_format: str,
               selection: dict[str, Any]) -> Iterator[CifFile]:
    """Search (unless ``cod_ids``), select, download into the cache; yield what to load."""
    limiter = RateLimiter(rate)
    meta: dict[int, dict[str, Any]] = {}
    if cod_ids is not None:
        ids = list(dict.fromkeys(int(i) for i in cod_ids))
        report.queried = len(ids)
        if limit is not None and len(ids) > limit:
            report.skipped["beyond limit"] = len(ids) - limit
            ids = ids[:limit]
    else:
        rows = _search_rows(report, base, elements, cache_dir, policy, limiter,
                            must_contain, exclude, search_format)
        chosen = select(rows, elements, limit=limit, **selection)
        report.queried = chosen.queried
        report.skipped = dict(chosen.skipped)
        report.unknown_formula = chosen.unknown_formula
        ids = [e.cod_id for e in chosen.entries]
        meta = {e.cod_id: e.meta for e in chosen.entries}
    report.selected = len(ids)
    results = download_cifs(ids, base, cache_dir, concurrency=concurrency, policy=policy,
                            progress=progress, limiter=limiter)
    for result in results:
        if result.status == "failed":
            report.failed[str(result.cod_id)] = result.reason or "unknown"
        else:
            report.downloaded += result.status == "downloaded"
            report.cached += result.status == "cached"
    return _cached_files(report, results, base, meta, existing)


def _cached_files(report, results, base, meta, existing) -> Iterator[CifFile]:
    for result in results:
        if result.path is None:
            continue
        text = decode(result.path.read_bytes())
        if _unchanged(report, existing, result.cod_id, text):
            continue
        yield CifFile(text=text, source=cif_url(base, result.cod_id), name=str(result.cod_id),
                      cod_id=result.cod_id, extra=meta.get(result.cod_id, {}))


def _search_rows(report: FetchReport, base: str, elements: Sequence[str], cache_dir: Path,
                 policy: RetryPolicy, limiter: RateLimiter, must_contain: Sequence[str] | None,
                 exclude: Sequence[str], search_format: str) -> list[dict[str, Any]]:
    """The COD search rows; a saved answer to the same query stands in when COD cannot answer."""
    params = search_params(elements, must_contain=must_contain, exclude=exclude, fmt=search_format)
    saved_path = cache_dir / "search.json"
    try:
        rows = search(base, params, policy=policy, limiter=limiter)
    except FetchError as exc:
        saved = load_search(saved_path, params)
        if saved is None:
            raise RuntimeError(f"COD search failed ({exc.reason}; attempts: {exc.history}) "
                               "and no earlier answer to this query is saved") from exc
        rows, when = saved
        report.notes.append(f"COD search failed ({exc.reason}); used the saved answer from {when}")
        return rows
    save_search(saved_path, params, rows)
    return rows


def formula_outside(text: str, allowed: set[str]) -> str | None:
    """Cheap pre-check for a single-block CIF: its ``_chemical_formula_sum`` element outside
    ``allowed`` (None when inside, absent, unparseable or multi-block: then the atoms decide)."""
    if len(_DATA_BLOCK.findall(text)) != 1:
        return None
    match = _FORMULA_SUM.search(text)
    if not match:
        return None
    formula = next(g for g in match.groups() if g is not None)
    try:
        found = set(parse_formula(formula))
    except ValueError:
        return None
    extra = found - allowed
    return ",".join(sorted(extra)) if extra else None


def _directory_files(report: FetchReport, source: str, elements: Sequence[str],
                     cod_ids: Iterable[int] | None, limit: int | None,
                     existing: dict[str, str]) -> Iterator[CifFile]:
    """CIFs of a directory (recursive; mirror layout gives COD ids), formula pre-check, lazily read."""
    root = Path(source)
    paths = directory_files(root, cod_ids=cod_ids, limit=limit)
    report.queried = len(paths)
    allowed = set(elements) if elements else None
    reason = f"elements outside {','.join(sorted(allowed or ()))} (formula)"

    def files() -> Iterator[CifFile]:
        for path in paths:
            text = read_text(path)
            cod_id = cod_id_from_name(path)
            if allowed and formula_outside(text, allowed):
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            report.selected += 1
            if _unchanged(report, existing, cod_id, text):
                continue
            name = path.relative_to(root).with_suffix("").as_posix()
            yield CifFile(text=text, source=str(path), name=name, cod_id=cod_id)

    return files()
