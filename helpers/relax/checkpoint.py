"""How far a relaxation in flight has got, saved now and then, so a stopped job continues it.

A tight-binding relaxation of one 80-atom crystal takes hours on a workstation core; a job stopped in
the middle (a session ends, a node is preempted, Ctrl-C) used to start that crystal again from its
experimental structure. With a checkpoint, :func:`helpers.relax.engine.relax` saves, at most every
:data:`CHECKPOINT_EVERY` seconds, the atoms and cell, the step count, the optimizer's own state (BFGS:
its Hessian) and the time spent; a rerun of the job continues from there and takes exactly the steps
the uninterrupted run would have taken (the same answer, the same step count, the total time).

A checkpoint belongs to one relaxation: :attr:`Checkpoint.key` (structure and settings hash) and the
fingerprint of the structure it started from (:func:`structure_fingerprint`: a corrected CIF under the
same id starts afresh); one made for anything else is ignored. Only the one-crystal-at-a-time path saves
them, beside the job's in-flight mark (:mod:`helpers.relax.inflight`); side-by-side ANI batches take
minutes and restart whole crystals.

A checkpoint is data, never code: one ``.npz`` file of plain numeric arrays read with
``allow_pickle=False``, the rest (numbers, strings, the layout of the optimizer's state) as JSON inside
it. A file that cannot be read as such (truncated, corrupt, another format, hostile) is treated as no
checkpoint, with a :class:`CheckpointWarning`: the relaxation starts afresh and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: seconds between checkpoints: what a stopped job may have to redo (a save of a 1000-atom BFGS
#: Hessian is ~100 MB and well under a second)
CHECKPOINT_EVERY = 300.0
#: the layout of the file; another one is not read
FORMAT = "codani-checkpoint-1"


class CheckpointWarning(UserWarning):
    """A checkpoint file could not be used (it is ignored; the relaxation starts afresh)."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is not what :meth:`Checkpoint.save` writes."""


def structure_fingerprint(atoms) -> str:
    """A short hash of a starting structure (atomic numbers, cell, positions, periodicity), bit for bit."""
    digest = hashlib.sha256()
    for part in (np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.cell.array, dtype=np.float64),
                 np.asarray(atoms.positions, dtype=np.float64), np.asarray(atoms.pbc, dtype=np.bool_)):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` (nested tuples, lists, dicts of numbers, strings, None, numeric arrays and ASE cells, as
    ASE optimizers hand their state over) as JSON, its arrays moved into ``arrays``."""
    from ase.cell import Cell

    if isinstance(value, Cell):  # a cell filter's reference cell (BFGS hands it over with its Hessian)
        return {"cell": encode(value.array, arrays)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"cannot checkpoint an array of dtype {value.dtype}")
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"array": name}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode(v, arrays) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, arrays) for k, v in value.items()}}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode`; :class:`CorruptCheckpoint` for anything it would not write."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind == "array" and isinstance(inner, str) and inner in arrays:
            return arrays[inner]
        if kind == "cell":
            from ase.cell import Cell

            return Cell(np.asarray(decode(inner, arrays), dtype=float).reshape(3, 3))
        if kind in ("tuple", "list") and isinstance(inner, list):
            items = [decode(v, arrays) for v in inner]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict" and isinstance(inner, dict):
            return {k: decode(v, arrays) for k, v in inner.items()}
    raise CorruptCheckpoint(f"unexpected entry {str(value)[:80]!r}")


@dataclass
class Checkpoint:
    """Where one relaxation saves its progress (``path``) and which relaxation it is (``key``)."""

    path: Path
    key: str
    every: float = CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._last_save = time.perf_counter()

    def load(self, start: str | None = None) -> dict[str, Any] | None:
        """The saved progress of this relaxation, or None: no checkpoint, another relaxation's (another key
        or, with ``start``, another starting structure's :func:`structure_fingerprint`), or a file that
        cannot be read as a checkpoint (a :class:`CheckpointWarning` says so). Never raises."""
        if not self.path.is_file():
            return None
        try:
            state = self._read()
        except Exception as err:  # noqa: BLE001 - anything unreadable is no checkpoint, never a blocked job
            warnings.warn(f"checkpoint {self.path} is unreadable ({type(err).__name__}: {str(err)[:200]}); "
                          "ignored, the relaxation starts afresh", CheckpointWarning, stacklevel=2)
            return None
        if state.get("key") != self.key or (start is not None and state.get("start") != start):
            return None
        return state

    def _read(self) -> dict[str, Any]:
        with np.load(self.path, allow_pickle=False) as npz:
            names = set(npz.files)
            if "meta" not in names:
                raise CorruptCheckpoint("no metadata")
            meta = json.loads(str(npz["meta"][()]))
            arrays = {name: npz[name] for name in names - {"meta"}}
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("state"), dict):
            raise CorruptCheckpoint(f"not a {FORMAT} file")
        if any(a.dtype.kind not in "biuf" for a in arrays.values()):
            raise CorruptCheckpoint("non-numeric array")
        state = decode(meta["state"], arrays)
        state.update(key=meta.get("key"), start=meta.get("start"))
        positions, cell = state.get("positions"), state.get("cell")
        if not (isinstance(positions, np.ndarray) and positions.ndim == 2 and positions.shape[1:] == (3,)
                and isinstance(cell, np.ndarray) and cell.shape == (3, 3) and isinstance(state.get("nsteps"), int)):
            raise CorruptCheckpoint("no positions, cell or step count of the expected shape")
        return state

    def due(self) -> bool:
        return time.perf_counter() - self._last_save >= self.every

    def save(self, state: dict[str, Any], start: str | None = None) -> None:
        """Write ``state`` (with this checkpoint's key and the ``start`` fingerprint); atomic, so a kill
        mid-write keeps the last one."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"format": FORMAT, "key": self.key, "start": start, "state": encode(state, arrays)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fd:
            np.savez(fd, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(self.path)
        self._last_save = time.perf_counter()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
