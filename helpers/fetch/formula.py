"""Chemical formula strings -> element counts (CIF ``_chemical_formula_sum``, COD ``formula``).

Element symbols are matched whole (``N`` is not ``Ni``/``Na``/``Nb``, ``C`` is not ``Cl``/``Co``).
"""

from __future__ import annotations

import re

from ase.data import chemical_symbols

_TOKEN = re.compile(r"([A-Z][a-z]?)\s*(\d+(?:\.\d+)?)?")
_KNOWN = set(chemical_symbols[1:])
#: hydrogen isotopes written as their own symbols in CIF formulas (deuterated crystals): counted as H
_ISOTOPES = {"D": "H", "T": "H"}


def parse_formula(formula: str) -> dict[str, float]:
    """Element -> count for Hill-style strings like ``'C6 H6'``, ``'- C6 H6 -'``, ``'C10H13O H9C12'``.

    Repeated elements add up; deuterium and tritium (``C6 D6``) count as hydrogen, as they are one
    element to a potential. Raises ``ValueError`` for unknown symbols or an empty/``?`` formula.
    """
    text = formula.strip().strip("-").strip()
    if not text or text in ("?", "."):
        raise ValueError(f"no formula: {formula!r}")
    counts: dict[str, float] = {}
    pos = 0
    compact = re.sub(r"[\s'\"]+", " ", text)
    for match in _TOKEN.finditer(compact):
        gap = compact[pos:match.start()].strip(" ,*()[]")
        if gap and not re.fullmatch(r"[\d.\s*()\[\],+]*", gap):
            raise ValueError(f"cannot parse {gap!r} in formula {formula!r}")
        symbol, number = match.group(1), match.group(2)
        symbol = _ISOTOPES.get(symbol, symbol)
        if symbol not in _KNOWN:
            raise ValueError(f"unknown element {symbol!r} in formula {formula!r}")
        counts[symbol] = counts.get(symbol, 0.0) + (float(number) if number else 1.0)
        pos = match.end()
    tail = compact[pos:].strip(" ,*()[]")
    if tail and not re.fullmatch(r"[\d.\s*()\[\],+]*", tail):
        raise ValueError(f"cannot parse {tail!r} in formula {formula!r}")
    if not counts:
        raise ValueError(f"no elements in formula {formula!r}")
    return counts
