"""Read the ``.din`` reference files of the lattice-energy benchmarks (X23, ICE13).

The format (refdata of the Johnson group): ``#`` comment lines, then one block per entry: pairs of lines
``coefficient`` / ``system name``, closed by a ``0`` line and the reference value, which is
Σ coefficient × E(system). A malformed block is an error naming its line; an entry listed twice (ICE13
lists ice XI twice) is kept once, with a warning; two different values for one entry are an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path


class DinError(ValueError):
    """A ``.din`` file that does not follow the format (the message names file and line)."""


@dataclass(frozen=True)
class DinEntry:
    """One reference: ``value`` = Σ coefficient × E(system) (the file's units, here kcal/mol)."""

    terms: tuple[tuple[float, str], ...]
    value: float
    line: int  #: line of the entry's first coefficient (1-based), for messages

    @property
    def name(self) -> str:
        """The entry's name: its first system (the crystal in X23 and ICE13)."""
        return self.terms[0][1]


def _number(text: str, path: str, line: int, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DinError(f"{path}:{line}: expected {what}, found {text!r}") from None


def read_din(path: str | Path) -> list[DinEntry]:
    """The entries of a ``.din`` file, in file order, each once (see the module docstring)."""
    path = str(path)
    lines = [(n, raw.strip()) for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(n, s) for n, s in lines if s and not s.startswith("#")]
    entries: list[DinEntry] = []
    k = 0
    while k < len(lines):
        start = lines[k][0]
        terms: list[tuple[float, str]] = []
        while True:
            if k >= len(lines):
                raise DinError(f"{path}:{start}: entry not closed by a 0 line and its reference value")
            n, text = lines[k]
            coefficient = _number(text, path, n, "a coefficient or the closing 0")
            k += 1
            if coefficient == 0:
                break
            if k >= len(lines):
                raise DinError(f"{path}:{n}: coefficient {text} has no system name after it")
            n_name, name = lines[k]
            if _is_number(name):
                raise DinError(f"{path}:{n_name}: expected the system name after coefficient {text}, found {name!r}")
            terms.append((coefficient, name))
            k += 1
        if not terms:
            raise DinError(f"{path}:{start}: an entry without systems (a 0 line with nothing before it)")
        if k >= len(lines):
            raise DinError(f"{path}:{n}: the closing 0 has no reference value after it")
        n_value, text = lines[k]
        entries.append(DinEntry(tuple(terms), _number(text, path, n_value, "the reference value"), start))
        k += 1
    return _once(entries, path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _once(entries: list[DinEntry], path: str) -> list[DinEntry]:
    """Each entry name once: an exact repeat is dropped with a warning, a conflicting one is an error."""
    seen: dict[str, DinEntry] = {}
    out = []
    for entry in entries:
        first = seen.get(entry.name)
        if first is None:
            seen[entry.name] = entry
            out.append(entry)
        elif first.terms == entry.terms and first.value == entry.value:
            warnings.warn(f"{path}:{entry.line}: {entry.name!r} is listed twice (first at line {first.line}); "
                          "used once", stacklevel=3)
        else:
            raise DinError(f"{path}:{entry.line}: {entry.name!r} is listed again (first at line {first.line}) "
                           f"with different terms or value ({entry.value} vs {first.value})")
    return out


@dataclass(frozen=True)
class LatticeReference:
    """A lattice-energy entry read as E_latt = E(molecule) − E(crystal) / Z (kcal/mol, positive = bound)."""

    crystal: str
    molecule: str
    z: int
    ref_kcalmol: float


def lattice_references(entries: list[DinEntry], path: str = "") -> list[LatticeReference]:
    """Each entry as crystal, molecule and Z: exactly one negative (crystal, −1/Z) and one positive (molecule,
    1) coefficient; anything else is an error naming the entry's line."""
    out = []
    for entry in entries:
        crystals = [(c, s) for c, s in entry.terms if c < 0]
        molecules = [(c, s) for c, s in entry.terms if c > 0]
        if len(crystals) != 1 or len(molecules) != 1:
            raise DinError(f"{path}:{entry.line}: {entry.name!r} is not a lattice energy (one crystal with a negative "
                           f"and one molecule with a positive coefficient): {entry.terms}")
        (c_cryst, crystal), (c_mol, molecule) = crystals[0], molecules[0]
        z_float = c_mol / -c_cryst
        z = round(z_float)
        if z < 1 or abs(z_float - z) > 1e-3 * z:
            raise DinError(f"{path}:{entry.line}: {crystal!r}: coefficients {c_cryst} and {c_mol} give "
                           f"Z = {z_float:.4f}, not a whole number of molecules")
        out.append(LatticeReference(crystal, molecule, z, entry.value / c_mol))
    return out
