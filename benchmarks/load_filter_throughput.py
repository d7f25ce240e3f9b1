"""Files per second through the raw load (CIF parsing) and the filter, one process vs every core.

Copies the real COD CIFs of ../shared/data/cod ``--copies`` times into a temporary folder (under
new names, so each copy is its own entry), then runs :func:`helpers.fetch.stage.fetch` and
:func:`helpers.filter.stage.run_filter` with ``n_workers=1`` and with ``n_workers=N`` (default: every
core) into fresh databases, checks that both produce the same rows and prints seconds, files per
second and the speed-up, with the projection to 40,000 entries.
Usage: ``.venv/bin/python benchmarks/load_filter_throughput.py [--copies 8] [--workers N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


def rows_of(path: Path) -> list[tuple]:
    from helpers.store import db

    return sorted((r.structure_id, r.get("sha256"), r.get("checks"), r.get("reason"), len(r.toatoms()))
                  for r in db.connect(str(path)).select())


def run(cifs: Path, out: Path, n_workers: int) -> tuple[float, float]:
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    out.mkdir()
    start = time.perf_counter()
    fetch(source=str(cifs), raw_db=str(out / "raw.db"), progress=False, n_workers=n_workers)
    loaded = time.perf_counter()
    run_filter(str(out / "raw.db"), str(out / "clean.db"), str(out / "rejects.db"), progress=False,
               n_workers=n_workers)
    return loaded - start, time.perf_counter() - loaded


def main() -> None:
    from helpers.process.parallel import worker_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    workers = worker_count(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        cifs = Path(tmp) / "cifs"
        cifs.mkdir()
        for k in range(args.copies):
            for f in sorted((SHARED / "data" / "cod").glob("*.cif")):
                shutil.copy(f, cifs / f"copy{k}-{f.name}")
        n = len(list(cifs.iterdir()))
        times = {w: run(cifs, Path(tmp) / f"w{w}", w) for w in (1, workers)}
        same = all(rows_of(Path(tmp) / "w1" / db) == rows_of(Path(tmp) / f"w{workers}" / db)
                   for db in ("raw.db", "clean.db", "rejects.db"))
    print(f"{n} files ({args.copies} copies of the COD test set), {os.cpu_count()} cores")
    for stage, k in (("load", 0), ("filter", 1)):
        one, many = times[1][k], times[workers][k]
        print(f"{stage:7s} 1 worker: {one:7.1f} s ({n / one:5.1f} files/s)   {workers} workers: {many:7.1f} s "
              f"({n / many:5.1f} files/s)   speed-up {one / many:.2f}x   40k entries: "
              f"{40000 / (n / one) / 3600:.1f} h -> {40000 / (n / many) / 3600:.1f} h")
    print(f"same rows in raw, clean and rejects databases: {same}")


if __name__ == "__main__":
    main()
