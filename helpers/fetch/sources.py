"""Where CIFs come from: a local directory (e.g. an rsync mirror of COD) or the COD web service.

``COD_SOURCE`` (a URL or a directory) overrides the notebooks' default source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from helpers.fetch.raw import CifFile, cod_id_from_name

COD_URL = "https://www.crystallography.net/cod/"
SOURCE_ENV = "COD_SOURCE"


def resolve_source(source: str | None = None) -> str:
    """An explicit ``source`` wins; else ``COD_SOURCE`` if set; else the COD web service."""
    return source or os.environ.get(SOURCE_ENV) or COD_URL


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def directory_files(directory: str | Path, cod_ids: Iterable[int] | None = None,
                    limit: int | None = None) -> list[Path]:
    """CIF files under ``directory`` (any depth, sorted), optionally only the given COD ids."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"CIF source directory {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".cif" and p.is_file())
    if cod_ids is not None:
        wanted = {int(i) for i in cod_ids}
        paths = [p for p in paths if cod_id_from_name(p) in wanted]
    return paths[:limit] if limit is not None else paths


def read_text(path: Path) -> str:
    """File text; bytes that are not UTF-8 are kept (surrogate escapes), never fatal."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def iter_directory(directory: str | Path, cod_ids: Iterable[int] | None = None,
                   limit: int | None = None) -> Iterator[CifFile]:
    """Yield the CIFs of a directory as :class:`CifFile` (names relative to the directory)."""
    root = Path(directory)
    for path in directory_files(root, cod_ids, limit):
        name = path.relative_to(root).with_suffix("").as_posix()
        yield CifFile(text=read_text(path), source=str(path), name=name, cod_id=cod_id_from_name(path))
