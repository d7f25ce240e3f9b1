"""The directory source: any folder of CIFs (recursive) or an rsync mirror of COD, selected on elements
from the files themselves."""

from __future__ import annotations

import os

import pytest

from helpers.fetch.sources import COD_URL, cif_file, directory_files, resolve_source
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
    files = [cif_file(path, root) for path in directory_files(root)]
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


# --- issue 18: ids unique per file and block, vanished files, unreadable files, clear messages -----------

def _ids(raw_db) -> list[str]:
    return sorted(str(r.structure_id) for r in dbmod.connect(raw_db).select())


def test_two_files_never_share_an_id(tmp_path, cod_dir):
    """x.cif / x.CIF and one COD id in two folders: every file keeps its own row, collisions reported."""
    src = tmp_path / "src"
    for rel, cod in (("x.cif", 2007300), ("x.CIF", 2000642), ("sub1/2100348.cif", 2100348),
                     ("sub2/2100348.cif", 2000642)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((cod_dir / f"{cod}.cif").read_bytes())
    report = fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    ids = _ids(tmp_path / "raw.db")
    assert len(ids) == 4 and report.in_raw_db == 4
    assert ids == ["cod-2100348", "cod-2100348@sub2/2100348.cif", "file-x", "file-x@x.cif"]
    assert len(report.load.collisions) == 2
    assert report.failures().reason.str.contains("id collision").sum() == 2
    again = fetch(str(src), str(tmp_path / "raw.db"), progress=False)  # a rerun: same ids, nothing rewritten
    assert _ids(tmp_path / "raw.db") == ids and again.load.written == 0


def test_the_same_cod_id_in_two_runs_from_two_folders_is_kept_twice(tmp_path, shared_data):
    raw_db = str(tmp_path / "raw.db")
    fetch(str(shared_data / "cod"), raw_db, cod_ids=[2100348], progress=False)
    fetch(str(shared_data / "cod-sample"), raw_db, cod_ids=[2100348], progress=False)
    rows = {str(r.structure_id): r.source for r in dbmod.connect(raw_db).select()}
    assert sorted(rows) == ["cod-2100348", "cod-2100348@2100348.cif"]
    assert rows["cod-2100348"].endswith("cod/2100348.cif")


def test_a_list_of_folders_is_one_source(tmp_path, shared_data):
    report = fetch([str(shared_data / "cod"), str(shared_data / "cod-sample")], str(tmp_path / "raw.db"),
                   cod_ids=[2100348, 1010060, 2007300], progress=False)
    assert report.queried == 4  # 2100348 is in both folders
    assert _ids(tmp_path / "raw.db") == ["cod-1010060", "cod-2007300", "cod-2100348",
                                          "cod-2100348@2100348.cif"]


def test_a_deleted_source_file_leaves_the_raw_database(tmp_path, cod_dir):
    src = tmp_path / "src"
    src.mkdir()
    for cod in (2007300, 2000642, 4021477):
        (src / f"{cod}.cif").write_bytes((cod_dir / f"{cod}.cif").read_bytes())
    fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    (src / "2000642.cif").unlink()
    report = fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    assert _ids(tmp_path / "raw.db") == ["cod-2007300", "cod-4021477"]
    assert report.removed == ["cod-2000642"] and report.in_raw_db == 2
    assert report.table().loc["removed from raw DB (source file gone)", "count"] == 1


def test_negative_limit_is_refused(cod_dir):
    with pytest.raises(ValueError, match="limit must be ≥ 0"):
        directory_files(cod_dir, limit=-1)


def test_unreadable_and_undecodable_file_names_are_recorded_not_fatal(tmp_path, cod_dir, monkeypatch):
    from pathlib import Path

    src = tmp_path / "src"
    src.mkdir()
    (src / "2007300.cif").write_bytes((cod_dir / "2007300.cif").read_bytes())
    (src / "locked.cif").write_bytes((cod_dir / "2000642.cif").read_bytes())
    latin1 = os.fsencode(src) + b"/caf\xe9.cif"  # a name that is not UTF-8
    with open(latin1, "wb") as handle:
        handle.write((cod_dir / "4021477.cif").read_bytes())
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.cif":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    report = fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    assert _ids(tmp_path / "raw.db") == ["cod-2007300", "file-caf\\xe9"]
    [(entry, reason)] = report.failed.items()
    assert entry.endswith("locked.cif") and "PermissionError" in reason


def test_an_archive_as_source_says_so_and_creates_nothing(tmp_path):
    archive = tmp_path / "cifs.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(NotADirectoryError, match="unpack the archive"):
        fetch(str(archive), str(tmp_path / "raw.db"), progress=False)
    assert not (tmp_path / "raw.db").exists()


def test_multi_block_text_is_the_named_block_only(tmp_path, cod_dir):
    """Blocks 'mol1' and 'mol10': each row keeps its own block's text, and an edit of mol1 is picked up."""
    text = (cod_dir / "2007300.cif").read_text()
    body = text[text.index("\n", text.lower().index("data_")) + 1:]
    other = (cod_dir / "2000642.cif").read_text()
    other_body = other[other.index("\n", other.lower().index("data_")) + 1:]
    src = tmp_path / "src"
    src.mkdir()
    (src / "pair.cif").write_text(f"data_mol1\n{body}\ndata_mol10\n{other_body}")
    fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    rows = {str(r.structure_id): r for r in dbmod.connect(tmp_path / "raw.db").select()}
    assert rows["file-pair#mol1"].data["cif"].startswith("data_mol1\n")
    assert "data_mol10" not in rows["file-pair#mol1"].data["cif"]
    assert rows["file-pair#mol10"].data["cif"].startswith("data_mol10\n")
    (src / "pair.cif").write_text(f"data_mol1\n{body}\n_journal_year 2001\ndata_mol10\n{other_body}")
    report = fetch(str(src), str(tmp_path / "raw.db"), progress=False)
    assert report.load.written == 1 and report.load.unchanged == 1
