"""How far a relaxation in flight has got, saved now and then, so a stopped job continues it.

A tight-binding relaxation of one 80-atom crystal takes hours on a workstation core; a job stopped in
the middle (a session ends, a node is preempted, Ctrl-C) used to start that crystal again from its
experimental structure. With a checkpoint, :func:`helpers.relax.engine.relax` saves, at most every
:data:`CHECKPOINT_EVERY` seconds, the atoms and cell, the step count, the optimizer's own state (BFGS:
its Hessian) and the time spent; a rerun of the job continues from there and takes exactly the steps
the uninterrupted run would have taken (the same answer, the same step count, the total time).

A checkpoint belongs to one relaxation (:attr:`Checkpoint.key`: structure and settings hash); one made
for anything else is ignored. Only the one-crystal-at-a-time path saves them, beside the job's in-flight
mark (:mod:`helpers.relax.inflight`); side-by-side ANI batches take minutes and restart whole crystals.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: seconds between checkpoints: what a stopped job may have to redo (a save of a 1000-atom BFGS
#: Hessian is ~100 MB and well under a second)
CHECKPOINT_EVERY = 300.0


@dataclass
class Checkpoint:
    """Where one relaxation saves its progress (``path``) and which relaxation it is (``key``)."""

    path: Path
    key: str
    every: float = CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._last_save = time.perf_counter()

    def load(self) -> dict[str, Any] | None:
        """The saved progress of this relaxation, or None (no checkpoint, another relaxation's, unreadable)."""
        try:
            with self.path.open("rb") as fd:
                state = pickle.load(fd)  # noqa: S301 - our own file, written by save() below
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def due(self) -> bool:
        return time.perf_counter() - self._last_save >= self.every

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with this checkpoint's key); atomic, so a kill mid-write keeps the last one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fd:
            pickle.dump({**state, "key": self.key}, fd, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(self.path)
        self._last_save = time.perf_counter()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
