"""AIMNet2 on small molecular crystals: is its expansion the periodic set-up or the model? (docs/aimnet2.md)

Usage (one thread, niced; rows are appended to the CSV as they finish, a rerun skips rows already there)::

    nice -n 5 python benchmarks/aimnet2_periodic.py --out benchmarks/results/aimnet2_periodic.csv
    nice -n 5 python benchmarks/aimnet2_periodic.py --out ... --no-relax        # energies only (about a minute)

For every crystal and set-up, at the experimental geometry: the largest molecular net charge |q_mol| the
model puts on a molecule of the cell, the interaction energy per molecule E_int = (E(cell) − Σ E(molecule
alone)) / Z, and (``--cluster``) half the embedding energy of the central molecule of a non-periodic cluster
(9 Å) cut from the crystal. Then the study's relaxation (BFGS + FrechetCellFilter) at ``--fmax`` with a step
cap: ΔV (%), status, steps, and |q_mol| at the end. ANI-2x (with and without D3) and SevenNet-0 + D3 give the
reference binding; X23b the experimental lattice energy (−E_latt; it includes the molecules' relaxation).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")
X23 = SHARED / "reference" / "lattice-energy" / "x23"
CRYSTALS = {
    "co2": X23 / "expt" / "co2.cif",
    "urea": X23 / "expt" / "urea.cif",
    "acetic_acid": X23 / "expt" / "acetic_acid.cif",
    "naphthalene": X23 / "expt" / "naphthalene.cif",
    "aspirin": SHARED / "data" / "more" / "MaterSim+PyXtal" / "examples" / "tutorials_notebook" / "aspirin.cif",
}
KCAL = 0.0433641  # eV per kcal/mol
COLUMNS = ["crystal", "setup", "atoms", "Z", "q_mol_max", "E_int", "E_cluster", "X23_Elatt", "dV_pct",
           "status", "steps", "fmax_final", "q_mol_max_relaxed", "seconds"]


def setups() -> dict:
    """name -> factories (cell, isolated molecule, non-periodic cluster or None) and whether to relax."""
    from helpers.relax.potentials.factories import make_aimnet2, make_aimnet2_molq
    from helpers.relax.potentials.registry import get_potential

    def aimnet(members=(0,), **kw):
        return lambda: make_aimnet2(members=members, **kw)

    ani2x = lambda: get_potential("ani2x").calculator()  # noqa: E731
    ani2x_d3 = lambda: get_potential("ani2x-d3").calculator()  # noqa: E731
    sevennet = lambda: get_potential("sevennet0-d3").calculator()  # noqa: E731
    alone, alone4 = aimnet(coulomb="simple"), aimnet((0, 1, 2, 3), coulomb="simple")
    return {  # name: (cell, isolated molecule, cluster or None, relax?)
        "aimnet2 dsf 15 A (today)": (aimnet(), alone, alone, True),
        "aimnet2 dsf 25 A": (aimnet(coulomb_cutoff=25.0), alone, None, False),
        "aimnet2 ewald": (aimnet(coulomb="ewald"), alone, None, True),
        "aimnet2 neutral molecules": (lambda: make_aimnet2_molq(), alone,
                                      lambda: make_aimnet2_molq(coulomb="simple"), True),
        "aimnet2 4-member ensemble": (aimnet((0, 1, 2, 3)), alone4, alone4, True),
        "ani2x (no D3)": (ani2x, ani2x, ani2x, True),
        "ani2x-d3": (ani2x_d3, ani2x_d3, None, False),
        "sevennet0-d3": (sevennet, sevennet, None, False),
    }


def x23_lattice_energies() -> dict[str, float]:
    """X23b lattice energies (eV per molecule, negative = bound) from x23.din."""
    lines = [s.strip() for s in (X23 / "x23.din").read_text().splitlines() if s.strip() and not s.startswith("#")]
    out, k = {}, 0
    while k < len(lines):
        names = []
        while lines[k] != "0":
            names.append(lines[k + 1])
            k += 2
        out[names[0]] = -float(lines[k + 1]) * KCAL
        k += 2
    return out


def read(path: Path):
    import ase.io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(path)


def row_for(crystal: str, setup: str, make, make_mol, make_cluster, relax_it: bool, args) -> dict:
    import ase.io
    import numpy as np

    from helpers.analysis.periodic_binding import atom_charges, cluster_embedding, crystal_binding, molecule_charges
    from helpers.relax.engine import RelaxSettings, relax

    atoms = read(CRYSTALS[crystal])
    t0 = time.perf_counter()
    binding = crystal_binding(atoms, make, make_mol)
    row = {"crystal": crystal, "setup": setup, "atoms": len(atoms), "Z": binding.n_molecules,
           "q_mol_max": binding.max_abs_charge, "E_int": round(binding.per_molecule, 3),
           "X23_Elatt": x23_lattice_energies().get(crystal)}
    if make_cluster is not None and args.cluster and crystal in args.cluster_crystals:
        row["E_cluster"] = round(cluster_embedding(atoms, make_cluster).per_molecule, 3)
    if relax_it and args.relax and not (crystal == "aspirin" and "ensemble" in setup):
        settings = RelaxSettings(potential="aimnet2" if setup.startswith("aimnet2") else "ani2x", fmax=args.fmax,
                                 strategy="study", max_steps_base=args.max_steps, steps_per_atom=0)
        result = relax(atoms, make(), settings)
        row.update(dV_pct=round(100 * (result.atoms.get_volume() / atoms.get_volume() - 1), 2),
                   status=str(result.status), steps=result.steps,
                   fmax_final=None if result.fmax_final is None else round(result.fmax_final, 4))
        slug = re.sub(r"[^a-z0-9]+", "-", setup.lower()).strip("-")
        ase.io.write(f"{Path(args.out).with_suffix('')}.{crystal}.{slug}.xyz", result.atoms)  # the relaxed cell
        final = result.atoms.copy()
        final.calc = make()
        final.get_potential_energy()
        charges = atom_charges(final.calc)
        if charges is not None:
            row["q_mol_max_relaxed"] = float(np.abs(molecule_charges(final, charges)).max())
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "aimnet2_periodic.csv"))
    parser.add_argument("--crystals", default=",".join(CRYSTALS))
    parser.add_argument("--setups", default="", help="comma-separated names (default: all)")
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--no-relax", dest="relax", action="store_false")
    parser.add_argument("--no-cluster", dest="cluster", action="store_false")
    parser.add_argument("--cluster-crystals", default="co2,urea,naphthalene")
    parser.add_argument("--pairs", action="store_true",
                        help="only the additivity check: cluster embedding vs the sum of dimer interactions")
    args = parser.parse_args(argv)
    args.cluster_crystals = args.cluster_crystals.split(",")
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.pairs:
        print_pairs(args.crystals.split(","))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        with out.open() as fh:
            done = {(r["crystal"], r["setup"]) for r in csv.DictReader(fh)}
    chosen = setups()
    if args.setups:
        chosen = {k: v for k, v in chosen.items() if k in args.setups.split(",")}
    for crystal in args.crystals.split(","):
        for name, factories in chosen.items():
            if (crystal, name) in done:
                continue
            row = row_for(crystal, name, *factories, args)
            new = not out.is_file()
            with out.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(row, flush=True)
    print_table(out)
    return 0


def print_pairs(crystals: list[str]) -> None:
    """Half the central molecule's embedding in a 9 Å cluster vs half the sum of its dimer interactions (eV)."""
    from helpers.analysis.periodic_binding import cluster_embedding, cluster_pair_sum
    from helpers.relax.potentials.factories import make_aimnet2
    from helpers.relax.potentials.registry import get_potential

    models = {"aimnet2": lambda: make_aimnet2(coulomb="simple"), "ani2x": lambda: get_potential("ani2x").calculator()}
    print("| crystal | model | cluster embedding / 2 | sum of dimers / 2 | many-body part |\n|---|---|---|---|---|")
    for crystal in crystals:
        atoms = read(CRYSTALS[crystal])
        for name, make in models.items():
            embedded, pairs = cluster_embedding(atoms, make).per_molecule, cluster_pair_sum(atoms, make)
            print(f"| {crystal} | {name} | {embedded:+.3f} | {pairs:+.3f} | {embedded - pairs:+.3f} |", flush=True)


def print_table(path: Path) -> None:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    order = {c: k for k, c in enumerate(CRYSTALS)}
    rows.sort(key=lambda r: order.get(r["crystal"], len(order)))  # stable: set-ups in the order they ran
    head = ["crystal", "setup", "Z", "q_mol_max", "E_int", "E_cluster", "X23_Elatt", "dV_pct", "status", "steps",
            "q_mol_max_relaxed"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def fmt(v: str) -> str:
        if v.lstrip("-").isdigit():
            return v
        try:
            x = float(v)
        except ValueError:
            return v
        return f"{x:.3g}" if abs(x) < 1e-2 and x != 0 else (f"{x:+.3f}" if abs(x) < 10 else f"{x:.1f}")

    for r in rows:
        print("| " + " | ".join(fmt(r.get(k) or "") for k in head) + " |")


if __name__ == "__main__":
    sys.exit(main())
