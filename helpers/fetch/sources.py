"""Where CIFs come from: local folders (e.g. an rsync mirror of COD, a benchmark set) or the COD web service.

``COD_SOURCE`` (a URL or a directory) overrides the notebooks' default source. A source may also be a
list of folders (e.g. ``cod/`` and ``cod-sample/``): their files are read in that order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.fetch.download import decode
from helpers.vocabulary import COD_SOURCE_ENV

COD_URL = "https://www.crystallography.net/cod/"
SOURCE_ENV = COD_SOURCE_ENV
COD_ID = re.compile(r"^\d{7}$")


@dataclass
class CifFile:
    """A fetched CIF: its text, where it came from, and its COD id when it is a COD entry."""

    text: str
    source: str
    #: the file's name relative to its source folder, without the suffix (COD id for web files)
    name: str
    cod_id: int | None = None
    #: extra key-value pairs for the raw row (e.g. COD search metadata, keys ``cod_*``)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the name relative to the source with its suffix: tells apart ``x.cif`` and ``x.CIF``
    relative: str = ""


def resolve_source(source: str | Sequence[str] | None = None) -> str | list[str]:
    """An explicit ``source`` wins; else ``COD_SOURCE`` if set; else the COD web service."""
    if source is not None and not isinstance(source, str):
        return [str(s) for s in source]
    return source or os.environ.get(SOURCE_ENV) or COD_URL


def is_web(source: str | Sequence[str]) -> bool:
    """True for the COD web service (an http(s) URL), False for folders."""
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def cod_id_from_name(path: Path) -> int | None:
    """COD id from a file name like ``1000001.cif`` (COD archive / rsync mirror layout)."""
    return int(path.stem) if COD_ID.match(path.stem) else None


def check_folder(directory: str | Path) -> Path:
    """The folder, or a clear error for what it is instead (missing, a file, an archive)."""
    root = Path(directory)
    if root.is_file():
        hint = " (unpack the archive first)" if root.suffix.lower() in (".zip", ".gz", ".tgz", ".tar", ".xz",
                                                                         ".bz2", ".7z") else ""
        raise NotADirectoryError(f"CIF source {root} is a file, not a folder of CIFs{hint}")
    if not root.is_dir():
        raise FileNotFoundError(f"CIF source directory {root} does not exist")
    return root


def directory_files(directory: str | Path, cod_ids: Iterable[int] | None = None,
                    limit: int | None = None) -> list[Path]:
    """CIF files under ``directory`` (any depth, sorted), optionally only the given COD ids."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be ≥ 0 or None, got {limit}")
    root = check_folder(directory)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".cif" and p.is_file())
    if cod_ids is not None:
        wanted = {int(i) for i in cod_ids}
        paths = [p for p in paths if cod_id_from_name(p) in wanted]
    return paths[:limit] if limit is not None else paths


def printable(path: str | Path) -> str:
    """A path as text any database and terminal can hold (bytes that are not UTF-8 as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def cif_file(path: Path, root: Path, **extra: Any) -> CifFile:
    """One file of a folder as a :class:`CifFile` (OSError when it cannot be read); names printable."""
    relative = path.relative_to(root)
    return CifFile(text=decode(path.read_bytes()), source=printable(path),
                   name=printable(relative.with_suffix("").as_posix()), cod_id=cod_id_from_name(path), extra=extra,
                   relative=printable(relative.as_posix()))
