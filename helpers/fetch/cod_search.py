"""What the web fetch asks COD for: one search per exact element set, answers checked and saved.

COD's search can require elements (``el1..el8``) and bound the number of distinct elements
(``strictmin``/``strictmax``) but cannot say "nothing outside C, H, N, O". Asking "must contain C and
H" misses CO2, N2, water and H-free compounds. So for wanted elements E we ask, for every non-empty
subset S of E, for the entries whose element set is exactly S (``el1..elN`` = S, ``strictmin =
strictmax = N``): 15 queries for C/H/N/O, whose answers are disjoint and together are every entry
made only of E. :func:`helpers.fetch.cod.select` still checks every row.

An answer is only taken when it is one: an empty body, a body not in the requested format, or far
fewer rows than the saved answer to the same query (:data:`MIN_FRACTION`) is a fault and is asked
again; when COD still cannot answer, the saved answer to the same query **from the same server** is
used, and that is said loudly (notebook output and report) with its age. A good answer replaces
the saved one; nothing else does. The search has its own, longer read timeout
(``RetryPolicy.search_read_timeout``), and a wait is reported every ``heartbeat`` seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from helpers.fetch.cod import CodSearchError, parse_search, search_url
from helpers.fetch.download import FetchError, RateLimiter, RetryPolicy, decode, get, new_session
from helpers.process.atomic import write_atomic

#: an answer with fewer rows than this fraction of the saved answer to the same query is a fault
MIN_FRACTION = 0.5

Say = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


def element_sets(elements: Sequence[str], must_contain: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``elements`` (minus ``exclude``) that holds ``must_contain``,
    largest first (C,H,N,O; then C,H,N …), each in the order given."""
    wanted = [e for e in dict.fromkeys(elements) if e not in set(exclude)]
    outside = [e for e in must_contain if e not in wanted]
    if outside:
        raise ValueError(f"must_contain {outside} is not within elements {wanted}: nothing could match")
    if len(wanted) > 8:
        raise ValueError(f"COD can require at most 8 elements (el1..el8); got {len(wanted)}: {wanted}")
    subsets = [s for n in range(len(wanted), 0, -1) for s in itertools.combinations(wanted, n)
               if set(must_contain) <= set(s)]
    if not subsets:
        raise ValueError("no element set to ask COD for")
    return subsets


def exact_params(subset: Sequence[str], fmt: str = "json") -> dict[str, str]:
    """Query for the entries whose element set is exactly ``subset``."""
    params = {f"el{i}": e for i, e in enumerate(subset, 1)}
    params["strictmin"] = params["strictmax"] = str(len(subset))
    params["format"] = fmt
    return params


def format_age(seconds: float) -> str:
    """``3 h 12 min``, ``2.5 days``: how old a saved answer is."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"
    return f"{seconds / 86400:.1f} days"


@dataclass
class Answer:
    """A search answer that passed the checks: its rows, the URL it came from, attempts used."""

    rows: list[dict[str, Any]]
    url: str
    attempts: int


@contextmanager
def _heartbeat(say: Say | None, every: float | None, message: Callable[[float], str]) -> Iterator[None]:
    """Call ``say(message(elapsed))`` every ``every`` seconds until the block ends."""
    if say is None or not every:
        yield
        return
    stop, start = threading.Event(), time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            say(message(time.monotonic() - start))

    thread = threading.Thread(target=beat, name="cod-search-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def ask(base_url: str, params: dict[str, str], *, policy: RetryPolicy, limiter: RateLimiter,
        session: requests.Session | None = None, min_rows: int = 0, saved_rows: int | None = None,
        say: Say | None = None, heartbeat: float | None = 30.0, label: str = "",
        allowed_origins: Collection[str] = ()) -> Answer:
    """One COD search, retried on faults (also: empty body, wrong format, fewer than ``min_rows``
    rows), with the search read timeout; raises :class:`FetchError` when no good answer came."""
    fmt = params.get("format", "json")
    search_policy = replace(policy, read_timeout=policy.search_read_timeout)
    label = label or ",".join(v for k, v in params.items() if k.startswith("el"))

    def problem(text: str) -> str | None:
        try:
            rows = parse_search(text, fmt)
        except CodSearchError as exc:
            return str(exc)
        if len(rows) < min_rows:
            return (f"only {len(rows)} entries where the saved answer to this query had {saved_rows} "
                    "(a partial answer?)")
        return None

    def retrying(attempt: int, reason: str, pause: float) -> None:
        if say is not None:
            say(f"COD search {{{label}}}: attempt {attempt} of {policy.attempts} failed ({reason}); "
                f"asking again in {pause:.0f} s")

    def waiting(elapsed: float) -> str:
        return (f"COD search {{{label}}}: no answer yet after {elapsed:.0f} s (a search can take minutes; "
                f"read timeout {search_policy.read_timeout:g} s per attempt, failed attempts are reported)")

    own = session is None
    session = session or new_session()
    try:
        with _heartbeat(say, heartbeat, waiting):
            fetched = get(session, search_url(base_url), params=params, policy=search_policy, limiter=limiter,
                          check=problem, allowed_origins=allowed_origins, on_retry=retrying)
    finally:
        if own:
            session.close()
    return Answer(parse_search(decode(fetched.body), fmt), fetched.url, fetched.attempts)


@dataclass
class Saved:
    """A saved answer: rows, when (ISO time and epoch seconds), and where it came from."""

    rows: list[dict[str, Any]]
    time: str
    epoch: float
    url: str

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.epoch)


class SavedAnswers:
    """Saved search answers in ``<cache>/search/``, one file per (server, query): an answer from one
    server is never used for another."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def server(base_url: str) -> str:
        return base_url.rstrip("/") + "/"

    def path(self, base_url: str, params: dict[str, str]) -> Path:
        key = json.dumps([self.server(base_url), sorted(params.items())])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        label = "-".join(v for k, v in sorted(params.items()) if k.startswith("el")) or "query"
        return self.directory / f"{label}.{digest}.json"

    def load(self, base_url: str, params: dict[str, str]) -> Saved | None:
        try:
            record = json.loads(self.path(base_url, params).read_text())
        except (OSError, ValueError):
            return None
        if record.get("server") != self.server(base_url) or record.get("params") != params:
            return None
        rows = record.get("rows")
        if not isinstance(rows, list):
            return None
        return Saved(rows, record.get("time", "?"), float(record.get("epoch", 0.0)), record.get("url", ""))

    def save(self, base_url: str, params: dict[str, str], answer: Answer) -> None:
        record = {"server": self.server(base_url), "params": params, "url": answer.url,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": time.time(), "rows": answer.rows}
        write_atomic(self.path(base_url, params), json.dumps(record).encode())


@dataclass
class QueryOutcome:
    """One query of the search: the element set, how many rows, and where they came from."""

    elements: str
    rows: int
    source: str  # "COD" or "saved answer"
    url: str
    saved_at: str | None = None
    age: str | None = None
    problem: str | None = None


@dataclass
class SearchOutcome:
    """All rows (the union of the queries' answers), one outcome per query, and what to tell the user."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    queries: list[QueryOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self):
        import pandas as pd

        return pd.DataFrame([q.__dict__ for q in self.queries])


def search_all(base_url: str, elements: Sequence[str], *, saved_dir: str | Path, policy: RetryPolicy,
               limiter: RateLimiter, fmt: str = "json", must_contain: Sequence[str] = (),
               exclude: Sequence[str] = (), min_fraction: float = MIN_FRACTION, say: Say | None = _print,
               heartbeat: float | None = 30.0, allowed_origins: Collection[str] = ()) -> SearchOutcome:
    """Ask COD for every exact element set within ``elements``; union of the answers.

    Raises RuntimeError when a query gets no good answer and none is saved for this server. After a
    query has used up all its attempts, the next ones get at most 2 until one is answered again (COD
    is likely down: 15 queries x 6 attempts of backoff would take a quarter of an hour to fall back).
    """
    store = SavedAnswers(saved_dir)
    current = policy
    outcome = SearchOutcome()
    subsets = element_sets(elements, must_contain, exclude)
    session = new_session()
    try:
        for number, subset in enumerate(subsets, 1):
            label = ",".join(subset)
            params = exact_params(subset, fmt)
            saved = store.load(base_url, params)
            saved_n = len(saved.rows) if saved else 0
            min_rows = max(1 if saved_n else 0, math.ceil(min_fraction * saved_n))
            started = time.monotonic()
            try:
                answer = ask(base_url, params, policy=current, limiter=limiter, session=session, min_rows=min_rows,
                             saved_rows=saved_n, say=say, heartbeat=heartbeat, label=label,
                             allowed_origins=allowed_origins)
            except FetchError as exc:
                if saved is None:
                    raise RuntimeError(
                        f"COD search for entries made of exactly {{{label}}} failed ({exc.reason}; attempts: "
                        f"{exc.history}) and no earlier answer to this query from {store.server(base_url)} is "
                        "saved: not going on with a partial list of entries") from exc
                current = replace(policy, attempts=min(policy.attempts, 2))
                age = format_age(saved.age)
                note = (f"COD search {{{label}}} failed ({exc.reason}); USING THE SAVED ANSWER of {saved.time} "
                        f"({age} old, {saved_n} entries) from {saved.url or store.server(base_url)}")
                outcome.notes.append(note)
                if say is not None:
                    say(f"WARNING: {note}")
                outcome.rows.extend(saved.rows)
                outcome.queries.append(QueryOutcome(label, saved_n, "saved answer", saved.url, saved.time, age,
                                                    exc.reason))
                continue
            current = policy
            store.save(base_url, params, answer)
            outcome.rows.extend(answer.rows)
            outcome.queries.append(QueryOutcome(label, len(answer.rows), "COD", answer.url))
            if say is not None:
                say(f"COD search {number}/{len(subsets)} {{{label}}}: {len(answer.rows)} entries "
                    f"({time.monotonic() - started:.1f} s)")
    finally:
        session.close()
    return outcome
