"""Compare a relaxed crystal with its experimental structure: cell setting, symmetry, packing, bonds.

The study compared the cell vector |a1|. That only means something when both cells are in the
same setting: the relaxation must not have reordered or reduced the vectors. FrechetCellFilter
deforms the cell continuously, so normally the relaxed vectors are the experimental ones,
strained. :func:`match_setting` checks that and, when another step (a Niggli reduction, an
axis permutation, a rotation to standard orientation) changed the setting, finds the integer
transformation that maps the relaxed cell back; it says which case applied.

Beyond the cell: did the space group survive (spglib, same tolerance on both sides), how far
did the atoms move once the homogeneous cell strain is removed, and did every molecule stay
intact (same covalent bond graph)?
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.build.tools import niggli_reduce_cell
from ase.geometry import cell_to_cellpar

#: A mapped cell must agree with the experimental one within these (relative length, degrees).
LENGTH_TOL = 0.35
ANGLE_TOL = 25.0
#: Covalent-radius multiplier for bonds: 1.2 x (r_i + r_j) keeps O-H/N-H of relaxed structures
#: (~1.0 Å vs 0.97 Å = r_O + r_H) bonded and stays far below hydrogen-bond H...O (>= 1.5 Å).
BOND_MULT = 1.2


@dataclass
class SettingMatch:
    """How the relaxed cell relates to the experimental one.

    ``transform`` T maps the relaxed cell into the experimental setting: ``T @ cell_relaxed``.
    ``setting``: "same" (T = identity), "mapped" (another unimodular T) or "unmatched".
    """

    setting: str
    transform: np.ndarray
    length_misfit: float
    angle_misfit: float


def _misfit(cell: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    par, ref = cell_to_cellpar(cell), cell_to_cellpar(reference)
    return float(np.max(np.abs(par[:3] / ref[:3] - 1))), float(np.max(np.abs(par[3:] - ref[3:])))


@lru_cache(maxsize=1)
def _unimodular_small() -> np.ndarray:
    """All 3x3 integer matrices with entries in {-1, 0, 1} and determinant ±1."""
    mats = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=float).reshape(-1, 3, 3)
    det = np.rint(np.linalg.det(mats))
    return mats[np.abs(det) == 1]


def _best_small_transform(cell_exp: np.ndarray, cell_rel: np.ndarray) -> np.ndarray:
    """Rotation-free search: the small unimodular T whose T @ cell_rel best matches cell_exp's metric."""
    mats = _unimodular_small()
    cells = mats @ cell_rel
    lengths = np.linalg.norm(cells, axis=2)
    ref_len = np.linalg.norm(cell_exp, axis=1)
    len_err = np.max(np.abs(lengths / ref_len - 1), axis=1)
    pairs = ((1, 2), (2, 0), (0, 1))
    cos = np.stack([np.einsum("nk,nk->n", cells[:, i], cells[:, j]) / (lengths[:, i] * lengths[:, j])
                    for i, j in pairs], axis=1)
    ref_cos = np.array([cell_exp[i] @ cell_exp[j] / (ref_len[i] * ref_len[j]) for i, j in pairs])
    ang_err = np.degrees(np.max(np.abs(np.arccos(np.clip(cos, -1, 1)) - np.arccos(ref_cos)), axis=1))
    return mats[int(np.argmin(len_err + ang_err / 60.0))]


def _score(length: float, angle: float) -> float:
    return length + angle / 60.0


def _orientation_transform(cell_exp: np.ndarray, cell_rel: np.ndarray, tol: float = 0.3) -> np.ndarray | None:
    """T from the orientation, when the relaxed vectors are near-integer combinations of the exp ones."""
    try:
        frac = cell_rel @ np.linalg.inv(cell_exp)
    except np.linalg.LinAlgError:
        return None
    near = np.rint(frac)
    if np.max(np.abs(frac - near)) > tol or abs(round(np.linalg.det(near))) != 1:
        return None
    return np.rint(np.linalg.inv(near))


def _stretched_only(cell_exp: np.ndarray, cell_rel: np.ndarray, tol: float = 0.3) -> bool:
    """True when each relaxed vector is mostly its own experimental vector, stretched (any amount)."""
    try:
        frac = cell_rel @ np.linalg.inv(cell_exp)
    except np.linalg.LinAlgError:
        return False
    off = frac - np.diag(np.diag(frac))
    return bool(np.all(np.diag(frac) > 0.5) and np.max(np.abs(off)) < tol)


def _metric_candidates(cell_exp: np.ndarray, cell_rel: np.ndarray) -> list[np.ndarray]:
    """Unique unimodular candidates found without the orientation: identity, Niggli, small search."""
    found: list[np.ndarray] = []

    def add(matrix) -> None:
        matrix = np.rint(np.asarray(matrix, dtype=float))
        if (np.all(np.isfinite(matrix)) and abs(round(np.linalg.det(matrix))) == 1
                and not any(np.array_equal(matrix, m) for m in found)):
            found.append(matrix)

    add(np.eye(3))
    try:
        _, op_exp = niggli_reduce_cell(cell_exp)
        _, op_rel = niggli_reduce_cell(cell_rel)
        # ASE returns the reduced cell rotated to standard form; op.T @ cell is it unrotated.
        add(np.linalg.inv(op_exp.T) @ op_rel.T)
    except (np.linalg.LinAlgError, ValueError, RuntimeError):
        pass
    add(_best_small_transform(cell_exp, cell_rel))
    return found


def match_setting(cell_exp, cell_rel, exp: Atoms | None = None, relaxed: Atoms | None = None,
                  length_tol: float = LENGTH_TOL, angle_tol: float = ANGLE_TOL) -> SettingMatch:
    """Find T (integer, det ±1) with ``T @ cell_rel`` in the setting of ``cell_exp``.

    1. Orientation: when ``F = cell_rel @ inv(cell_exp)`` is diagonal-dominant (each relaxed
       vector is its experimental one, stretched by any amount, as with FrechetCellFilter,
       even for a cell that blew up) T is the identity; when F is close to another integer
       matrix (a reordering or reduction that kept the orientation), T is its inverse.
    2. Otherwise (the cell was rotated too) candidates from the metric alone: identity, both
       cells Niggli-reduced, and a search over unimodular matrices with entries -1/0/1 by
       lengths and angles. Cell metrics cannot tell a permutation of near-equal axes, so when
       the structures are given (same atoms, same order) the candidate that keeps fractional
       coordinates closest wins; otherwise the smallest misfit. Identity wins near-ties.

    A T qualifies only within ``length_tol`` (relative) and ``angle_tol`` (degrees) of the
    experimental cell. None qualifying: "unmatched" with T = identity (the volume stays
    comparable, the lattice vectors do not).
    """
    cell_exp = np.asarray(cell_exp, dtype=float)
    cell_rel = np.asarray(cell_rel, dtype=float)
    identity = np.eye(3)

    def result(transform: np.ndarray) -> SettingMatch:
        length, angle = _misfit(transform @ cell_rel, cell_exp)
        setting = "same" if np.array_equal(transform, identity) else "mapped"
        return SettingMatch(setting, transform, length, angle)

    if _stretched_only(cell_exp, cell_rel):
        return result(identity)
    oriented = _orientation_transform(cell_exp, cell_rel)
    if oriented is not None:
        found = result(oriented)
        if found.length_misfit <= length_tol and found.angle_misfit <= angle_tol:
            return found
    fits = [result(t) for t in _metric_candidates(cell_exp, cell_rel)]
    fits = [f for f in fits if f.length_misfit <= length_tol and f.angle_misfit <= angle_tol]
    if not fits:
        length, angle = _misfit(cell_rel, cell_exp)
        return SettingMatch("unmatched", identity, length, angle)
    comparable = (exp is not None and relaxed is not None and len(exp) == len(relaxed) > 0
                  and np.array_equal(exp.numbers, relaxed.numbers))
    if comparable:
        cost = [displacement_rmsd(exp, relaxed, f.transform)[0] for f in fits]
        slack = 0.05  # Å
    else:
        cost = [_score(f.length_misfit, f.angle_misfit) for f in fits]
        slack = 0.02
    best = int(np.argmin(cost))
    if fits[0].setting == "same" and cost[0] <= cost[best] + slack:
        return fits[0]
    return fits[best]


def spacegroup(atoms: Atoms, symprec: float = 1e-2) -> tuple[int | None, str | None]:
    """(number, Hermann–Mauguin symbol) from spglib, or (None, None) when it finds none."""
    import spglib

    if len(atoms) == 0:
        return None, None
    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers)
    try:
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises its own error types for bad cells
        return None, None
    if data is None:
        return None, None
    return int(data.number), str(data.international)


def bonds(atoms: Atoms, mult: float = BOND_MULT) -> set[tuple[int, int]]:
    """Covalently bonded atom pairs (i < j), periodic images included, by scaled covalent radii."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return set()
    radii = mult * covalent_radii[atoms.numbers]
    i, j = neighbor_list("ij", atoms, radii.tolist())
    return {(int(a), int(b)) for a, b in zip(i, j) if a < b}


#: a bond with its image: (i, j, shift of j) — atom j of the cell ``shift`` (integers, in cell vectors) away
Bond = tuple[int, int, tuple[int, int, int]]


def _one_way(i: int, j: int, shift) -> Bond:
    """The bond i–j(shift) written once: i < j, or for an atom bonded to its own image the shift that
    comes first (each bond is found from both ends, as j–i(−shift))."""
    shift = tuple(int(v) for v in shift)
    if i > j or (i == j and shift < tuple(-v for v in shift)):
        return j, i, tuple(-v for v in shift)
    return i, j, shift


def bonds_with_images(atoms: Atoms, mult: float = BOND_MULT, basis: np.ndarray | None = None,
                      reference: tuple[np.ndarray, np.ndarray] | None = None) -> set[Bond]:
    """Covalent bonds with the periodic image they reach (the criterion of :func:`bonds`).

    Atom i bonds to atom j of the cell ``shift`` away. Two copies of one pair through different images (a
    chain along a short axis) are two bonds, and an atom bonded to its own image is one: the pair set of
    :func:`bonds` merges or drops them, and so hides a break there. To compare two structures, write the
    shifts in one setting: ``basis`` (integer matrix, e.g. the inverse of :func:`match_setting`'s
    transform) takes them to it, and ``reference`` = (fractional positions of these atoms, of the reference
    structure's), both in that setting (:func:`fractional_pair`), writes each bond as the image it is in the
    reference: the shift that keeps the bond's vector i -> j closest to the reference's. Pair by pair, so
    neither atoms wrapped back into the cell nor a molecule moved or turned as a whole change a shift.
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return set()
    radii = mult * covalent_radii[atoms.numbers]
    i, j, shifts = neighbor_list("ijS", atoms, radii.tolist(), self_interaction=False)
    shifts = np.rint(shifts @ basis).astype(int) if basis is not None else shifts
    if reference is not None:
        now, then = reference
        shifts = shifts + np.rint((now[j] - now[i]) - (then[j] - then[i])).astype(int)
    return {_one_way(int(a), int(b), s) for a, b, s in zip(i, j, shifts)}


def fractional_pair(exp: Atoms, relaxed: Atoms, transform: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fractional positions of the relaxed and the experimental atoms, both in the experimental setting
    (``transform`` @ relaxed cell, :func:`match_setting`): the ``reference`` of :func:`bonds_with_images`."""
    transform = np.eye(3) if transform is None else transform
    frac_rel = relaxed.positions @ np.linalg.inv(transform @ np.asarray(relaxed.cell))
    return frac_rel, exp.positions @ np.linalg.inv(np.asarray(exp.cell))


def bond_changes(atoms: Atoms, broken, formed) -> str:
    """Which bonds a relaxation broke and formed, by element pair: ``"broken O-O x2; formed N-O x2"``
    ("" when the bond graph is unchanged): the chemistry changed, a candidate CIF error (issue 36).
    ``broken``/``formed``: pairs (i, j) or bonds with their image (i, j, shift)."""
    symbols = atoms.get_chemical_symbols()
    parts = []
    for what, pairs in (("broken", broken), ("formed", formed)):
        kinds = Counter("-".join(sorted((symbols[p[0]], symbols[p[1]]))) for p in pairs)
        if kinds:
            parts.append(f"{what} " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    return "; ".join(parts)


def molecules(atoms: Atoms, pairs: set[tuple[int, int]]) -> Counter:
    """Multiset of molecular formulas (connected components of the bond graph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    if n == 0:
        return Counter()
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    symbols = np.array(atoms.get_chemical_symbols())
    return Counter(Atoms(symbols[labels == k].tolist()).get_chemical_formula() for k in np.unique(labels))


def displacements(exp: Atoms, relaxed: Atoms, transform: np.ndarray | None = None) -> np.ndarray:
    """Per-atom displacement (Å) once the cell strain and the overall translation are removed.

    Fractional coordinates of the relaxed atoms (in the experimental setting, via ``transform``)
    minus the experimental ones, wrapped to the nearest image, minus the mean shift of the
    heavy atoms (X-ray H positions are systematically short, so H should not define the
    origin), measured in the experimental cell. Needs the same atoms in the same order.
    """
    transform = np.eye(3) if transform is None else transform
    cell_rel = transform @ np.asarray(relaxed.cell)
    frac_rel = relaxed.positions @ np.linalg.inv(cell_rel)
    frac_exp = exp.positions @ np.linalg.inv(np.asarray(exp.cell))
    delta = frac_rel - frac_exp
    delta -= np.rint(delta)
    heavy = exp.numbers > 1
    delta -= delta[heavy].mean(axis=0) if heavy.any() else delta.mean(axis=0)
    delta -= np.rint(delta)
    return np.linalg.norm(delta @ np.asarray(exp.cell), axis=1)


def displacement_rmsd(exp: Atoms, relaxed: Atoms, transform: np.ndarray | None = None) -> tuple[float, float]:
    """RMS and max of :func:`displacements` over all atoms (Å)."""
    disp = displacements(exp, relaxed, transform)
    return float(np.sqrt(np.mean(disp**2))), float(disp.max())


def matcher_rms(exp: Atoms, relaxed: Atoms) -> float | None:
    """pymatgen StructureMatcher RMS, volume scaled; None if no match (default tolerances).

    pymatgen normalises it by (V/n)^(1/3); multiply by that to compare with ``rmsd_A``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        s_exp = AseAtomsAdaptor.get_structure(exp)
        s_rel = AseAtomsAdaptor.get_structure(relaxed)
        result = StructureMatcher(scale=True, attempt_supercell=False).get_rms_dist(s_exp, s_rel)
    except Exception:  # noqa: BLE001 - a failed match is a result, not a crash
        return None
    return None if result is None else float(result[0])


def compare_structures(exp: Atoms, relaxed: Atoms, transform: np.ndarray | None = None,
                       symprec: float = 1e-2, matcher: bool = True) -> dict[str, object]:
    """Space-group survival, packing displacement and bond-graph checks as one flat record."""
    sg_exp, sym_exp = spacegroup(exp, symprec)
    sg_rel, sym_rel = spacegroup(relaxed, symprec)
    same_atoms = len(exp) == len(relaxed) and list(exp.numbers) == list(relaxed.numbers)
    out: dict[str, object] = {
        "sg_exp": sg_exp, "sg_exp_symbol": sym_exp, "sg_relaxed": sg_rel, "sg_relaxed_symbol": sym_rel,
        "sg_survived": (sg_exp == sg_rel) if sg_exp is not None and sg_rel is not None else None,
        "same_atom_order": same_atoms,
    }
    b_exp, b_rel = bonds(exp), bonds(relaxed)
    mol_exp, mol_rel = molecules(exp, b_exp), molecules(relaxed, b_rel)
    out["n_molecules_exp"] = sum(mol_exp.values())
    out["n_molecules_relaxed"] = sum(mol_rel.values())
    out["molecules_same"] = mol_exp == mol_rel
    if same_atoms:
        # bonds with the image they reach, in the experimental setting, wrapping undone: a molecule across
        # a cell edge is the same molecule, a bond to another image is another bond
        t = np.eye(3) if transform is None else np.asarray(transform, dtype=float)
        i_exp = bonds_with_images(exp)
        i_rel = bonds_with_images(relaxed, basis=np.linalg.inv(t), reference=fractional_pair(exp, relaxed, t))
        out["bonds_broken"] = len(i_exp - i_rel)
        out["bonds_formed"] = len(i_rel - i_exp)
        out["bonds_intact"] = i_exp == i_rel
        out["bond_changes"] = bond_changes(exp, sorted(i_exp - i_rel), sorted(i_rel - i_exp))
        disp = displacements(exp, relaxed, transform)
        heavy = disp[exp.numbers > 1]
        out["rmsd_A"] = float(np.sqrt(np.mean(disp**2)))
        out["rmsd_heavy_A"] = float(np.sqrt(np.mean(heavy**2))) if heavy.size else None
        out["max_disp_A"] = float(disp.max())
    else:
        out.update(bonds_broken=None, bonds_formed=None, bonds_intact=None, bond_changes=None, rmsd_A=None,
                   rmsd_heavy_A=None, max_disp_A=None)
    out["matcher_rms"] = matcher_rms(exp, relaxed) if matcher else None
    return out


STRUCTURE_COLUMNS = ["sg_exp", "sg_exp_symbol", "sg_relaxed", "sg_relaxed_symbol", "sg_survived",
                     "same_atom_order", "n_molecules_exp", "n_molecules_relaxed", "molecules_same",
                     "bonds_broken", "bonds_formed", "bonds_intact", "rmsd_A", "rmsd_heavy_A", "max_disp_A",
                     "matcher_rms", "bond_changes"]
