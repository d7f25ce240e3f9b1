"""Where an ``-d3`` relaxation spends its time, and what the fast path and a cheaper D3 cutoff buy.

For each crystal (clean COD entries, via the project's fetch + filter), one process, one thread:
  (a) ``one-by-one``: how the ``-d3`` variants ran before they could go side by side — relax()
      one crystal at a time with ANI + D3 (``DispersionCorrectedCalculator``, the project's D3
      cutoffs), float64 throughout: the reference every other row is compared with;
  (b) ``default``: the fast path (``relax_many``: one ANI pass for all crystals, float32
      draft then float64, D3 added per crystal) with the project's D3 cutoffs, and ``default exact``
      the same without the float32 draft (float64 throughout);
  (c) each other cutoff in ``--cutoffs`` (two-body/CN, Bohr; smoothed over the last 5 Bohr), with
      and without the draft (``--cutoffs 60/40``: simple-dftd3's own default, used before).
Prints per crystal and path: wall time, D3's share of it, steps, ΔV (%), and |ΔV − ΔV(a)| in
percentage points; then totals and the speed-up. The promise the fast path keeps: every ΔV
within 0.1 % (of the volume) of (a). Numbers depend on the machine's load: the load average is
printed at both ends.
Usage: ``.venv/bin/python benchmarks/d3_speed.py [--potential ani1x-d3] [--ids 2007300,...]
[--cutoffs 60/40] [--draft-cutoffs 30/25]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from ase.units import Bohr  # noqa: E402
from relax_throughput import DEFAULT_IDS, load_crystals  # noqa: E402  (sets ANI_MODEL_DIR, sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default="ani1x-d3")
    parser.add_argument("--ids", default=",".join(map(str, DEFAULT_IDS[:6])), help="COD ids in ../shared/data/cod")
    parser.add_argument("--cutoffs", default="60/40", help="other two-body/CN cutoffs (Bohr) to try, comma-separated")
    parser.add_argument("--draft-cutoffs", default="",
                        help="cheaper D3 cutoffs for the float32 draft only (exact finish at the default), e.g. 30/25")
    args = parser.parse_args()

    import torch

    from helpers.relax.engine import RelaxSettings, relax
    from helpers.relax.potentials.ani_side_by_side import SideBySideANI
    from helpers.relax.potentials.dispersion import DispersionCorrectedCalculator, SideBySideDispersion, copy_d3
    from helpers.relax.potentials.registry import get_potential
    from helpers.relax.side_by_side import relax_many

    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()}")
    pot = get_potential(args.potential)
    with tempfile.TemporaryDirectory() as tmp:
        crystals = load_crystals(tuple(int(i) for i in args.ids.split(",")), Path(tmp))
    settings = RelaxSettings(potential=args.potential).resolved(pot.steps_per_atom)
    calc = pot.calculator()
    if not isinstance(calc, DispersionCorrectedCalculator):
        raise SystemExit(f"{args.potential} is not an ANI + D3 potential")

    def timed_d3(d3):
        inner = d3.calculate
        d3.t_spent = 0.0

        def calculate(*a, **kw):
            t = time.perf_counter()
            inner(*a, **kw)
            d3.t_spent += time.perf_counter() - t

        d3.calculate = calculate
        return d3

    rows = {}
    one_by_one_total = 0.0
    timed_d3(calc.dispersion)
    for sid, atoms, v_exp in crystals:
        calc.dispersion.t_spent = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            result = relax(atoms, calc, settings)
            wall = time.perf_counter() - started
        one_by_one_total += wall
        dv = 100 * (result.atoms.get_volume() / v_exp - 1)
        rows[sid] = {"atoms": len(atoms), "a": (wall, calc.dispersion.t_spent, result.steps, result.status, dv)}

    def template(cut):
        if not cut:
            return calc.dispersion
        two_body, cn = (float(x) for x in cut.split("/"))
        return copy_d3(calc.dispersion, realspace_cutoff={"disp2": two_body * Bohr, "width2": 5 * Bohr,
                                                          "cn": cn * Bohr})

    # (name, D3 cutoff of the exact model, D3 cutoff of the float32 draft or False for no draft)
    cutoffs = [None] + [c for c in args.cutoffs.split(",") if c]
    variants = [(f"{'default' if cut is None else cut}{'' if draft else ' exact'}", cut, cut if draft else False)
                for cut in cutoffs for draft in (True, False)]
    variants += [(f"draft D3 {cut}", None, cut) for cut in args.draft_cutoffs.split(",") if cut]
    totals = {}
    for name, cut, draft_cut in variants:
        ani = SideBySideANI(calc.base.model)
        evaluator = SideBySideDispersion(ani, template(cut))
        draft = (SideBySideDispersion(SideBySideANI(calc.base.model, dtype=torch.float32), template(draft_cut))
                 if draft_cut is not False else None)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = dict(relax_many([(sid, atoms) for sid, atoms, _ in crystals], evaluator, settings, draft=draft))
        wall = time.perf_counter() - started
        totals[name] = (wall, evaluator.time_dispersion + (draft.time_dispersion if draft else 0.0))
        for sid, _atoms, v_exp in crystals:
            res = results[sid]
            dv = 100 * (res.atoms.get_volume() / v_exp - 1)
            rows[sid][name] = (res.extra["cost_time"], None, res.steps, res.status, dv)

    print(f"\n{args.potential}, fmax {settings.fmax} eV/Å; time in s (side by side: the crystal's share), "
          "dV in %, diff = |dV - dV(one-by-one)| in percentage points")
    header = f"{'crystal':>14} {'atoms':>5} | {'one-by-one s':>12} {'D3 s':>6} {'steps':>5} {'dV':>7}"
    for name, *_ in variants:
        header += f" | {name + ' s':>16} {'steps':>5} {'dV':>7} {'diff':>6}"
    print(header)
    worst = {name: 0.0 for name, *_ in variants}
    for sid, row in rows.items():
        wall, d3, steps, status, dv = row["a"]
        line = f"{sid:>14} {row['atoms']:>5} | {wall:>12.1f} {d3:>6.1f} {steps:>5} {dv:>7.3f}"
        for name, *_ in variants:
            cost, _, s2, st2, dv2 = row[name]
            worst[name] = max(worst[name], abs(dv2 - dv))
            line += f" | {cost:>16.1f} {s2:>5} {dv2:>7.3f} {abs(dv2 - dv):>6.3f}"
        print(line)
    d3_one = sum(r["a"][1] for r in rows.values())
    share = 100 * d3_one / one_by_one_total
    print(f"\none-by-one: {one_by_one_total:.1f} s, of which D3 {d3_one:.1f} s ({share:.0f} %)")
    for name, *_ in variants:
        wall, d3 = totals[name]
        print(f"{name}: {wall:.1f} s, of which D3 {d3:.1f} s ({100 * d3 / wall:.0f} %); "
              f"speed-up {one_by_one_total / wall:.1f}x; max |dV - dV(one-by-one)| {worst[name]:.3f} pp")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
