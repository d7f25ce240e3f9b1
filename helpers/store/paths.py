"""Resolve the notebooks' path parameters the same way in JupyterLab, papermill and tests.

JupyterLab starts a notebook's kernel in ``notebooks/``, papermill in whatever folder it was
called from; relative paths such as ``data/raw.db`` are therefore taken relative to the
project root (``CODANI_ROOT`` overrides it). URLs and absolute paths pass through.
"""

from __future__ import annotations

import glob
import os
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
