"""Where structures live: ASE databases (a SQLite file or a PostgreSQL URL), paths relative to the
project root, and the names of per-batch shards."""

from helpers.store.db import connect

__all__ = ["connect"]
