"""Stage 3 (03_relax): relax atoms and cell of clean structures with one registered potential (BFGS,
the study's fmax and step cap); one batch of the clean database per job, every result committed at once."""

from helpers.relax.checkpoint import Checkpoint
from helpers.relax.engine import RelaxResult, RelaxSettings, relax
from helpers.relax.minima import check_minima
from helpers.relax.stability import Stability, rattle_test
from helpers.relax.stage import BatchReport, merge_shards, run_batch

__all__ = ["BatchReport", "Checkpoint", "RelaxResult", "RelaxSettings", "Stability", "check_minima", "merge_shards",
           "rattle_test", "relax", "run_batch"]
