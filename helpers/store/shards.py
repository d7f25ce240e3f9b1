"""Names of the per-batch pieces of a campaign: one tag format for shard files, notebook logs and jobs.

A relax job is one batch of the clean database (``batch`` of ``n_batches``, numbered from 0). With SQLite
each job writes its own shard ``relaxed_ani1x.batch0003of0016.db`` (one writer per file), merged later.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.store.db import is_url

_TAG = re.compile(r"\.batch\d{4}of\d{4}$")


def batch_tag(batch: int, n_batches: int) -> str:
    """``batch0003of0016``: the part every name of one batch shares."""
    return f"batch{batch:04d}of{n_batches:04d}"


def job_tag(potential: str, batch: int, n_batches: int) -> str:
    """``ani1x.batch0003of0016``: a relax job's name (executed notebook, Dask key, failure reports)."""
    return f"{potential}.{batch_tag(batch, n_batches)}"


def output_path(out_db: str, potential: str, batch: int, n_batches: int) -> str:
    """Where one relax job writes: ``out_db`` itself, or its per-batch shard when split.

    ``{potential}`` in ``out_db`` is filled in. Server URLs take every job directly; SQLite
    files get one shard per batch (one writer per file) that ``merge_shards`` combines.
    """
    out = out_db.format(potential=potential)
    if n_batches == 1 or is_url(out):
        return out
    path = Path(out)
    return str(path.with_name(f"{path.stem}.{batch_tag(batch, n_batches)}{path.suffix}"))


def is_shard(path: str | Path) -> bool:
    """Whether ``path`` names a per-batch shard (not a merged database)."""
    return bool(_TAG.search(Path(path).stem))


def shard_paths(out_db: str, potential: str) -> list[Path]:
    """Existing shard files of ``out_db`` (all batch splits)."""
    path = Path(out_db.format(potential=potential))
    return sorted(p for p in path.parent.glob(f"{path.stem}.batch*{path.suffix}")
                  if is_shard(p) and _TAG.sub("", p.stem) == path.stem)


def result_files(out_db: str, potential: str) -> list[Path]:
    """Every existing SQLite file holding ``potential``'s results: the merged database and its shards
    (all batch splits). Empty for a server URL (one database, nothing to gather)."""
    merged = out_db.format(potential=potential)
    if is_url(merged):
        return []
    return [path for path in [Path(merged), *shard_paths(out_db, potential)] if path.is_file()]
