"""Notebook 01's entry point: fetch CIFs from a source into the raw ASE database.

Sources:
- the COD web service (default; ``COD_SOURCE`` overrides): with ``cod_ids`` just those entries
  (the demo path), otherwise one COD search per exact element set within ``elements``
  (:mod:`helpers.fetch.cod_search`), selected (:mod:`helpers.fetch.cod`), downloaded politely into a resumable
  cache and cross-checked against COD's search row (:mod:`helpers.fetch.download`, :mod:`helpers.fetch.cod_verify`);
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
from helpers.fetch.cod import select
from helpers.fetch.cod_search import QueryOutcome, search_all
from helpers.fetch.download import RateLimiter, RetryPolicy, decode, download_cifs
from helpers.fetch.formula import parse_formula
from helpers.fetch.raw import LoadReport, existing_rows, load_files
from helpers.fetch.sources import CifFile, check_folder, cif_file, directory_files, is_web, printable, resolve_source
from helpers.store import db as dbmod
from helpers.vocabulary import STUDY_ELEMENTS

_FORMULA_SUM = re.compile(r"(?im)^[ \t]*_chemical_formula_sum[ \t]+(?:'([^'\n]*)'|\"([^\"\n]*)\"|(\S+))")
_DATA_BLOCK = re.compile(r"(?im)^[ \t]*data_")
_DUPLICATE_OF = re.compile(r"(?im)^[ \t]*_(?:\[local\]_)?cod_duplicate_entry[ \t]+['\"]?(\d+)")


@dataclass
class FetchReport:
    """What happened to every entry: queried, selected, fetched, failed (with reasons), in the raw DB."""

    source: str | list[str]
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
    #: one per COD search query: element set, rows, from COD or from a saved answer (and its age)
    searches: list[QueryOutcome] = field(default_factory=list)
    #: cached files that failed the check against COD's search row and were fetched again: id -> why
    redownloaded: dict[str, str] = field(default_factory=dict)
    #: files COD serves as they are although they disagree with its own search row: id -> how
    disagree: dict[str, str] = field(default_factory=dict)
    #: raw rows removed because their source file is gone from the folder (full folder runs only)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """Ordered counts for the notebook table (skip and failure reasons on their own rows)."""
        rows: dict[str, Any] = {"source": self.source if isinstance(self.source, str) else ", ".join(self.source)}
        if self.searches:
            rows["search queries (exact element sets)"] = len(self.searches)
            rows["search queries answered from a saved answer"] = sum(q.source != "COD" for q in self.searches)
        rows["queried"] = self.queried
        rows.update({f"skipped: {reason}": n for reason, n in sorted(self.skipped.items())})
        rows.update({"selected": self.selected, "selected, formula unknown": self.unknown_formula,
                     "downloaded": self.downloaded, "cached": self.cached})
        if self.redownloaded:
            rows["downloaded again (cached file failed the check against COD's row)"] = len(self.redownloaded)
        if self.disagree:
            rows["kept although it disagrees with COD's row"] = len(self.disagree)
        rows["failed"] = len(self.failed)
        reasons = Counter(self.failed.values())
        rows.update({f"failed: {reason}": n for reason, n in reasons.most_common()})
        rows["already in raw DB (unchanged)"] = self.already_in_raw_db
        if self.load:
            rows.update(self.load.as_dict())
        if self.removed:
            rows["removed from raw DB (source file gone)"] = len(self.removed)
        rows["in_raw_db"] = self.in_raw_db
        return rows

    def table(self):
        import pandas as pd

        return pd.Series(self.counts(), name="count").to_frame()

    def failures(self):
        """One row per failed entry with its reason (id collisions too: both files were kept)."""
        import pandas as pd

        rows = [{"entry": entry, "reason": reason} for entry, reason in self.failed.items()]
        for wanted, got, path, holder in (self.load.collisions if self.load else []):
            rows.append({"entry": got, "reason": f"id collision: {wanted} is {holder}; {path} kept as {got}"})
        return pd.DataFrame(rows, columns=["entry", "reason"])

    def search_table(self):
        """One row per COD search query: element set, entries, and whether the answer is COD's own
        now or a saved one (with its time and age)."""
        import pandas as pd

        return pd.DataFrame([q.__dict__ for q in self.searches])


def default_cache_dir(raw_db: str | Path) -> Path:
    """``cif_cache`` next to the raw database file (``data/cif_cache`` for server databases)."""
    if dbmod.is_url(raw_db):
        return Path("data") / "cif_cache"
    return Path(raw_db).parent / "cif_cache"


def fetch(source: str | None, raw_db: str, elements: Sequence[str] = STUDY_ELEMENTS,
          cod_ids: Iterable[int] | None = None, limit: int | None = None,
          progress: bool = True, *, cache_dir: str | Path | None = None, rate: float | None = 1.0,
          concurrency: int = 4, retry: RetryPolicy | None = None,
          must_contain: Sequence[str] | None = None, exclude: Sequence[str] = (),
          max_pressure_kpa: float | None = None, drop_duplicates: bool = False,
          max_r_factor: float | None = None, keep_unknown_formula: bool = True,
          search_format: str = "json", n_workers: int | None = 1,
          allow_redirects_to: Sequence[str] = (), search_heartbeat: float | None = 30.0) -> FetchReport:
    """Fetch CIFs from ``source`` (``COD_SOURCE`` overrides) into ``raw_db``; idempotent, resumable.

    Web options: ``cache_dir`` (default ``cif_cache`` beside ``raw_db``), ``rate`` (requests/s for
    the whole run), ``concurrency`` (threads), ``retry`` (attempts, backoff, timeouts; the search has
    its own ``search_read_timeout``), ``allow_redirects_to`` (other servers, ``scheme://host:port``,
    a redirect may lead to; others are refused), ``search_heartbeat`` (seconds between "still
    waiting" messages). Search options: ``must_contain``/``exclude`` (only element sets holding
    / without these), and the pre-download selection
    ``max_pressure_kpa``, ``drop_duplicates``, ``max_r_factor``, ``keep_unknown_formula``
    (see :func:`helpers.fetch.cod.select`). ``n_workers`` processes parse the CIFs (None: every core).
    """
    source = resolve_source(source)
    report = FetchReport(source=source)
    folders = [] if is_web(source) else [check_folder(s) for s in ([source] if isinstance(source, str) else source)]
    db = dbmod.connect(raw_db)
    existing = existing_rows(db)
    if is_web(source):
        files = _web_files(report, source, elements, cod_ids, limit, progress, existing,
                           cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(raw_db),
                           rate=rate, concurrency=concurrency, policy=retry or RetryPolicy(),
                           must_contain=must_contain, exclude=exclude, search_format=search_format,
                           allowed_origins=allow_redirects_to, heartbeat=search_heartbeat,
                           selection=dict(max_pressure_kpa=max_pressure_kpa, drop_duplicates=drop_duplicates,
                                          max_r_factor=max_r_factor,
                                          keep_unknown_formula=keep_unknown_formula))
    else:
        files = _directory_files(report, folders, elements, cod_ids, limit, existing)
    report.load = load_files(db, files, elements, progress=progress, n_workers=n_workers, existing=existing)
    if folders and cod_ids is None and limit is None:
        present = {printable(p) for folder in folders for p in directory_files(folder)}
        report.removed = _remove_vanished(db, folders, present)
    report.in_raw_db = db.count()
    return report


def _remove_vanished(db, folders: Sequence[Path], present: set[str]) -> list[str]:
    """Delete raw rows whose source file lay in one of ``folders`` and is gone (the folder is the truth)."""
    roots = [printable(folder) + "/" for folder in folders]
    gone = {}
    for row in db.select("structure_id", columns=["id", "key_value_pairs"]):
        source = str(row.get("source") or "")
        if source.startswith(roots[0] if len(roots) == 1 else tuple(roots)) and source not in present:
            gone[row.id] = str(row.get("structure_id"))
    if gone:
        db.delete(list(gone))
    return sorted(gone.values())


def _unchanged(report: FetchReport, existing: dict[str, dict[str, Any]], cod_id: int | None, text: str) -> bool:
    """True (and counted) when this COD entry is already in the raw DB with identical text."""
    if cod_id is not None and existing.get(f"cod-{cod_id}", {}).get("sha256") == sha256(text):
        report.already_in_raw_db += 1
        return True
    return False


def _say(progress: bool):
    """Messages for the notebook output: everything with ``progress``, else only warnings."""
    def say(message: str) -> None:
        if progress or message.startswith("WARNING"):
            print(message, flush=True)
    return say


def _web_files(report: FetchReport, base: str, elements: Sequence[str], cod_ids: Iterable[int] | None,
               limit: int | None, progress: bool, existing: dict[str, str], *, cache_dir: Path,
               rate: float | None, concurrency: int, policy: RetryPolicy,
               must_contain: Sequence[str] | None, exclude: Sequence[str], search_format: str,
               allowed_origins: Sequence[str], heartbeat: float | None,
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
        outcome = search_all(base, elements, saved_dir=cache_dir / "search", policy=policy, limiter=limiter,
                             fmt=search_format, must_contain=must_contain or (), exclude=exclude,
                             say=_say(progress), heartbeat=heartbeat, allowed_origins=allowed_origins)
        report.searches = outcome.queries
        report.notes.extend(outcome.notes)
        chosen = select(outcome.rows, elements, limit=limit, **selection)
        report.queried = chosen.queried
        report.skipped = dict(chosen.skipped)
        report.unknown_formula = chosen.unknown_formula
        for file, reason in chosen.invalid:
            report.failed[file] = reason
        ids = [e.cod_id for e in chosen.entries]
        meta = {e.cod_id: e.meta for e in chosen.entries}
    report.selected = len(ids)
    results = download_cifs(ids, base, cache_dir, concurrency=concurrency, policy=policy,
                            progress=progress, limiter=limiter, expected=meta, allowed_origins=allowed_origins)
    for result in results:
        if result.redownloaded:
            report.redownloaded[str(result.cod_id)] = result.redownloaded
        if result.mismatch:
            report.disagree[str(result.cod_id)] = result.mismatch
        if result.status == "failed":
            report.failed[str(result.cod_id)] = result.reason or "unknown"
        else:
            report.downloaded += result.status == "downloaded"
            report.cached += result.status == "cached"
    if report.redownloaded:
        report.notes.append(f"{len(report.redownloaded)} cached file(s) disagreed with COD's search row "
                            "(e.g. cut short) and were downloaded again")
    if report.disagree:
        report.notes.append(f"{len(report.disagree)} file(s) disagree with COD's own search row although COD "
                            "served the same bytes twice; kept as COD has them (see report.disagree)")
    return _cached_files(report, results, meta, existing)


def _cached_files(report, results, meta, existing) -> Iterator[CifFile]:
    for result in results:
        if result.path is None:
            continue
        text = decode(result.path.read_bytes())
        if _unchanged(report, existing, result.cod_id, text):
            continue
        yield CifFile(text=text, source=result.url, name=str(result.cod_id), cod_id=result.cod_id,
                      extra=meta.get(result.cod_id, {}))


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


def _directory_files(report: FetchReport, folders: Sequence[Path], elements: Sequence[str],
                     cod_ids: Iterable[int] | None, limit: int | None,
                     existing: dict[str, dict[str, Any]]) -> Iterator[CifFile]:
    """CIFs of folders (recursive; mirror layout gives COD ids), formula pre-check, lazily read.
    A file that cannot be read (permissions, a name the file system cannot encode) is a recorded failure."""
    paths = [(root, p) for root in folders for p in directory_files(root, cod_ids=cod_ids)]
    paths = paths[:limit] if limit is not None else paths
    report.queried = len(paths)
    allowed = set(elements) if elements else None
    reason = f"elements outside {','.join(sorted(allowed or ()))} (formula)"

    def files() -> Iterator[CifFile]:
        for root, path in paths:
            try:
                file = cif_file(path, root)
            except (OSError, UnicodeError) as exc:
                report.failed[printable(path)] = f"cannot read the file: {type(exc).__name__}: {exc}"
                continue
            text, cod_id = file.text, file.cod_id
            if allowed and formula_outside(text, allowed):
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            report.selected += 1
            if _unchanged(report, existing, cod_id, text):
                continue
            duplicate = _DUPLICATE_OF.search(text) if cod_id is not None else None
            if duplicate:
                file.extra["cod_duplicateof"] = int(duplicate.group(1))
            yield file

    return files()

