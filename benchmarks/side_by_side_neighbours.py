"""How much does a crystal's fast-path result depend on the crystals that share its passes?

The fast path evaluates the crystals of a batch in one model pass. Every crystal keeps its own BFGS and
its exact float64 finish, but the float32 draft's matrix products are computed in blocks whose sizes
depend on how many atoms are in the pass, so a crystal's draft forces can differ in the last float32 bits
with other neighbours; BFGS on a flat surface amplifies that into a slightly different path to the same
minimum. This script relaxes one crystal alone and beside several different neighbour sets (study
settings, ANI-1x) and prints steps, ΔV, energy and final fmax; ``--draft none`` repeats it with exact
float64 forces throughout. Numbers go to the README's reliability section.

    python benchmarks/side_by_side_neighbours.py [--target 2000642] [--draft float32|none]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import bench_env  # noqa: F401  (threads, weights and paths set before numpy, torch and the project)

# isort: split
from bench_env import ROOT, SHARED  # noqa: F401
from relax_throughput import load_crystals

NEIGHBOUR_SETS = {"alone": (), "+ice": (1011063,), "+30-atom": (2007300,), "+48+76": (2100348, 7100406),
                  "+ice+30+48": (1011063, 2007300, 2100348)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=2000642)
    parser.add_argument("--draft", default="float32", choices=["float32", "none"])
    args = parser.parse_args()

    import torch

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.side_by_side import relax_many

    torch.set_num_threads(1)
    ids = sorted({args.target, *(i for s in NEIGHBOUR_SETS.values() for i in s)})
    with tempfile.TemporaryDirectory() as tmp:
        crystals = {sid: (atoms, v_exp) for sid, atoms, v_exp in load_crystals(ids, Path(tmp))}
    target = f"cod-{args.target:07d}"
    draft = None if args.draft == "none" else args.draft
    settings = RelaxSettings(strategy="fast", draft=draft).resolved(6)
    model = load_ani("ani1x")
    evaluator = SideBySideANI(model)
    drafter = SideBySideANI(model, dtype=torch.float32) if draft else None
    print(f"{target}: {len(crystals[target][0])} atoms, ANI-1x, fmax {settings.fmax}, draft {draft}")
    print(f"{'neighbours':<12} {'status':<10} {'steps':>5} {'dV %':>10} {'E eV':>16} {'fmax':>9}")
    volumes = []
    for label, others in NEIGHBOUR_SETS.items():
        items = [(target, crystals[target][0])] + [(f"cod-{i:07d}", crystals[f"cod-{i:07d}"][0]) for i in others]
        result = dict(relax_many(items, evaluator, settings, draft=drafter))[target]
        v_exp = crystals[target][1]
        dv = 100 * (result.atoms.get_volume() - v_exp) / v_exp
        volumes.append(dv)
        print(f"{label:<12} {result.status:<10} {result.steps:>5} {dv:>10.5f} {result.e_final:>16.8f} "
              f"{result.fmax_final:>9.2e}")
    print(f"spread of dV over neighbour sets: {max(volumes) - min(volumes):.5f} percentage points")


if __name__ == "__main__":
    main()
