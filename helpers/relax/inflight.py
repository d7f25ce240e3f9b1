"""Which structure a relax job is working on, kept on disk beside its output.

A potential's native code can kill the whole job process on one structure (an abort inside a Fortran
library, a segfault, the out-of-memory killer): no exception reaches Python, so nothing is recorded and a
rerun dies on the same structure again, leaving the rest of its batch undone. The mark says which
structure was in flight when the process died; a structure in flight at :data:`DEATHS_BEFORE_CRASHED`
deaths is recorded as ``crashed`` (final, with the reason) and the batch goes on. A stop we ask for
(Ctrl-C, SIGTERM) clears the mark first, so it never counts as a death.

A death counts only when the run that starts the job again is the run whose kernel died
(:data:`~helpers.vocabulary.RUN_ENV`): a campaign that reruns its own dead job saw the kernel die alone. A
mark left by another run says nothing about the structure — that whole run was killed (a session ended, a
node was preempted, ``kill -9``) — so the structure is tried again without counting. Notebooks run by
hand (JupyterLab, the papermill CLI) have no run id: each death there counts, as the kernel died alone.

Only the one-crystal-at-a-time path is marked (the potentials with native code run there); the ANI
side-by-side path has many crystals in flight and runs in torch alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from helpers.relax.checkpoint import CHECKPOINT_EVERY, Checkpoint
from helpers.store.db import is_url
from helpers.store.shards import job_tag, output_path
from helpers.vocabulary import RUN_ENV

#: deaths of the job process while on one structure before it is recorded as ``crashed`` (one death
#: may be something else: a kill -9, a node lost); each retry costs one rerun of the job
DEATHS_BEFORE_CRASHED = 2


class InFlight:
    """The on-disk mark of one relax job: ``{"structure_id": ..., "deaths": n, "run": ...}`` while a
    structure runs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_job(cls, out_db: str, potential: str, batch: int, n_batches: int) -> InFlight:
        """The mark of the job writing ``out_db`` (``{potential}`` filled in, as 03_relax takes it): beside
        its SQLite output (``relaxed_x.batch0000of0002.inflight.json``); for a server URL, in the user's
        cache, keyed by the URL and the job (jobs on other machines do not see it)."""
        target = output_path(out_db, potential, batch, n_batches)
        if not is_url(target):
            path = Path(target)
            return cls(path.with_name(f"{path.stem}.inflight.json"))
        key = hashlib.sha256(target.encode()).hexdigest()[:12]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codani" / "inflight"
        return cls(cache / f"{key}.{job_tag(potential, batch, n_batches)}.json")

    def died_on(self) -> tuple[str, int] | None:
        """The structure the previous process died on and how many deaths it has now, or None: the mark's
        deaths plus this one if the mark was left by this run (see the module's docstring)."""
        try:
            mark = json.loads(self.path.read_text())
            this_run = mark.get("run") == os.environ.get(RUN_ENV)
            return str(mark["structure_id"]), int(mark["deaths"]) + this_run
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def begin(self, structure_id: str, deaths: int = 0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"structure_id": structure_id, "deaths": deaths, "pid": os.getpid(),
                                   "run": os.environ.get(RUN_ENV)}))
        tmp.replace(self.path)  # atomic: a death mid-write leaves the old mark or the new one

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def checkpoint(self, structure_id: str, settings_hash: str, every: float = CHECKPOINT_EVERY) -> Checkpoint:
        """Where this job's relaxation of ``structure_id`` saves its progress: beside the mark
        (``relaxed_x.batch0000of0002.inflight.npz``), one file per job (a ``.pkl`` of older versions
        is never read)."""
        return Checkpoint(self.path.with_suffix(".npz"), key=f"{structure_id} {settings_hash}", every=every)


def crashed_message(potential: str, deaths: int) -> str:
    return (f"the job's process died {deaths} times while {potential} relaxed this structure (a crash in the "
            "potential's native code, e.g. an abort or segfault, or memory); recorded instead of retried — "
            "delete this row to try again")
