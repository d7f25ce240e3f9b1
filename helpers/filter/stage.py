"""Notebook 02's entry point: run the checks over the raw database into a clean and a rejects database.

Every raw row ends in exactly one of the two output databases (keyed by ``structure_id``), so
re-running is idempotent: a structure that now passes is removed from the rejects and vice versa.
Clean rows carry the experimental reference cell (a, b, c, α, β, γ, V, density, cell matrix) that
the analysis compares the relaxed cells with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.geometry import cell_to_cellpar

from helpers.filter.checks import CHECKS, Check, Entry, Finding, Thresholds
from helpers.process.guard import TimeLimitExceeded, time_limit
from helpers.process.parallel import ordered_map
from helpers.store import db as dbmod
from helpers.vocabulary import STUDY_ELEMENTS, STUDY_MIN_DISTANCE, density_g_cm3

__all__ = ["CHECKS", "FilterReport", "FilterResult", "Thresholds", "evaluate", "filter_row",
           "reference_cell", "run_filter"]


@dataclass
class FilterResult:
    """The verdict on one entry: every failed check (in chain order) and the flags raised."""

    structure_id: str
    rejections: list[Finding] = field(default_factory=list)
    flags: list[Finding] = field(default_factory=list)
    #: what the structure is (n_molecules, z_prime, compound_key, reader) and its molecules, for the output row
    kvp: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: atoms for the output row when they do not come from the raw row (reader="pymatgen" fallback)
    atoms: Atoms | None = None
    #: the compound's name as the CIF gives it (01_fetch's ``compound_name``), for the reader of the rejects
    name: str | None = None

    @property
    def passed(self) -> bool:
        return not self.rejections

    @property
    def checks(self) -> list[str]:
        return [r.check for r in self.rejections]


def evaluate(entry: Entry, thresholds: Thresholds | None = None,
             checks: Sequence[Check] = CHECKS) -> FilterResult:
    """Run every check on one entry; a check that crashes is itself recorded, never raised."""
    t = thresholds or Thresholds()
    result = FilterResult(entry.structure_id, name=entry.kvp.get("compound_name"))
    for check in checks:
        try:
            with time_limit(t.check_time_limit, f"check {check.name}", "check_time_limit"):
                found = check.func(entry, t)
        except TimeLimitExceeded as exc:  # a pathological entry: its own reason, the run goes on
            found = Finding(check.name, f"check {check.name} not finished: {exc}",
                              {"cpu_time_limit": t.check_time_limit})
        except Exception as exc:  # noqa: BLE001 - bad input must not stop the run
            found = Finding(check.name, f"check {check.name} could not run: {type(exc).__name__}: {exc}",
                              {"exception": f"{type(exc).__name__}: {exc}", "internal_error": True})
        if found is None:
            continue
        found.check = check.name
        if check.kind == "flag":
            result.flags.append(found)
            if t.flags_reject:
                result.rejections.append(found)
        else:
            result.rejections.append(found)
    try:
        with time_limit(t.check_time_limit, "molecules"):
            describe(entry, t, result)
    except Exception as exc:  # noqa: BLE001 - a description that fails must not lose the verdict
        result.kvp["molecules_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return result


def describe(entry: Entry, t: Thresholds, result: FilterResult) -> None:
    """Fill ``result`` with what the structure is: reader, molecules, n_molecules, z_prime, compound_key.

    ``z_prime`` = formula units per cell / symmetry operations of the cell; formula units from the
    molecules (the gcd of the counts of the distinct molecules: 4 cations + 4 anions = 4) or, without
    molecules, from the CIF's Z. ``compound_key``: the sorted distinct InChIKeys joined by '.', so
    polymorphs and redeterminations of one compound share it (absent when a molecule has no identity).
    """
    from helpers.filter.molecules import n_symmetry_operations

    atoms, source = entry.geometry
    if entry.readable and source == "ase":
        result.kvp["reader"] = "ase"
    elif source == "pymatgen" and t.reader == "pymatgen" and result.passed:
        result.kvp["reader"] = "pymatgen"
        result.atoms = atoms
    elif source == "pymatgen" and any(r.details.get("atoms_source") == "pymatgen" for r in result.rejections):
        result.atoms = atoms  # the rejects row holds the atoms its rejections' indices refer to
    chemistry = entry.chemistry(t)
    n_ops = n_symmetry_operations(entry.cif_tags, entry.kvp.get("spacegroup_number") or entry.kvp.get("spacegroup"))
    z = None
    if chemistry is not None and chemistry.molecules:
        result.kvp["n_molecules"] = chemistry.n_molecules
        key = chemistry.compound_key
        if key:
            result.kvp["compound_key"] = key
        z = chemistry.z()
        result.kvp["z_source"] = "molecules"
        result.data["molecules"] = [{k: v for k, v in sp.items()} for sp in chemistry.species]
        errors = sorted({m.error for m in chemistry.molecules if m.error})
        if errors:
            result.data["molecule_errors"] = errors[:10]
    elif entry.kvp.get("z_formula"):
        z = float(entry.kvp["z_formula"])
        result.kvp["z_source"] = "CIF Z"
    if n_ops:
        result.kvp["n_symops"] = int(n_ops)
        if z:
            result.kvp["z_prime"] = round(z / n_ops, 4)


def filter_row(row, thresholds: Thresholds | None = None, **overrides: Any) -> FilterResult:
    """Verdict on one raw database row (an ``AtomsRow``) or an :class:`Entry` (for reuse and fuzzing)."""
    entry = row if isinstance(row, Entry) else Entry.from_row(row)
    return evaluate(entry, thresholds or Thresholds.make(**overrides))


def reference_cell(atoms: Atoms) -> tuple[dict[str, float], list[list[float]]]:
    """Experimental reference cell as stored in the clean DB: a..gamma, V (Å, °, Å^3), density, matrix."""
    a, b, c, alpha, beta, gamma = (float(x) for x in atoms.cell.cellpar())
    volume = float(atoms.cell.volume)
    density = density_g_cm3(atoms.get_masses().sum(), volume)
    kvp = {"a_exp": a, "b_exp": b, "c_exp": c, "alpha_exp": alpha, "beta_exp": beta, "gamma_exp": gamma,
           "V_exp": volume, "density_exp": density}
    return kvp, np.asarray(atoms.cell.array, dtype=float).tolist()


@dataclass
class FilterReport:
    """What the filter did: the verdict per structure and the counts per check."""

    results: list[FilterResult] = field(default_factory=list)
    checks: Sequence[Check] = field(default_factory=lambda: list(CHECKS))
    clean_db: str = ""
    rejects_db: str = ""

    @property
    def passed(self) -> list[str]:
        return [r.structure_id for r in self.results if r.passed]

    @property
    def rejected(self) -> list[str]:
        return [r.structure_id for r in self.results if not r.passed]

    def counts(self):
        """Structures per check (``n``: failing it at all; ``n_first``: as the headline reason),
        then flags, ``passed`` and ``total`` rows."""
        import pandas as pd

        rows = []
        for check in self.checks:
            if check.kind == "flag":
                n = sum(any(f.check == check.name for f in r.flags) for r in self.results)
            else:
                n = sum(check.name in r.checks for r in self.results)
            first = sum(bool(r.checks) and r.checks[0] == check.name for r in self.results)
            rows.append({"check": check.name, "kind": check.kind, "n": n, "n_first": first,
                         "description": check.description})
        n_pass = len(self.passed)
        rows.append({"check": "passed", "kind": "result", "n": n_pass, "n_first": n_pass,
                     "description": "in the clean database"})
        rows.append({"check": "total", "kind": "result", "n": len(self.results), "n_first": len(self.results),
                     "description": "raw entries filtered"})
        return pd.DataFrame(rows).set_index("check")

    def duplicate_groups(self, clean_only: bool = True) -> dict[str, list[str]]:
        """compound_key -> structure ids sharing it (polymorphs, redeterminations), every group."""
        groups: dict[str, list[str]] = {}
        for r in self.results:
            key = r.kvp.get("compound_key")
            if key and (r.passed or not clean_only):
                groups.setdefault(key, []).append(r.structure_id)
        return groups

    def duplicates(self):
        """One line per compound with more than one clean entry: its key, count, ids and molecules."""
        import pandas as pd

        smiles = {r.kvp.get("compound_key"): ".".join(m["smiles"] or "?" for m in r.data.get("molecules", []))
                  for r in self.results if r.passed}
        rows = [{"compound_key": key, "n_entries": len(ids), "structure_ids": ",".join(ids), "smiles": smiles.get(key)}
                for key, ids in self.duplicate_groups().items() if len(ids) > 1]
        return pd.DataFrame(rows, columns=["compound_key", "n_entries", "structure_ids", "smiles"]).sort_values(
            "n_entries", ascending=False, ignore_index=True)

    def table(self):
        """One line per rejected structure: what the CIF calls it, its failed checks and the headline reason."""
        import pandas as pd

        return pd.DataFrame([{"structure_id": r.structure_id, "compound": r.name, "checks": ",".join(r.checks),
                              "reason": r.rejections[0].reason} for r in self.results if not r.passed])


def _output_row(row, atoms: Atoms, result: FilterResult) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Which database the entry goes to ('clean' or 'rejects'), and its key-value pairs and data."""
    flags = {f"flag_{c.name}": any(f.check == c.name for f in result.flags)
             for c in CHECKS if c.kind == "flag"}
    base = {**row.key_value_pairs, "raw_id": row.id, **flags, **result.kvp}
    if result.passed:
        cell_kvp, cell = reference_cell(atoms)
        data = {**row.data, **result.data, "cell_exp": cell}
        if result.flags:  # what the flags found (atoms, lengths), for the analysis and the viewer
            data["flags"] = [f.as_dict() for f in result.flags]
        return "clean", {**base, **cell_kvp}, data
    kvp = {**base, "checks": ",".join(result.checks), "reason": result.rejections[0].reason,
           "n_failures": len(result.rejections)}
    data = {**row.data, **result.data, "rejections": [r.as_dict() for r in result.rejections],
            "flags": [f.as_dict() for f in result.flags]}
    return "rejects", kvp, data


def _jsonable(value: Any) -> Any:
    """Plain Python containers and numbers (ASE's JSON data column chokes on numpy scalars in dicts)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_filter(raw_db: str, clean_db: str, rejects_db: str, min_distance: float = STUDY_MIN_DISTANCE,
               elements: Sequence[str] | None = STUDY_ELEMENTS, progress: bool = True,
               chunk_size: int = 200, n_workers: int | None = 1, **thresholds: Any) -> FilterReport:
    """Filter every raw row into ``clean_db`` or ``rejects_db``; idempotent, never stops on bad input.

    ``thresholds`` override :class:`helpers.filter.checks.Thresholds` (e.g. ``h_missing_tolerance=0.5``).
    The checks run in ``n_workers`` processes (None: every core; :mod:`helpers.process.parallel`); this
    process writes the verdicts, in raw-database order, one transaction per ``chunk_size`` rows.
    """
    from tqdm.auto import tqdm

    t = Thresholds.make(min_distance=min_distance, elements=elements, **thresholds)
    raw = dbmod.connect(raw_db, must_exist=True)
    _check_raw(raw, raw_db)
    out = {"clean": dbmod.connect(clean_db), "rejects": dbmod.connect(rejects_db)}
    copies = identical_entries(raw)
    report = FilterReport(clean_db=str(clean_db), rejects_db=str(rejects_db))
    verdicts = ordered_map(_evaluate_row, ((row, t) for row in dbmod.rows(raw)), n_workers,
                           on_crash=_crashed_checks)
    verdicts = tqdm(verdicts, total=raw.count(), desc="filter", unit="structure", disable=not progress)
    for chunk in _chunks(verdicts, chunk_size):
        rows = []
        for (row, _), result in chunk:
            if result.structure_id in copies:
                first = copies[result.structure_id]
                result.rejections.append(Finding(
                    "duplicate_entry", f"the same crystal structure as {first} (same atoms and cell): counted once",
                    {"same_as": first}))
            # the checks' Entry stayed with whoever ran them; the fallback reader's atoms came back
            atoms = result.atoms if result.atoms is not None else row.toatoms()
            target, kvp, data = _output_row(row, atoms, result)
            kvp = dbmod.clean_kvp({k: v for k, v in kvp.items() if k != "structure_id"})
            rows.append((result.structure_id, target, atoms, kvp, _jsonable(data)))
            report.results.append(result)
        _write_chunk(out, rows)
    if t.group_duplicates:
        ids = dbmod.ids_with(out["clean"], "structure_id")
        with out["clean"]:
            for group in report.duplicate_groups(clean_only=True).values():
                for sid in group:
                    if sid in ids:
                        out["clean"].update(ids[sid], n_same_compound=len(group))
    return report


def _write_chunk(out: dict[str, Any], rows: list[tuple[str, str, Atoms, dict, dict]]) -> None:
    """Write one chunk of verdicts so that no structure is ever in both databases.

    First every structure that changes database leaves its old one (both deletions committed), then
    every structure is written to its database (an upsert under the write lock: concurrent runs on the
    same outputs never duplicate a row). An interruption between the two leaves a structure in neither
    database, which the next run repairs; never in both, so 03_relax cannot relax a rejected structure.
    Every writer locks the clean database before the rejects and writes its rows in that order, so two
    concurrent runs queue for each other instead of each holding one database (a deadlock); within a
    database the rows keep the raw database's order.
    """
    order = list(out)
    with dbmod.transactions(*out.values()):
        for name, db in out.items():
            dbmod.delete_in_transaction(db, "structure_id", [sid for sid, target, *_ in rows if target != name])
    with dbmod.transactions(*out.values()):
        for sid, target, atoms, kvp, data in sorted(rows, key=lambda row: order.index(row[1])):
            dbmod.upsert_in_transaction(out[target], atoms, {"structure_id": sid}, data=data, **kvp)


def identical_entries(raw) -> dict[str, str]:
    """Raw entries that repeat an earlier one (the same CIF, or the same atoms in the same cell under
    another name): ``structure_id`` -> the id of the entry kept (the smallest id of the group)."""
    groups: dict[tuple, list[str]] = {}
    for row in raw.select("structure_id", columns=["id", "key_value_pairs", "numbers", "positions", "cell"]):
        if not row.natoms:
            continue
        key = ("geometry", tuple(np.round(cell_to_cellpar(np.asarray(row.cell)), 3)), tuple(row.numbers),
               tuple(np.round(row.positions, 3).ravel()))
        groups.setdefault(key, []).append(str(row.structure_id))
    copies = {}
    for ids in groups.values():
        first, *rest = sorted(ids)
        copies.update({sid: first for sid in rest})
    return copies


def _check_raw(raw, name: str) -> None:
    """Refuse a raw database that 01_fetch did not write (another project's ASE database)."""
    if raw.count() and not raw.count("structure_id"):
        raise ValueError(f"{name} has {raw.count()} rows but none with a structure_id: it is not a raw database "
                         "written by 01_fetch (give 02_filter the raw_db of 01_fetch)")


def _evaluate_row(item: tuple[Any, Thresholds]) -> FilterResult:
    """Worker side of :func:`run_filter`: the verdict on one raw row."""
    row, thresholds = item
    return evaluate(Entry.from_row(row), thresholds)


def _crashed_checks(item: tuple[Any, Thresholds], exc: BaseException) -> FilterResult:
    """The checks took their process down (memory, segfault): the entry is rejected saying so."""
    row, _ = item
    reason = f"checks could not run: their process died on this entry ({exc})"
    return FilterResult(Entry.structure_id_of(row), [Finding("checks_crashed", reason, {"internal_error": True})])


def _chunks(iterable, size: int):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
