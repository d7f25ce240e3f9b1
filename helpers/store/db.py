"""ASE databases by path or URL: SQLite files by default, PostgreSQL when a URL is given.

Every stage writes rows keyed by ``structure_id`` (a string: the COD id, or a name derived
from the file for non-COD sources), so re-running a stage updates rather than duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import ase.db
from ase import Atoms
from ase.db.core import Database
from ase.db.row import AtomsRow

from helpers.internals import delete_rows, initialize_ase_db, patch_postgres_backend

URL_PREFIXES = ("postgresql://", "postgres://", "mysql://", "mariadb://")


def is_url(name: str | Path) -> bool:
    """True for server database URLs (PostgreSQL/MySQL), False for file paths."""
    return str(name).startswith(URL_PREFIXES)


def is_postgres(name: str | Path) -> bool:
    return str(name).startswith(("postgresql://", "postgres://"))


def connect(name: str | Path, *, must_exist: bool = False, **kwargs: Any) -> Database:
    """Open an ASE database by file path (SQLite) or server URL.

    ``must_exist`` turns a missing SQLite file into a clear ``FileNotFoundError`` instead of
    silently creating an empty database (a typo in a path should not look like "no data").
    A PostgreSQL database that does not exist yet is created (unless ``must_exist``), so
    ``postgresql://host/relaxed_{potential}`` works like a file name template.
    """
    name = str(name)
    if is_postgres(name):
        return _connect_postgres(name, must_exist, **kwargs)
    if is_url(name):
        return ase.db.connect(name, **kwargs)
    path = Path(name)
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist (run the previous notebook first?)")
    if path.is_dir():
        raise IsADirectoryError(f"database {path} is a folder, not a file")
    existing = path.is_file() and path.stat().st_size > 0 and check_ase_sqlite(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ASE's lock file (O_EXCL ``<db>.lock``) outlives a killed writer and then blocks every later writer
    # forever; SQLite's own locks, which the kernel releases when a process dies, serialise writers.
    kwargs.setdefault("use_lock_file", False)
    db = ase.db.connect(str(path), type="db", **kwargs)
    if not existing:
        _create_sqlite_tables(db)
    return db


class NotAnASEDatabase(ValueError):
    """A database parameter points at a file this project must not write into."""


def check_ase_sqlite(path: Path) -> bool:
    """True for an ASE SQLite database, False for an SQLite file without tables (a schema creation that
    was interrupted); refuse anything else (another program's SQLite file, a CIF, ...).

    ASE would otherwise add its tables to another program's database, or fail later with SQLite's
    bare "file is not a database" that does not say which file.
    """
    import sqlite3

    try:
        # read-write: a file left with a hot journal by a killed writer must be rolled back on open
        con = sqlite3.connect(path, timeout=20)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise NotAnASEDatabase(f"{path} is not an SQLite database ({err}); give a new file name or an "
                               "ASE database") from None
    if not tables:
        return False
    if not {"systems", "information"} <= tables:
        raise NotAnASEDatabase(f"{path} is an SQLite database with tables {sorted(tables)}, not an ASE database: "
                               "refusing to write into it (give a new file name)")
    return True


def _create_sqlite_tables(db: Database) -> None:
    """Create a new SQLite file's tables in one transaction.

    ASE issues each ``CREATE TABLE`` in autocommit mode, so a kill in the middle left a file with some
    tables and no version row, which ASE then refuses to open ("Please convert to new format").
    """
    import sqlite3

    con = sqlite3.connect(db.filename, timeout=20, isolation_level=None)
    try:
        if con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='information'").fetchone()[0]:
            return  # complete (ASE writes the information table last)
        con.execute("BEGIN IMMEDIATE")  # also makes concurrent creators wait for each other
        initialize_ase_db(db, con)  # re-checks under the lock; its commit() ends this transaction
        if con.in_transaction:
            con.execute("COMMIT")
    finally:
        con.close()  # an exception or a kill before COMMIT rolls the whole schema back


def rows(db: Database, **selection: Any) -> Iterator[AtomsRow]:
    """All rows matching ``selection``, in id order."""
    yield from db.select(sort="id", **selection)


def ids_with(db: Database, key: str, **selection: Any) -> dict[str, int]:
    """Map ``row[key]`` -> row id for rows that have ``key`` (e.g. every ``structure_id``)."""
    out: dict[str, int] = {}
    for row in db.select(key, columns=["id", "key_value_pairs"], **selection):
        out[str(row.get(key))] = row.id
    return out


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """``with db:`` whose SQLite errors name the file ("database or disk is full" alone does not say which)."""
    import sqlite3

    try:
        with db:
            yield db
    except sqlite3.Error as err:
        name = getattr(db, "filename", None) or "database"
        raise type(err)(f"{name}: {err}") from err


@contextmanager
def transactions(*dbs: Database) -> Iterator[tuple[Database, ...]]:
    """:func:`transaction` over several databases at once, their write locks taken now in the order given
    (:func:`lock_in_order`): every writer that passes its databases in one order queues behind the others
    instead of deadlocking with them."""
    with ExitStack() as stack:
        for db in dbs:
            stack.enter_context(transaction(db))
        lock_in_order(*dbs)
        yield dbs


def upsert(db: Database, atoms: Atoms, match: dict[str, Any], *,
           data: dict | None = None, **key_value_pairs: Any) -> int:
    """Write ``atoms`` as the single row matching ``match``: replace it if present.

    Overwrites the existing row in place (same id) inside one transaction, so a crash leaves
    either the old or the new row; ``delete`` is avoided because SQLite VACUUMs on every delete.
    """
    with transaction(db):
        return upsert_in_transaction(db, atoms, match, data=data, **key_value_pairs)


def upsert_in_transaction(db: Database, atoms: Atoms, match: dict[str, Any], *,
                          data: dict | None = None, **key_value_pairs: Any) -> int:
    """:func:`upsert` inside the caller's ``with db:`` (many rows, one transaction)."""
    _lock_key(db, match)
    old = [row.id for row in db.select(**match, columns=["id"])]
    row_id = db.write(atoms, key_value_pairs={**match, **key_value_pairs}, data=data or {},
                      id=old[0] if old else None)
    delete_rows(db, old[1:])  # duplicates from an older version or a race: keep one
    return row_id


def delete_in_transaction(db: Database, key: str, values: list[str]) -> list[str]:
    """Delete the rows whose ``key`` is one of ``values``, inside the caller's ``with db:``; returns the
    values that were there."""
    found = {}
    for value in values:
        _lock_key(db, {key: value})
        for row in db.select(**{key: value}, columns=["id"]):
            found[row.id] = value
    delete_rows(db, list(found))
    return sorted(set(found.values()))


# --- PostgreSQL: many processes writing to one database -------------------------------------------------
# ase-db-backends 0.11 is not safe for concurrent writers as shipped: (1) two first writers both create
# the tables and one fails; (2) the id of a new row is read from the sequence's ``last_value``, which is
# global, so another process's insert in between attaches species/keys to the wrong row; (3) its
# connection wrapper has no ``rollback``, so any error inside ``with db:`` is masked by an
# AttributeError. helpers.internals.patch_postgres_backend fixes (2) and (3); table creation and upserts
# take advisory locks.

_INIT_LOCK = 0x636F64  # advisory lock id held while creating the ASE tables


def _connect_postgres(url: str, must_exist: bool, **kwargs: Any) -> Database:
    import psycopg2

    patch_postgres_backend()
    try:
        psycopg2.connect(url).close()
    except psycopg2.OperationalError as err:
        if must_exist or "does not exist" not in str(err):
            raise
        _create_postgres_database(url)
    db = ase.db.connect(url, **kwargs)
    with db:  # create the tables once, even when many jobs start together
        db.connection.cursor().execute("SELECT pg_advisory_xact_lock(?)", (_INIT_LOCK,))
        initialize_ase_db(db, db.connection)
    return db


def _create_postgres_database(url: str) -> None:
    import psycopg2
    from psycopg2.extensions import parse_dsn

    name = parse_dsn(url)["dbname"]
    conn = psycopg2.connect(url, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
        pass  # another job created it first
    finally:
        conn.close()


def lock_in_order(*dbs: Database) -> None:
    """Take the SQLite write lock of each database now, in the order given, inside the callers' ``with db:``.

    A writer that needs several databases in one transaction must lock them in one fixed order: two
    writers that each hold one and wait for the other stay stuck until SQLite's busy timeout fails both
    ("database is locked"). PostgreSQL needs nothing here (its locks are per key, see ``_lock_key``).
    """
    for db in dbs:
        if getattr(db, "type", None) == "db" and not db.connection.in_transaction:
            db.connection.execute("BEGIN IMMEDIATE")


def _lock_key(db: Database, match: dict[str, Any]) -> None:
    """Serialise writers of the same ``match`` key until commit.

    SQLite: take the write lock before looking for the row (``BEGIN IMMEDIATE``); with the default
    deferred transaction two processes could both find no row and both insert one.
    """
    if getattr(db, "type", None) == "db":
        lock_in_order(db)
    elif getattr(db, "type", None) == "postgresql":
        key = "|".join(f"{k}={match[k]}" for k in sorted(match))
        db.connection.cursor().execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))


def sanitize(value: Any) -> Any:
    """Make a value storable as an ASE db key-value pair (str, int, float, bool), else None."""
    import math

    import numpy as np

    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode("utf-8")
        # ASE refuses strings that read as numbers ("1000001"): store those as numbers.
        for kind in (int, float):
            try:
                number = kind(value)
            except ValueError:
                continue
            return number if math.isfinite(number) else value
        return value
    return str(value)


def clean_kvp(pairs: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and reserved names; coerce the rest to storable types."""
    from ase.db.core import reserved_keys

    out = {}
    for key, value in pairs.items():
        value = sanitize(value)
        if value is None or key in reserved_keys or not key.isidentifier():
            continue
        out[key] = value
    return out
