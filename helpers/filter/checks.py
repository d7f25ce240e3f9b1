"""The filter's checks: one small named function per reason a crystallographer would reject an entry.

Each check looks at one raw entry (:class:`Entry`) and returns ``None`` (passes, or does not apply)
or a :class:`Finding` with a human-readable reason and the details needed to show the problem
(indices of too-close atoms, the missing-H count ...). The order of :data:`CHECKS` is data: the
filter runs every check (a structure failing several records all of them) and the first failure
becomes the row's headline ``reason``. Flag checks mark measurement conditions without rejecting.

Geometry comes from the raw ASE Atoms; when ASE could not read the file but pymatgen can, the
remaining checks run on pymatgen's structure (``details["atoms_source"] == "pymatgen"``), so an
unreadable entry still gets a full diagnosis.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from ase import Atoms

from helpers.fetch.cif import cif_number
from helpers.fetch.formula import parse_formula
from helpers.process.guard import TimeLimitExceeded
from helpers.vocabulary import STUDY_ELEMENTS, STUDY_MIN_DISTANCE, density_g_cm3

#: atoms closer than this (Å) are copies of one site, not bonded partners: no molecules are read from them
OVERLAP = 0.5


@dataclass(frozen=True)
class Thresholds:
    """Every number and switch of the filter; ``run_filter(**thresholds)`` overrides them."""

    min_distance: float = STUDY_MIN_DISTANCE  # Å, any two atoms under PBC (the study's criterion)
    elements: tuple[str, ...] | None = STUDY_ELEMENTS  # None: any element
    occupancy_tolerance: float = 0.01  # a site with occupancy < 1 - this is partial
    reject_disorder_groups: bool = True  # sites in a _atom_site_disorder_group other than '.'
    require_formula: bool = False  # True: no usable _chemical_formula_sum is a rejection (formula_unknown)
    structural_hydrogens: bool = True  # missing H from the atoms' valences (helpers.filter.molecules), formula or not
    reader: str = "ase"  # "pymatgen": an entry ASE cannot read is built from pymatgen's parse instead
    group_duplicates: bool = True  # count clean rows sharing a compound_key (n_same_compound)
    max_molecule_atoms: int = 250  # larger molecules are not identified (RDKit), recorded
    h_missing_tolerance: float = 0.25  # H per formula unit that may be missing (rounding)
    composition_atol: float = 0.25  # atoms per formula unit
    composition_rtol: float = 0.02
    volume_rtol: float = 0.01  # |V(a,b,c,angles) - _cell_volume| / _cell_volume
    density_range: tuple[float, float] = (0.5, 2.5)  # g/cm^3, plausible for CHNO molecular crystals
    high_pressure_kpa: float = 1000.0  # above this the measurement is flagged high-pressure
    flags_reject: bool = False  # treat flags (high pressure, no temperature) as rejections
    max_pairs: int = 25  # close pairs stored per structure (the count is always complete)
    bond_flag_tolerance: float = 0.10  # Å outside the range of a bond's perceived order: flagged (bond_lengths)
    bond_reject_tolerance: float = 0.20  # Å outside that range: rejected (docs/filter.md gives the evidence)
    check_time_limit: float | None = 60.0  # CPU s per check and entry (helpers.process.guard); None: unlimited

    @classmethod
    def make(cls, **overrides: Any) -> Thresholds:
        """Thresholds with overrides; unknown names raise instead of being silently ignored."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown filter threshold(s): {sorted(unknown)}; known: {sorted(known)}")
        if overrides.get("elements") is not None:
            overrides["elements"] = tuple(overrides["elements"])
        for name in ("require_formula", "structural_hydrogens", "group_duplicates", "reject_disorder_groups",
                     "flags_reject"):
            if name in overrides:
                overrides[name] = as_bool(overrides[name], name)
        if "reader" in overrides:
            reader = str(overrides["reader"]).strip().lower()
            if reader not in READERS:
                raise ValueError(f"reader must be one of {READERS}, not {overrides['reader']!r}")
            overrides["reader"] = reader
        return cls(**overrides)


READERS = ("ase", "pymatgen")


def as_bool(value: Any, name: str = "value") -> bool:
    """A switch from a notebook/papermill/CLI value: True/False, 1/0, 'True'/'false'/'yes'/'no'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", "none", ""):
        return False
    raise ValueError(f"{name} must be True or False, not {value!r}")


@dataclass
class Finding:
    """What one check found (a reason to reject, or a flag): its name, a sentence for people, and data
    for plots and viewers."""

    check: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Entry:
    """One raw database row, with lazily computed views the checks share (parsed once)."""

    structure_id: str
    atoms: Atoms
    kvp: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_row(cls, row) -> Entry:
        return cls(structure_id=cls.structure_id_of(row), atoms=row.toatoms(),
                   kvp=dict(row.key_value_pairs), data=dict(row.data))

    @staticmethod
    def structure_id_of(row) -> str:
        """A raw row's ``structure_id`` (``row-<id>`` for rows written without one, e.g. by another program)."""
        return str(row.get("structure_id") or f"row-{row.id}")

    @property
    def cif(self) -> str:
        return self.data.get("cif") or ""

    @property
    def readable(self) -> bool:
        return bool(self.kvp.get("readable", len(self.atoms) > 0))

    @cached_property
    def cif_tags(self) -> dict[str, Any]:
        """The entry's CIF tags (lower-case names -> value or list of loop values).

        Taken from pymatgen's tokenizer (fast, and it runs anyway); ASE's when pymatgen cannot
        tokenize the file.
        """
        tags = self.pymatgen["tags"]
        if tags is not None:
            return tags
        from helpers.fetch.cif import cif_blocks

        try:
            blocks = [b for b in cif_blocks(self.cif) if b.has_structure()]
        except TimeLimitExceeded:
            raise  # the check that ran out of time says so; not a file without tags
        except Exception:  # noqa: BLE001 - a broken file is diagnosed by other checks
            return {}
        return dict(blocks[0].items()) if blocks else {}

    def tag(self, name: str) -> Any:
        return self.cif_tags.get(name.lower())

    @cached_property
    def pymatgen(self) -> dict[str, Any]:
        """pymatgen's reading of the CIF: structure (conventional cell) or the error, plus warnings.

        A reading stopped by a check's CPU-time limit is not its result: the check that ran out of time says
        so in its own reason, and each later check that needs the reading says, in its own reason, that it
        did not finish there (not tried again: one pathological file costs one limit, not one per check).
        """
        from pymatgen.io.cif import CifParser

        if "pymatgen_ran_out" in self._cache:
            raise TimeLimitExceeded(f"pymatgen's reading of this CIF ran out of time earlier "
                                    f"({self._cache['pymatgen_ran_out']}); not tried again")

        out: dict[str, Any] = {"structure": None, "error": None, "warnings": [], "check": None, "tags": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                parser = CifParser.from_str(self.cif)
                blocks = list(parser.as_dict().values())
                block = next((b for b in blocks if "_atom_site_fract_x" in b), blocks[0] if blocks else None)
                if block is not None:
                    out["tags"] = {k.lower(): v for k, v in block.items()}
                structures = parser.parse_structures(primitive=False)
                if not structures:
                    raise ValueError("no structures parsed")
                out["structure"] = structures[0]
                out["check"] = parser.check(structures[0])
            except TimeLimitExceeded as exc:
                self._cache["pymatgen_ran_out"] = str(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - the failure is the finding
                out["error"] = f"{type(exc).__name__}: {exc}"
        messages = []
        for w in caught:
            text = str(w.message).strip()
            if "deprecated" not in text and text not in messages:
                messages.append(text)
        out["warnings"] = messages[:10]
        return out

    @cached_property
    def geometry(self) -> tuple[Atoms | None, str | None]:
        """Atoms the geometric checks use and where they came from ('ase' or 'pymatgen')."""
        if self.readable and len(self.atoms):
            return self.atoms, "ase"
        structure = self.pymatgen["structure"]
        if structure is None:
            return None, None
        try:
            return pymatgen_atoms(structure), "pymatgen"
        except Exception:  # noqa: BLE001 - e.g. a dummy species ('Zz'): no usable geometry, ASE failed too
            return None, None

    @cached_property
    def site_kinds(self) -> np.ndarray | None:
        """Asymmetric-unit site index of every raw atom (ASE's ``spacegroup_kinds``), or None.

        The raw database keeps it in ``data["spacegroup_kinds"]``; rows written before it did are
        rebuilt by re-reading the CIF, used only when the positions agree with the stored atoms.
        """
        if "spacegroup_kinds" in self.data:
            return np.asarray(self.data["spacegroup_kinds"], dtype=int)
        if not (self.readable and len(self.atoms) and self.cif):
            return None
        from helpers.fetch.cif import read_entries

        for entry in read_entries(self.cif):
            atoms = entry.atoms
            if (atoms is not None and len(atoms) == len(self.atoms)
                    and "spacegroup_kinds" in atoms.arrays
                    and np.allclose(atoms.positions, self.atoms.positions, atol=1e-6)):
                return np.asarray(atoms.arrays["spacegroup_kinds"], dtype=int)
        return None

    def chemistry(self, t: Thresholds):
        """The molecules of the geometry (:func:`helpers.filter.molecules.analyse_crystal`), computed once.

        None when there is nothing to read molecules from: no geometry, a broken cell, a disordered
        structure (alternative positions overlap and bond to each other; ``partial_occupancy`` rejects it)
        or atoms on top of each other (< ``OVERLAP`` Å: unmerged copies; ``close_contact`` rejects it).
        """
        if "chemistry" not in self._cache:
            self._cache["chemistry"] = None
            atoms, _ = self.geometry
            usable = (atoms is not None and len(atoms) >= 1 and finite_geometry(atoms) and atoms.cell.rank == 3
                      and cell_widths(atoms).min() >= 1.0 and check_partial_occupancy(self, t) is None
                      and not close_pairs(atoms, OVERLAP))
            if usable:
                from helpers.filter.molecules import analyse_crystal

                self._cache["chemistry"] = analyse_crystal(atoms, max_atoms=t.max_molecule_atoms)
        return self._cache["chemistry"]

    @cached_property
    def site_labels(self) -> list[str] | None:
        labels = self.tag("_atom_site_label")
        return [str(x) for x in labels] if isinstance(labels, list) else None

    def label(self, index: int) -> str:
        """Site label of atom ``index`` (e.g. ``'H12'``) when known, else its symbol and index."""
        atoms, source = self.geometry
        symbol = atoms[index].symbol if atoms is not None else "?"
        kinds = self.site_kinds if source == "ase" else None
        if kinds is not None and self.site_labels and kinds[index] < len(self.site_labels):
            return self.site_labels[kinds[index]]
        return f"{symbol}{index}"

    @cached_property
    def occupancy(self) -> dict[str, dict[str, float]]:
        """ASE's ``info['occupancy']``: site index (str) -> {symbol: occupancy}."""
        occ = self.data.get("occupancy") or self.atoms.info.get("occupancy") or {}
        return {str(k): {str(s): float(o) for s, o in v.items()} for k, v in occ.items()}

    @cached_property
    def atom_weights(self) -> np.ndarray | None:
        """Occupancy of each geometry atom (1 where unknown), for occupancy-weighted counts."""
        atoms, source = self.geometry
        if atoms is None:
            return None
        partial = any(o < 1.0 for occ in self.occupancy.values() for o in occ.values())
        if source == "pymatgen" or not partial:
            return np.ones(len(atoms))
        kinds = self.site_kinds
        if kinds is None:
            return np.ones(len(atoms))
        symbols = atoms.get_chemical_symbols()
        return np.array([self.occupancy.get(str(k), {}).get(s, 1.0) for k, s in zip(kinds, symbols)])

    @cached_property
    def cell_counts(self) -> dict[str, float] | None:
        """Occupancy-weighted element counts in the cell."""
        atoms, source = self.geometry
        if atoms is None:
            return None
        if source == "pymatgen":
            comp = self.pymatgen["structure"].composition
            return {str(el): float(n) for el, n in comp.get_el_amt_dict().items()}
        counts: dict[str, float] = {}
        for symbol, weight in zip(atoms.get_chemical_symbols(), self.atom_weights):
            counts[symbol] = counts.get(symbol, 0.0) + float(weight)
        return counts

    @cached_property
    def formula(self) -> dict[str, float] | None:
        """``_chemical_formula_sum`` as element counts, None when absent, '?' or unparseable."""
        text = self.kvp.get("cif_formula")
        if not text:
            return None
        try:
            return parse_formula(str(text))
        except ValueError:
            return None

    @cached_property
    def z_choice(self) -> dict[str, Any]:
        """Formula units per cell: ``_cell_formula_units_Z``, or from the heavy atoms when absent.

        A crystallographer (and checkCIF) reads ``formula x Z = cell contents``, for Z' > 1 and
        solvates alike (the formula sum then covers every moiety). A CIF Z that the heavy atoms
        contradict is not "corrected": that disagreement is the composition check's finding.
        ``z_fit`` (heavy atoms in the cell / heavy atoms in the formula) is reported alongside.
        """
        z_cif = self.kvp.get("z_formula")
        z_cif = float(z_cif) if z_cif else None
        counts, formula = self.cell_counts, self.formula
        out: dict[str, Any] = {"z": z_cif, "z_cif": z_cif, "z_fit": None, "source": "CIF Z"}
        if counts is None or formula is None:
            return out
        heavy_formula = sum(n for el, n in formula.items() if el != "H")
        heavy_cell = sum(n for el, n in counts.items() if el != "H")
        if heavy_formula > 0 and heavy_cell > 0:
            out["z_fit"] = round(heavy_cell / heavy_formula, 3)
        if z_cif is None and out["z_fit"]:
            out.update(z=out["z_fit"], source="Z from heavy atoms, none in CIF")
        return out


def pymatgen_atoms(structure) -> Atoms:
    """ASE Atoms from a pymatgen Structure; a disordered site becomes its majority species."""
    from pymatgen.io.ase import AseAtomsAdaptor

    if not structure.is_ordered:
        structure = structure.copy()
        for i, site in enumerate(structure):
            species = max(site.species.items(), key=lambda kv: kv[1])[0]
            structure.replace(i, species, coords=site.frac_coords, coords_are_cartesian=False)
    atoms = AseAtomsAdaptor.get_atoms(structure, msonable=False)
    return Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)


# --------------------------------------------------------------------------------------------
# checks that reject


def check_ase_readable(entry: Entry, t: Thresholds) -> Finding | None:
    """The study's criterion 1: ``ase.io.read`` fails."""
    if entry.readable:
        return None
    if t.reader == "pymatgen" and entry.geometry[1] == "pymatgen":
        return None  # the fallback reader built the atoms (the row records reader="pymatgen")
    error = entry.kvp.get("read_error") or "unknown error"
    reason = f"ase.io.read failed: {error}"
    if "SpacegroupNotFoundError" in str(error):
        reason += " (ASE's space-group table does not know this symbol/setting)"
    elif "SpacegroupValueError" in str(error):
        reason += " (no space-group symbol or number ASE can use)"
    return Finding("ase_unreadable", reason, {"error": str(error),
                                                "pymatgen_parses": entry.pymatgen["error"] is None})


def check_pymatgen_parse(entry: Entry, t: Thresholds) -> Finding | None:
    """The study's criterion 2: pymatgen cannot place the atoms (conventional cell, primitive=False)."""
    info = entry.pymatgen
    if info["error"] is None:
        return None
    return Finding("pymatgen_unparseable",
                     f"pymatgen CifParser.parse_structures(primitive=False) failed: {info['error']}",
                     {"error": info["error"], "warnings": info["warnings"]})


def finite_geometry(atoms: Atoms) -> bool:
    """Cell and positions are finite numbers (geometric checks on NaN/inf crash or mislead)."""
    return bool(np.isfinite(atoms.cell.array).all() and np.isfinite(atoms.positions).all())


def check_incomplete(entry: Entry, t: Thresholds) -> Finding | None:
    """Nonsensical/incomplete: no atoms, a single atom, or no three-dimensional cell."""
    atoms, source = entry.geometry
    if atoms is None:
        return None
    n = len(atoms)
    if not finite_geometry(atoms):
        return Finding("incomplete_structure", "incomplete structure: cell or atom positions are not finite "
                         "numbers (NaN/inf in the CIF)", {"n_atoms": n, "atoms_source": source})
    volume = float(abs(np.linalg.det(atoms.cell.array))) if atoms.cell.rank == 3 else 0.0
    problems = []
    if n < 2:
        problems.append(f"{n} atom{'s' if n != 1 else ''} in the cell")
    if volume < 1.0:
        problems.append(f"no 3D cell (volume {volume:.3g} Å^3)")
    details: dict[str, Any] = {"n_atoms": n, "volume": volume, "atoms_source": source}
    chemistry = entry.chemistry(t) if not problems else None
    fragments = chemistry.fragments if chemistry is not None else []
    if fragments:
        kinds = Counter(m.fragment for m in fragments)
        problems.append(f"{len(fragments)} fragment(s) that are not molecules: "
                        + "; ".join(f"{k} x{c}" for k, c in kinds.items()))
        details["fragments"] = [{"formula": m.formula, "reason": m.fragment, "atoms": m.indices,
                                 "labels": [entry.label(i) for i in m.indices]} for m in fragments[:50]]
        details["atoms"] = sorted(i for m in fragments for i in m.indices)[:200]
    if not problems:
        return None
    return Finding("incomplete_structure", "incomplete structure: " + "; ".join(problems), details)


def check_elements(entry: Entry, t: Thresholds) -> Finding | None:
    """Elements outside the requested set (atoms and the formula in the file)."""
    if t.elements is None:
        return None
    allowed = set(t.elements)
    atoms, _ = entry.geometry
    found = set(atoms.get_chemical_symbols()) if atoms is not None else set()
    in_formula = set(entry.formula or {})
    outside = sorted((found | in_formula) - allowed)
    if not outside:
        return None
    return Finding("elements", f"elements outside {','.join(sorted(allowed))}: {','.join(outside)}",
                     {"outside": outside, "in_atoms": sorted(found - allowed),
                      "in_formula": sorted(in_formula - allowed)})


def check_partial_occupancy(entry: Entry, t: Thresholds) -> Finding | None:
    """Disorder: sites with occupancy < 1 (ASE keeps every alternative position) or disorder groups."""
    partial = {k: occ for k, occ in entry.occupancy.items()
               if any(o < 1.0 - t.occupancy_tolerance for o in occ.values())}
    groups = entry.tag("_atom_site_disorder_group")
    grouped = []
    if t.reject_disorder_groups and isinstance(groups, list):
        grouped = [i for i, g in enumerate(groups) if str(g).strip() not in (".", "?", "", "0")]
    structure = entry.pymatgen["structure"]
    if not partial and not entry.occupancy and structure is not None and not structure.is_ordered:
        partial = {str(i): {str(sp): float(o) for sp, o in site.species.items()}
                   for i, site in enumerate(structure) if not site.is_ordered}
    if not partial and not grouped:
        return None
    labels = entry.site_labels or []
    sites = [{"site": int(k), "label": labels[int(k)] if int(k) < len(labels) else None, "occupancy": occ}
             for k, occ in partial.items() if str(k).isdigit()]
    atoms_idx: list[int] = []
    kinds = entry.site_kinds
    wanted = {int(k) for k in partial if str(k).isdigit()} | set(grouped)
    if kinds is not None:
        atoms_idx = [int(i) for i in np.flatnonzero(np.isin(kinds, sorted(wanted)))]
    parts = []
    if partial:
        lowest = min(o for occ in partial.values() for o in occ.values())
        parts.append(f"{len(partial)} site(s) with partial occupancy (lowest {lowest:.2f})")
    if grouped:
        parts.append(f"{len(grouped)} site(s) in disorder groups")
    return Finding("partial_occupancy", "disordered: " + "; ".join(parts),
                     {"n_sites": len(partial), "sites": sites[:50],
                      "disorder_group_sites": [labels[i] if i < len(labels) else i for i in grouped][:50],
                      "atoms": atoms_idx, "n_atoms": len(atoms_idx)})


def close_pairs(atoms: Atoms, cutoff: float) -> list[tuple[int, int, float, tuple[int, int, int]]]:
    """Unique atom pairs closer than ``cutoff`` under PBC: (i, j, distance, cell shift of j)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0 or cutoff <= 0:
        return []
    i, j, d, shifts = neighbor_list("ijdS", atoms, cutoff, self_interaction=False)
    pairs = []
    for a, b, dist, s in zip(i, j, d, shifts):
        s = tuple(int(x) for x in s)
        if a < b or (a == b and s > (0, 0, 0)):
            pairs.append((int(a), int(b), float(dist), s))
    pairs.sort(key=lambda p: p[2])
    return pairs


def cell_widths(atoms: Atoms) -> np.ndarray:
    """Distances between opposite faces of the cell (Å); the shortest bounds any periodic image."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.linalg.norm(atoms.cell.reciprocal(), axis=1)


def check_close_contacts(entry: Entry, t: Thresholds) -> Finding | None:
    """The study's criterion 3: two atoms closer than ``min_distance`` (misplaced/duplicated H, disorder)."""
    atoms, source = entry.geometry
    if atoms is None or len(atoms) < 1 or not finite_geometry(atoms) or atoms.cell.rank < 3:
        return None
    widths = cell_widths(atoms)
    if widths.min() < t.min_distance:
        # every atom is closer than the cutoff to its own periodic image; a neighbour list over such
        # a cell would enumerate (cutoff / width)^3 images and can run for hours (fuzzed CIFs)
        return Finding("close_contact",
                         f"cell width {widths.min():.3g} Å is shorter than {t.min_distance:.2f} Å: every atom "
                         "touches its own periodic image", {"cell_widths": widths.tolist(),
                                                            "cutoff": t.min_distance, "atoms_source": source})
    pairs = close_pairs(atoms, t.min_distance)
    if not pairs:
        return None
    symbols = atoms.get_chemical_symbols()
    kinds = Counter("-".join(sorted((symbols[i], symbols[j]))) for i, j, _, _ in pairs)
    shown = [{"i": i, "j": j, "distance": round(d, 4), "shift": list(s),
              "symbols": [symbols[i], symbols[j]], "labels": [entry.label(i), entry.label(j)]}
             for i, j, d, s in pairs[: t.max_pairs]]
    first = shown[0]
    reason = (f"{len(pairs)} atom pair(s) closer than {t.min_distance:.2f} Å; shortest "
              f"{first['labels'][0]}–{first['labels'][1]} {first['distance']:.3f} Å")
    overlapping = sum(d < 0.1 for _, _, d, _ in pairs)
    if overlapping:
        reason += (f"; {overlapping} pair(s) under 0.1 Å (copies of one site, e.g. on a special position, "
                   "not merged)")
    if source == "pymatgen":
        reason += " (positions from pymatgen)"
    return Finding("close_contact", reason,
                     {"n_pairs": len(pairs), "min_distance": first["distance"], "pairs": shown,
                      "pair_kinds": dict(kinds), "n_overlapping": overlapping, "cutoff": t.min_distance,
                      "atoms_source": source})


def check_formula_known(entry: Entry, t: Thresholds) -> Finding | None:
    """No usable ``_chemical_formula_sum`` (absent or '?'): the composition cannot be verified."""
    if not t.require_formula or entry.formula is not None:
        return None
    text = entry.kvp.get("cif_formula")
    raw = entry.tag("_chemical_formula_sum")
    shown = text if text is not None else raw
    reason = ("no _chemical_formula_sum in the file" if shown is None
              else f"_chemical_formula_sum {str(shown)!r} cannot be read as a formula")
    return Finding("formula_unknown", reason + ": composition and hydrogen count cannot be verified",
                     {"formula": None if shown is None else str(shown)})


def _per_fu(entry: Entry) -> tuple[dict[str, float], dict[str, float], dict[str, Any]] | None:
    counts, formula, z = entry.cell_counts, entry.formula, entry.z_choice
    if counts is None or formula is None or not z["z"]:
        return None
    found = {el: n / z["z"] for el, n in counts.items()}
    return found, formula, z


def _formula_hydrogens(entry: Entry, t: Thresholds) -> dict[str, Any] | None:
    """H per formula unit in the cell (H / Z) vs ``_chemical_formula_sum``; None when not applicable."""
    per_fu = _per_fu(entry)
    if per_fu is None:
        return None
    found, formula, z = per_fu
    expected, have = formula.get("H", 0.0), found.get("H", 0.0)
    missing = expected - have
    _, source = entry.geometry
    return {"missing": missing > t.h_missing_tolerance,
            "h_expected_per_fu": expected, "h_found_per_fu": round(have, 3),
            "h_missing_per_fu": round(missing, 3), "h_missing_in_cell": round(missing * z["z"], 2),
            "z": z["z"], "z_source": z["source"], "atoms_source": source,
            "pymatgen_check": entry.pymatgen["check"]}


def _structural_hydrogens(entry: Entry, t: Thresholds) -> dict[str, Any] | None:
    """Missing H from the atoms alone (helpers.filter.molecules); None when not applicable (no usable geometry)."""
    if not t.structural_hydrogens:
        return None
    chemistry = entry.chemistry(t)
    if chemistry is None:
        return None
    needed = chemistry.h_needed
    net = chemistry.net_charge
    protons = -net if net is not None and net < 0 else 0  # anions without cations: their H+ are missing
    atoms = [{"i": i, "label": entry.label(i), "h_needed": c} for i, c in sorted(needed.items())]
    molecules = sorted({m.formula for m in chemistry.molecules if m.h_needed})
    return {"missing": bool(needed) or protons > 0, "h_missing_in_cell": int(sum(needed.values()) + protons),
            "h_missing_on_atoms": int(sum(needed.values())), "protons_missing": int(protons),
            "net_charge": net, "n_atoms": len(needed), "atoms": atoms[:200], "molecules": molecules[:20],
            "radicals": sorted({m.formula for m in chemistry.molecules if m.radical})}


def hydrogen_findings(entry: Entry, t: Thresholds) -> dict[str, Any]:
    """Both hydrogen checks, computed once per entry: ``formula`` and ``structure`` (None: not applicable)."""
    if "hydrogens" not in entry._cache:
        entry._cache["hydrogens"] = {"formula": _formula_hydrogens(entry, t),
                                     "structure": _structural_hydrogens(entry, t)}
    return entry._cache["hydrogens"]


def check_hydrogens(entry: Entry, t: Thresholds) -> Finding | None:
    """Hydrogens missing: atoms whose valence needs H (no formula needed), or fewer H than the formula says."""
    found = hydrogen_findings(entry, t)
    formula, structure = found["formula"], found["structure"]
    by = [name for name, f in (("structure", structure), ("formula", formula)) if f is not None and f["missing"]]
    if not by:
        return None
    details: dict[str, Any] = {}
    parts = []
    if structure is not None and structure["missing"]:
        shown = ", ".join(f"{a['label']} needs {a['h_needed']}" for a in structure["atoms"][:6])
        text = f"{structure['h_missing_on_atoms']} H missing in the cell on {structure['n_atoms']} atoms"
        if shown:
            text += f" ({shown}{', ...' if structure['n_atoms'] > 6 else ''})"
        if structure["protons_missing"]:
            text += (f"; the molecules add up to a net charge of {structure['net_charge']:+d} per cell: "
                     f"{structure['protons_missing']} H+ missing")
        parts.append(text)
        details.update(atoms=[a["i"] for a in structure["atoms"]], h_needed=structure["atoms"],
                       h_missing_structure=structure["h_missing_in_cell"])
    if formula is not None and formula["missing"]:
        have, expected = formula["h_found_per_fu"], formula["h_expected_per_fu"]
        what = "no hydrogen atoms at all" if have == 0 else f"{have:.2f} H per formula unit"
        parts.append(f"{what}, formula {entry.kvp.get('cif_formula')!r} has {expected:g} (Z={formula['z']:g}, "
                     f"{formula['z_source']}); {formula['h_missing_in_cell']:g} H missing in the cell")
    if formula is not None:
        details.update({k: v for k, v in formula.items() if k != "missing"})
    details.update(by=by, structure=structure, formula_check=None if formula is None else formula["missing"])
    if formula is not None and structure is not None and formula["missing"] != structure["missing"]:
        details["disagreement"] = (f"the structure says {'H missing' if structure['missing'] else 'complete'}, "
                                   f"the formula says {'H missing' if formula['missing'] else 'complete'}")
    _, source = entry.geometry
    details["atoms_source"] = source
    return Finding("hydrogen_missing", "hydrogens missing: " + "; ".join(parts), details)


def check_composition(entry: Entry, t: Thresholds) -> Finding | None:
    """Cell contents / Z disagree with ``_chemical_formula_sum`` (other than missing H)."""
    per_fu = _per_fu(entry)
    if per_fu is None:
        return None
    found, formula, z = per_fu
    off = {}
    for el in sorted(set(found) | set(formula)):
        want, have = formula.get(el, 0.0), found.get(el, 0.0)
        if el == "H" and have < want:
            continue  # missing H is the hydrogen check's finding
        if abs(have - want) > t.composition_atol + t.composition_rtol * want:
            off[el] = {"formula": want, "found": round(have, 3)}
    if not off:
        return None
    text = ", ".join(f"{el} {v['found']:g} vs {v['formula']:g}" for el, v in off.items())
    return Finding("composition_mismatch",
                     f"cell contents per formula unit (Z={z['z']:g}, {z['source']}) disagree with "
                     f"{entry.kvp.get('cif_formula')!r}: {text}",
                     {"elements": off, "z": z["z"], "z_cif": z["z_cif"], "z_fit": z["z_fit"],
                      "pymatgen_check": entry.pymatgen["check"]})


def check_cell_volume(entry: Entry, t: Thresholds) -> Finding | None:
    """The cell from a, b, c, α, β, γ disagrees with the reported ``_cell_volume``."""
    atoms, source = entry.geometry
    reported = cif_number(entry.tag("_cell_volume"))
    if atoms is None or not finite_geometry(atoms) or atoms.cell.rank < 3 or not reported:
        return None
    volume = float(atoms.cell.volume)
    rel = (volume - reported) / reported
    if abs(rel) <= t.volume_rtol:
        return None
    return Finding("cell_volume_mismatch",
                     f"cell volume from the cell parameters {volume:.1f} Å^3 vs _cell_volume "
                     f"{reported:.1f} Å^3 ({100 * rel:+.1f} %)",
                     {"volume": volume, "reported": reported, "relative": rel, "atoms_source": source})


def check_density(entry: Entry, t: Thresholds) -> Finding | None:
    """Density outside the range of molecular crystals (missing/duplicated atoms, wrong cell)."""
    atoms, source = entry.geometry
    if atoms is None or len(atoms) < 2 or not finite_geometry(atoms) or atoms.cell.rank < 3 \
            or atoms.cell.volume < 1.0:
        return None
    weights = entry.atom_weights if entry.atom_weights is not None else np.ones(len(atoms))
    density = density_g_cm3(float(np.dot(atoms.get_masses(), weights)), atoms.cell.volume)
    if density is None:
        return None  # no volume: incomplete_structure says so
    low, high = t.density_range
    if low <= density <= high:
        return None
    return Finding("implausible_density",
                     f"density {density:.2f} g/cm^3 outside {low:g}–{high:g} g/cm^3",
                     {"density": density, "range": [low, high], "atoms_source": source})


# --------------------------------------------------------------------------------------------
# flags (measurement conditions): recorded, rejected only when ``flags_reject``


def flag_high_pressure(entry: Entry, t: Thresholds) -> Finding | None:
    """Measured under high pressure (``_diffrn_ambient_pressure`` / cell pressure in kPa)."""
    pressure = entry.kvp.get("pressure")
    if pressure is None or float(pressure) <= t.high_pressure_kpa:
        return None
    return Finding("high_pressure", f"measured at {float(pressure):g} kPa (> {t.high_pressure_kpa:g} kPa)",
                     {"pressure_kpa": float(pressure)})


def flag_no_temperature(entry: Entry, t: Thresholds) -> Finding | None:
    """No valid measurement temperature (missing, '?', or a non-positive 'Kelvin' value)."""
    if entry.kvp.get("temperature") is not None:
        return None
    raw = {k: entry.kvp.get(k) for k in ("cell_temperature", "diffrn_temperature")}
    return Finding("no_temperature", "measurement temperature unknown or invalid", {"raw": raw})


def flag_hydrogen_disagreement(entry: Entry, t: Thresholds) -> Finding | None:
    """The structural and the formula hydrogen checks disagree (one finds H missing, the other not)."""
    found = hydrogen_findings(entry, t)
    formula, structure = found["formula"], found["structure"]
    if formula is None or structure is None or formula["missing"] == structure["missing"]:
        return None
    says = "structure: H missing, formula: complete" if structure["missing"] else "formula: H missing, structure: " \
        "complete"
    return Finding("hydrogen_checks_disagree", f"hydrogen checks disagree ({says})",
                     {"structure_h_missing": structure["h_missing_in_cell"],
                      "formula_h_missing": formula["h_missing_in_cell"]})


def flag_radical(entry: Entry, t: Thresholds) -> Finding | None:
    """A molecule with no closed-shell bond orders at any charge although no H is missing: a radical."""
    chemistry = entry.chemistry(t) if t.structural_hydrogens else None
    radicals = [m for m in chemistry.molecules if m.radical] if chemistry is not None else []
    if not radicals:
        return None
    kinds = Counter(m.formula for m in radicals)
    return Finding("radical", "open-shell molecule(s): " + ", ".join(f"{f} x{c}" for f, c in kinds.items()),
                     {"molecules": dict(kinds), "atoms": sorted(i for m in radicals for i in m.indices)[:200]})


def bond_length_verdicts(entry: Entry, t: Thresholds) -> list:
    """Bonds outside the range of their perceived order by more than the flag tolerance (computed once)."""
    if "bond_lengths" not in entry._cache:
        chemistry = entry.chemistry(t) if t.structural_hydrogens else None
        atoms, _ = entry.geometry
        if chemistry is None or atoms is None:
            entry._cache["bond_lengths"] = []
        else:
            from helpers.filter.bond_lengths import bond_outliers

            entry._cache["bond_lengths"] = bond_outliers(atoms, chemistry, t.bond_flag_tolerance)
    return entry._cache["bond_lengths"]


def _bond_finding(entry: Entry, t: Thresholds, name: str, verdicts: list, what: str) -> Finding | None:
    if not verdicts:
        return None
    from helpers.filter.bond_lengths import SOURCE, describe

    labels = [[entry.label(v.i), entry.label(v.j)] for v in verdicts]
    # symmetry copies of one bond of the asymmetric unit are named once (same labels, same length)
    distinct: dict[tuple, tuple] = {}
    for v, lab in zip(verdicts, labels):
        distinct.setdefault((tuple(sorted(lab)), round(v.length, 3)), (v, lab))
    unique = list(distinct.values())
    shown = "; ".join(describe(v, lab) for v, lab in unique[:3])
    more = f" (+{len(unique) - 3} more)" if len(unique) > 3 else ""
    pairs = [v.as_dict(lab) for v, lab in list(zip(verdicts, labels))[: t.max_pairs]]
    return Finding(name, f"{len(unique)} bond(s) {what}: {shown}{more}",
                   {"n_bonds": len(verdicts), "n_distinct": len(unique), "max_excess": round(verdicts[0].excess, 3),
                    "pairs": pairs, "distinct": [v.as_dict(lab) for v, lab in unique[: t.max_pairs]],
                    "atoms": sorted({x for v in verdicts for x in (v.i, v.j)})[:200], "source": SOURCE,
                    "tolerance": t.bond_reject_tolerance if name == "bond_length_contradiction"
                    else t.bond_flag_tolerance})


def check_bond_lengths(entry: Entry, t: Thresholds) -> Finding | None:
    """A bond far outside every length its perceived order allows: coordinates and chemistry contradict."""
    verdicts = [v for v in bond_length_verdicts(entry, t) if v.excess > t.bond_reject_tolerance]
    return _bond_finding(entry, t, "bond_length_contradiction", verdicts,
                         f"more than {t.bond_reject_tolerance:g} Å outside the range of their perceived order")


def flag_bond_lengths(entry: Entry, t: Thresholds) -> Finding | None:
    """A bond outside the range of its perceived order (beyond the flag tolerance): a possible CIF error."""
    return _bond_finding(entry, t, "bond_length_outlier", bond_length_verdicts(entry, t),
                         f"more than {t.bond_flag_tolerance:g} Å outside the range of their perceived order")


def flag_charge_imbalance(entry: Entry, t: Thresholds) -> Finding | None:
    """The molecules add up to a positive net charge per cell (an anion missing, or extra H)."""
    chemistry = entry.chemistry(t) if t.structural_hydrogens else None
    net = chemistry.net_charge if chemistry is not None else None
    if net is None or net <= 0:
        return None
    return Finding("charge_imbalance", f"the molecules add up to a net charge of {net:+d} per cell",
                     {"net_charge": net, "species": chemistry.species})


@dataclass(frozen=True)
class Check:
    """A named check: its function, whether it rejects or only flags, and what it means."""

    name: str
    func: Callable[[Entry, Thresholds], Finding | None]
    kind: str = "reject"  # "reject" | "flag"

    @property
    def description(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]


def check_not_a_copy(entry: Entry, t: Thresholds) -> Finding | None:
    """The same crystal structure as another raw entry (same atoms in the same cell): counted once.

    Decided across entries by :func:`helpers.filter.stage.run_filter` (the smallest structure id of a group
    is kept); one entry alone cannot tell.
    """
    return None


#: The filter chain, in reporting order (the first failure is the headline reason).
CHECKS: list[Check] = [
    Check("ase_unreadable", check_ase_readable),
    Check("pymatgen_unparseable", check_pymatgen_parse),
    Check("incomplete_structure", check_incomplete),
    Check("elements", check_elements),
    Check("partial_occupancy", check_partial_occupancy),
    Check("close_contact", check_close_contacts),
    Check("formula_unknown", check_formula_known),
    Check("hydrogen_missing", check_hydrogens),
    Check("composition_mismatch", check_composition),
    Check("cell_volume_mismatch", check_cell_volume),
    Check("implausible_density", check_density),
    Check("bond_length_contradiction", check_bond_lengths),
    Check("duplicate_entry", check_not_a_copy),
    Check("high_pressure", flag_high_pressure, kind="flag"),
    Check("no_temperature", flag_no_temperature, kind="flag"),
    Check("hydrogen_checks_disagree", flag_hydrogen_disagreement, kind="flag"),
    Check("radical", flag_radical, kind="flag"),
    Check("charge_imbalance", flag_charge_imbalance, kind="flag"),
    Check("bond_length_outlier", flag_bond_lengths, kind="flag"),
]
