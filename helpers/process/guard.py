"""Limits for work on one untrusted entry, so one pathological CIF cannot stall a whole run.

Parsing and checking a CIF runs third-party code (ASE, pymatgen, neighbour lists) whose cost
depends on the file's numbers: a corrupted cell or a huge symmetry expansion can take minutes.
:func:`time_limit` interrupts such work with :class:`TimeLimitExceeded`, which the callers record
as the entry's reason.

The limit is on **CPU time** (``ITIMER_PROF``: user + system time of this process), so a verdict does
not depend on how busy the machine is: the same entry gets the same verdict on an idle laptop and on a
loaded cluster node. Work that does not use the CPU (a stuck read, a sleep) is caught by a wall-clock
backstop at :data:`WALL_BACKSTOP` times the limit; its reason says so. Both use POSIX signals in the
main thread; elsewhere (other threads, Windows), or when an outer timer is already running (e.g.
pytest-timeout's), the work runs unguarded rather than breaking the outer timer.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: default per-entry limit (CPU seconds) for reading one CIF file and for each filter check
DEFAULT_SECONDS = 60.0
#: the wall-clock backstop, in multiples of the CPU-time limit (only work that waits hits it)
WALL_BACKSTOP = 20.0


class TimeLimitExceeded(TimeoutError):
    """Work on one entry exceeded its time limit."""


def can_guard() -> bool:
    """True when :func:`time_limit` can arm its timers here (POSIX main thread, no timer running)."""
    return (hasattr(signal, "SIGPROF") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0 and signal.getitimer(signal.ITIMER_PROF)[0] == 0.0)


@contextmanager
def time_limit(seconds: float | None, what: str = "work", parameter: str | None = None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block once it used ``seconds`` of CPU time (or waited
    :data:`WALL_BACKSTOP` times as long in wall-clock time).

    ``None`` or ``0`` disables the limit; ``parameter`` names the setting in the message. Interrupts
    Python code and most library calls (the signal is handled at the next bytecode); a single C call
    that never returns to Python is only interrupted when it ends.
    """
    if not seconds or seconds <= 0 or not can_guard():
        yield
        return
    setting = f" ({parameter})" if parameter else ""

    def cpu_spent(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TimeLimitExceeded(f"{what} used more than its CPU-time limit of {seconds:g} s{setting}")

    def waited(signum, frame):  # noqa: ARG001
        raise TimeLimitExceeded(f"{what} waited more than {WALL_BACKSTOP * seconds:g} s of wall-clock time "
                                f"({WALL_BACKSTOP:g} x its CPU-time limit of {seconds:g} s{setting}) without "
                                "finishing")

    previous = signal.signal(signal.SIGPROF, cpu_spent), signal.signal(signal.SIGALRM, waited)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, WALL_BACKSTOP * seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGPROF, previous[0])
        signal.signal(signal.SIGALRM, previous[1])


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """In the block, SIGTERM (``kill``, a scheduler's stop) raises KeyboardInterrupt like Ctrl-C, so
    ``finally`` blocks run; the previous handler is restored after. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_on_sigterm() -> None:
    """For the rest of this process, SIGTERM behaves like Ctrl-C (a command-line run's stop): a campaign
    stops its relax jobs and logs its time instead of dying with them still running."""
    signal.signal(signal.SIGTERM, _interrupt)
