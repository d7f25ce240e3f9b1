"""Polite, resumable HTTP download of COD CIFs into a local cache folder.

Why each piece exists:
- a shared :class:`RateLimiter` keeps the whole run at ``rate`` requests/s however many worker
  threads there are, and a 429's ``Retry-After`` pauses every worker, not only the one that got it;
- :func:`get_text` retries what is worth retrying (timeouts, connection errors, truncated bodies,
  5xx, 429, HTML error pages served with status 200) with exponential backoff, and gives up with
  one short reason;
- every file is checked (:func:`cif_problem`, and against COD's own search row when there is one:
  :mod:`helpers.fetch.cod_verify`) and written atomically (temp file + ``os.replace``), so a file under its
  final name is complete: a killed run resumes by downloading only what is missing or broken, and a
  cached file that fails the cross-check (e.g. cut short by an older run) is downloaded again;
- redirects are followed by hand: one to another server (host:port) is refused unless allowed, and
  the final URL is what gets recorded.
"""

from __future__ import annotations

import email.utils
import hashlib
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from helpers.process.atomic import write_atomic

USER_AGENT = "codani/0.1 (research; ANI vs COD molecular crystals; python-requests)"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_DATA_BLOCK = re.compile(r"(?im)^[ \t]*data_(\S*)")
_COD_CODE = re.compile(r"(?im)^[ \t]*_cod_database_code[ \t]+['\"]?(\d+)")


@dataclass
class RetryPolicy:
    """How hard to try one URL. Defaults suit an overnight run against the real COD."""

    attempts: int = 6
    backoff: float = 2.0  # seconds before the 2nd attempt; doubles each time (with jitter)
    max_backoff: float = 120.0
    max_retry_after: float = 900.0  # a longer Retry-After is capped to this
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    #: a COD search can take minutes before its first byte; it gets its own read timeout
    search_read_timeout: float = 300.0
    max_redirects: int = 5

    def wait(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``: exponential, capped, 50-100 % jitter."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class RateLimiter:
    """At most ``rate`` request starts per second across all threads (``None``/0: unlimited)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this caller's slot; slots are handed out in call order."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)

    def defer(self, seconds: float) -> None:
        """Hand out no slot for ``seconds`` from now (the server asked us to back off)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


class FetchError(Exception):
    """A URL could not be fetched; ``reason`` is short and groupable, ``history`` lists every attempt."""

    def __init__(self, reason: str, attempts: int, history: list[str]):
        super().__init__(reason)
        self.reason, self.attempts, self.history = reason, attempts, history


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date; None when absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def decode(content: bytes) -> str:
    """Bytes -> text without ever failing (non-UTF-8 bytes kept as surrogate escapes)."""
    return content.decode("utf-8", errors="surrogateescape")


@dataclass
class Fetched:
    """A body that arrived and passed the check: its bytes, attempts used, the URL it came from."""

    body: bytes
    attempts: int
    url: str


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL (default ports made explicit): what "the same server" means."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _upgrade(url: str) -> str | None:
    """The https origin of a plain-http URL on the default port (the same server, encrypted)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and parts.port in (None, 80):
        return f"https://{(parts.hostname or '').lower()}:443"
    return None


def _follow(session: requests.Session, url: str, params: dict | None, policy: RetryPolicy,
            allowed_origins: Collection[str], limiter: RateLimiter | None = None) -> requests.Response:
    """GET with redirects followed by hand: a redirect to another server is refused (FetchError)
    unless its origin is in ``allowed_origins`` (http -> https on the same host is the same server);
    nothing is sent to a refused server. Every further hop waits for the rate limit."""
    allowed = {origin(url), _upgrade(url), *(origin(o) if "://" in o else o for o in allowed_origins)}
    current, query = url, params
    for hop in range(policy.max_redirects + 1):
        if hop and limiter is not None:
            limiter.wait()
        response = session.get(current, params=query, allow_redirects=False,
                               timeout=(policy.connect_timeout, policy.read_timeout))
        if not response.is_redirect:
            return response
        target = urllib.parse.urljoin(response.url, response.headers["Location"])
        response.close()
        if origin(target) not in allowed:
            raise FetchError(f"redirected to another server ({origin(target)})", 1,
                             [f"redirect {current} -> {target} refused"])
        current, query = target, None
    raise FetchError("too many redirects", 1, [f"more than {policy.max_redirects} redirects from {url}"])


def get(session: requests.Session, url: str, *, policy: RetryPolicy, limiter: RateLimiter,
        params: dict | None = None, check: Callable[[str], str | None] | None = None,
        allowed_origins: Collection[str] = (),
        on_retry: Callable[[int, str, float], None] | None = None) -> Fetched:
    """GET ``url`` with retries; returns :class:`Fetched` or raises :class:`FetchError`.

    ``check(text)`` returns a problem description for a body that arrived but is not what we
    asked for (HTML error page, wrong entry, unparseable, cut short): such a body is retried too.
    ``on_retry(attempt, reason, seconds)`` is told about every failed attempt before the wait.
    """
    history: list[str] = []
    for attempt in range(1, policy.attempts + 1):
        limiter.wait()
        try:
            try:
                response = _follow(session, url, params, policy, allowed_origins, limiter)
            except FetchError as exc:
                history.extend(exc.history)
                raise FetchError(exc.reason, attempt, history) from None
            if response.status_code in RETRY_STATUS:
                delay = retry_after_seconds(response.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {response.status_code}", delay)
            if response.status_code != 200:
                history.append(f"HTTP {response.status_code}")
                raise FetchError(f"HTTP {response.status_code}", attempt, history)
            body = response.content
            problem = check(decode(body)) if check else None
            if problem:
                raise _Retryable(problem)
            return Fetched(body, attempt, response.url)
        except _Retryable as exc:
            reason, delay = exc.reason, exc.retry_after
        except requests.Timeout:
            reason, delay = "timeout", None
        except requests.exceptions.ChunkedEncodingError:
            reason, delay = "truncated body", None
        except requests.ConnectionError as exc:
            reason, delay = f"connection error ({type(exc).__name__})", None
        except requests.RequestException as exc:
            reason, delay = f"request error ({type(exc).__name__}: {exc})", None
        history.append(reason)
        if attempt == policy.attempts:
            break
        if delay is not None:
            delay = min(delay, policy.max_retry_after)
            limiter.defer(delay)
        pause = delay if delay is not None else policy.wait(attempt)
        if on_retry is not None:
            on_retry(attempt, reason, pause)
        time.sleep(pause)
    raise FetchError(history[-1], policy.attempts, history)


def get_text(session: requests.Session, url: str, *, policy: RetryPolicy, limiter: RateLimiter,
             params: dict | None = None, check: Callable[[str], str | None] | None = None,
             ) -> tuple[bytes, int]:
    """:func:`get` returning (body bytes, attempts used) (redirects only within the same server)."""
    fetched = get(session, url, policy=policy, limiter=limiter, params=params, check=check)
    return fetched.body, fetched.attempts


def cif_problem(text: str, cod_id: int | None = None, parse: bool = True) -> str | None:
    """Why ``text`` is not an intact CIF of entry ``cod_id`` (None when it is).

    Checks: non-empty, not an HTML page, has a ``data_`` block, the COD id it states (in
    ``_cod_database_code`` or a 7-digit block name) is ``cod_id``, and (``parse``) ASE parses it.
    """
    if not text.strip():
        return "empty body"
    head = text.lstrip()[:500].lower()
    if head.startswith("<") or "<html" in head or "<!doctype" in head:
        return "HTML page instead of CIF"
    block = _DATA_BLOCK.search(text)
    if block is None:
        return "no data_ block"
    if cod_id is not None:
        code = _COD_CODE.search(text)
        stated = code.group(1) if code else block.group(1)
        if re.fullmatch(r"\d{7}", stated) and int(stated) != int(cod_id):
            return f"COD id mismatch (file is {stated})"
    if parse:
        from helpers.fetch.cif import cif_blocks

        try:
            blocks = cif_blocks(text)
        except Exception as exc:  # noqa: BLE001 - any parser failure is the reason
            return f"CIF parse error ({type(exc).__name__}: {exc})"
        if not blocks:
            return "no data_ block"
    return None


def cache_path(cache_dir: str | Path, cod_id: int) -> Path:
    """COD mirror layout: ``1000000`` -> ``<cache>/1/00/00/1000000.cif`` (few files per folder)."""
    digits = str(int(cod_id))
    return Path(cache_dir) / digits[0] / digits[1:3] / digits[3:5] / f"{digits}.cif"


def remove_partials(cache_dir: str | Path) -> int:
    """Delete temp files left by a killed run; returns how many."""
    n = 0
    for part in Path(cache_dir).rglob(".*.cif.*.part"):
        part.unlink(missing_ok=True)
        n += 1
    return n


@dataclass
class DownloadResult:
    """Outcome for one entry: ``downloaded`` (this run), ``cached`` (already intact) or ``failed``.

    ``url`` is where the file came from (after redirects); ``mismatch`` says how the file disagrees
    with COD's search row when COD served the same disagreeing bytes twice (kept, not retried).
    """

    cod_id: int
    status: str
    path: Path | None = None
    reason: str | None = None
    attempts: int = 0
    history: list[str] = field(default_factory=list)
    url: str | None = None
    mismatch: str | None = None
    redownloaded: str | None = None  # why a cached file was fetched again


def cif_url(base_url: str, cod_id: int) -> str:
    return f"{base_url.rstrip('/')}/{int(cod_id)}.cif"


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def download_cifs(cod_ids: Iterable[int], base_url: str, cache_dir: str | Path, *,
                  concurrency: int = 4, rate: float | None = 1.0, policy: RetryPolicy | None = None,
                  progress: bool = True, limiter: RateLimiter | None = None,
                  expected: dict[int, dict[str, Any]] | None = None,
                  allowed_origins: Collection[str] = ()) -> list[DownloadResult]:
    """Make ``<cache>/…/<id>.cif`` intact for every id; download only missing or broken files.

    ``expected`` maps an id to its COD search row (``cod_*`` keys): every downloaded file, and
    every cached file not yet checked against that row, is cross-checked with
    :func:`helpers.fetch.cod_verify.row_mismatch`; a file that disagrees is downloaded again (a cut
    transfer), and when COD serves the very same disagreeing bytes twice it is kept, with the
    disagreement in ``mismatch``. ``allowed_origins``: other servers a redirect may lead to.
    ``concurrency`` worker threads share one rate limit of ``rate`` requests/s. Returns one
    result per distinct id, in input order. Interrupting (Ctrl-C) cancels queued downloads.
    """
    from tqdm.auto import tqdm

    from helpers.fetch.cod_verify import VerifiedIndex, row_mismatch

    policy = policy or RetryPolicy()
    limiter = limiter or RateLimiter(rate)
    expected = expected or {}
    ids = list(dict.fromkeys(int(i) for i in cod_ids))
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    remove_partials(cache)
    index = VerifiedIndex(cache)
    index_lock = threading.Lock()
    results: dict[int, DownloadResult] = {}
    local = threading.local()
    sessions: list[requests.Session] = []

    def cached(cod_id: int, path: Path) -> tuple[DownloadResult | None, str | None, str | None]:
        """(result when the cached file stands, else None; its text; why it must be fetched again)."""
        try:
            body = path.read_bytes()
        except OSError:
            return None, None, None
        text = decode(body)
        if cif_problem(text, cod_id, parse=False) is not None:
            return None, None, None
        meta = expected.get(cod_id)
        digest = sha256_bytes(body)
        with index_lock:
            entry = index.entries.get(str(cod_id)) or {}
            known = meta is not None and index.passed(cod_id, digest, meta)
        url = entry.get("url") if entry.get("sha256") == digest else None
        url = url or cif_url(base_url, cod_id)
        if meta is None or known:
            return DownloadResult(cod_id, "cached", path, url=url, mismatch=entry.get("mismatch") if known
                                  else None), text, None
        problem = row_mismatch(text, meta)
        if problem is None:
            with index_lock:
                index.add(cod_id, digest, meta, url=url)
            return DownloadResult(cod_id, "cached", path, url=url), text, None
        return None, text, problem

    def one(cod_id: int) -> DownloadResult:
        path = cache_path(cache, cod_id)
        result, old_text, why = cached(cod_id, path) if path.is_file() else (None, None, None)
        if result is not None:
            return result
        if not hasattr(local, "session"):
            local.session = new_session()
            sessions.append(local.session)
        meta = expected.get(cod_id)
        seen = {"text": old_text if why else None, "mismatch": None}

        def check(text: str) -> str | None:
            problem = cif_problem(text, cod_id)
            if problem or meta is None:
                return problem
            mismatch = row_mismatch(text, meta)
            if mismatch is None:
                return None
            if seen["text"] == text:  # the same bytes twice: what COD has, not a cut transfer
                seen["mismatch"] = mismatch
                return None
            seen["text"] = text
            return f"does not match COD's search row ({mismatch})"

        try:
            fetched = get(local.session, cif_url(base_url, cod_id), policy=policy, limiter=limiter,
                          check=check, allowed_origins=allowed_origins)
        except FetchError as exc:
            return DownloadResult(cod_id, "failed", None, exc.reason, exc.attempts, exc.history,
                                  redownloaded=why)
        write_atomic(path, fetched.body)
        with index_lock:  # the final URL is remembered for later runs (and the row check, if any)
            index.add(cod_id, sha256_bytes(fetched.body), meta or {}, seen["mismatch"], url=fetched.url)
        return DownloadResult(cod_id, "downloaded", path, attempts=fetched.attempts, url=fetched.url,
                              mismatch=seen["mismatch"], redownloaded=why)

    counts = {"downloaded": 0, "cached": 0, "failed": 0}
    bar = tqdm(total=len(ids), desc="download", unit="cif", disable=not progress, smoothing=0.05)
    executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="cod-dl")
    try:
        futures = [executor.submit(one, cod_id) for cod_id in ids]
        for future in as_completed(futures):
            result = future.result()
            results[result.cod_id] = result
            counts[result.status] += 1
            bar.set_postfix(**counts, refresh=False)
            bar.update()
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
        with index_lock:
            if index.entries:
                index.save()
    executor.shutdown(wait=True)
    for session in sessions:
        session.close()
    return [results[i] for i in ids]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
