"""How far is a potential's evaluation of the bare cell from the crystal, and which supercell converges it?

tblite (GFN1-/GFN2-xTB) has no k-points (tblite issue #4): a crystal's cell is solved at Γ only. An
n1×n2×n3 supercell at Γ is the cell on the Γ-centred n1×n2×n3 k-point mesh, so
``helpers.relax.potentials.supercell`` repeats the cell until every perpendicular width reaches
``XTB_MIN_WIDTH``. This prints, per crystal, the energy per atom and the pressure of the supercells of
increasing minimum width (0 = the bare cell at Γ), at the experimental geometry; and, given a campaign's
relaxed database made at Γ (``--relaxed``), the pressure its relaxed cells are under once evaluated on the
converged mesh (a volume off by ΔV shows up as P ≈ −B·ΔV, B ≈ 5–15 GPa for molecular crystals).

GFN-FF (``--method gfn-ff``) is a real-space force field that sums its own periodic images, so any supercell
must give the bare cell's energy per atom and pressure. The ``gfnff`` package does not on small cells: its
energy per atom and pressure move with the supercell until ~8 Å, and on two 28-atom science crystals (COD
4110681, 7226905, a ≈ 3.6 Å) the bare cell aborts the process (``malloc(): invalid size``) where every supercell
runs. Each evaluation runs in its own process, so such an abort is printed, not fatal.

Usage: ``.venv/bin/python benchmarks/xtb_gamma_point.py [--method gfn1-xtb] [--widths 0,6,8,10,12]
[--relaxed path/relaxed_gfn1-xtb.db] [--mesh-width 8] [cif ...]`` (default: the two smallest cells of the
shared data; for gfn-ff the two it aborts on and three it does not).
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
GFNFF_CRYSTALS = [DATA / "cod-sample" / f"{cod}.cif" for cod in (
    "4110681", "7226905",  # 28 atoms each, a ≈ 3.6 Å: gfnff aborts on the bare cell
    "2004431", "1511801", "1100992")]  # 44-80 atoms: the bare cell runs
XTB = ("gfn1-xtb", "gfn2-xtb")


def _evaluate_here(atoms: Atoms, method: str, width: float) -> tuple[tuple[int, ...], float, float, float]:
    reps = supercell_repeats(atoms, width)
    big = atoms.repeat(reps)
    big.calc = get_potential(method).calculator(min_width=0)  # the supercell is built here, explicitly
    start = time.perf_counter()
    stress = big.get_stress()
    return reps, big.get_potential_energy() / len(big), -stress[:3].mean() / GPa, time.perf_counter() - start


def evaluate(atoms: Atoms, method: str, width: float) -> tuple[tuple[int, ...], float, float, float] | None:
    """(repeats, energy per atom eV, pressure GPa, seconds) of ``method`` on the supercell of ``width``, computed
    in a process of its own; None when that process died (a native abort)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_evaluate_here, atoms, method, width).result()
        except BrokenProcessPool:
            return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifs", nargs="*", type=Path)
    parser.add_argument("--method", default="gfn1-xtb", choices=(*XTB, "gfn-ff"))
    parser.add_argument("--widths", default="0,6,8,10,12", help="minimum perpendicular widths, Å (0: Γ alone)")
    parser.add_argument("--relaxed", type=Path, help="a relaxed_<method>.db made on the bare cell: its cells on "
                        "the mesh")
    parser.add_argument("--mesh-width", type=float, default=XTB_MIN_WIDTH, help="the supercell --relaxed cells are "
                        "evaluated on (minimum perpendicular width, Å)")
    args = parser.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    cifs = args.cifs or (GFNFF_CRYSTALS if args.method == "gfn-ff" else CRYSTALS)

    print(f"# {args.method} at the experimental geometry; last width is the reference")
    for path in cifs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(path)
        rows = [(w, evaluate(atoms, args.method, w)) for w in widths]
        e_ref, p_ref = rows[-1][1][1:3] if rows[-1][1] else (np.nan, np.nan)
        for w, found in rows:
            if found is None:
                print(f"{path.stem:>8} {len(atoms):3d} atoms  width {w:4.1f} Å  repeats "
                      f"{supercell_repeats(atoms, w)}  the process died (native abort)")
                continue
            reps, e, p, seconds = found
            print(f"{path.stem:>8} {len(atoms):3d} atoms  width {w:4.1f} Å  repeats {reps}  "
                  f"E − E_ref {1000 * (e - e_ref):+8.2f} meV/atom  P {p:+8.3f} GPa  (P − P_ref {p - p_ref:+7.3f})  "
                  f"{seconds:6.1f} s", flush=True)
    if args.relaxed:
        from ase.db import connect

        print(f"\n# cells relaxed on the bare cell ({args.relaxed.name}), evaluated there and on the "
              f"{args.mesh_width:g} Å mesh")
        for row in connect(args.relaxed).select():
            if row.get("status") != "converged":
                continue
            atoms = row.toatoms()
            bare, mesh = evaluate(atoms, args.method, 0), evaluate(atoms, args.method, args.mesh_width)
            if bare is None or mesh is None:
                print(f"{row.structure_id:>12} the process died (native abort)")
                continue
            (_, e_gamma, p_gamma, _), (reps, e_mesh, p_mesh, seconds) = bare, mesh
            print(f"{row.structure_id:>12} {row.natoms:3d} atoms  lengths "
                  f"{np.round(atoms.cell.lengths(), 2).tolist()} Å  repeats {reps}  P at Γ {p_gamma:+7.3f} GPa, "
                  f"on the mesh {p_mesh:+8.3f} GPa  E_mesh − E_Γ {1000 * (e_mesh - e_gamma):+8.1f} meV/atom  "
                  f"{seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
