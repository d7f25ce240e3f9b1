"""The directory source: any folder of CIFs (recursive) or an rsync mirror of COD, selected on elements
from the files themselves."""

from __future__ import annotations

import os

import pytest

from helpers.fetch.sources import COD_URL, directory_files, iter_directory, resolve_source
from helpers.fetch.stage import fetch, formula_outside
from helpers.store import db as dbmod


def mirror(tmp_path, cod_dir, ids):
    """An rsync-style COD mirror (``1/00/00/1000001.cif``) of real files, as symlinks."""
    root = tmp_path / "mirror"
    for i in ids:
        digits = str(i)
        target = root / digits[0] / digits[1:3] / digits[3:5] / f"{digits}.cif"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(cod_dir / f"{i}.cif")
    return root


def structure_ids(path):
    return sorted(str(r.structure_id) for r in dbmod.connect(path).select())


def manifest_cifs(data) -> list:
    """Every CIF the data folder's manifests list: ``manifest.csv`` (cod/, more/) and ``cod-sample/manifest.csv``."""
    import csv

    listed = [data / row["file"] for row in csv.DictReader(open(data / "manifest.csv"))]
    listed += [data / "cod-sample" / row["file"] for row in csv.DictReader(open(data / "cod-sample" / "manifest.csv"))]
    return sorted(listed)


def test_directory_files_recursive_filtered_limited(shared_data):
    every = directory_files(shared_data)
    assert every == manifest_cifs(shared_data)  # every listed CIF, nothing else, in a stable order
    assert any(p.parent.parent != shared_data for p in every)  # found at depth > 1
    picked = directory_files(shared_data, cod_ids=[2100348, 1000001])
    # 2100348 is in cod/ (a cod-tools variant) and in cod-sample/ (the unaltered entry): both files are found
    assert [p.relative_to(shared_data).as_posix() for p in picked] == [
        "cod/1000001.cif", "cod/2100348.cif", "cod-sample/2100348.cif"]
    assert len(directory_files(shared_data, limit=5)) == 5
    with pytest.raises(FileNotFoundError):
        directory_files(shared_data / "no-such-folder")


def test_mirror_layout_gives_cod_ids(tmp_path, cod_dir):
    root = mirror(tmp_path, cod_dir, [1000001, 2100348, 7105573])
    files = list(iter_directory(root))
    assert [(f.name, f.cod_id) for f in files] == [
        ("1/00/00/1000001", 1000001), ("2/10/03/2100348", 2100348), ("7/10/55/7105573", 7105573)]
    assert files[1].text == (cod_dir / "2100348.cif").read_text()


def test_resolve_source(monkeypatch):
    monkeypatch.delenv("COD_SOURCE", raising=False)
    assert resolve_source(None) == COD_URL == "https://www.crystallography.net/cod/"
    assert resolve_source("/some/dir") == "/some/dir"
    monkeypatch.setenv("COD_SOURCE", "/mirror")
    assert resolve_source(None) == "/mirror"
    assert resolve_source("/some/dir") == "/some/dir"  # an explicit source wins


def cif_with_formula(cod_dir, formula):
    text = (cod_dir / "2100348.cif").read_text()
    return text.replace("'C6 H6'", f"'{formula}'")


def test_formula_outside(cod_dir):
    chno = {"C", "H", "N", "O"}
    assert formula_outside((cod_dir / "2100348.cif").read_text(), chno) is None
    assert formula_outside(cif_with_formula(cod_dir, "C6 H5 Cl"), chno) == "Cl"
    assert formula_outside(cif_with_formula(cod_dir, "C10 H8 N2 Ni"), chno) == "Ni"
    assert formula_outside(cif_with_formula(cod_dir, "C6 H5 N O2"), chno) is None
    assert formula_outside((cod_dir / "2003003.cif").read_text(), chno) is None  # formula '?'
    assert formula_outside("data_a\n_chemical_formula_sum 'Cu O'\ndata_b\n", chno) is None  # 2 blocks


def test_directory_fetch_selects_from_the_files(tmp_path, cod_dir, monkeypatch):
    """elements=C,H: the formula pre-check drops CHNO files; the atoms drop a '?'-formula CHO file."""
    monkeypatch.delenv("COD_SOURCE", raising=False)
    root = mirror(tmp_path, cod_dir, [2000334, 2100348, 1100914, 2003003])
    (root / "other").mkdir()
    (root / "other" / "chlorobenzene.cif").write_text(cif_with_formula(cod_dir, "C6 H5 Cl"))
    raw = str(tmp_path / "raw.db")
    report = fetch(source=str(root), raw_db=raw, elements=("C", "H"), progress=False)
    assert report.queried == 5 and report.selected == 3
    assert report.skipped == {"elements outside C,H (formula)": 2}  # 1100914 (CHNO) and the Cl file
    assert report.load.outside_elements == 1 and report.load.skipped_ids == ["cod-2003003"]
    assert structure_ids(raw) == ["cod-2000334", "cod-2100348"]


def test_directory_fetch_is_idempotent_and_records_unreadable(tmp_path, cod_dir, monkeypatch):
    monkeypatch.delenv("COD_SOURCE", raising=False)
    ids = [2100348, 2000380, 2103187]  # 2000380, 2103187: ase.io.read fails on them
    root = mirror(tmp_path, cod_dir, ids)
    raw = str(tmp_path / "raw.db")
    first = fetch(source=str(root), raw_db=raw, progress=False)
    assert first.load.written == 3 and first.load.unreadable == 2 and first.in_raw_db == 3
    rows = {r.cod_id: r for r in dbmod.connect(raw).select()}
    assert rows[2100348].readable and len(rows[2100348].toatoms()) > 0
    for i in (2000380, 2103187):
        assert not rows[i].readable and rows[i].read_error and len(rows[i].toatoms()) == 0
    assert rows[2103187].data["cif"] == (cod_dir / "2103187.cif").read_text()
    os.utime(cod_dir / "2100348.cif")  # touching changes nothing
    second = fetch(source=str(root), raw_db=raw, progress=False)
    assert second.already_in_raw_db == 3 and second.load.written == 0 and second.in_raw_db == 3
    assert structure_ids(raw) == sorted(f"cod-{i}" for i in ids)
