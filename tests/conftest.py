"""Shared fixtures: where the real data and model files are, and small real databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
COD_DIR = DATA / "cod"
MODEL_DIR = SHARED / "models" / "ani-neurochem"

os.environ.setdefault("ANI_MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real test data missing: {DATA} (expected ../shared beside the repo)")
    return DATA


@pytest.fixture(scope="session")
def cod_dir(shared_data) -> Path:
    return COD_DIR


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not MODEL_DIR.is_dir():
        pytest.fail(f"ANI NeuroChem files missing: {MODEL_DIR}")
    return MODEL_DIR
