"""Look at rejected structures in JupyterLab: pick a reason, step through its structures in nglview.

The unit cell is drawn, and the atoms a check blamed are highlighted: close pairs as spheres joined
by a distance label (a periodic image is added when the partner sits in a neighbouring cell),
bonds whose length contradicts their perceived order (joined like close pairs), partially occupied
sites, atoms that need hydrogens (with how many) and fragments that are not molecules
as spheres. Everything builds without a running kernel, so it is tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from helpers.store import db as dbmod


def import_nglview():
    """nglview, without its pkg_resources deprecation warning (nglview 3.1.4 is pinned, see pyproject)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import nglview
    return nglview


@dataclass
class Scene:
    """What to draw for one rejection: atoms (maybe with added images), spheres, labelled pairs."""

    atoms: Atoms
    spheres: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    note: str = ""


def scene_for(atoms: Atoms, rejection: dict[str, Any], max_pairs: int = 10) -> Scene:
    """The picture of one rejection record (``{"check", "reason", "details"}``) on ``atoms``."""
    details = rejection.get("details") or {}
    atoms = atoms.copy()
    scene = Scene(atoms=atoms, note=rejection.get("reason", ""))
    if rejection.get("check") in ("close_contact", "bond_length_contradiction", "bond_length_outlier"):
        for pair in details.get("pairs", [])[:max_pairs]:
            i, j, shift = int(pair["i"]), int(pair["j"]), np.asarray(pair.get("shift", (0, 0, 0)))
            if i >= len(atoms) or j >= len(atoms):
                continue
            if shift.any():  # draw the partner where it really is: its image in the next cell
                image = atoms[j]
                image.position = atoms.positions[j] + shift @ atoms.cell.array
                atoms.append(image)
                j = len(atoms) - 1
            scene.pairs.append((i, j))
            scene.spheres.extend(x for x in (i, j) if x not in scene.spheres)
    elif rejection.get("check") in ("partial_occupancy", "hydrogen_missing", "incomplete_structure"):
        # disordered sites; atoms whose valence needs H; fragments that are not molecules (a lone O, a lone H)
        scene.spheres = [int(i) for i in details.get("atoms", []) if int(i) < len(atoms)]
    return scene


def draw(view, scene: Scene, sphere_radius: float = 0.45) -> None:
    """Put ``scene`` into an nglview widget (replacing what it showed)."""
    nglview = import_nglview()

    from helpers.internals import ngl_component_ids

    for cid in ngl_component_ids(view):
        view.remove_component(cid)
    if len(scene.atoms) == 0:
        return
    view.add_component(nglview.ASEStructure(scene.atoms), default_representation=False)
    view.add_ball_and_stick(selection="all", aspectRatio=2.0)
    view.add_unitcell()
    if scene.spheres:
        view.add_spacefill(selection="@" + ",".join(map(str, scene.spheres)), radius=sphere_radius,
                           color="magenta", opacity=0.6)
    if scene.pairs:
        view.add_representation("distance", atomPair=[[f"@{i}", f"@{j}"] for i, j in scene.pairs],
                                labelColor="black", labelSize=2.0, color="magenta")
    view.center()


class RejectViewer:
    """Reason dropdown + structure slider + nglview widget over a rejects database.

    ``RejectViewer(rejects_db).widget`` is the ipywidgets box to display; ``show(check, index)``
    moves to a structure programmatically; ``scene`` is what is currently drawn.
    """

    def __init__(self, rejects_db: str, check: str | None = None):
        import ipywidgets as w
        nglview = import_nglview()

        self.db = dbmod.connect(rejects_db, must_exist=True)
        self.by_check = rejects_by_check(self.db)
        options = [(f"{name} ({len(ids)})", name) for name, ids in self.by_check.items()]
        first = check if check in self.by_check else (options[0][1] if options else None)
        self.reason = w.Dropdown(options=options, value=first, description="reason")
        self.index = w.IntSlider(min=0, max=0, value=0, description="structure", continuous_update=False)
        self.info = w.HTML()
        self.view = nglview.NGLWidget()
        self.widget = w.VBox([w.HBox([self.reason, self.index]), self.info, self.view])
        self.scene: Scene | None = None
        self.current: dict[str, Any] = {}
        self.reason.observe(lambda change: self.show(change["new"], 0), names="value")
        self.index.observe(lambda change: self.show(self.reason.value, change["new"]), names="value")
        if first is not None:
            self.show(first, 0)

    def show(self, check: str, index: int = 0) -> Scene | None:
        """Draw structure ``index`` of those rejected by ``check``."""
        ids = self.by_check.get(check, [])
        if not ids:
            return None
        index = max(0, min(index, len(ids) - 1))
        with self.index.hold_trait_notifications():
            self.index.max = len(ids) - 1
            self.index.value = index
        if self.reason.value != check:
            self.reason.value = check  # re-enters show() once through the observer
            return self.scene
        row = self.db.get(id=ids[index])
        findings = row.data.get("rejections", []) + row.data.get("flags", [])
        rejection = next(r for r in findings if r["check"] == check)
        atoms = display_atoms(row, rejection)
        self.scene = scene_for(atoms, rejection)
        self.current = {"structure_id": row.structure_id, "check": check, "index": index,
                        "rejection": rejection, "all_checks": row.get("checks", "")}
        self.info.value = _info_html(row, rejection, self.scene)
        draw(self.view, self.scene)
        return self.scene


def display_atoms(row, rejection: dict[str, Any]) -> Atoms:
    """The atoms a rejection's indices refer to: the rejects row's own (pymatgen's parse, written by the
    filter, when ASE could not read the file)."""
    return row.toatoms()


#: flags whose findings carry atoms to draw (their rows keep ``data["flags"]``)
FLAGS_WITH_DETAILS = ("bond_length_outlier",)


def rejects_by_check(db) -> dict[str, list[int]]:
    """Check name -> row ids of the structures that failed it (a structure appears under each).

    On a clean database (rows without ``checks``) the flags with details (``data["flags"]``, e.g.
    ``bond_length_outlier``) count instead, so ``RejectViewer(clean_db)`` steps through the flagged entries.
    """
    out: dict[str, list[int]] = {}
    for row in db.select(columns=["id", "key_value_pairs"], sort="id"):
        names = [n for n in str(row.get("checks", "")).split(",") if n]
        if row.get("checks") is None:
            names += [k[len("flag_"):] for k, v in row.key_value_pairs.items()
                      if k.startswith("flag_") and v is True and k[len("flag_"):] in FLAGS_WITH_DETAILS]
        for name in names:
            out.setdefault(name, []).append(row.id)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def _info_html(row, rejection: dict[str, Any], scene: Scene) -> str:
    from html import escape

    details = rejection.get("details") or {}
    extra = ""
    if scene.pairs and rejection.get("check", "").startswith("bond_length"):
        d = [f"{p['labels'][0]}–{p['labels'][1]} {p['distance']:.3f} Å (order {p['order']:g}, expected "
             f"{p['expected'][0] or '?'}–{p['expected'][1] or '?'} Å)" for p in details.get("pairs", [])[:5]]
        extra = "<br>bonds against their perceived order (magenta): " + escape("; ".join(d))
    elif scene.pairs:
        d = [f"{p['labels'][0]}–{p['labels'][1]} {p['distance']:.3f} Å" for p in details.get("pairs", [])[:5]]
        extra = "<br>closest pairs: " + escape("; ".join(d))
    elif rejection.get("check") == "hydrogen_missing" and details.get("h_needed"):
        d = [f"{a['label']} needs {a['h_needed']} H" for a in details["h_needed"][:8]]
        extra = "<br>atoms short of hydrogens (magenta): " + escape("; ".join(d))
    elif rejection.get("check") == "incomplete_structure" and details.get("fragments"):
        d = [f"{f['reason']}: {', '.join(f['labels'][:4])}" for f in details["fragments"][:5]]
        extra = "<br>fragments (magenta): " + escape("; ".join(d))
    name = f" {escape(str(row.get('compound_name')))}" if row.get("compound_name") else ""
    return (f"<b>{escape(str(row.structure_id))}</b>{name} ({escape(str(row.get('cif_formula', '?')))}; "
            f"failed: {escape(str(row.get('checks', '')))})<br>{escape(rejection.get('reason', ''))}{extra}")
