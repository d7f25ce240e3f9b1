"""Resolve the notebooks' path parameters the same way in JupyterLab, papermill and tests.

JupyterLab starts a notebook's kernel in ``notebooks/``, papermill in whatever folder it was
called from; relative paths such as ``data/raw.db`` are therefore taken relative to the
project root (``CODANI_ROOT`` overrides it). URLs and absolute paths pass through.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

from helpers.store.db import is_url
from helpers.vocabulary import ROOT_ENV


def project_root() -> Path:
    """The project folder (the one holding ``helpers/`` and ``notebooks/``)."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


#: a campaign's work folder (helpers.run.config.CampaignConfig): its databases (the relaxed one per potential,
#: per-batch shards beside it), the executed notebooks, the analysis, the lattice-energy and minimum-check
#: stages' files, by key
WORK_LAYOUT = {"raw_db": "raw.db", "clean_db": "clean.db", "rejects_db": "rejects.db",
               "out_db": "relaxed_{potential}.db", "executed": "executed", "analysis": "analysis",
               "lattice": "lattice", "minima": "minima"}


def work_layout(work_dir: str | Path) -> dict[str, str]:
    """Every path of :data:`WORK_LAYOUT` inside ``work_dir``."""
    return {key: str(Path(work_dir) / name) for key, name in WORK_LAYOUT.items()}


def resolve(path: str | Path | None) -> str | None:
    """Absolute path for a relative one (against the project root); URLs unchanged."""
    if path is None:
        return None
    text = str(path)
    if is_url(text) or text.startswith(("http://", "https://")):
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else project_root() / p)


def resolve_many(pattern: str | Path | list[str | Path], hint: str = "run the previous notebook first?") -> list[str]:
    """Databases from a glob, a path, a URL or a list of those: sorted per glob, no repeats, no per-batch
    shards; relative paths against the project root. Nothing found, or a named file missing, is an error."""
    from helpers.store.shards import is_shard

    items = [pattern] if isinstance(pattern, (str, Path)) else list(pattern)
    out: list[str] = []
    for item in items:
        name = str(item)
        if is_url(name):
            found = [name]
        elif any(ch in name for ch in "*?["):
            found = [m for m in sorted(glob.glob(resolve(name))) if not is_shard(m)]
        elif Path(resolve(name)).is_file():
            found = [resolve(name)]
        else:
            raise FileNotFoundError(f"database {name} does not exist ({hint})")
        out.extend(f for f in found if f not in out)
    if not out:
        raise FileNotFoundError(f"no databases match {pattern!r} ({hint})")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text`` (a potential label, a structure id): no separators, no leading dot."""
    return _UNSAFE.sub("_", str(text)).strip("_.") or "unnamed"


def file_in(folder: str | Path, name: str, suffix: str) -> Path:
    """``folder/<safe name><suffix>`` for a name taken from file content (a CIF block, a structure id).

    The file always lands directly inside ``folder`` (no ``..``, no separators, no absolute paths);
    a name that had to be changed gets a short hash of the original so distinct names stay distinct.
    """
    safe = safe_name(name)
    if safe != name:
        safe = f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    path = Path(folder) / f"{safe}{suffix}"
    if path.resolve().parent != Path(folder).resolve():
        raise ValueError(f"{name!r} would leave {folder}")
    return path
