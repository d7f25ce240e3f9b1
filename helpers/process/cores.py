"""Cores that finished jobs leave idle go to the jobs still running: both cores busy to the end.

A campaign runs one single-thread job per core (one crystal per core beats one crystal on all cores).
When the queue runs dry, the jobs still running keep one thread each and the cores of the jobs that ended
stay idle: with six SevenNet crystals on two cores, the largest one ran alone for its last ~35 s on one
core. Each job registers itself in a shared folder (one marker file per process, named by host and pid)
and, between optimizer steps, takes ``cores // running jobs`` torch threads (never fewer than it was
given). A marker whose process is gone (a killed job) is ignored and removed. The folder is named by
:data:`CORE_SHARE_ENV`, which the executor that starts the jobs on one machine sets; without it a job keeps
its threads, as before.

Threads change only how fast a step is computed; the model, the optimizer and the settings are the same.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from helpers.process.parallel import worker_count

#: environment variable naming the folder where the jobs of one machine register
CORE_SHARE_ENV = "CODANI_CORE_SHARE"
#: seconds between two looks at the folder (a look is one directory listing)
LOOK_EVERY = 2.0


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class CoreShare:
    """This process's share of the machine's cores among the jobs registered in ``folder``.

    Use as a context manager around a job's work and call :meth:`refresh` now and then (every optimizer
    step is fine: it looks at the folder at most every ``look_every`` seconds).
    """

    def __init__(self, folder: str | Path, minimum: int = 1, cores: int | None = None,
                 look_every: float | None = None, set_threads: Callable[[int], None] | None = None) -> None:
        self.folder = Path(folder)
        self.minimum = max(1, minimum)
        self.cores = cores or worker_count()
        self.look_every = LOOK_EVERY if look_every is None else look_every
        self.set_threads = set_threads
        self.host = socket.gethostname()
        self.marker = self.folder / f"{self.host}.{os.getpid()}.running"
        self.threads = self.minimum
        self._looked = -float("inf")

    def __enter__(self) -> CoreShare:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker.touch()
        self._looked = -float("inf")
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        self.marker.unlink(missing_ok=True)
        self._apply(self.minimum)

    def running(self) -> int:
        """Jobs of this machine registered and alive (this one included); stale markers are removed."""
        count = 0
        for path in self.folder.glob(f"{self.host}.*.running"):
            try:
                pid = int(path.name.split(".")[-2])
            except ValueError:
                continue
            if pid == os.getpid() or _alive(pid):
                count += 1
            else:
                path.unlink(missing_ok=True)  # a job that was killed: its core is free
        return max(1, count)

    def share(self) -> int:
        """Torch threads this job should use now."""
        return max(self.minimum, self.cores // self.running())

    def refresh(self) -> int:
        """Take this job's share if ``look_every`` seconds passed since the last look; returns the threads."""
        now = time.monotonic()
        if now - self._looked >= self.look_every:
            self._looked = now
            self._apply(self.share())
        return self.threads

    def _apply(self, n: int) -> None:
        if n != self.threads:
            (self.set_threads or _set_torch_threads)(n)
            self.threads = n


class _NoShare:
    """Keeps the threads a job was given (no shared folder configured)."""

    threads = 0

    def __enter__(self) -> _NoShare:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def refresh(self) -> int:
        return self.threads


def keep_niceness() -> bool:
    """Give this process's scheduler group the niceness of the process itself (Linux autogroups).

    ``nice -n 19 make results`` should leave the machine to interactive work, but each notebook kernel starts
    in a session of its own, and with autogroups (Linux's default) niceness only counts inside a session: the
    campaign's kernels took two thirds of the cores from a test run at nice 0. Writing the niceness to
    ``/proc/self/autogroup`` restores it. True when it was applied (a niced process on such a kernel)."""
    niceness = os.nice(0)
    group = Path("/proc/self/autogroup")
    if niceness <= 0 or not group.exists():
        return False
    try:
        group.write_text(str(niceness))
    except OSError:  # not permitted here: the scheduler's default stands
        return False
    return True


def machine_folder() -> Path:
    """The folder every job of this user on this machine registers in (node-local temporary storage)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"codani-cores-{os.getuid()}"


def core_share(minimum: int, folder: str | Path | None = None) -> CoreShare | _NoShare:
    """A :class:`CoreShare` in ``folder`` (default: the folder :data:`CORE_SHARE_ENV` names), or, when none is
    configured, one that never changes the threads."""
    folder = folder or os.environ.get(CORE_SHARE_ENV)
    return CoreShare(folder, minimum=minimum) if folder else _NoShare()
