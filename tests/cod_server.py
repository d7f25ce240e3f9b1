"""A stand-in for the COD web service on 127.0.0.1, serving real CIF files, with injectable faults.

Endpoints (as COD's): ``/cod/result?el1..el8&nel1..nel4&strictmin&strictmax&format=json|csv|lst|count``
and ``/cod/<id>.cif``. Search rows are built from the CIF files (COD ``data`` table column names;
numbers as text with uncertainties, formula like ``- C6 H6 -``); ``extra_rows`` adds synthetic rows
(e.g. tricky formulas) and ``row_overrides`` changes columns of real ones (pressure, duplicateof).

Faults: ``faults[key]`` is a list consumed one per request to ``key`` (a COD id, or ``"search"``);
``always[key]`` applies to every request. Kinds:
``timeout`` (sleep ``hang`` s, then close without answering), ``slow`` (sleep ``slow`` s, then
answer normally), ``500``/``502``/``503``/``404`` (that status, HTML body), ``429`` (with
``Retry-After: retry_after``), ``truncate`` (full Content-Length, half the body, close), ``html``
(status 200 with an HTML error page), ``empty`` (200, empty body), ``reset`` (close at once),
``wrong_id`` (200 with another entry's CIF).

Element logic here is deliberately independent of ``helpers.fetch.formula`` (atom-site types first,
then a plain token split of the formula), so tests do not check the client against itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

COLUMNS = ["file", "a", "b", "c", "alpha", "beta", "gamma", "vol", "celltemp", "diffrtemp",
           "cellpressure", "diffrpressure", "nel", "sg", "sgHall", "sgNumber", "formula", "calcformula",
           "Z", "Zprime", "Rall", "Robs", "doi", "method", "radiation", "duplicateof", "flags",
           "journal", "year", "volume"]
CIF_TAGS = {  # COD column -> CIF tags (first present wins)
    "a": ["_cell_length_a"], "b": ["_cell_length_b"], "c": ["_cell_length_c"],
    "alpha": ["_cell_angle_alpha"], "beta": ["_cell_angle_beta"], "gamma": ["_cell_angle_gamma"],
    "vol": ["_cell_volume"], "celltemp": ["_cell_measurement_temperature"],
    "diffrtemp": ["_diffrn_ambient_temperature"], "cellpressure": ["_cell_measurement_pressure"],
    "diffrpressure": ["_diffrn_ambient_pressure"],
    "sg": ["_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m"],
    "sgHall": ["_space_group_name_hall", "_symmetry_space_group_name_hall"],
    "sgNumber": ["_space_group_it_number", "_symmetry_int_tables_number"],
    "Z": ["_cell_formula_units_z"], "Robs": ["_refine_ls_r_factor_gt"], "Rall": ["_refine_ls_r_factor_all"],
    "doi": ["_journal_paper_doi"], "radiation": ["_diffrn_radiation_type"],
    "journal": ["_journal_name_full"], "year": ["_journal_year"], "volume": ["_journal_volume"],
}
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>Error</title></head>"
              b"<body><h1>Service temporarily unavailable</h1></body></html>")


def _formula_tokens(formula: str) -> set[str]:
    """Element symbols of a Hill formula by plain token split: 'C6 H6 N2' -> {C, H, N}."""
    out = set()
    for token in re.split(r"[\s,]+", formula.strip().strip("-")):
        match = re.match(r"([A-Z][a-z]?)", token)
        if match:
            out.add(match.group(1))
    return out


def cif_row(path: Path) -> dict[str, Any]:
    """A COD search row for one CIF file (values as COD gives them: text, None when unknown)."""
    import warnings

    from ase.io.cif import parse_cif

    text = path.read_bytes().decode("utf-8", "replace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = next(iter(parse_cif(io.StringIO(text))))
    row: dict[str, Any] = {"file": path.stem}
    for column, tags in CIF_TAGS.items():
        for tag in tags:
            value = block.get(tag)
            if value not in (None, "?", "."):
                row[column] = str(value)
                break
    formula = block.get("_chemical_formula_sum")
    formula = None if formula in (None, "?", ".") else " ".join(str(formula).split())
    row["formula"] = f"- {formula} -" if formula else None
    # COD searches on the formula; the atom sites stand in only when there is none
    elements = _formula_tokens(formula) if formula else set()
    if not elements:
        types = block.get("_atom_site_type_symbol") or block.get("_atom_site_label") or []
        elements = {m.group(1) for t in types if (m := re.match(r"([A-Z][a-z]?)", str(t)))}
    row["_elements"] = sorted(elements)
    row["nel"] = str(len(elements))
    row["method"] = "single crystal"
    return row


_ROWS: dict[tuple[Path, float], dict[str, Any]] = {}


def _cif_row_cached(path: Path) -> dict[str, Any]:
    """:func:`cif_row`, parsed once per file and process (many tests start a server)."""
    key = (path.resolve(), path.stat().st_mtime)
    if key not in _ROWS:
        _ROWS[key] = cif_row(path)
    return _ROWS[key]


@dataclass
class FakeCod:
    """A running fake COD: ``url`` is the base (``http://127.0.0.1:<port>/cod/``)."""

    cif_dir: Path
    faults: dict[Any, list[str]] = field(default_factory=dict)
    always: dict[Any, str] = field(default_factory=dict)
    extra_rows: list[dict[str, Any]] = field(default_factory=list)
    row_overrides: dict[int, dict[str, Any]] = field(default_factory=dict)
    delay: float = 0.0
    hang: float = 3.0
    slow: float = 0.3
    retry_after: str = "1"
    url: str = ""
    #: requests per key (COD id or "search"), successful full answers per key, and a timed log
    hits: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    log: list[tuple[float, Any, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.files = {int(p.stem): p for p in Path(self.cif_dir).rglob("*.cif") if re.fullmatch(r"\d{7}", p.stem)}
        self._rows: list[dict[str, Any]] | None = None
        self.faults = defaultdict(list, {k: list(v) for k, v in self.faults.items()})

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            rows = [dict(_cif_row_cached(p)) for _, p in sorted(self.files.items())]
            for row in rows:
                row.update(self.row_overrides.get(int(row["file"]), {}))
            for extra in self.extra_rows:
                row = dict(extra)
                row.setdefault("_elements", sorted(_formula_tokens(row.get("formula") or "")))
                row.setdefault("nel", str(len(row["_elements"])))
                rows.append(row)
            self._rows = rows
        return self._rows

    def next_fault(self, key: Any) -> str | None:
        with self.lock:
            self.hits[key] += 1
            fault = self.faults[key].pop(0) if self.faults.get(key) else self.always.get(key)
            self.log.append((time.monotonic(), key, fault or "ok"))
        return fault

    def search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        def arg(name):
            return query.get(name, [None])[0]

        must = {arg(f"el{i}") for i in range(1, 9)} - {None}
        must_not = {arg(f"nel{i}") for i in range(1, 5)} - {None}
        lo, hi = arg("strictmin"), arg("strictmax")
        out = []
        for row in self.rows():
            elements = set(row["_elements"])
            if not must <= elements or must_not & elements:
                continue
            if (lo and len(elements) < int(lo)) or (hi and len(elements) > int(hi)):
                continue
            out.append(row)
        return out


def render(rows: list[dict[str, Any]], fmt: str) -> tuple[bytes, str]:
    public = [{c: r.get(c) for c in COLUMNS} for r in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in public)
        return buffer.getvalue().encode(), "text/csv"
    if fmt == "lst":
        return "".join(f"{r['file']}\n" for r in public).encode(), "text/plain"
    if fmt == "count":
        return f"{len(public)}\n".encode(), "text/plain"
    return json.dumps(public).encode(), "application/json"


def _handler(cod: FakeCod):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def send(self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None,
                 length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server API
            parsed = urlparse(self.path)
            if parsed.path.rstrip("/") == "/cod/result":
                key, body_fn = "search", lambda: self.search_body(parse_qs(parsed.query))
            elif match := re.fullmatch(r"/cod/(\d{7})\.cif", parsed.path):
                key = int(match.group(1))
                body_fn = lambda: self.cif_body(key)  # noqa: E731
            else:
                self.send(404, b"not found")
                return
            fault = cod.next_fault(key)
            if cod.delay:
                time.sleep(cod.delay)
            if fault and self.apply(fault, key):
                return
            status, body, ctype = body_fn()
            if status == 200:
                with cod.lock:
                    cod.served[key] += 1
            self.send(status, body, ctype)

        def search_body(self, query):
            fmt = query.get("format", ["json"])[0]
            body, ctype = render(cod.search(query), fmt)
            return 200, body, ctype

        def cif_body(self, key):
            path = cod.files.get(key)
            if path is None:
                return 404, b"<html><body>404 Not Found</body></html>", "text/html"
            return 200, path.read_bytes(), "chemical/x-cif"

        def apply(self, fault: str, key) -> bool:
            """Act out ``fault``; True when the request is finished (no normal answer)."""
            if fault == "slow":
                time.sleep(cod.slow)
                return False
            if fault == "timeout":
                time.sleep(cod.hang)
                self.close_connection = True
                return True
            if fault == "reset":
                self.close_connection = True
                return True
            if fault in ("404", "500", "502", "503"):
                self.send(int(fault), HTML_ERROR, "text/html")
                return True
            if fault == "429":
                self.send(429, b"Too Many Requests", headers={"Retry-After": cod.retry_after})
                return True
            if fault == "html":
                self.send(200, HTML_ERROR, "text/html")
                return True
            if fault == "empty":
                self.send(200, b"", "chemical/x-cif")
                return True
            if fault == "truncate":
                status, body, ctype = (self.search_body({"format": ["json"]}) if key == "search"
                                       else self.cif_body(key))
                self.send(status, body[: len(body) // 2], ctype, length=len(body))
                self.close_connection = True
                return True
            if fault == "wrong_id":
                other = next(i for i in sorted(cod.files) if i != key)
                self.send(200, cod.files[other].read_bytes(), "chemical/x-cif")
                return True
            raise ValueError(f"unknown fault {fault!r}")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients that hang up (timeouts, killed processes) are part of the tests, not errors."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_cod(cif_dir: str | Path, **settings: Any) -> Iterator[FakeCod]:
    """Run a fake COD on 127.0.0.1 (free port) in a background thread for the ``with`` block."""
    cod = FakeCod(cif_dir=Path(cif_dir), **settings)
    cod.rows()  # build the search table before the first request (parsing takes ~1 s)
    server = _QuietServer(("127.0.0.1", 0), _handler(cod))
    cod.url = f"http://127.0.0.1:{server.server_address[1]}/cod/"
    thread = threading.Thread(target=server.serve_forever, name="fake-cod", daemon=True)
    thread.start()
    try:
        yield cod
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # manual use: python tests/cod_server.py <dir>
    import sys

    with serve_cod(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cod") as running:
        print(running.url, flush=True)
        threading.Event().wait()
