"""The environment every benchmark script sets before it imports the project: one BLAS thread, torchani quiet,
ANI's weights from the shared folder (``$CODANI_SHARED``, default ``../shared``), the project and this folder on
``sys.path``. A script imports it first: ``from bench_env import ROOT, SHARED``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("ANI_MODEL_DIR", str(SHARED / "models" / "ani-neurochem"))
for folder in (ROOT / "benchmarks", ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
