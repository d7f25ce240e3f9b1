"""The potentials table of ``docs/potentials.md``, generated from the built-in cards (never edited by hand):
``python -m helpers.cli potentials --markdown`` prints it, :func:`update_docs` rewrites it in place and a test
checks that the committed table is the generated one."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.relax.potentials.card import FAMILY_EXTRAS, Potential
from helpers.relax.potentials.registry import REGISTRY, elements_text

BEGIN = "<!-- potentials table: generated from helpers/relax/potentials/cards by " \
        "`python -m helpers.cli potentials --markdown`; do not edit -->"
END = "<!-- end of the generated potentials table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _install(p: Potential) -> str:
    extra = FAMILY_EXTRAS.get(p.family)
    return f"`codani[{extra}]`" if extra else "core"


def markdown_table(potentials: list[Potential] | None = None) -> str:
    """One row per built-in potential (registry order): name, family and install extra, what it is,
    packages, licence, elements, step cap x."""
    potentials = [p for p in REGISTRY.values() if p.family] if potentials is None else potentials
    rows = ["| name | family (install) | what it is / what to expect | packages | licence | elements | step cap x |",
            "|---|---|---|---|---|---|---|"]
    for p in potentials:
        packages = " ".join(f"`{d}`" for d in p.packages) or "—"
        rows.append(f"| `{p.name}` | {p.family} ({_install(p)}) | {_cell(p.description)} | {packages} | "
                    f"{_cell(p.licence)} | {elements_text(p.elements)} | {p.steps_per_atom} |")
    return "\n".join(rows)


def with_table(text: str, table: str | None = None) -> str:
    """``text`` (a markdown document) with the part between :data:`BEGIN` and :data:`END` replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no generated potentials table (markers {BEGIN!r} ... {END!r}) in the document")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown_table() if table is None else table}\n{END}{tail}"


def update_docs(path: str | os.PathLike) -> bool:
    """Rewrite the generated table of the markdown file ``path``; True when it changed."""
    path = Path(path)
    old = path.read_text()
    new = with_table(old)
    if new != old:
        path.write_text(new)
    return new != old
