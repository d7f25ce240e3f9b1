"""Relax real molecular crystals with every potential beyond ANI and print what came out and what it cost.

Usage (one thread per process; run once, with nice, the numbers go into the README)::

    nice -n 19 python benchmarks/potentials_validation.py --potentials gfn1-xtb,gfn-ff --crystals aspirin \
        --fmax 0.01 --out benchmarks/results/potentials_validation.csv

For every (potential, crystal): the study's method one crystal at a time (BFGS + FrechetCellFilter, cap
300 + x*n, ``helpers.relax.engine.relax``) at ``--fmax``; ΔV, Δa, Δb, Δc (%) against the experimental
cell, status, steps, force calls, seconds, seconds per call and per atom per call (the calculator's own
time: a separate timing of ``--timing-calls`` energy+forces+stress calls on the experimental cell after
one warm-up call). Rows are appended to the CSV as they finish (a rerun skips rows already there) and
printed as a Markdown table at the end; a relaxation in flight saves a checkpoint beside the CSV every
5 min, which a rerun continues (the row's message then says from which step).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("CODANI_SHARED", ROOT.parent / "shared")) / "data"
PYXTAL = DATA / "more" / "MaterSim+PyXtal"

#: small X23-type molecular crystals found in ../shared/data (unaltered files), smallest first
CRYSTALS: dict[str, Path] = {
    "co2": DATA / "cod-sample" / "1010060.cif",  # X23 CO2, Pa-3, 12 atoms (old X-ray: C=O 1.05 Å)
    "ice": DATA / "cod" / "1011063.cif",  # ice Ih-like cell, 24 atoms (not X23; the tests' cell)
    "acetic-acid": DATA / "more" / "peterspackman+chmpy" / "src" / "chmpy" / "tests" / "test_files"
    / "acetic_acid.cif",  # X23, 32 atoms
    "naphthalene": PYXTAL / "pyxtal" / "database" / "cifs" / "naphthalene.cif",  # X23, 36 atoms
    "hexamine": PYXTAL / "pyxtal" / "database" / "packing-analysis" / "HXMTAM.cif",  # X23, 44 atoms
    "benzene": PYXTAL / "pyxtal" / "database" / "cifs" / "benzene.cif",  # X23, 48 atoms
    "anthracene": PYXTAL / "pyxtal" / "database" / "cifs" / "anthracene.cif",  # X23, 48 atoms
    "aspirin": PYXTAL / "examples" / "tutorials_notebook" / "aspirin.cif",  # form I, 100 K neutron, 84 atoms
}
FIELDS = ["potential", "crystal", "natoms", "fmax", "status", "converged", "steps", "max_steps", "force_calls",
          "seconds", "s_per_call", "ms_per_atom_call", "dV_pct", "da_pct", "db_pct", "dc_pct", "fmax_final",
          "message"]


def read_crystal(path: Path):
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path)


def time_calls(calc, atoms, n: int) -> float:
    """Seconds per energy+forces+stress call of ``calc`` on ``atoms`` (after one warm-up call)."""
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    atoms.get_stress()
    start = time.perf_counter()
    for _ in range(n):
        atoms.positions += rng.normal(0, 1e-4, atoms.positions.shape)
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
    return (time.perf_counter() - start) / n


def run_one(potential: str, crystal: str, fmax: float, timing_calls: int, cap: int | None = None,
            checkpoint_dir: Path | None = None) -> dict:
    """One relaxation; with ``checkpoint_dir`` its progress is saved there and a rerun continues it (an xTB
    supercell relaxation of aspirin takes hours)."""
    from helpers.relax.checkpoint import Checkpoint
    from helpers.relax.engine import RelaxSettings, relax
    from helpers.relax.potentials.registry import get_potential

    pot = get_potential(potential)
    atoms = read_crystal(CRYSTALS[crystal])
    settings = RelaxSettings(potential=potential, fmax=fmax, strategy="study").resolved(pot.steps_per_atom)
    if cap is not None:  # a fixed step cap instead of the study's 300 + x n (for runs that cannot converge)
        settings = RelaxSettings(potential=potential, fmax=fmax, strategy="study", max_steps_base=cap,
                                 steps_per_atom=0)
    calc = pot.calculator()
    inner = calc.calculate

    def counted(*args, **kwargs):  # force calls of any calculator (a plug-in's may keep no count)
        counted.n += 1
        return inner(*args, **kwargs)

    counted.n = 0
    calc.calculate = counted
    s_call = time_calls(pot.calculator(), atoms, timing_calls) if timing_calls else float("nan")
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Checkpoint(Path(checkpoint_dir) / f"{potential}.{crystal}.checkpoint.npz",
                                key=f"{potential} {crystal} {settings.hash()}")
    result = relax(atoms, calc, settings, checkpoint=checkpoint)
    if checkpoint is not None:
        checkpoint.clear()
    a0, a1 = atoms.cell.lengths(), result.atoms.cell.lengths()
    pct = lambda new, old: 100 * (new - old) / old  # noqa: E731
    return {"potential": potential, "crystal": crystal, "natoms": len(atoms), "fmax": fmax,
            "status": str(result.status), "converged": result.converged, "steps": result.steps,
            "max_steps": result.max_steps,
            "force_calls": counted.n if result.force_calls is None else result.force_calls,
            "seconds": round(result.wall_time, 1),
            "s_per_call": round(s_call, 4), "ms_per_atom_call": round(1000 * s_call / len(atoms), 3),
            "dV_pct": round(pct(result.atoms.get_volume(), atoms.get_volume()), 2),
            "da_pct": round(pct(a1[0], a0[0]), 2), "db_pct": round(pct(a1[1], a0[1]), 2),
            "dc_pct": round(pct(a1[2], a0[2]), 2),
            "fmax_final": None if result.fmax_final is None else round(result.fmax_final, 5),
            "message": "; ".join(filter(None, [result.message[:120], resumed_note(result)]))}


def resumed_note(result) -> str:
    step = result.extra.get("resumed_at_step")
    return f"continued from a checkpoint at step {step}" if step else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potentials", default="gfn2-xtb,gfn1-xtb,gfn-ff,sevennet0-d3,chgnet-d3,aimnet2")
    parser.add_argument("--crystals", default="aspirin", help=f"comma list of {', '.join(CRYSTALS)}, or 'x23'")
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--timing-calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cap", type=int, default=None, help="fixed step cap instead of the study's 300 + x n")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "potentials_validation.csv"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    crystals = [c for c in CRYSTALS if c != "aspirin"] if args.crystals == "x23" else args.crystals.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        with out.open() as fh:
            done = {(r["potential"], r["crystal"], float(r["fmax"])) for r in csv.DictReader(fh)}
    rows = []
    for potential in args.potentials.split(","):
        for crystal in crystals:
            if (potential, crystal, args.fmax) in done:
                continue
            row = run_one(potential, crystal, args.fmax, args.timing_calls, args.cap, checkpoint_dir=out.parent)
            rows.append(row)
            new = not out.is_file()
            with out.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(" | ".join(str(row[k]) for k in FIELDS), flush=True)
    print("\n| potential | crystal | atoms | fmax | ΔV % | Δa % | Δb % | Δc % | status | steps | s | s/call | "
          "ms/atom/call |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with out.open() as fh:
        for r in csv.DictReader(fh):
            keys = ["potential", "crystal", "natoms", "fmax", "dV_pct", "da_pct", "db_pct", "dc_pct", "status",
                    "steps", "seconds", "s_per_call", "ms_per_atom_call"]
            print("| " + " | ".join(r[k] for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
