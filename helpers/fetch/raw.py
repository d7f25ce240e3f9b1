"""The study's step 2: put fetched CIFs into the raw ASE database, one row per entry.

Unreadable entries are kept (empty Atoms, ``readable=False``, the exception text in
``read_error``) so the filter can report them; nothing fetched is dropped silently.
Re-loading the same entry replaces its row (keyed by ``structure_id``), never duplicates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.db.core import Database

from helpers.fetch.cif import CifEntry, read_entries, sha256, single_block_text
from helpers.fetch.sources import CifFile
from helpers.process.guard import DEFAULT_SECONDS, TimeLimitExceeded, time_limit
from helpers.process.parallel import ordered_map
from helpers.store import db as dbmod

#: seconds allowed to parse one file (helpers.process.guard); a longer parse is recorded as unreadable
READ_TIME_LIMIT = DEFAULT_SECONDS


@dataclass
class LoadReport:
    """Counts from loading files into the raw database."""

    files: int = 0
    entries: int = 0
    written: int = 0
    unchanged: int = 0
    unreadable: int = 0
    outside_elements: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    #: (id the entry would have had, the id it got, its file, the file that holds the id already)
    collisions: list[tuple[str, str, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {**{k: v for k, v in self.__dict__.items() if isinstance(v, int)}, "collisions": len(self.collisions)}


def structure_id(file: CifFile, entry: CifEntry, n_entries: int) -> str:
    """Stable id: ``cod-<id>`` for COD entries, ``file-<name>[#block]`` otherwise."""
    if file.cod_id is not None:
        return f"cod-{file.cod_id}"
    base = f"file-{file.name}"
    return f"{base}#{entry.block}" if n_entries > 1 else base


def entry_elements(entry: CifEntry) -> set[str] | None:
    """Elements of an entry: from its atoms, else from its formula; None when unknown."""
    if entry.atoms is not None and len(entry.atoms):
        return set(entry.atoms.get_chemical_symbols())
    elements = entry.metadata.get("cif_elements")
    return set(elements.split(",")) if elements else None


def existing_rows(db: Database) -> dict[str, dict[str, Any]]:
    """``structure_id`` -> its ``sha256`` and ``source``, in one query (without each row's CIF text)."""
    return {str(row.get("structure_id")): {"sha256": row.get("sha256"), "source": row.get("source")}
            for row in db.select("structure_id", columns=["id", "key_value_pairs"])}


def load_files(db: Database, files: Iterable[CifFile], elements: Iterable[str] | None = None,
               progress: bool = True, n_workers: int | None = 1,
               existing: dict[str, dict[str, Any]] | None = None) -> LoadReport:
    """Write every entry of ``files`` whose elements are within ``elements`` into ``db``.

    Files are parsed by ``n_workers`` processes (None: every core; :mod:`helpers.process.parallel`) and
    written here, in order, by this process alone. Two files that would get the same id (``x.cif`` and
    ``x.CIF``; one COD id in two folders) never overwrite each other: the later one's id gets its file
    name (``cod-2100348@cod-sample/2100348.cif``) and the collision is reported.
    """
    from tqdm.auto import tqdm

    allowed = set(elements) if elements else None
    existing = existing_rows(db) if existing is None else existing
    owners: dict[str, str] = {}  # id -> the file that holds it in this run
    report = LoadReport()
    parsed = ordered_map(read_file_entries, files, n_workers, on_crash=_crashed_reader)
    for file, entries in tqdm(parsed, desc="load raw", unit="file", disable=not progress):
        report.files += 1
        for entry in entries:
            report.entries += 1
            found = entry_elements(entry)
            sid = _unique_id(structure_id(file, entry, len(entries)), file, owners, existing, report)
            if allowed is not None and found is not None and not found <= allowed:
                report.outside_elements += 1
                report.skipped_ids.append(sid)
                continue
            text = single_block_text(file.text, entry.block) if len(entries) > 1 else file.text
            digest = sha256(text)
            if existing.get(sid, {}).get("sha256") == digest:
                report.unchanged += 1
                continue
            write_entry(db, entry, file, sid, text, digest)
            report.written += 1
            report.unreadable += entry.atoms is None
    return report


def _unique_id(sid: str, file: CifFile, owners: dict[str, str], existing: dict[str, dict[str, Any]],
               report: LoadReport) -> str:
    """``sid``, or ``sid@<file>`` when another file (in this run, or an earlier run's file that still
    exists) holds it; the collision is recorded."""
    holder = owners.get(sid)
    earlier = existing.get(sid, {}).get("source")
    if holder is None and earlier and earlier != file.source and Path(str(earlier)).is_file() \
            and Path(file.source).is_file():
        holder = str(earlier)
    if holder is not None and holder != file.source:
        unique = f"{sid}@{file.relative or file.name}"
        report.collisions.append((sid, unique, file.source, holder))
        sid = unique
    owners.setdefault(sid, file.source)
    return sid


def read_file_entries(file: CifFile, seconds: float | None = READ_TIME_LIMIT) -> list[CifEntry]:
    """The entries of one file; a file whose parsing exceeds ``seconds`` is one unreadable entry."""
    try:
        with time_limit(seconds, f"reading {file.name}", "READ_TIME_LIMIT"):
            return read_entries(file.text, one_entry=file.cod_id is not None)
    except TimeLimitExceeded as exc:
        return [CifEntry(block="", atoms=None, error=f"TimeLimitExceeded: {exc}")]


def _crashed_reader(file: CifFile, exc: BaseException) -> list[CifEntry]:
    """The parser took its process down (memory, segfault): one unreadable entry saying so."""
    return [CifEntry(block="", atoms=None, error=f"reader process died on this file: {exc}")]


def write_entry(db: Database, entry: CifEntry, file: CifFile, sid: str, text: str, digest: str) -> int:
    """Write one entry to the raw database (replacing an older row of the same id)."""
    atoms = entry.atoms if entry.atoms is not None else Atoms()
    kvp: dict[str, Any] = {
        **file.extra,
        **entry.metadata,
        "cod_id": file.cod_id,
        "block": entry.block or None,
        "source": file.source,
        "file_name": file.name,
        "sha256": digest,
        "readable": entry.atoms is not None,
        "read_error": entry.error,
        "elements": ",".join(sorted(set(atoms.get_chemical_symbols()))) or None,
    }
    data = {"cif": text}
    if entry.atoms is not None and "occupancy" in entry.atoms.info:
        data["occupancy"] = entry.atoms.info["occupancy"]
    if entry.atoms is not None and "spacegroup_kinds" in entry.atoms.arrays:
        # which CIF site each atom came from: lets the filter name sites without re-reading the CIF
        data["spacegroup_kinds"] = entry.atoms.arrays["spacegroup_kinds"].tolist()
    return dbmod.upsert(db, atoms, {"structure_id": sid}, data=data, **dbmod.clean_kvp(kvp))
