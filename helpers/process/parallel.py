"""Parse and check structures on every core, results back in input order for a single writer.

Reading a COD CIF (ASE's symmetry expansion) costs ~0.13 s and filtering one ~0.1 s on this
machine: ~3 hours one core at a time for the ~40k C/H/N/O entries. The work per item is pure
Python/numpy and independent, the database writes are not (one writer keeps SQLite transactions
and the resume logic simple), so the callers map the work over a process pool and write the
results in order as they come. Few items run in the calling process: a pool costs ~1 s to start.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain, islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: fewer items than this run in the calling process (no pool start-up for a demo of 4 files)
SERIAL_BELOW = 16


def worker_count(n_workers: int | None = None) -> int:
    """``n_workers``, or the cores this process may use (respects taskset/SLURM cpusets)."""
    if n_workers is not None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        return n_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], n_workers: int | None = 1,
                on_crash: Callable[[T, BaseException], R] | None = None,
                serial_below: int = SERIAL_BELOW) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for each item in order, computed by ``n_workers`` processes, lazily.

    At most four items per worker are in flight, so a lazy source (downloads) is read as it comes.
    ``fn`` must be a module-level function (workers are spawned, not forked: the caller may hold
    torch or Jupyter threads). An exception raised by ``fn`` propagates as in ``map``. A worker that
    dies (segfault, out of memory) breaks the pool: the items in flight are retried one at a time
    in a single-worker pool, and an item that kills that one too becomes
    ``on_crash(item, error)`` (re-raised when ``on_crash`` is None); the rest go on in a new pool.
    """
    workers = worker_count(n_workers)
    iterator = iter(items)
    head = list(islice(iterator, serial_below if workers > 1 else 0))
    if workers == 1 or len(head) < serial_below:
        for item in chain(head, iterator):
            yield item, fn(item)
        return
    pending: deque[tuple[T, Future]] = deque()
    source = chain(head, iterator)
    pool = _pool(workers)
    try:
        while True:
            while len(pending) < 4 * workers:
                item = next(source, _END)
                if item is _END:
                    break
                pending.append((item, pool.submit(fn, item)))
            if not pending:
                return
            item, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                stranded = [item] + [it for it, _ in pending]
                pending.clear()
                yield from _one_at_a_time(fn, stranded, on_crash)
                pool = _pool(workers)
                continue
            yield item, result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_END = object()


def _pool(workers: int) -> ProcessPoolExecutor:
    """A started pool, checked: a pool that cannot even start must not pin crashes on items."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pool.submit(os.getpid).result(timeout=300)
    except Exception as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError(
            f"worker processes could not start ({type(exc).__name__}: {exc}). In a script, put the code "
            "that calls fetch/run_filter with n_workers > 1 under `if __name__ == \"__main__\":` "
            "(workers are spawned and import the main module), or use n_workers=1.") from exc
    return pool


def _one_at_a_time(fn: Callable[[T], R], items: list[T],
                   on_crash: Callable[[T, BaseException], R] | None) -> Iterator[tuple[T, R]]:
    """Run items in a single-worker pool, one by one, so a crash is pinned on the item that caused it."""
    pool = _pool(1)
    try:
        for item in items:
            try:
                yield item, pool.submit(fn, item).result()
            except BrokenProcessPool as exc:
                pool.shutdown(wait=False, cancel_futures=True)
                if on_crash is None:
                    raise
                yield item, on_crash(item, exc)
                pool = _pool(1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
