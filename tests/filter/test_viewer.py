"""The reject viewer builds without a kernel and draws the right things for a known reject."""

from __future__ import annotations

import ipywidgets
import nglview
import numpy as np
import pytest
from ase import Atoms

from helpers.fetch.stage import fetch
from helpers.filter.stage import run_filter
from helpers.filter.viewer import RejectViewer, scene_for


@pytest.fixture(scope="module")
def rejects_db(tmp_path_factory, cod_dir):
    """Rejects from three real COD files: an X-ray N-H under 0.8 Å, a disordered one, and benzene (clean)."""
    tmp = tmp_path_factory.mktemp("viewer")
    fetch(source=str(cod_dir), raw_db=str(tmp / "raw.db"), cod_ids=[7103889, 2208311, 2100348], progress=False)
    run_filter(tmp / "raw.db", tmp / "clean.db", tmp / "rejects.db", progress=False)
    return str(tmp / "rejects.db")


def _representations(view) -> list[tuple[str, dict]]:
    return [(m["args"][0], m["kwargs"]) for m in view._ngl_msg_archive if m.get("methodName") == "addRepresentation"]


def test_viewer_components_and_close_contact_highlight(rejects_db):
    viewer = RejectViewer(rejects_db, check="close_contact")
    assert isinstance(viewer.widget, ipywidgets.VBox)
    assert isinstance(viewer.reason, ipywidgets.Dropdown) and isinstance(viewer.index, ipywidgets.IntSlider)
    assert isinstance(viewer.view, nglview.NGLWidget)
    assert dict(viewer.reason.options) == {"close_contact (1)": "close_contact",
                                          "partial_occupancy (1)": "partial_occupancy"}
    assert viewer.current["structure_id"] == "cod-7103889"
    pair = viewer.current["rejection"]["details"]["pairs"][0]
    scene = viewer.scene
    i, j = scene.pairs[0]
    assert scene.atoms.get_distance(i, j) == pytest.approx(pair["distance"], abs=1e-3)  # image placed right
    assert sorted(scene.atoms[[i, j]].get_chemical_symbols()) == ["H", "N"]
    reps = _representations(viewer.view)
    names = [name for name, _ in reps]
    assert {"ball+stick", "unitcell", "spacefill", "distance"} <= set(names)
    sphere_sele = next(kw["sele"] for name, kw in reps if name == "spacefill")
    assert {f"{i}", f"{j}"} <= set(sphere_sele.lstrip("@").split(","))
    distance = next(kw for name, kw in reps if name == "distance")
    assert [f"@{i}", f"@{j}"] in distance["atomPair"]
    assert "cod-7103889" in viewer.info.value and "0.8" in viewer.info.value


def test_switching_reason_redraws_partial_occupancy_sites(rejects_db):
    viewer = RejectViewer(rejects_db, check="close_contact")
    viewer.reason.value = "partial_occupancy"  # as a user would, through the dropdown
    assert viewer.current["structure_id"] == "cod-2208311"
    assert "1-(1-Hydroxy-2-naphthyl)ethanone" in viewer.info.value  # the CIF's name (systematic; common empty)
    assert viewer.scene.spheres and not viewer.scene.pairs
    assert viewer.scene.spheres == viewer.current["rejection"]["details"]["atoms"]
    last_spacefill = [kw for name, kw in _representations(viewer.view) if name == "spacefill"][-1]
    assert last_spacefill["sele"] == "@" + ",".join(map(str, viewer.scene.spheres))


def test_scene_adds_periodic_image_for_pair_across_the_cell():
    atoms = Atoms("CH", scaled_positions=[[0.01, 0.5, 0.5], [0.95, 0.5, 0.5]], cell=[10, 10, 10], pbc=True)
    rejection = {"check": "close_contact", "reason": "",
                 "details": {"pairs": [{"i": 0, "j": 1, "distance": 0.6, "shift": [-1, 0, 0]}]}}
    scene = scene_for(atoms, rejection)
    assert len(scene.atoms) == 3 and scene.pairs == [(0, 2)]
    assert np.linalg.norm(scene.atoms.positions[2] - scene.atoms.positions[0]) == pytest.approx(0.6)


def test_atoms_short_of_hydrogens_and_fragments_are_highlighted(tmp_path, cod_dir):
    """cod-2003398 (no H in its atom list) and cod-2103187 (a broken loop: lone C and O atoms), drawn on
    pymatgen's atoms since ASE cannot read either file."""
    fetch(source=str(cod_dir), raw_db=str(tmp_path / "raw.db"), cod_ids=[2003398, 2103187], progress=False)
    run_filter(tmp_path / "raw.db", tmp_path / "clean.db", tmp_path / "rejects.db", progress=False)
    viewer = RejectViewer(str(tmp_path / "rejects.db"), check="hydrogen_missing")
    viewer.show("hydrogen_missing", 0)
    details = viewer.current["rejection"]["details"]
    assert viewer.current["structure_id"] == "cod-2003398"
    assert viewer.scene.spheres == details["atoms"]
    assert len(details["atoms"]) == 8 * 13  # 8 molecules, 13 atoms each short of H
    assert set(viewer.scene.atoms[viewer.scene.spheres].get_chemical_symbols()) <= {"C", "N", "O"}
    assert "needs 1 H" in viewer.info.value and "magenta" in viewer.info.value
    viewer.reason.value = "incomplete_structure"
    assert viewer.current["structure_id"] == "cod-2103187"
    fragments = viewer.current["rejection"]["details"]["fragments"]
    assert viewer.scene.spheres == sorted(i for f in fragments for i in f["atoms"])
    assert "isolated C atom" in viewer.info.value


def test_flagged_clean_entry_shows_its_bonds(tmp_path, shared_data):
    """Solid CO2 (COD 1010060, clean, flagged bond_length_outlier: C=O 1.05 Å): RejectViewer(clean_db) joins the
    C and O of a flagged bond like a close pair and names the bond, its order and the expected range."""
    fetch(source=str(shared_data / "cod-sample"), raw_db=str(tmp_path / "raw.db"), cod_ids=[1010060], progress=False)
    run_filter(tmp_path / "raw.db", tmp_path / "clean.db", tmp_path / "rejects.db", progress=False)
    viewer = RejectViewer(str(tmp_path / "clean.db"))
    assert dict(viewer.reason.options) == {"bond_length_outlier (1)": "bond_length_outlier"}
    i, j = viewer.scene.pairs[0]
    assert sorted(viewer.scene.atoms[[i, j]].get_chemical_symbols()) == ["C", "O"]
    assert viewer.scene.atoms.get_distance(i, j) == pytest.approx(1.053, abs=0.01)  # the bonded image is drawn
    assert "C1–O1 1.053 Å (order 2" in viewer.info.value and "1.23–1.43 Å" in viewer.info.value
