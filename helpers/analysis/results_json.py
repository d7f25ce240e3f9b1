"""``docs/results.json``: the report's numbers in machine-readable form, one top-level key per section.

Each stage or report section that publishes numbers writes its own key (``potentials``, ``common``,
``paired``, ``lattice_energy``, ``flagged`` …) through :func:`update_results_json`, so sections written by
different stages of one run land in one file without overwriting each other. Values must be plain JSON
(NaN is written as ``null``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from helpers.process.atomic import write_atomic

RESULTS_JSON = "results.json"


def _plain(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars/arrays -> Python values, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalar or array
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_results_json(docs_dir: str | Path) -> dict[str, Any]:
    """The current ``results.json`` of ``docs_dir`` ({} when there is none yet)."""
    path = Path(docs_dir) / RESULTS_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def update_results_json(docs_dir: str | Path, section: str, payload: Any) -> Path:
    """Set one top-level ``section`` of ``docs_dir/results.json`` to ``payload``, keeping the others;
    the file is replaced atomically (a reader never sees half a file)."""
    data = read_results_json(docs_dir)
    data[section] = _plain(payload)
    path = Path(docs_dir) / RESULTS_JSON
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())
    return path
