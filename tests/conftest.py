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


#: small, clean, real COD crystals (24-36 atoms) used wherever a test relaxes something
SMALL_COD_IDS = (2007300, 4021477, 2000642, 1011063)


@pytest.fixture(scope="session")
def small_clean_db(tmp_path_factory, cod_dir) -> str:
    """A clean database of the small demo crystals, made by the real fetch and filter."""
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    folder = tmp_path_factory.mktemp("small")
    fetch(source=str(cod_dir), raw_db=str(folder / "raw.db"), cod_ids=SMALL_COD_IDS, progress=False)
    report = run_filter(str(folder / "raw.db"), str(folder / "clean.db"), str(folder / "rejects.db"),
                        progress=False)
    assert report.counts().loc["passed", "n"] == len(SMALL_COD_IDS)
    return str(folder / "clean.db")


def subset_dir(tmp_path, cod_dir, ids):
    """A folder serving only the given real COD files (symlinks), e.g. for the fake COD server."""
    root = tmp_path / "served"
    root.mkdir()
    for i in ids:
        (root / f"{i}.cif").symlink_to(cod_dir / f"{i}.cif")
    return root


@pytest.fixture(scope="session")
def _crystal_2007300(cod_dir):
    import ase.io

    return ase.io.read(cod_dir / "2007300.cif")


@pytest.fixture(scope="module")
def crystal(_crystal_2007300):
    """COD 2007300 (C11 H12 N2 O5, P1, 30 atoms, 150 K, 4.75 Å thin): the small real crystal of the relax
    tests; read once, a fresh copy per test module."""
    return _crystal_2007300.copy()


@pytest.fixture(scope="session")
def sourced_errors():
    """The fixed errors table of tests/data/results_errors.csv with the clean rows' sources (issue 34): 34
    unaltered COD entries (`cod-sample/`), 5 COD tool-suite test inputs (`cod/`) and 1 ice entry."""
    import numpy as np
    import pandas as pd

    from helpers.analysis.sample_sets import WATER_INCHIKEY

    out = pd.read_csv(Path(__file__).parent / "data" / "results_errors.csv")
    ids = sorted(set(out.structure_id))
    altered, ice = ids[-6:-1], ids[-1]
    out["source"] = ["/d/cod/" + s[4:] + ".cif" if s in altered or s == ice else "/d/cod-sample/" + s[4:] + ".cif"
                     for s in out.structure_id]
    out.loc[out.structure_id == ice, "compound_key"] = WATER_INCHIKEY
    out["cif_formula"] = np.where(out.structure_id == ice, "H2 O", "C6 H6")
    return out


@pytest.fixture(scope="session")
def co2(shared_data):
    """Dry ice, COD 1010060 (12 atoms): the smallest real clean crystal of the sample."""
    import warnings

    import ase.io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(shared_data / "cod-sample" / "1010060.cif")


@pytest.fixture
def require_potential():
    """``require_potential(name)``: the registered potential, or the test is skipped with the command that
    installs its family (``pip install 'codani[<extra>]'``) when one of its packages is missing."""
    from helpers.relax.potentials.registry import get_potential

    def require(name: str):
        potential = get_potential(name)
        if potential.missing_packages():
            pytest.skip(potential.install_hint())
        return potential

    return require


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that builds a potential whose family is not installed is skipped with the install command
    (``pip install 'codani[<extra>]'``), not failed: the core install runs the ANI tests alone."""
    from helpers.relax.potentials.card import PackageMissing

    try:
        return (yield)
    except PackageMissing as err:
        pytest.skip(str(err))


@pytest.fixture
def fast_rows_only(monkeypatch):
    """run_batch keeps the fast pass's own step-cap rows instead of relaxing them again with the study's method
    (helpers.relax.fallback): for tests of what the fast pass itself records."""
    monkeypatch.setattr("helpers.relax.stage.needs_study_fallback", lambda result, settings: False)
