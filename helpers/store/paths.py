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

ROOT_ENV = "CODANI_ROOT"


def project_root() -> Path:
    """The project folder (the one holding ``helpers/`` and ``notebooks/``)."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def resolve(path: str | Path | None) -> str | None:
    """Absolute path for a relative one (against the project root); URLs unchanged."""
    if path is None:
        return None
    text = str(path)
    if is_url(text) or text.startswith(("http://", "https://")):
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else project_root() / p)


def resolve_many(pattern: str | list[str]) -> list[str]:
    """A glob pattern or a list of paths/URLs -> sorted existing paths (URLs kept as given)."""
    items = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[str] = []
    for item in items:
        if is_url(item):
            out.append(item)
            continue
        matches = sorted(glob.glob(resolve(item)))
        out.extend(m for m in matches if ".batch" not in Path(m).name)
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
