"""Time limits for work on one untrusted entry, so one pathological CIF cannot stall a whole run.

Parsing and checking a CIF runs third-party code (ASE, pymatgen, neighbour lists) whose cost
depends on the file's numbers: a corrupted cell or a huge symmetry expansion can take minutes.
:func:`time_limit` interrupts such work after ``seconds`` with :class:`TimeLimitExceeded`, which
the callers record as the entry's reason. It uses ``SIGALRM`` (POSIX, main thread). Elsewhere
(other threads, Windows), or when an outer timer is already running (e.g. pytest-timeout's), it
does not arm a timer of its own and the work runs unguarded rather than breaking the outer one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: default per-entry limit (s) for reading one CIF file and for each filter check
DEFAULT_SECONDS = 60.0


class TimeLimitExceeded(TimeoutError):
    """Work on one entry took longer than its time limit."""


def can_guard() -> bool:
    """True when :func:`time_limit` can arm a timer here (POSIX main thread, no timer running)."""
    return (hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)


@contextmanager
def time_limit(seconds: float | None, what: str = "work") -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block if it runs longer than ``seconds``.

    ``None`` or ``0`` disables the limit. Interrupts Python code and most library calls (the
    signal is handled at the next bytecode); a single C call that never returns to Python
    is only interrupted when it ends.
    """
    if not seconds or seconds <= 0 or not can_guard():
        yield
        return

    def expired(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TimeLimitExceeded(f"{what} took longer than the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
