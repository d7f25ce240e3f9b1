"""Run one pipeline stage with the real product functions; tests/run/test_crash_safety.py SIGKILLs it.

``python tests/run/crash_driver.py fetch|filter|relax --dir D [--source S]`` prints ``START`` once the
imports are done (the killer's clock starts there, so kills land in the stage's work, not in
``import torch``) and ``DONE`` when the stage returned; exit status 0 means the stage completed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

#: the relaxation settings of the crash test: loose, so three crystals relax in seconds
FMAX = 0.05
POTENTIAL = "ani1x"


def paths(folder: Path) -> dict[str, Path]:
    """The stage databases inside ``folder``."""
    return {"raw": folder / "raw.db", "clean": folder / "clean.db", "rejects": folder / "rejects.db",
            "relaxed": folder / f"relaxed_{POTENTIAL}.db"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=("fetch", "filter", "relax"))
    parser.add_argument("--dir", required=True, type=Path, help="folder of the stage databases")
    parser.add_argument("--source", help="folder of CIFs (fetch)")
    args = parser.parse_args(argv)
    db = paths(args.dir)
    if args.stage == "fetch":
        from helpers.fetch.stage import fetch

        print("START", flush=True)
        fetch(source=args.source, raw_db=str(db["raw"]), progress=False)
    elif args.stage == "filter":
        from helpers.filter.stage import run_filter

        print("START", flush=True)
        run_filter(str(db["raw"]), str(db["clean"]), str(db["rejects"]), progress=False)
    else:
        import torch  # noqa: F401 - imported before START: the kills should hit the relaxation

        from helpers.relax.engine import RelaxSettings
        from helpers.relax.stage import run_batch

        print("START", flush=True)
        run_batch(str(db["clean"]), str(args.dir / "relaxed_{potential}.db"), POTENTIAL,
                  settings=RelaxSettings(potential=POTENTIAL, fmax=FMAX), n_threads=1, progress=False)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
