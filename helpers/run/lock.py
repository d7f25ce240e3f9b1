"""One campaign run (``demo``, ``campaign``, ``results``) at a time per work directory.

Two campaigns in one work dir relax the same structures twice and delete each other's analysis files.
:class:`WorkDirLock` holds an exclusive ``flock`` on ``<work_dir>/.results.lock`` while a run lasts: the
kernel drops it when the holding process ends in any way (``kill -9`` included), so a lock left by a dead
run is taken over by the next one without asking. The file also says who holds it (pid, host, start), so
a second run can say so and exit, or wait for it (``--wait``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".results.lock"


class WorkDirBusy(RuntimeError):
    """Another run holds the work directory."""


class WorkDirLock:
    """``with WorkDirLock(work_dir, wait=False):`` — the work dir is this process's until the block ends."""

    def __init__(self, work_dir: str | Path, wait: bool = False, poll_seconds: float = 5.0):
        self.path = Path(work_dir) / LOCK_FILE
        self.wait = wait
        self.poll_seconds = poll_seconds
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it (or that it is unknown)."""
        try:
            info = json.loads(self.path.read_text())
            return (f"pid {info['pid']} on {info['host']} since {info['started']} "
                    f"({' '.join(info.get('argv', []))[:200]})")
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait:
                    os.close(fd)
                    raise WorkDirBusy(f"{self.path.parent} is in use by another run: {self.holder()}; "
                                      "wait for it (or rerun with --wait), or use another --work-dir") from None
                if not told:
                    print(f"waiting for the run holding {self.path.parent}: {self.holder()}", flush=True)
                    told = True
                time.sleep(self.poll_seconds)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
