"""The molecules of a crystal, read from its atoms: bonds, whole molecules, identity, missing hydrogens.

A crystallographer looking at a structure sees molecules, not a list of sites. This module does the
same from an ASE cell:

- **bonds** from covalent radii under periodic boundaries (``d < BOND_MULT * (r_i + r_j)``, ASE's
  covalent radii, the neighbour list of :func:`ase.neighborlist.neighbor_list`);
- **molecules** = connected components of that graph, made whole across the cell edges (each atom
  is moved to the image it is bonded through). A component bonded to its own periodic image is an
  infinite network (``polymeric``): it has no molecular identity;
- per molecule: formula, **charge**, **SMILES, InChI and InChIKey** from RDKit
  (``rdDetermineBonds.DetermineBondOrders`` assigns bond orders and formal charges; the charge is
  searched 0, +1, -1, +2, -2 and the first closed-shell assignment wins);
- **missing hydrogens** without a formula: each C, N, O atom's hybridisation is read from its
  geometry (bond angles, planarity, bond lengths against single-bond lengths) and its valence from
  the closed-shell bond orders RDKit can (or cannot) find; an atom whose valence cannot be satisfied
  by its neighbours needs hydrogens, and how many is reported per atom.

Work is bounded: molecules above ``max_atoms`` atoms are not sent to RDKit (recorded), RDKit's
bond-order search gets ``max_iterations``, and results are cached per unique molecule graph.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

#: bond if d < BOND_MULT * (r_i + r_j) (ASE covalent radii). 1.2 bonds X-ray C-H (0.93-0.98 Å) and long
#: C-C (1.6 Å) and stays below hydrogen bonds (H...O >= 1.5 Å, > 1.16 Å = 1.2 x (0.31 + 0.66)).
BOND_MULT = 1.2
#: an H bonded to nothing is attached to its nearest heavy atom within r_i + r_j + this (Å; the CSD uses
#: 0.4): X-ray models with H far out (cod-1011063, ice with H at 1.35-1.38 Å from O) keep their molecules
LONE_H_TOLERANCE = 0.45
#: H an isolated atom needs to be a molecule (methane, ammonia, water): also counted as missing H
ISOLATED_H = {"C": 4, "N": 3, "O": 2}
#: molecules larger than this are not given to RDKit (a polymer, a cage, a huge cell): identity unknown
MAX_ATOMS = 250
#: seconds of H search (RDKit calls) per molecule before it gives up with what geometry says
SEARCH_SECONDS = 10.0
#: RDKit bond-order search iterations per call (MaxFindBondOrdersItersExceeded beyond)
MAX_ITERATIONS = 200_000
#: charges tried, in order: the first with a closed-shell assignment wins
CHARGES = (0, 1, -1, 2, -2)
#: single-bond lengths (Å, sp3-sp3, Allen et al. 1987 typical values): shorter bonds have multiple-bond character
SINGLE_BOND = {("C", "C"): 1.53, ("C", "N"): 1.47, ("C", "O"): 1.43, ("N", "N"): 1.45, ("N", "O"): 1.41,
               ("O", "O"): 1.47}
#: an O with one neighbour carries no H when its bond is shorter than this (carbonyl, carboxylate,
#: N-oxide, nitroxide); a C-OH is >= 1.30 Å, an N-OH >= 1.36 Å.
O_SINGLE_MIN = {"C": 1.285, "N": 1.345}
#: a terminal O may take an H in the valence search from these lengths (a COOH vs COO- pair can be 1.25/1.28 Å)
O_CANDIDATE_MIN = {"C": 1.25, "N": 1.345}


def _single(a: str, b: str) -> float | None:
    return SINGLE_BOND.get((a, b)) or SINGLE_BOND.get((b, a))


@dataclass
class Molecule:
    """One molecule (connected component) of the cell, whole, with its identity and missing H."""

    indices: list[int]  # atoms of the cell, in cell order
    symbols: list[str]
    positions: np.ndarray  # unwrapped (Å), same order as indices
    bonds: list[tuple[int, int]]  # local indices (i < j)
    polymeric: bool = False
    formula: str = ""
    charge: int | None = None
    smiles: str | None = None
    inchi: str | None = None
    inchikey: str | None = None
    radical: bool = False
    error: str | None = None
    #: cell atom index -> number of H its valence needs
    h_needed: dict[int, int] = field(default_factory=dict)
    #: charges with a closed-shell assignment, preferred first (the crystal's charge balance picks one)
    charges_possible: list[int] = field(default_factory=list)
    key: str = ""
    #: atoms of a one-atom component within r_i + r_j + LONE_H_TOLERANCE (H shared with a neighbour)
    loose_contacts: int = 0
    #: time.monotonic() after which the valence search of this molecule gives up (set by analyse_molecule)
    deadline: float = float("inf")

    @property
    def n_atoms(self) -> int:
        return len(self.indices)

    @property
    def fragment(self) -> str | None:
        """Why this is not a sensible molecule (an isolated heavy atom, a lone H), or None."""
        heavy = [s for s in self.symbols if s != "H"]
        if self.loose_contacts:
            return None  # not alone: its partners are just far out (e.g. H between two O in an averaged model)
        if not heavy:
            return f"lone hydrogen fragment {self.formula}"
        if len(self.symbols) == 1 and heavy[0] in ("C", "N", "O"):
            hint = {"O": " (a water or hydroxide whose H are not in the atom list?)",
                    "N": " (an ammonia/ammonium whose H are not in the atom list?)"}.get(heavy[0], "")
            return f"isolated {heavy[0]} atom{hint}"
        return None


@dataclass
class CrystalChemistry:
    """Every molecule of one cell and what follows from them."""

    molecules: list[Molecule]
    n_atoms: int
    error: str | None = None

    @property
    def n_molecules(self) -> int:
        return len(self.molecules)

    @property
    def species(self) -> list[dict[str, Any]]:
        """Distinct molecules: formula, SMILES, InChIKey, charge, count (most numerous first)."""
        groups: dict[tuple, dict[str, Any]] = {}
        for m in self.molecules:
            key = (m.inchikey or f"?{m.formula}", m.charge)
            g = groups.setdefault(key, {"formula": m.formula, "smiles": m.smiles, "inchikey": m.inchikey,
                                        "charge": m.charge, "count": 0, "n_atoms": m.n_atoms})
            g["count"] += 1
            if m.polymeric:
                g["polymeric"] = True
        return sorted(groups.values(), key=lambda g: (-g["count"], g["formula"]))

    @property
    def compound_key(self) -> str | None:
        """Sorted distinct InChIKeys joined by '.'; None when any molecule has no identity."""
        if not self.molecules or any(m.inchikey is None for m in self.molecules):
            return None
        return ".".join(sorted({m.inchikey for m in self.molecules}))

    @property
    def net_charge(self) -> int | None:
        if any(m.charge is None for m in self.molecules):
            return None
        return int(sum(m.charge for m in self.molecules))

    @property
    def fragments(self) -> list[Molecule]:
        return [m for m in self.molecules if m.fragment]

    @property
    def h_needed(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for m in self.molecules:
            out.update(m.h_needed)
        return out

    def z(self) -> int | None:
        """Formula units per cell from the molecules: gcd of the counts of the distinct molecules."""
        counts = [s["count"] for s in self.species]
        return math.gcd(*counts) if counts else None


# --------------------------------------------------------------------------------------------
# bonds and whole molecules


def periodic_bonds(atoms: Atoms, mult: float = BOND_MULT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonded pairs under PBC: i, j, and the cell shift S of j (position_j + S @ cell), both directions."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3), int)
    radii = mult * covalent_radii[atoms.numbers]
    i, j, shifts = neighbor_list("ijS", atoms, radii.tolist(), self_interaction=False)
    lone = np.setdiff1d(np.flatnonzero(atoms.numbers == 1), i)
    if len(lone):
        # an H with no partner under BOND_MULT: bond it to its nearest heavy atom within a looser
        # criterion r_i + r_j + LONE_H_TOLERANCE (ice with H on O...O midpoints); a truly lone H stays a fragment
        li, lj, ld, ls = neighbor_list("ijdS", atoms, float(covalent_radii[1] + covalent_radii[8] + 0.4 + 0.2),
                                       self_interaction=False)
        extra_i, extra_j, extra_s = [], [], []
        for h in lone:
            mask = (li == h) & (atoms.numbers[lj] > 1)
            mask &= ld < covalent_radii[1] + covalent_radii[atoms.numbers[lj]] + LONE_H_TOLERANCE
            if not mask.any():
                continue
            k = np.flatnonzero(mask)[np.argmin(ld[mask])]
            extra_i += [h, lj[k]]
            extra_j += [lj[k], h]
            extra_s += [ls[k], -ls[k]]
        if extra_i:
            i = np.concatenate([i, extra_i]).astype(int)
            j = np.concatenate([j, extra_j]).astype(int)
            shifts = np.concatenate([shifts, np.array(extra_s, dtype=int)])
    return i, j, shifts


def find_molecules(atoms: Atoms, mult: float = BOND_MULT) -> list[Molecule]:
    """Connected components of the periodic bond graph, each made whole (unwrapped) across cell edges."""
    i, j, shifts = periodic_bonds(atoms, mult)
    n = len(atoms)
    neighbours: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    for a, b, s in zip(i, j, shifts):
        neighbours[int(a)].append((int(b), s))
    cell = np.asarray(atoms.cell.array)
    image = np.zeros((n, 3), dtype=int)
    seen = np.zeros(n, dtype=bool)
    symbols = atoms.get_chemical_symbols()
    molecules = []
    for start in range(n):
        if seen[start]:
            continue
        seen[start] = True
        members, stack, polymeric = [start], [start], False
        while stack:
            a = stack.pop()
            for b, s in neighbours[a]:
                want = image[a] + s
                if not seen[b]:
                    seen[b] = True
                    image[b] = want
                    members.append(b)
                    stack.append(b)
                elif not np.array_equal(image[b], want):
                    polymeric = True  # bonded to its own periodic image: an infinite chain/layer/net
        members.sort()
        local = {a: k for k, a in enumerate(members)}
        positions = atoms.positions[members] + image[members] @ cell
        pairs = sorted({(local[int(a)], local[int(b)]) for a, b in zip(i, j)
                        if int(a) in local and local[int(a)] < local.get(int(b), -1)})
        syms = [symbols[a] for a in members]
        molecules.append(Molecule(indices=members, symbols=syms, positions=positions, bonds=pairs,
                                  polymeric=polymeric, formula=Atoms(syms).get_chemical_formula(mode="hill")))
    singles = [m for m in molecules if m.n_atoms == 1]
    if singles:
        from ase.data import covalent_radii
        from ase.neighborlist import neighbor_list

        loose = (covalent_radii[atoms.numbers] + LONE_H_TOLERANCE / 2).tolist()
        li, lj = neighbor_list("ij", atoms, loose, self_interaction=False)
        for m in singles:
            m.loose_contacts = int(np.count_nonzero(li == m.indices[0]))
    return molecules


# --------------------------------------------------------------------------------------------
# missing hydrogens from geometry


def _angles(center: np.ndarray, others: np.ndarray) -> list[float]:
    v = others - center
    v = v / np.linalg.norm(v, axis=1)[:, None]
    out = []
    for a in range(len(v)):
        for b in range(a + 1, len(v)):
            out.append(float(np.degrees(np.arccos(np.clip(v[a] @ v[b], -1, 1)))))
    return out


def _shortening(sym: str, nsym: str, length: float) -> float:
    """Single-bond length minus this bond's length (Å): > 0.1 means multiple-bond character."""
    ref = _single(sym, nsym)
    return 0.0 if ref is None else ref - length


def carbon_h_options(mol: Molecule) -> dict[int, list[int]]:
    """H each carbon may need, by its geometry: local index -> counts, the most likely first.

    Carbon: 4 neighbours, or 3 in a plane (sp2), or 2 in a line (sp). Fewer neighbours than its
    hybridisation allows means C-H missing: a bent two-coordinate carbon is sp2 (1 H) when a bond is
    short or the angle is wide, else sp3 (2 H); a three-coordinate one is pyramidal (sp3, 1 H) or
    planar; a terminal carbon is CH3 / =CH2 / ≡CH by its bond. Where the geometry is borderline
    (an X-ray C-C of 1.39 Å in a CH2-CH2 bridge, an angle between sp2 and sp3) the other count is
    offered second, for the valence search to settle. Carbons that need nothing are left out.
    """
    n = len(mol.symbols)
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in mol.bonds:
        nbrs[a].append(b)
        nbrs[b].append(a)
    pos = mol.positions
    out: dict[int, list[int]] = {}
    for k, sym in enumerate(mol.symbols):
        if sym != "C" or n == 1:
            continue
        nb = nbrs[k]
        d = len(nb)
        lengths = [float(np.linalg.norm(pos[x] - pos[k])) for x in nb]
        short = [_shortening(sym, mol.symbols[x], L) for x, L in zip(nb, lengths)]
        options = [0]
        if d == 3:
            angle_sum = sum(_angles(pos[k], pos[nb]))
            options = [0] if angle_sum >= 348.0 else [0, 1] if angle_sum >= 340.0 else [1, 0] \
                if angle_sum >= 332.0 else [1]
        elif d == 2:
            theta = _angles(pos[k], pos[nb])[0]
            if theta >= 160.0:
                options = [0]
            elif theta >= 119.0:
                options = [1] if max(short) >= 0.07 or theta >= 124.0 else [1, 2]
            elif max(short) >= 0.07:
                options = [1] if max(short) >= 0.12 else [1, 2]
            else:
                options = [2, 1] if theta >= 113.0 or max(short) >= 0.03 else [2]
        elif d == 1:
            partner = mol.symbols[nb[0]]
            if partner == "H":
                options = [3]
            elif short[0] >= 0.25:  # triple bond: ≡CH, or C≡N+ / C≡O (isocyanide, CO) with no H
                options = [1] if partner == "C" else [0]
            elif short[0] >= 0.12:
                options = [2, 3] if short[0] < 0.16 else [2]
            else:
                options = [3, 2] if short[0] >= 0.08 else [3]
        if options != [0]:
            out[k] = options
    return out


def geometric_h_needed(mol: Molecule) -> dict[int, int]:
    """H each carbon needs for the hybridisation its geometry shows most likely (local index -> count).

    Nitrogen and oxygen are left to the valence search (:func:`_search_hydrogens`): pyridine- vs
    pyrrole-type N, an amide vs an imine N, C=O vs C-OH cannot be told apart by one atom's geometry,
    and X-ray / electron-diffraction bond lengths are too loose to try.
    """
    return {k: opts[0] for k, opts in carbon_h_options(mol).items() if opts[0] > 0}


def carbon_alternatives(mol: Molecule, max_flips: int = 2, max_bases: int = 24) -> list[dict[int, int]]:
    """Carbon H counts to try: the most likely first, then borderline carbons flipped (one, then two)."""
    from itertools import combinations

    options = carbon_h_options(mol)
    first = {k: o[0] for k, o in options.items()}
    borderline = [k for k, o in options.items() if len(o) > 1]
    bases = [first]
    for size in range(1, max_flips + 1):
        for flip in combinations(borderline, size):
            base = dict(first)
            for k in flip:
                base[k] = options[k][1]
            bases.append(base)
            if len(bases) >= max_bases:
                break
    return [{k: v for k, v in b.items() if v > 0} for b in bases]


# --------------------------------------------------------------------------------------------
# identity and valence with RDKit


def _rdkit_mol(symbols: list[str], positions: np.ndarray, bonds: list[tuple[int, int]]):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for s in symbols:
        atom = Chem.Atom(s)
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    for a, b in bonds:
        rw.AddBond(int(a), int(b), Chem.BondType.SINGLE)
    conf = Chem.Conformer(len(symbols))
    for k, p in enumerate(positions):
        conf.SetAtomPosition(k, Point3D(*map(float, p)))
    rw.AddConformer(conf, assignId=True)
    return rw


def _closed_shell(symbols, positions, bonds, charges=CHARGES, embed_chiral: bool = False,
                  max_iterations: int = MAX_ITERATIONS, uncharged: bool = False):
    """(charge, RDKit mol) of the first charge with a closed-shell bond-order assignment, else (None, None).

    ``uncharged``: only assignments without any formal charge count.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    for charge in charges:
        mol = _rdkit_mol(symbols, positions, bonds)
        try:
            rdDetermineBonds.DetermineBondOrders(mol, charge=charge, allowChargedFragments=True,
                                                 embedChiral=embed_chiral, maxIterations=max_iterations)
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - RDKit says no valid assignment for this charge (ValueError & co)
            continue
        if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
            continue
        if any(abs(a.GetFormalCharge()) > (0 if uncharged else 1) for a in mol.GetAtoms()):
            continue
        if _sp_bent(mol, positions):
            continue
        return charge, mol
    return None, None


def _sp_bent(mol, positions: np.ndarray) -> bool:
    """An atom given a triple bond or two double bonds (sp) that is not near-linear: geometry says no."""
    for atom in mol.GetAtoms():
        orders = [b.GetBondTypeAsDouble() for b in atom.GetBonds()]
        if atom.GetDegree() == 2 and (3.0 in orders or orders.count(2.0) == 2):
            k = atom.GetIdx()
            nb = [n.GetIdx() for n in atom.GetNeighbors()]
            if _angles(positions[k], positions[nb])[0] < 150.0:
                return True
    return False


def _with_hydrogens(mol: Molecule, extra: dict[int, int]):
    """Symbols, positions, bonds of ``mol`` with ``extra`` H added (placed 1 Å away from the neighbours)."""
    symbols, positions, bonds = list(mol.symbols), [p for p in mol.positions], list(mol.bonds)
    nbrs: dict[int, list[int]] = {}
    for a, b in mol.bonds:
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    for k, count in extra.items():
        away = np.zeros(3)
        for x in nbrs.get(k, []):
            v = mol.positions[k] - mol.positions[x]
            away += v / (np.linalg.norm(v) or 1.0)
        if np.linalg.norm(away) < 1e-6:
            away = np.array([1.0, 0.0, 0.0])
        away /= np.linalg.norm(away)
        for c in range(count):
            tilt = np.array([0.0, 0.3 * (c + 1), 0.2 * c])
            symbols.append("H")
            positions.append(mol.positions[k] + away + tilt)
            bonds.append((k, len(symbols) - 1))
    return symbols, np.array(positions), bonds


def _valence_candidates(mol: Molecule, base: dict[int, int]) -> list[int]:
    """N and O atoms that might carry H the geometry could not decide (most likely first)."""
    n = len(mol.symbols)
    degree = Counter()
    for a, b in mol.bonds:
        degree[a] += 1
        degree[b] += 1
    out = []
    for k in range(n):
        if k in base or mol.symbols[k] not in ("N", "O"):
            continue
        if mol.symbols[k] == "O" and degree[k] == 1:
            nb = next(b if a == k else a for a, b in mol.bonds if k in (a, b))
            length = float(np.linalg.norm(mol.positions[nb] - mol.positions[k]))
            if length >= O_CANDIDATE_MIN.get(mol.symbols[nb], 9.0):
                out.append((length - 1.3, k))
        elif mol.symbols[k] == "N" and degree[k] in (1, 2):
            out.append((0.0, k))
    return [k for _, k in sorted(out, reverse=True)]


def _search_hydrogens(mol: Molecule, base: dict[int, int], max_calls: int = 300,
                      uncharged: bool = False) -> dict[int, int] | None:
    """Fewest H on N/O (beyond ``base``) that give a neutral closed-shell molecule; None if not found.

    Options: a terminal N takes 0-3 H, a two-coordinate N 0-2, a terminal O 0-1. Assignments are
    tried by total number of added H, the sites with the longest (most single) bonds first; the
    molecule as a whole must be neutral (a zwitterion is).
    """
    candidates = _valence_candidates(mol, base)[:14]
    degree = Counter(x for bond in mol.bonds for x in bond)
    # a terminal N: up to NH3+, a two-coordinate N: up to R2NH2+, a terminal O: OH
    limits = [(3 if degree[k] == 1 else 2) if mol.symbols[k] == "N" else 1 for k in candidates]
    calls = 0

    def assignments(total: int, start: int):
        if total == 0:
            yield {}
            return
        for pos in range(start, len(candidates)):
            for take in range(min(limits[pos], total), 0, -1):
                for rest in assignments(total - take, pos + 1):
                    yield {candidates[pos]: take, **rest}

    for total in range(1, sum(limits) + 1):
        for added in assignments(total, 0):
            calls += 1
            if calls > max_calls or time.monotonic() > mol.deadline:
                return None
            extra = dict(base)
            for k, c in added.items():
                extra[k] = extra.get(k, 0) + c
            charge, _ = _closed_shell(*_with_hydrogens(mol, extra), charges=(0,), uncharged=uncharged)
            if charge is not None:
                return extra
    return None


def skeleton_key(mol: Molecule) -> str:
    """Canonical key of the bond graph (elements + connectivity), for caching per unique molecule."""
    from rdkit import Chem

    rw = _rdkit_mol(mol.symbols, mol.positions, mol.bonds)
    return Chem.MolToSmiles(rw.GetMol(), canonical=True, allHsExplicit=False) + "|" + mol.formula


#: skeleton key -> the charges that close the shell; bounded, per process
_CHARGE_CACHE: dict[str, list[int]] = {}


def possible_charges(mol: Molecule) -> list[int]:
    """Charges (of :data:`CHARGES`, in that order) for which RDKit finds closed-shell bond orders."""
    if mol.key in _CHARGE_CACHE:
        return _CHARGE_CACHE[mol.key]
    # parity: an odd-electron molecule can only close its shell at an odd charge, an even one at an even
    # charge; a neutral closed shell ends the search (a dianion of the same atoms is not a rival)
    odd = odd_electrons(mol)
    found = []
    for c in CHARGES:
        if (c % 2 == 1) != odd:
            continue
        if _closed_shell(mol.symbols, mol.positions, mol.bonds, charges=(c,))[0] is not None:
            found.append(c)
            if c == 0:
                break
    if len(_CHARGE_CACHE) > 20_000:
        _CHARGE_CACHE.clear()
    _CHARGE_CACHE[mol.key] = found
    return found


def identify(mol: Molecule, charge: int) -> Molecule:
    """SMILES, InChI, InChIKey of a closed-shell molecule at ``charge`` (stereo from its own coordinates)."""
    from rdkit import Chem

    found, rd = _closed_shell(mol.symbols, mol.positions, mol.bonds, charges=(charge,), embed_chiral=True)
    if rd is None:
        return mol
    mol.charge = int(found)
    mol.smiles = Chem.MolToSmiles(Chem.RemoveHs(rd))
    try:
        mol.inchi = Chem.MolToInchi(rd, options="-w") or None
        mol.inchikey = Chem.InchiToInchiKey(mol.inchi) if mol.inchi else None
    except Exception:  # noqa: BLE001 - InChI can refuse exotic valences
        mol.inchi = mol.inchikey = None
    return mol


def analyse_molecule(mol: Molecule, max_atoms: int = MAX_ATOMS, seconds: float = SEARCH_SECONDS) -> Molecule:
    """Missing H and the possible charges of one whole molecule (in place); identity comes after.

    The valence search stops after ``seconds`` (the carbon H found from geometry are reported anyway).
    """
    from rdkit import RDLogger

    mol.deadline = time.monotonic() + seconds
    RDLogger.DisableLog("rdApp.*")
    if mol.fragment:
        if mol.n_atoms == 1 and mol.symbols[0] in ISOLATED_H:  # CH4 / NH3 / H2O with no H in the file
            mol.h_needed = {mol.indices[0]: ISOLATED_H[mol.symbols[0]]}
        return mol
    if mol.n_atoms == 1:
        mol.error = ("a single atom sharing H with its neighbours (averaged or disordered H positions)"
                     if mol.loose_contacts else f"a single {mol.symbols[0]} atom")
        return mol
    if mol.polymeric:
        mol.error = "polymeric: bonded to its own periodic image (an infinite network, no molecular identity)"
        return mol
    if mol.n_atoms > max_atoms:
        mol.error = f"{mol.n_atoms} atoms > {max_atoms}: too large to identify"
        return mol
    mol.key = skeleton_key(mol)
    geometric = geometric_h_needed(mol)
    if not geometric:
        mol.charges_possible = possible_charges(mol)
        if mol.charges_possible:
            # a "C=O" as long as a C-OH: does the molecule close its shell with H there (a phenol read as a
            # quinone, croconic acid as C5O5)? Then those H are missing; if not, the bond is just long.
            found = _with_long_co(mol, {}, mol.charges_possible[0])
            if found is None:
                return mol
            mol.charges_possible = []
            mol.h_needed = {mol.indices[k]: c for k, c in found.items()}
            return mol
    if not geometric:
        found = _search_hydrogens(mol, {})
        if found is None:  # no H on N/O closes the shell: a radical (odd electrons) or exotic bonding
            mol.radical = odd_electrons(mol)
            mol.error = "no closed-shell bond orders for charges " + ", ".join(f"{c:+d}" for c in CHARGES)
            if mol.radical:
                identify_radical(mol)
            return mol
    else:
        found = None
        bases = carbon_alternatives(mol) if geometric == geometric_h_needed(mol) else [geometric]
        for n, base in enumerate(bases):
            if n and time.monotonic() > mol.deadline:
                break
            charge, _ = _closed_shell(*_with_hydrogens(mol, base), charges=(0,))
            found = base if charge is not None else _search_hydrogens(mol, base, max_calls=300 if n == 0 else 60)
            if found is not None:
                found = _with_long_co(mol, found) or found
                break
        if found is None:  # carbon H are certain from geometry; report them even if the valence stays open
            found = geometric
            mol.error = "valence not satisfied even with the missing H added"
    mol.h_needed = {mol.indices[k]: c for k, c in found.items()}
    return mol


def _long_double_bonds_to_o(mol: Molecule, charge: int, extra: dict[int, int] | None = None) -> dict[int, int]:
    """Terminal O given a C=O double bond longer than any carbonyl (>= 1.29 Å): maybe an OH missing its H.

    ``extra``: H already added (the bond orders are those of the molecule completed with them).
    """
    _, rd = _closed_shell(*_with_hydrogens(mol, extra or {}), charges=(charge,))
    out = {}
    if rd is None:
        return out
    for bond in rd.GetBonds():
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if bond.GetBondTypeAsDouble() != 2.0 or {a.GetSymbol(), b.GetSymbol()} != {"C", "O"}:
            continue
        o = a if a.GetSymbol() == "O" else b
        length = float(np.linalg.norm(mol.positions[a.GetIdx()] - mol.positions[b.GetIdx()]))
        if o.GetDegree() == 1 and length >= O_SINGLE_MIN["C"] + 0.005:
            out[o.GetIdx()] = 1
    return out


def _with_long_co(mol: Molecule, found: dict[int, int], charge: int = 0) -> dict[int, int] | None:
    """``found`` plus the H of "C=O" bonds as long as C-OH, if the molecule closes its shell with them.

    A phenol whose H are gone reads as a quinone (paracetamol as NAPQI), croconic acid as C5O5: both
    valid closed shells, told apart from the real thing only by their C-O lengths. The completed molecule
    must be an ordinary one (no formal charges): a long ester C=O of a loose electron-diffraction model
    is not turned into an oxonium. None: nothing to add.
    """
    long_co = _long_double_bonds_to_o(mol, charge, found)
    if not long_co:
        return None
    base = dict(found)
    for k, c in long_co.items():
        base[k] = base.get(k, 0) + c
    closed, _ = _closed_shell(*_with_hydrogens(mol, base), charges=(0,), uncharged=True)
    return base if closed is not None else _search_hydrogens(mol, base, uncharged=True)


def odd_electrons(mol: Molecule) -> bool:
    """The neutral molecule has an odd number of electrons: no closed shell can exist without a charge."""
    from ase.data import atomic_numbers

    return sum(atomic_numbers[s] for s in mol.symbols) % 2 == 1


def identify_radical(mol: Molecule) -> Molecule:
    """A neutral open-shell molecule (e.g. a nitroxide): radical electrons placed by RDKit, charge 0."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    rd = _rdkit_mol(mol.symbols, mol.positions, mol.bonds)
    mol.radical, mol.charge = True, 0
    try:
        rdDetermineBonds.DetermineBondOrders(rd, charge=0, allowChargedFragments=False, maxIterations=MAX_ITERATIONS)
        Chem.SanitizeMol(rd)
        mol.smiles = Chem.MolToSmiles(Chem.RemoveHs(rd))
        mol.inchi = Chem.MolToInchi(rd, options="-w") or None
        mol.inchikey = Chem.InchiToInchiKey(mol.inchi) if mol.inchi else None
    except Exception:  # noqa: BLE001 - identity unknown, the radical stays flagged
        pass
    return mol


def balance_charges(molecules: list[Molecule], max_combinations: int = 4096) -> dict[str, int]:
    """Charge per molecule kind (skeleton key) with a neutral cell: fewest charges first, preferred order.

    A molecule that closes its shell at several charges (an odd-electron one at +1 and -1) takes the
    one that makes the cell neutral with its partners (a salt is neutral per cell, not per molecule).
    Without a neutral combination every kind keeps its first choice.
    """
    from itertools import product

    kinds: dict[str, list[int]] = {}
    counts: Counter = Counter()
    for m in molecules:
        if m.charges_possible:
            kinds[m.key] = m.charges_possible
            counts[m.key] += 1
    keys = list(kinds)
    chosen = {k: kinds[k][0] for k in keys}
    if sum(chosen[k] * counts[k] for k in keys) == 0 or not keys:
        return chosen
    if math.prod(len(kinds[k]) for k in keys) > max_combinations:
        return chosen
    best = None
    for combo in product(*(kinds[k] for k in keys)):
        if sum(c * counts[k] for c, k in zip(combo, keys)) != 0:
            continue
        cost = (sum(abs(c) * counts[k] for c, k in zip(combo, keys)),
                sum(kinds[k].index(c) for c, k in zip(combo, keys)))
        if best is None or cost < best[0]:
            best = (cost, combo)
    if best is not None:
        chosen = dict(zip(keys, best[1]))
    return chosen


def analyse_crystal(atoms: Atoms, max_atoms: int = MAX_ATOMS, mult: float = BOND_MULT) -> CrystalChemistry:
    """Every molecule of the cell, whole, identified, with the H each atom's valence still needs."""
    molecules = find_molecules(atoms, mult)
    for mol in molecules:
        analyse_molecule(mol, max_atoms)
    charges = balance_charges(molecules)
    counts = Counter(m.key for m in molecules if m.key in charges)
    if sum(charges[k] * c for k, c in counts.items()) != 0:
        # no neutral cell from closed shells: odd-electron molecules left charged alone are radicals
        # (a nitroxide is not an oxoammonium cation without an anion beside it)
        radical_kinds = {m.key for m in molecules
                         if m.key in charges and odd_electrons(m) and 0 not in m.charges_possible}
        for mol in molecules:
            if mol.key in radical_kinds:
                charges.pop(mol.key, None)
                mol.charges_possible = []
    same: dict[str, Molecule] = {}  # key -> an identified molecule without stereo: its copies are the same
    for mol in molecules:
        if mol.key in charges:
            twin = same.get(mol.key)
            if twin is not None:
                mol.charge, mol.smiles, mol.inchi, mol.inchikey = twin.charge, twin.smiles, twin.inchi, twin.inchikey
                continue
            identify(mol, charges[mol.key])
            if mol.smiles and not any(c in mol.smiles for c in "@/\\"):
                same[mol.key] = mol
        elif mol.charges_possible == [] and odd_electrons(mol) and not mol.h_needed and not mol.error \
                and mol.key and not mol.fragment:
            identify_radical(mol)
    return CrystalChemistry(molecules=molecules, n_atoms=len(atoms))


def n_symmetry_operations(tags: dict[str, Any], spacegroup: Any = None) -> int | None:
    """Symmetry operations of the conventional cell (centring included) from the CIF, or the space group."""
    for name in ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz"):
        ops = tags.get(name)
        if isinstance(ops, list) and ops:
            return len(ops)
    if spacegroup is not None:
        try:
            from ase.spacegroup import Spacegroup

            return len(Spacegroup(spacegroup).get_symop())
        except Exception:  # noqa: BLE001 - an unknown symbol: Z' not derivable
            return None
    return None
