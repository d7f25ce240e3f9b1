"""How far is tblite at the Γ point from the crystal, and which supercell converges it?

tblite (GFN1-/GFN2-xTB) has no k-points (tblite issue #4): a crystal's cell is solved at Γ only. An
n1×n2×n3 supercell at Γ is the cell on the Γ-centred n1×n2×n3 k-point mesh, so
``helpers.relax.potentials.supercell`` repeats the cell until every perpendicular width reaches
``XTB_MIN_WIDTH``. This prints, per crystal, the energy per atom and the pressure of the supercells of
increasing minimum width (0 = the bare cell at Γ), at the experimental geometry; and, given a campaign's
relaxed database made at Γ (``--relaxed``), the pressure its relaxed cells are under once evaluated on the
converged mesh (a volume off by ΔV shows up as P ≈ −B·ΔV, B ≈ 5–15 GPa for molecular crystals).

Usage: ``.venv/bin/python benchmarks/xtb_gamma_point.py [--method gfn1-xtb] [--widths 0,6,8,10,12]
[--relaxed path/relaxed_gfn1-xtb.db] [cif ...]`` (default: the two smallest cells of the shared data).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.units import GPa  # noqa: E402

from helpers.relax.potentials.factories import XTB_MIN_WIDTH  # noqa: E402
from helpers.relax.potentials.registry import get_potential  # noqa: E402
from helpers.relax.potentials.supercell import supercell_repeats  # noqa: E402

DATA = Path(os.environ.get("CODANI_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
CRYSTALS = [DATA / "cod-sample" / "2006099.cif",  # tetrazole, P1, 7 atoms in 3.7 × 4.8 × 4.9 Å
            DATA / "cod-sample" / "1010060.cif"]  # CO2, Pa-3, 12 atoms, a = 5.6 Å


def evaluate(atoms: Atoms, method: str, width: float) -> tuple[tuple[int, ...], float, float, float]:
    """(repeats, energy per atom eV, pressure GPa, seconds) of tblite on the supercell of ``width``."""
    reps = supercell_repeats(atoms, width)
    big = atoms.repeat(reps)
    big.calc = get_potential(method).calculator(min_width=0)
    start = time.perf_counter()
    stress = big.get_stress()
    return reps, big.get_potential_energy() / len(big), -stress[:3].mean() / GPa, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifs", nargs="*", type=Path, default=CRYSTALS)
    parser.add_argument("--method", default="gfn1-xtb", choices=("gfn1-xtb", "gfn2-xtb"))
    parser.add_argument("--widths", default="0,6,8,10,12", help="minimum perpendicular widths, Å (0: Γ alone)")
    parser.add_argument("--relaxed", type=Path, help="a relaxed_<xtb>.db made at Γ: its cells on the mesh")
    args = parser.parse_args()
    widths = [float(w) for w in args.widths.split(",")]

    print(f"# {args.method} at the experimental geometry; last width is the reference")
    for path in args.cifs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(path)
        rows = [(w, *evaluate(atoms, args.method, w)) for w in widths]
        e_ref, p_ref = rows[-1][2], rows[-1][3]
        for w, reps, e, p, seconds in rows:
            print(f"{path.stem:>8} {len(atoms):3d} atoms  width {w:4.1f} Å  repeats {reps}  "
                  f"E − E_ref {1000 * (e - e_ref):+8.2f} meV/atom  P {p:+8.3f} GPa  (P − P_ref {p - p_ref:+7.3f})  "
                  f"{seconds:6.1f} s")
    if args.relaxed:
        from ase.db import connect

        print(f"\n# cells relaxed at Γ ({args.relaxed.name}), evaluated at Γ and on the {XTB_MIN_WIDTH:g} Å mesh")
        for row in connect(args.relaxed).select():
            if row.get("status") != "converged":
                continue
            atoms = row.toatoms()
            _, e_gamma, p_gamma, _ = evaluate(atoms, args.method, 0)
            reps, e_mesh, p_mesh, seconds = evaluate(atoms, args.method, XTB_MIN_WIDTH)
            print(f"{row.structure_id:>12} {row.natoms:3d} atoms  lengths "
                  f"{np.round(atoms.cell.lengths(), 2).tolist()} Å  repeats {reps}  P at Γ {p_gamma:+7.3f} GPa, "
                  f"on the mesh {p_mesh:+8.3f} GPa  E_mesh − E_Γ {1000 * (e_mesh - e_gamma):+8.1f} meV/atom  "
                  f"{seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
