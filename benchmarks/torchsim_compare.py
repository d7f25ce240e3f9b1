"""torch-sim's batched FIRE against the project's fast path, on the same crystals and model.

Issue 7 asked to evaluate torch-sim (a maintained engine for batched optimizers with cell filters)
before writing a batched loop of our own. torch-sim is **not** a project dependency; this script
needs it installed beside the project (``pip install torch-sim-atomistic``; 0.3.0 is what the
package mirror here offers) and exits with a message otherwise.

The model is the project's :class:`helpers.relax.potentials.ani_side_by_side.SideBySideANI` (same float64 ensemble, same
numbers as the study's calculator) behind torch-sim's ``ModelInterface``; all crystals of the list
are relaxed in one batch by ``frechet_cell_fire`` (ASE-flavoured FIRE on the same Fréchet cell
parametrisation as ASE's FrechetCellFilter), with torch-sim's force convergence test *including*
the cell forces, at the study's fmax. Prints per crystal: converged or not, steps, final fmax,
volume change against the study-method volume from a ``relax_throughput.py`` CSV (``--study-csv``)
and the total wall time, to compare with the fast path's time in that CSV's run.
Usage: ``PYTHONPATH=<torch-sim dir> .venv/bin/python benchmarks/torchsim_compare.py --study-csv bench.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import relax_throughput as bench  # noqa: E402  (sets ANI_MODEL_DIR and the project path)
import torch  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.stress import voigt_6_to_full_3x3_stress  # noqa: E402

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError:  # pragma: no cover - optional
    sys.exit("torch-sim is not installed: pip install torch-sim-atomistic (not a project dependency)")


class TorchaniModel(ModelInterface):
    """SideBySideANI (energies, forces, stresses of many crystals in one pass) for torch-sim."""

    def __init__(self, batched) -> None:
        super().__init__()
        self.batched = batched
        self._device, self._dtype = batched.device, batched.dtype
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms"

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        atoms_list = ts.io.state_to_atoms(state)
        # torch-sim swaps systems in and out of the batch: key each pair list by the crystal itself
        keys = [(len(a), a.numbers.tobytes()) for a in atoms_list]
        results = self.batched.compute(atoms_list, keys)
        to = dict(dtype=self._dtype, device=self._device)
        return {
            "energy": torch.tensor([r["energy"] for r in results], **to),
            "forces": torch.tensor(np.concatenate([r["forces"] for r in results]), **to),
            "stress": torch.tensor(np.stack([voigt_6_to_full_3x3_stress(r["stress"]) for r in results]), **to),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-csv", help="a relax_throughput.py CSV with the study-method volumes")
    parser.add_argument("--fmax", type=float, default=5e-4)
    parser.add_argument("--potential", default="ani1x")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from helpers.relax.engine import RelaxSettings
    from helpers.relax.potentials.ani import load_ani
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.potentials.registry import get_potential

    with tempfile.TemporaryDirectory() as tmp:
        crystals = bench.load_crystals(bench.DEFAULT_IDS, Path(tmp))
    atoms_list = [a for _, a, _ in crystals]
    settings = RelaxSettings(potential=args.potential).resolved(get_potential(args.potential).steps_per_atom)
    cap = max(settings.max_steps(len(a)) for a in atoms_list)
    model = TorchaniModel(SideBySideANI(load_ani(args.potential)))

    start = time.perf_counter()
    final = ts.optimize(
        system=atoms_list, model=model, optimizer=ts.frechet_cell_fire,
        convergence_fn=ts.generate_force_convergence_fn(args.fmax, include_cell_forces=True),
        max_steps=cap, steps_between_swaps=5,
        autobatcher=ts.InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=1024))
    wall = time.perf_counter() - start

    study = pd.read_csv(args.study_csv).set_index("structure_id") if args.study_csv else None
    out = ts.io.state_to_atoms(final)
    rows = []
    for (sid, atoms, v_exp), relaxed in zip(crystals, out):
        res = model.batched.compute([relaxed], [("check", sid)])[0]
        relaxed.calc = SinglePointCalculator(relaxed, energy=res["energy"], forces=res["forces"],
                                             stress=res["stress"])
        filt_fmax = float(np.sqrt((FrechetCellFilter(relaxed).get_forces() ** 2).sum(axis=1)).max())
        row = {"structure_id": sid, "natoms": len(atoms), "fmax_filter": filt_fmax,
               "converged": filt_fmax < args.fmax, "V": relaxed.get_volume(),
               "dV_exp_pct": 100 * (relaxed.get_volume() / v_exp - 1), "E_atom": res["energy"] / len(relaxed)}
        if study is not None and sid in study.index:
            s = study.loc[sid]
            row["dV_diff_pct"] = 100 * abs(row["V"] - s.V_study) / s.V_study
            row["study_steps"], row["fast_steps"] = int(s.study_steps), int(s.fast_steps)
        rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"torch-sim frechet_cell_fire, {len(out)} crystals in one batch, {args.threads} threads: "
          f"{wall:.1f} s wall, {model.batched.n_calls} model passes, "
          f"{int(table.converged.sum())}/{len(table)} converged to fmax {args.fmax}")


if __name__ == "__main__":
    main()
