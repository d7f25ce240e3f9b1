"""Run one relax job (run_batch) in its own process; tests/relax/test_inflight.py lets the potential crash
it or sends it SIGTERM; tests/relax/test_checkpoint.py kills it mid-relaxation. Prints ``START`` once the
imports are done."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("clean", "out", "potential", "strategy"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--fmax", type=float, required=True)
    parser.add_argument("--max-steps-base", type=int, default=300)
    parser.add_argument("--steps-per-atom", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=float, default=300.0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--calculator-options", type=json.loads, default=None, help="JSON keyword arguments")
    args = parser.parse_args()
    from helpers.relax.engine import RelaxSettings
    from helpers.relax.stage import run_batch

    settings = RelaxSettings(potential=args.potential, fmax=args.fmax, strategy=args.strategy,
                             max_steps_base=args.max_steps_base, steps_per_atom=args.steps_per_atom)
    print("START", flush=True)
    run_batch(args.clean, args.out, potential=args.potential, settings=settings, progress=False, n_threads=1,
              checkpoint_every=args.checkpoint_every, limit=args.limit, calculator_options=args.calculator_options)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
