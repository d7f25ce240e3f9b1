"""Notebook 01's entry point: fetch CIFs from a source into the raw ASE database.

Sources: a local directory (any folder of CIFs, e.g. an rsync mirror of COD) or the COD
web service (by id). This first version handles directories and a by-id HTTP download;
the full COD client (search, retries, cache) lives in :mod:`helpers.cod`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from helpers import db as dbmod
from helpers.raw import LoadReport, load_files
from helpers.sources import is_url, iter_directory, resolve_source


@dataclass
class FetchReport:
    """What happened to every entry: selected, fetched, failed (with reasons), in the raw DB."""

    source: str
    selected: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    load: LoadReport | None = None
    in_raw_db: int = 0

    def table(self):
        import pandas as pd

        load = self.load.as_dict() if self.load else {}
        rows = {"source": self.source, "selected": self.selected, "failed": len(self.failed),
                **load, "in_raw_db": self.in_raw_db}
        return pd.Series(rows, name="count").to_frame()


def fetch(source: str | None, raw_db: str, elements: Sequence[str] = ("C", "H", "N", "O"),
          cod_ids: Iterable[int] | None = None, limit: int | None = None,
          progress: bool = True) -> FetchReport:
    """Fetch CIFs from ``source`` (``COD_SOURCE`` overrides) into ``raw_db``; idempotent."""
    source = resolve_source(source)
    if is_url(source):
        raise NotImplementedError("COD web download arrives with helpers.cod")
    report = FetchReport(source=source)
    files = list(iter_directory(source, cod_ids=cod_ids, limit=limit))
    report.selected = len(files)
    db = dbmod.connect(raw_db)
    report.load = load_files(db, files, elements, progress=progress)
    report.in_raw_db = db.count()
    return report
