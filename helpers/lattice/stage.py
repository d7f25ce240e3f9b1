"""The lattice-energy stage: X23 and ICE13 with one potential, resumable, every case recorded.

Per benchmark crystal: the molecule is checked to be the crystal's (:mod:`helpers.lattice.identity`), the
crystal is evaluated at its starting geometry (the experimental CIF for X23 — or the reference DFT crystal when
the CIF does not hold the molecule, e.g. hexamine's CIF has no hydrogens — and the DFT structure for ICE13),
then relaxed with the study's settings (:func:`helpers.relax.engine.relax`: BFGS, atoms + cell, fmax
5·10⁻⁴ eV/Å, cap 300 + x·n_atoms); the isolated molecule is relaxed in vacuum from the reference group's
geometry with the same fmax and cap (without a cell; a potential that refuses a molecule without a cell gets a
cubic box of ``box`` Å, recorded). E_latt = E_mol − E_cryst / Z, at the relaxed crystal and at two fixed
geometries: the experimental one with its H atoms at neutron X–H distances (:mod:`helpers.lattice.hydrogens`;
ICE13: the DFT structure) and the reference DFT crystal (X23). ``geometry="fixed"`` (a potential too slow to
relax these cells) reports the DFT crystal.

Every result is one row of an ASE database per potential, keyed by (system, kind, settings hash): a rerun skips
what is final and retries errors and timeouts. Nothing is dropped: a crystal whose relaxation ends at the step
cap keeps its last energy and says so, one that explodes or errs has its status and no energy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms

from helpers.lattice.energy import ev_to_kjmol, kcal_to_kj, lattice_energy
from helpers.lattice.hydrogens import normalise_hydrogens
from helpers.lattice.identity import same_molecule
from helpers.lattice.structures import BENCHMARKS, BenchmarkEntry, benchmark_entries, read_crystal, read_molecule
from helpers.relax.engine import RelaxResult, RelaxSettings, relax
from helpers.store import db as dbmod
from helpers.vocabulary import STUDY_FMAX, STUDY_MAX_STEPS_BASE, Status

GEOMETRIES = ("relaxed", "fixed")
#: row kinds: the relaxed crystal; the experimental geometry with neutron X–H distances (rows of kind
#: "crystal_fixed", at the X-ray H positions, are of an earlier version and no longer read); the DFT crystal
RELAXED, FIXED, DFT = "crystal", "crystal_fixed_hnorm", "crystal_dft"
#: status of a successful single point (the fixed-geometry crystal)
SINGLE_POINT = "single_point"
#: statuses whose energy is an answer: a minimum, the last energy of a step-capped relaxation (flagged), a single
#: point; an exploded or failed relaxation's last energy is not (no lattice energy, listed with its status)
USABLE = (Status.converged, Status.step_cap, SINGLE_POINT)
#: the crystal does not hold the gas-phase molecule (formula, connectivity or count): no lattice energy
IDENTITY_MISMATCH = "identity_mismatch"
#: final: a rerun keeps these (errors and timeouts are retried)
FINAL = {Status.converged, Status.step_cap, Status.exploded, Status.skipped, Status.crashed, SINGLE_POINT,
         IDENTITY_MISMATCH}
#: edge (Å) of the cubic box a molecule gets when the potential refuses it without a cell
MOLECULE_BOX = 30.0


@dataclass(frozen=True)
class LatticeSettings:
    """What changes a lattice-energy answer besides the potential's versions (hashed per row through the
    relaxation settings it implies)."""

    potential: str = "ani1x"
    fmax: float = STUDY_FMAX
    max_steps_base: int = STUDY_MAX_STEPS_BASE
    steps_per_atom: int | None = None
    #: "relaxed": relax the crystal (and report the fixed geometries too); "fixed": the DFT crystal only
    geometry: str = "relaxed"

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {self.geometry!r}; choose from {GEOMETRIES}")

    def crystal(self) -> RelaxSettings:
        """The study's relaxation (atoms + cell, one crystal at a time, exact forces throughout; BFGS seeded as the
        potential's card says, :mod:`helpers.relax.hessian_seed`)."""
        from helpers.relax.potentials.registry import get_potential

        potential = get_potential(self.potential)
        return RelaxSettings(potential=self.potential, fmax=self.fmax, max_steps_base=self.max_steps_base,
                             steps_per_atom=self.steps_per_atom, strategy="study", draft=None,
                             hessian_seed=potential.hessian_seed).resolved(potential.steps_per_atom)

    def molecule(self) -> RelaxSettings:
        """The same relaxation without a cell to move."""
        return replace(self.crystal(), cell_filter="fixed")


def _energy(row) -> float | None:
    value = row.get("e_final")
    return float(value) if value is not None else None


class _Store:
    """One potential's lattice database: rows keyed by (system, kind, settings_hash)."""

    def __init__(self, path: str) -> None:
        self.db = dbmod.connect(path)
        self.path = path

    def final(self, system: str, kind: str, settings_hash: str):
        for row in self.db.select(system=system, kind=kind, settings_hash=settings_hash):
            if row.get("status") in FINAL:
                return row
        return None

    def write(self, atoms: Atoms, system: str, kind: str, settings_hash: str, result: RelaxResult | None = None,
              status: str | None = None, **extra: Any):
        kvp: dict[str, Any] = {"status": status or (result.status if result else Status.error)}
        if result is not None:
            kvp.update(e_final=result.e_final, e_initial=result.e_initial, steps=result.steps,
                       max_steps=result.max_steps, fmax_final=result.fmax_final,
                       wall_time=round(result.wall_time, 3), message=result.message[:500] or None)
        if atoms.pbc.all():
            kvp["cell_volume"] = float(atoms.get_volume())
        kvp.update(extra)
        kvp["host"] = os.uname().nodename
        dbmod.upsert(self.db, atoms, {"system": system, "kind": kind, "settings_hash": settings_hash},
                     **dbmod.clean_kvp(kvp))
        return self.final(system, kind, settings_hash) or next(
            self.db.select(system=system, kind=kind, settings_hash=settings_hash))


def _single_point(atoms: Atoms, calc) -> RelaxResult:
    """Energy at a fixed geometry as a :class:`RelaxResult` (status ``single_point`` or ``error``)."""
    import time

    from ase.calculators.singlepoint import SinglePointCalculator

    start = time.perf_counter()
    work = atoms.copy()
    work.calc = calc
    try:
        energy = float(work.get_potential_energy())
        forces = work.get_forces()
        if not np.isfinite(energy):
            raise ValueError(f"energy is {energy}")
        status, message = SINGLE_POINT, ""
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        energy, forces, status, message = None, None, Status.error, f"{type(exc).__name__}: {exc}"
    out = atoms.copy()
    if energy is not None:
        out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    fmax = float(np.sqrt((forces ** 2).sum(axis=1).max())) if forces is not None and len(forces) else None
    return RelaxResult(atoms=out, status=status, converged=False, steps=0, max_steps=0, e_initial=energy,
                       e_final=energy, fmax_final=fmax, wall_time=time.perf_counter() - start, message=message)


def _molecule_atoms(molecule: Atoms, calc, box: float) -> tuple[Atoms, float | None]:
    """The molecule as the potential takes it: without cell, or (when it refuses that) centred in a cubic box."""
    try:
        probe = molecule.copy()
        probe.calc = calc
        if np.isfinite(probe.get_potential_energy()):
            return molecule.copy(), None
    except Exception:  # noqa: BLE001 - this potential needs a cell: a large box
        pass
    boxed = molecule.copy()
    boxed.set_cell([box, box, box])
    boxed.center()
    boxed.pbc = True
    return boxed, box


def _start_from(start_db: str | None, name: str) -> Atoms | None:
    """A relaxed crystal ``name`` (key ``system``, kind ``crystal``, converged) from another lattice database."""
    if not start_db:
        return None
    db = dbmod.connect(start_db, must_exist=True)
    rows = [r for r in db.select(system=name, kind=RELAXED) if r.get("status") == Status.converged]
    return rows[-1].toatoms() if rows else None


def _starting_crystal(entry: BenchmarkEntry, molecule: Atoms) -> tuple[Atoms | None, str, str]:
    """(crystal, source, message): the experimental/benchmark structure when it holds ``Z`` copies of the
    molecule, else the reference DFT crystal when that does; None with the reason when neither does."""
    z = entry.reference.z
    crystal = read_crystal(entry.crystal_file)
    source = "expt" if entry.benchmark == "x23" else "dft"
    verdict = same_molecule(crystal, molecule, z)
    if verdict.same:
        return crystal, source, ""
    if entry.dft_crystal_file is not None:
        dft = read_crystal(entry.dft_crystal_file)
        again = same_molecule(dft, molecule, z)
        if again.same:
            return dft, "dft", f"{entry.crystal_file.name}: {verdict.reason}; started from the DFT crystal"
    return None, source, verdict.reason


def run_lattice_energy(potential: str = "ani1x", benchmarks: Sequence[str] = BENCHMARKS,
                       out_db: str = "data/lattice_{potential}.db", fmax: float = STUDY_FMAX,
                       max_steps_base: int = STUDY_MAX_STEPS_BASE, steps_per_atom: int | None = None,
                       geometry: str = "relaxed", crystals: Sequence[str] | None = None,
                       start_db: str | None = None, box: float = MOLECULE_BOX, max_wall_time: float | None = None,
                       n_threads: int | None = None, reference_dir: str | Path | None = None,
                       progress: bool = True, calculator_options: dict | None = None) -> pd.DataFrame:
    """Lattice energies of ``benchmarks`` with ``potential``: one row per crystal (:func:`lattice_table`).

    ``crystals``: only these names (of the ``.din`` files); ``start_db``: a lattice database whose converged
    crystal rows (same name) are the starting structures; ``geometry="fixed"``: no crystal relaxation (a slow
    potential's affordable answer, marked in the table).
    """
    from tqdm.auto import tqdm

    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.stage import configure_threads

    settings = LatticeSettings(potential, fmax, max_steps_base, steps_per_atom, geometry)
    pot = get_potential(potential)
    entries = [e for b in benchmarks for e in benchmark_entries(b, reference_dir)]
    if crystals:
        unknown = set(crystals) - {e.name for e in entries}
        if unknown:
            raise KeyError(f"no such crystals in {', '.join(benchmarks)}: {sorted(unknown)}")
        entries = [e for e in entries if e.name in set(crystals)]
    configure_threads(n_threads)
    store = _Store(str(out_db).format(potential=potential))
    crystal_settings, molecule_settings = settings.crystal(), settings.molecule()
    c_hash, m_hash = crystal_settings.hash(), molecule_settings.hash()
    calc = None

    def calculator():
        nonlocal calc
        if calc is None:
            calc = pot.calculator(**(calculator_options or {}))
        return calc

    molecules: dict[str, Any] = {}
    bar = tqdm(entries, desc=f"lattice energies ({potential})", unit="crystal", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for entry in bar:
            ref = entry.reference
            bar.set_postfix_str(entry.name)
            molecule = read_molecule(entry.molecule_file)
            missing = pot.uncovered(molecule.get_chemical_symbols())
            if ref.molecule not in molecules:
                row = store.final(ref.molecule, "molecule", m_hash)
                if row is None:
                    if missing:
                        row = store.write(molecule, ref.molecule, "molecule", m_hash, status=Status.skipped,
                                          message=f"{potential} does not cover {', '.join(sorted(missing))}")
                    else:
                        start, boxed = _molecule_atoms(molecule, calculator(), box)
                        fixed = _single_point(start, calculator())
                        result = relax(start, calculator(), molecule_settings, max_wall_time=max_wall_time)
                        row = store.write(result.atoms, ref.molecule, "molecule", m_hash, result, box=boxed,
                                          e_fixed=fixed.e_final)
                molecules[ref.molecule] = row
            if any(store.final(entry.name, kind, c_hash) is None for kind in _kinds(entry, geometry)):
                _crystal(entry, molecule, store, c_hash, crystal_settings, calculator, missing, geometry,
                         start_db, max_wall_time)
    bar.close()
    return lattice_table(store.path, settings, benchmarks, crystals, reference_dir)


def _kinds(entry: BenchmarkEntry, geometry: str) -> tuple[str, ...]:
    """The rows one crystal needs: both fixed geometries (the DFT one where the benchmark has it), and the
    relaxed crystal unless ``geometry="fixed"``."""
    fixed = (FIXED, DFT) if entry.dft_crystal_file is not None else (FIXED,)
    return fixed + ((RELAXED,) if geometry == "relaxed" else ())


def _crystal(entry: BenchmarkEntry, molecule: Atoms, store: _Store, c_hash: str, settings: RelaxSettings,
             calculator, missing: set[str], geometry: str, start_db: str | None,
             max_wall_time: float | None) -> None:
    """The fixed single points and (``geometry="relaxed"``) the relaxation of one crystal, each stored."""
    start, source, reason = _starting_crystal(entry, molecule)
    common = {"benchmark": entry.benchmark, "z": entry.reference.z}
    if start is None:
        atoms = read_crystal(entry.crystal_file)
        for kind in _kinds(entry, geometry):
            store.write(atoms, entry.name, kind, c_hash, status=IDENTITY_MISMATCH, message=reason, source=source,
                        **common)
        return
    if missing:
        for kind in _kinds(entry, geometry):
            store.write(start, entry.name, kind, c_hash, status=Status.skipped, source=source,
                        message=f"{settings.potential} does not cover {', '.join(sorted(missing))}", **common)
        return
    if store.final(entry.name, FIXED, c_hash) is None:
        fixed_start, moved = normalise_hydrogens(start) if source == "expt" else (start, 0)
        fixed = _single_point(fixed_start, calculator())
        if reason:
            fixed.message = reason
        store.write(fixed.atoms, entry.name, FIXED, c_hash, fixed, source=source, h_normalised=moved, **common)
    if DFT in _kinds(entry, geometry) and store.final(entry.name, DFT, c_hash) is None:
        dft = read_crystal(entry.dft_crystal_file)
        verdict = same_molecule(dft, molecule, entry.reference.z)
        if verdict.same:
            store.write(dft, entry.name, DFT, c_hash, _single_point(dft, calculator()), source="dft", **common)
        else:
            store.write(dft, entry.name, DFT, c_hash, status=IDENTITY_MISMATCH, message=verdict.reason,
                        source="dft", **common)
    if geometry != "relaxed" or store.final(entry.name, RELAXED, c_hash) is not None:
        return
    begin = _start_from(start_db, entry.name)
    result = relax(begin if begin is not None else start, calculator(), settings, max_wall_time=max_wall_time)
    if reason and not result.message:
        result.message = reason
    store.write(result.atoms, entry.name, RELAXED, c_hash, result,
                source="start_db" if begin is not None else source, **common)


def lattice_table(out_db: str, settings: LatticeSettings, benchmarks: Sequence[str] = BENCHMARKS,
                  crystals: Sequence[str] | None = None, reference_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per benchmark crystal from the potential's lattice database (what ``docs/lattice_energy.csv``
    holds): energies in kJ/mol per molecule (kcal/mol beside), statuses of crystal and molecule, volumes.

    ``status``: ``converged`` when the crystal and its molecule converged; ``fixed_geometry`` when only the
    start geometry was evaluated (``geometry="fixed"``); otherwise what went wrong, e.g. ``crystal step_cap``.
    ``E_latt_kJmol`` is given whenever both energies are answers (:data:`USABLE`: a step-capped relaxation keeps
    its last energy; an exploded one has none).
    """
    store = _Store(str(out_db).format(potential=settings.potential))
    c_hash, m_hash = settings.crystal().hash(), settings.molecule().hash()
    rows = []
    for benchmark in benchmarks:
        for entry in benchmark_entries(benchmark, reference_dir):
            if crystals and entry.name not in crystals:
                continue
            rows.append(_table_row(entry, store, settings, c_hash, m_hash))
    return pd.DataFrame(rows)


def _latest(store: _Store, system: str, kind: str, settings_hash: str):
    found = list(store.db.select(system=system, kind=kind, settings_hash=settings_hash))
    return found[-1] if found else None


def _table_row(entry: BenchmarkEntry, store: _Store, settings: LatticeSettings, c_hash: str,
               m_hash: str) -> dict[str, Any]:
    ref = entry.reference
    mol = _latest(store, ref.molecule, "molecule", m_hash)
    fixed = _latest(store, entry.name, FIXED, c_hash)
    dft = _latest(store, entry.name, DFT, c_hash) if entry.dft_crystal_file is not None else fixed
    relaxed = _latest(store, entry.name, RELAXED, c_hash) if settings.geometry == "relaxed" else None
    mol_status = mol.get("status") if mol else "missing"
    fixed_status = fixed.get("status") if fixed else "missing"
    dft_status = dft.get("status") if dft else "missing"
    cryst_status = (relaxed.get("status") if relaxed else "missing") if settings.geometry == "relaxed" \
        else dft_status
    e_mol = _energy(mol) if mol and mol_status in USABLE else None
    e_fixed = _energy(fixed) if fixed and fixed_status in USABLE else None
    e_dft = _energy(dft) if dft and dft_status in USABLE else None
    e_cryst = (_energy(relaxed) if relaxed and cryst_status in USABLE else None) if settings.geometry == "relaxed" \
        else e_dft

    def latt(e_crystal):
        if e_mol is None or e_crystal is None:
            return np.nan
        return ev_to_kjmol(lattice_energy(e_mol, e_crystal, ref.z))

    ref_kj = kcal_to_kj(ref.ref_kcalmol)
    e_latt, e_latt_fixed, e_latt_dft = latt(e_cryst), latt(e_fixed), latt(e_dft)
    if settings.geometry == "fixed":
        status = "fixed_geometry" if mol_status == Status.converged and dft_status == SINGLE_POINT else \
            " ".join(f"{what} {s}" for what, s in (("molecule", mol_status), ("crystal", dft_status))
                     if s not in (Status.converged, SINGLE_POINT))
    else:
        bad = [f"{what} {s}" for what, s in (("molecule", mol_status), ("crystal", cryst_status))
               if s != Status.converged]
        status = "; ".join(bad) if bad else "converged"
    v_exp = float(read_crystal(entry.crystal_file).get_volume()) if entry.benchmark == "x23" else np.nan
    v_dft = (float(read_crystal(entry.dft_crystal_file).get_volume()) if entry.dft_crystal_file is not None
             else float(read_crystal(entry.crystal_file).get_volume()))
    has_cell = relaxed is not None and cryst_status in (Status.converged, Status.step_cap)
    v_relaxed = relaxed.get("cell_volume") if has_cell else None
    v_relaxed = float(v_relaxed) if v_relaxed is not None else np.nan
    same_after = np.nan
    if relaxed is not None and mol is not None and cryst_status == Status.converged and mol_status == Status.converged:
        same_after = bool(same_molecule(relaxed.toatoms(), mol.toatoms(), ref.z).same)
    shown = relaxed if settings.geometry == "relaxed" else dft
    messages = [f"{what}: {r.get('message')}" for what, r in (("molecule", mol), ("crystal", shown or fixed))
                if r is not None and r.get("message")]
    return {
        "benchmark": entry.benchmark, "crystal": entry.name, "potential": settings.potential, "Z": ref.z,
        "geometry": settings.geometry, "status": status,
        "E_latt_kJmol": e_latt, "ref_kJmol": ref_kj, "error_kJmol": e_latt - ref_kj,
        "E_latt_kcalmol": e_latt / 4.184, "ref_kcalmol": ref.ref_kcalmol, "error_kcalmol": (e_latt - ref_kj) / 4.184,
        "E_latt_fixed_kJmol": e_latt_fixed, "error_fixed_kJmol": e_latt_fixed - ref_kj,
        "E_latt_dft_geometry_kJmol": e_latt_dft, "error_dft_geometry_kJmol": e_latt_dft - ref_kj,
        "V_relaxed": v_relaxed, "V_exp": v_exp, "V_dft": v_dft,
        "dV_exp_pct": 100 * (v_relaxed - v_exp) / v_exp if np.isfinite(v_exp) else np.nan,
        "dV_dft_pct": 100 * (v_relaxed - v_dft) / v_dft,
        "crystal_status": cryst_status, "fixed_status": fixed_status, "dft_geometry_status": dft_status,
        "molecule_status": mol_status,
        "crystal_source": (shown or fixed).get("source") if (shown or fixed) is not None else None,
        "h_normalised": fixed.get("h_normalised") if fixed is not None else None,
        "molecule_box": mol.get("box") if mol is not None else None,
        "same_molecule_after_relax": same_after,
        "crystal_steps": relaxed.get("steps") if relaxed is not None else None,
        "crystal_max_steps": relaxed.get("max_steps") if relaxed is not None else None,
        "molecule_steps": mol.get("steps") if mol is not None else None,
        "crystal_wall_time": relaxed.get("wall_time") if relaxed is not None else None,
        "E_mol_eV": e_mol, "E_cryst_eV": e_cryst, "E_cryst_fixed_eV": e_fixed, "E_cryst_dft_geometry_eV": e_dft,
        "E_mol_fixed_eV": mol.get("e_fixed") if mol is not None else None,
        "settings_hash": c_hash, "message": " | ".join(messages) or None,
    }
