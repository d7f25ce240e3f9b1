"""A stand-in for the COD web service on 127.0.0.1, serving real CIF files, with injectable faults.

Endpoints (as COD's): ``/cod/result?el1..el8&nel1..nel4&strictmin&strictmax&format=json|csv|lst|count``
(no ``format``: an HTML page, COD's default), ``/cod/<id>.cif`` and the mirror layout
``/cod/cif/1/00/00/1000001.cif``.

Search rows are what COD's ``data`` table holds for each file, in COD's own form: a top-level JSON
array of objects with the 73 columns of :data:`COLUMNS` in that order, **every value a string or
null** (``"Z":"4"``, ``"a":"14.9131"``, ``"siga":"0.0012"``: the standard uncertainty is its own
column), ``formula`` as ``"- C6 H6 -"`` or the string ``"?"`` when the CIF has none, ``calcformula`` /
``cellformula`` computed from the atom sites (occupancy-weighted, per formula unit / per cell, so
they can differ from ``formula``), ``radiation`` the probe (``_diffrn_radiation_probe``, e.g.
``x-ray``) and ``radType`` the source, ``method`` null, ``status`` from ``_cod_error_flag`` (null,
``warnings``, ``errors``, ``retracted``), ``flags`` like ``"has coordinates,has disorder"``,
``duplicateof``/``optimal`` from ``_cod_duplicate_entry``/``_cod_related_optimal_struct``.
Sources for the column list and the value rules: cod-tools ``COD/CIF/Data/CIF2COD.pm``
(``@new_data_fields`` and ``cif2cod``), plus ``sgNumber``, ``Z``, ``Zprime``, ``svnrevision``, ``date``,
``time`` that the web service adds; the position of ``text`` is as in ``CIF2COD.pm``.

Element search: an entry's element set is that of ``formula`` (a plain token split), or of
``calcformula`` when the formula is ``?`` (assumption: COD's search matches the formula text);
``el*`` must be in the set, ``nel*`` must not, ``strictmin``/``strictmax`` bound its size.
``extra_rows`` adds synthetic rows (e.g. tricky formulas) and ``row_overrides`` changes columns of
real ones (pressure, duplicateof, status).

Faults: ``faults[key]`` is a list consumed one per request to ``key`` (a COD id, or ``"search"``);
``always[key]`` applies to every request. Kinds:
``timeout`` (sleep ``hang`` s, then close without answering), ``slow`` (first byte after ``slow``
s, then a normal answer), ``500``/``502``/``503``/``404`` (that status, HTML body), ``429`` (with
``Retry-After: retry_after``), ``truncate`` (full Content-Length, half the body, close),
``truncate_nolength`` (no Content-Length, the body cut at a line inside the atom-site loop, close:
a CIF that parses, with fewer atoms), ``chunked_truncate`` (chunked, half the body, close without
the last chunk), ``chunked_short`` (chunked, cut like ``truncate_nolength``, properly terminated),
``garbage`` (200, random bytes), ``stall`` (full Content-Length, half the body, then ``hang`` s of
silence, close), ``html`` (status 200 with an HTML error page), ``empty`` (200, empty body),
``reset`` (close at once), ``wrong_id`` (200 with another entry's CIF), ``few`` (search only: a
tenth of the rows), ``redirect`` (302 to ``redirect_to`` + the same path: another server),
``redirect_local`` (302 to this server's mirror-layout path).

Element logic here is deliberately independent of ``helpers.fetch.formula`` and ``helpers.fetch.cod``, so tests
do not check the client against itself.
"""

from __future__ import annotations

import csv
import io
import json
import random
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

#: COD's search columns, in the order of its answers (73)
COLUMNS = [
    "file", "a", "siga", "b", "sigb", "c", "sigc", "alpha", "sigalpha", "beta", "sigbeta", "gamma",
    "siggamma", "vol", "sigvol", "celltemp", "sigcelltemp", "diffrtemp", "sigdiffrtemp", "cellpressure",
    "sigcellpressure", "diffrpressure", "sigdiffrpressure", "thermalhist", "pressurehist", "compoundsource",
    "nel", "sg", "sgHall", "sgNumber", "commonname", "chemname", "mineral", "formula", "calcformula",
    "cellformula", "Z", "Zprime", "acce_code", "authors", "title", "journal", "year", "volume", "issue",
    "firstpage", "lastpage", "doi", "method", "radiation", "wavelength", "radType", "radSymbol", "Rall",
    "Robs", "Rref", "wRall", "wRobs", "wRref", "RFsqd", "RI", "gofall", "gofobs", "gofgt", "duplicateof",
    "optimal", "status", "flags", "text", "svnrevision", "date", "time", "onhold",
]
assert len(COLUMNS) == 73
#: numeric columns with an uncertainty column: COD column -> CIF tags (first present wins)
MEASURED = {
    "a": ["_cell_length_a"], "b": ["_cell_length_b"], "c": ["_cell_length_c"],
    "alpha": ["_cell_angle_alpha"], "beta": ["_cell_angle_beta"], "gamma": ["_cell_angle_gamma"],
    "vol": ["_cell_volume"], "celltemp": ["_cell_measurement_temperature"],
    "diffrtemp": ["_diffrn_ambient_temperature"], "cellpressure": ["_cell_measurement_pressure"],
    "diffrpressure": ["_diffrn_ambient_pressure"],
}
NUMBERS = {  # numbers without an uncertainty column
    "wavelength": ["_diffrn_radiation_wavelength"], "Rall": ["_refine_ls_r_factor_all"],
    "Robs": ["_refine_ls_r_factor_gt", "_refine_ls_r_factor_obs"], "Rref": ["_refine_ls_r_factor_ref"],
    "wRall": ["_refine_ls_wr_factor_all"], "wRobs": ["_refine_ls_wr_factor_gt", "_refine_ls_wr_factor_obs"],
    "wRref": ["_refine_ls_wr_factor_ref"], "gofall": ["_refine_ls_goodness_of_fit_all"],
    "gofobs": ["_refine_ls_goodness_of_fit_ref", "_refine_ls_goodness_of_fit_obs"],
    "gofgt": ["_refine_ls_goodness_of_fit_gt"],
}
TEXTS = {
    "thermalhist": ["_exptl_crystal_thermal_history"], "pressurehist": ["_exptl_crystal_pressure_history"],
    "compoundsource": ["_chemical_compound_source"],
    "sg": ["_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m"],
    "sgHall": ["_space_group_name_hall", "_symmetry_space_group_name_hall"],
    "sgNumber": ["_space_group_it_number", "_symmetry_int_tables_number"],
    "commonname": ["_chemical_name_common"], "chemname": ["_chemical_name_systematic"],
    "mineral": ["_chemical_name_mineral"], "Z": ["_cell_formula_units_z"],
    "journal": ["_journal_name_full"], "year": ["_journal_year"], "volume": ["_journal_volume"],
    "issue": ["_journal_issue"], "firstpage": ["_journal_page_first"], "lastpage": ["_journal_page_last"],
    "doi": ["_journal_paper_doi"], "radiation": ["_diffrn_radiation_probe"],
    "radType": ["_diffrn_radiation_type"], "radSymbol": ["_diffrn_radiation_xray_symbol"],
    "duplicateof": ["_cod_duplicate_entry", "_[local]_cod_duplicate_entry"],
    "optimal": ["_cod_related_optimal_struct", "_[local]_cod_related_optimal_struct"],
    "status": ["_cod_error_flag", "_[local]_cod_error_flag"], "onhold": ["_cod_hold_until_date"],
    "title": ["_publ_section_title"],
}
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>Error</title></head>"
              b"<body><h1>Service temporarily unavailable</h1></body></html>")
HTML_RESULT = (b"<!DOCTYPE html><html><head><title>COD search results</title></head>"
               b"<body><table><tr><td>COD ID</td></tr></table></body></html>")


def _formula_tokens(formula: str) -> set[str]:
    """Element symbols of a Hill formula by plain token split: 'C6 H6 N2' -> {C, H, N}."""
    out = set()
    for token in re.split(r"[\s,]+", formula.strip().strip("-")):
        match = re.match(r"([A-Z][a-z]?)", token)
        if match:
            out.add(match.group(1))
    return out


def raw_tag(text: str, tag: str) -> str | None:
    """The raw value of a single-valued CIF tag (quotes removed, text fields joined); None if absent/?/."""
    match = re.search(rf"(?im)^[ \t]*{re.escape(tag)}[ \t]*(?:\n|[ \t])", text)
    if match is None:
        return None
    rest = text[match.end():]
    rest_stripped = rest.lstrip(" \t\n")
    if rest_stripped.startswith(";"):
        body = rest_stripped[1:].split("\n;", 1)[0]
        value = " ".join(body.split())
    else:
        token = re.match(r"'([^'\n]*)'|\"([^\"\n]*)\"|(\S+)", rest_stripped)
        if token is None:
            return None
        value = next(g for g in token.groups() if g is not None)
        if value.startswith("_") or value.lower().startswith(("loop_", "data_")):
            return None  # no value on this tag: the next item begins
    value = value.strip()
    return None if value in ("", "?", ".") else value


def split_su(value: str) -> tuple[str | None, str | None]:
    """'14.9131(12)' -> ('14.9131', '0.0012'); '90' -> ('90', None); text -> (None, None)."""
    match = re.fullmatch(r"([-+]?)(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?(?:\((\d+)\))?", value.strip())
    if match is None or not (match.group(2) or match.group(3)):
        return None, None
    sign, whole, frac, _exp, su = match.groups()
    number = f"{sign}{whole or '0'}" + (f".{frac}" if frac else "")
    if su is None:
        return number, None
    decimals = len(frac or "")
    sigma = int(su) / 10 ** decimals
    return number, (f"{sigma:.{decimals}f}" if decimals else str(int(su)))


def hill(counts: dict[str, float]) -> str:
    """Hill-order formula text as COD writes it: 'C6 H6 N2', counts of 1 left out, fractions kept."""
    order = sorted(counts)
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + [e for e in order if e not in ("C", "H")]
    parts = []
    for element in order:
        n = round(counts[element], 4)
        if n <= 0:
            continue
        text = "" if n == 1 else (f"{n:g}" if n == int(n) else f"{n:.4f}".rstrip("0"))
        parts.append(f"{element}{text}")
    return " ".join(parts)


def cell_contents(text: str) -> tuple[dict[str, float] | None, bool]:
    """Occupancy-weighted element counts of the whole cell from the atom sites (as COD's
    ``cif_cell_contents``), and whether any site is partially occupied; (None, False) when unreadable."""
    import warnings

    from ase.io.cif import parse_cif

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            block = next(iter(parse_cif(io.StringIO(text))))
            atoms = block.get_atoms()
    except Exception:  # noqa: BLE001 - COD cannot compute it either
        return None, False
    occupancy = atoms.info.get("occupancy") or {}
    kinds = atoms.arrays.get("spacegroup_kinds")
    counts: dict[str, float] = {}
    partial = False
    for i, symbol in enumerate(atoms.get_chemical_symbols()):
        weight = 1.0
        if kinds is not None:
            weight = float(occupancy.get(str(int(kinds[i])), {}).get(symbol, 1.0))
        partial |= weight < 1.0
        counts[symbol] = counts.get(symbol, 0.0) + weight
    return counts, partial


def cif_row(path: Path) -> dict[str, Any]:
    """COD's search row for one CIF file: 73 columns, strings or None; ``_elements`` for the search."""
    text = path.read_bytes().decode("utf-8", "replace")
    cod_id = path.stem
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["file"] = cod_id

    def first(tags):
        return next((v for t in tags if (v := raw_tag(text, t)) is not None), None)

    for column, tags in MEASURED.items():
        value = first(tags)
        if value is not None:
            row[column], row[f"sig{column}"] = split_su(value)
    for column, tags in NUMBERS.items():
        value = first(tags)
        if value is not None:
            row[column] = split_su(value)[0]
    for column, tags in TEXTS.items():
        row[column] = first(tags)
    if row["radType"]:
        row["radType"] = row["radType"].replace(" ", "")
    formula = first(["_chemical_formula_sum"])
    formula = " ".join(formula.split()) if formula else None
    row["formula"] = f"- {formula} -" if formula else "?"
    counts, partial = cell_contents(text)
    z = split_su(row["Z"])[0] if row["Z"] else None
    if counts:
        per = float(z) if z and float(z) > 0 else 1.0
        row["cellformula"] = f"- {hill(counts)} -"
        row["calcformula"] = f"- {hill({k: v / per for k, v in counts.items()})} -"
    elements = _formula_tokens(formula) if formula else set()
    if not elements and counts:
        elements = set(counts)
    row["_elements"] = sorted(elements)
    row["nel"] = str(len(elements)) if elements else None
    flags = []
    if re.search(r"(?im)^[ \t]*_atom_site_fract_x", text):
        flags.append("has coordinates")
    if partial or re.search(r"(?im)^[ \t]*_atom_site_disorder_group", text):
        flags.append("has disorder")
    if re.search(r"(?im)^[ \t]*_cod_database_fobs_code", text):
        flags.append("has Fobs")
    row["flags"] = ",".join(flags) or None
    row["text"] = "\\n".join(v for v in (row["title"], row["journal"], row["year"]) if v) or None
    row["svnrevision"] = str(170000 + int(cod_id) % 100000)
    row["date"], row["time"] = "2019-03-14", "12:00:00"
    return row


def real_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as COD sends it: exactly :data:`COLUMNS`, in order, strings or null."""
    return {c: (None if row.get(c) is None else str(row.get(c))) for c in COLUMNS}


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
    redirect_to: str = ""
    url: str = ""
    #: requests per key (COD id or "search"), successful full answers per key, a timed log,
    #: and the query strings of the searches
    hits: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    log: list[tuple[float, Any, str]] = field(default_factory=list)
    queries: list[dict[str, list[str]]] = field(default_factory=list)
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
                row = {**dict.fromkeys(COLUMNS), **extra}
                row.setdefault("formula", "?")
                if row.get("_elements") is None:
                    row["_elements"] = sorted(_formula_tokens(row.get("formula") or ""))
                if row.get("nel") is None:
                    row["nel"] = str(len(row["_elements"]))
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


def render(rows: list[dict[str, Any]], fmt: str | None) -> tuple[bytes, str]:
    public = [real_row(r) for r in rows]
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
    if fmt == "json":
        return json.dumps(public).encode(), "application/json"
    return HTML_RESULT, "text/html"  # COD's default format is an HTML page


def cut_in_atom_loop(body: bytes) -> bytes:
    """The body cut at a line boundary halfway through the atom-site loop (a CIF that still parses,
    with fewer atoms); half the body at a line boundary when there is no such loop."""
    lines = body.split(b"\n")
    start = next((i for i, line in enumerate(lines) if line.strip().lower().startswith(b"_atom_site_fract_x")),
                 None)
    if start is not None:
        first_row = next((i for i in range(start, len(lines)) if not lines[i].lstrip().startswith(b"_")),
                         len(lines))
        end = next((i for i in range(first_row, len(lines))
                    if not lines[i].strip() or lines[i].lstrip()[:1] in (b"_", b"#")
                    or lines[i].strip().lower() == b"loop_"), len(lines))
        if end - first_row >= 2:
            return b"\n".join(lines[: first_row + (end - first_row) // 2]) + b"\n"
    half = body.rfind(b"\n", 0, len(body) // 2)
    return body[: half + 1] if half > 0 else body[: len(body) // 2]


def _handler(cod: FakeCod):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def send(self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None,
                 length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length != -1:
                self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def chunked(self, body: bytes, ctype: str, terminate: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 4096):
                piece = body[start:start + 4096]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if terminate:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True

        def do_GET(self):  # noqa: N802 - http.server API
            parsed = urlparse(self.path)
            if parsed.path.rstrip("/") == "/cod/result":
                query = parse_qs(parsed.query)
                with cod.lock:
                    cod.queries.append(query)
                key, body_fn = "search", lambda: self.search_body(query)
            elif match := re.fullmatch(r"/cod/(?:cif/\d/\d\d/\d\d/)?(\d{7})\.cif", parsed.path):
                key = int(match.group(1))
                body_fn = lambda: self.cif_body(key)  # noqa: E731
            else:
                self.send(404, b"not found")
                return
            fault = cod.next_fault(key)
            if cod.delay:
                time.sleep(cod.delay)
            if fault and self.apply(fault, key, body_fn):
                return
            status, body, ctype = body_fn()
            if status == 200:
                with cod.lock:
                    cod.served[key] += 1
            self.send(status, body, ctype)

        def search_body(self, query):
            fmt = query.get("format", [None])[0]
            body, ctype = render(cod.search(query), fmt)
            return 200, body, ctype

        def cif_body(self, key):
            path = cod.files.get(key)
            if path is None:
                return 404, b"<html><body>404 Not Found</body></html>", "text/html"
            return 200, path.read_bytes(), "chemical/x-cif"

        def apply(self, fault: str, key, body_fn) -> bool:
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
                self.send(200, b"", "application/json" if key == "search" else "chemical/x-cif")
                return True
            if fault == "garbage":
                noise = random.Random(str(key)).randbytes(2000)
                self.send(200, noise, "application/json" if key == "search" else "chemical/x-cif")
                return True
            if fault == "redirect":
                self.send(302, b"", headers={"Location": cod.redirect_to.rstrip("/") + self.path.split("/cod", 1)[1]
                                             if cod.redirect_to else "/"})
                return True
            if fault == "redirect_local":
                digits = str(key)
                self.send(302, b"", headers={
                    "Location": f"/cod/cif/{digits[0]}/{digits[1:3]}/{digits[3:5]}/{digits}.cif"})
                return True
            if fault == "wrong_id":
                other = next(i for i in sorted(cod.files) if i != key)
                self.send(200, cod.files[other].read_bytes(), "chemical/x-cif")
                return True
            status, body, ctype = body_fn()
            if fault == "few":
                rows = json.loads(body)
                self.send(200, json.dumps(rows[: len(rows) // 10]).encode(), ctype)
                return True
            if fault == "truncate":
                self.send(status, body[: len(body) // 2], ctype, length=len(body))
            elif fault == "truncate_nolength":
                self.send(status, cut_in_atom_loop(body), ctype, headers={"Connection": "close"}, length=-1)
            elif fault == "chunked_truncate":
                self.chunked(body[: len(body) // 2], ctype, terminate=False)
            elif fault == "chunked_short":
                self.chunked(cut_in_atom_loop(body), ctype, terminate=True)
            elif fault == "stall":
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                time.sleep(cod.hang)
            else:
                raise ValueError(f"unknown fault {fault!r}")
            self.close_connection = True
            return True

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients that hang up (timeouts, killed processes) are part of the tests, not errors."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_cod(cif_dir: str | Path, port: int = 0, **settings: Any) -> Iterator[FakeCod]:
    """Run a fake COD on 127.0.0.1 (``port``, default a free one) in a background thread for the
    ``with`` block (the same ``port`` again: "the same server" restarted)."""
    cod = FakeCod(cif_dir=Path(cif_dir), **settings)
    cod.rows()  # build the search table before the first request (parsing takes ~1 s)
    server = _QuietServer(("127.0.0.1", port), _handler(cod))
    cod.url = f"http://127.0.0.1:{server.server_address[1]}/cod/"
    thread = threading.Thread(target=server.serve_forever, name="fake-cod", daemon=True)
    thread.start()
    try:
        yield cod
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # manual use: python tests/fetch/cod_server.py <dir>
    import sys

    with serve_cod(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cod") as running:
        print(running.url, flush=True)
        threading.Event().wait()
