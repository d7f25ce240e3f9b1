"""What a potential is: the :class:`Potential` the relax stage uses, and its card, the small TOML file that
describes a built-in one (``cards/<name>.toml``).

Why cards: citation, licence, source, cost, elements, step cap and packages are data, read by people (the
generated table in ``docs/potentials.md``, ``python -m helpers.cli potentials``) and by the settings hash;
only the calculator factory is code, named on the card and resolved once
(:data:`helpers.relax.potentials.factories.FACTORIES`). :func:`check_card` is the schema.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import atomic_numbers, chemical_symbols

from helpers.relax.potentials.supercell import supercell_repeats

#: the key of a model file's content hash (sha256) in a settings hash and on a relaxed row
MODEL_FILE_HASH = "model_file_sha256"

#: potential family -> the ``pyproject.toml`` extra that installs its packages (None: core dependencies)
FAMILY_EXTRAS: dict[str, str | None] = {"ani": None, "xtb": "xtb", "gfnff": "gfnff", "sevennet": "sevennet",
                                        "chgnet": "chgnet", "aimnet2": "aimnet2"}


class PackageMissing(ImportError):
    """A potential's package is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class Potential:
    """What the relax stage needs to know about one potential."""

    name: str
    make_calculator: Callable[..., Calculator]
    elements: frozenset[str]
    steps_per_atom: int
    citation: str
    description: str = ""
    #: licence of the code and of the weights (SPDX-like, e.g. "MIT; weights MIT")
    licence: str = ""
    #: where the code and the weights come from (PyPI packages, files)
    source: str = ""
    #: measured cost on this project's machine, one line (docs/potentials.md)
    cost: str = ""
    #: distributions whose versions change this potential's answers (recorded in the settings hash)
    packages: tuple[str, ...] = ()
    #: fixed choices inside the calculator that change its answers (e.g. the D3 cutoffs), by name:
    #: recorded in the settings hash beside the versions, so changing one never mixes old and new rows
    answer_settings: tuple[tuple[str, str], ...] = ()
    #: codes evaluated on the supercell whose perpendicular widths are all at least this (Å;
    #: :mod:`helpers.relax.potentials.supercell`): tblite (Γ point only), gfnff (periodic sums not converged on
    #: small cells); 0: the cell itself
    supercell_min_width: float = 0.0
    #: a potential built from a user-downloaded weights file: ``model_file(given)`` is the file its calculator
    #: loads (``given``: the ``model_file`` calculator option, or None for the default search path). The
    #: file's content hash, never its path, is part of its settings hash and of its rows
    model_file: Callable[[str | os.PathLike | None], Path] | None = None
    #: the family of a built-in potential (:data:`FAMILY_EXTRAS`); "" for a plugin's
    family: str = ""
    #: a cheap registered potential whose Hessian seeds this one's BFGS by default in 03_relax and the
    #: campaigns (:mod:`helpers.relax.hessian_seed`; fewer steps to the same minimum); None: ASE's start
    hessian_seed: str | None = None

    def card(self) -> dict[str, Any]:
        """This potential's card data (every :data:`CARD_SCHEMA` key but the factory, elements listed one by one):
        what a built-in's TOML file holds, and the same for an entry point's or a model file's potential (their
        ``family`` is ""), checkable with ``check_card(card, where, built_in=False)``."""
        out: dict[str, Any] = {
            "name": self.name, "family": self.family, "description": self.description, "citation": self.citation,
            "licence": self.licence, "source": self.source,
            "elements": sorted(self.elements, key=lambda e: atomic_numbers[e]), "steps_per_atom": self.steps_per_atom,
            "cost": self.cost, "packages": list(self.packages), "answer_settings": dict(self.answer_settings)}
        if self.supercell_min_width:
            out["supercell_min_width"] = self.supercell_min_width
        if self.hessian_seed:
            out["hessian_seed"] = self.hessian_seed
        return out

    def atoms_evaluated(self, atoms) -> int:
        """Atoms in one evaluation of this crystal (``Atoms`` or a database row): its own, or its supercell's
        for a code evaluated on a supercell — what a relaxation's cost grows with, and what ``max_atoms``
        subsets bound."""
        natoms = len(atoms) if isinstance(atoms, Atoms) else atoms.natoms
        return natoms * math.prod(supercell_repeats(atoms, self.supercell_min_width))

    def uncovered(self, symbols) -> set[str]:
        """Elements in ``symbols`` this potential does not cover (empty set: all covered)."""
        return set(symbols) - self.elements

    def calculator(self, **kwargs) -> Calculator:
        """A new calculator; a clear ImportError naming what to install when a declared package is missing."""
        missing = self.missing_packages()
        if missing:
            raise PackageMissing(self.install_hint(missing))
        return self.make_calculator(**kwargs)

    def install_command(self, missing: list[str] | None = None) -> str:
        """The one command that installs what this potential lacks: its family's pip extra (a plugin's: the
        missing distributions)."""
        extra = FAMILY_EXTRAS.get(self.family)
        if extra:
            return f"pip install 'codani[{extra}]'"
        missing = self.missing_packages() if missing is None else missing
        return f"pip install torch==2.13.0 {' '.join(missing or self.packages)}"

    def install_hint(self, missing: list[str] | None = None) -> str:
        """Why this potential cannot run and what fixes it (the message of :meth:`calculator`'s ImportError)."""
        missing = self.missing_packages() if missing is None else missing
        return (f"potential {self.name!r} needs {', '.join(missing)}, not installed: "
                f"{self.install_command(missing)} (or `make env`, which installs every family)")

    def versions(self) -> dict[str, str]:
        """Installed versions of :attr:`packages` (``"missing"`` for one that is not installed)."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for dist in self.packages:
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                out[dist] = "missing"
        out.update(self.answer_settings)
        # the supercell changes the answers: part of the hash (the key keeps its first name, so hashes hold)
        if self.supercell_min_width:
            out["gamma_point_supercell_min_width"] = f"{self.supercell_min_width:g} Å"
        if self.model_file is not None:  # the weights are the model: their content, wherever the file is
            out[MODEL_FILE_HASH] = self.model_file_hash()
        return out

    def model_file_hash(self, given: str | os.PathLike | None = None) -> str:
        """sha256 of the weights file this potential loads (``given``, or the default one); ``"missing"``
        when it cannot be found (no relaxation can run then); ``""`` for a potential without a model file."""
        if self.model_file is None:
            return ""
        try:
            path = Path(self.model_file(given))
        except FileNotFoundError:
            return "missing"
        stat = path.stat()
        return file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def answer_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The calculator ``options`` that change this potential's answers, for its settings hash: those
        that differ from the calculator factory's defaults (so passing a default changes nothing), values as
        JSON-able text; a ``model_file`` option becomes :data:`MODEL_FILE_HASH`, its content's sha256."""
        try:
            defaults = {name: p.default for name, p in inspect.signature(self.make_calculator).parameters.items()
                        if p.default is not inspect.Parameter.empty}
        except (TypeError, ValueError):
            defaults = {}
        out: dict[str, Any] = {}
        for name, value in sorted((options or {}).items()):
            if name == "model_file" and self.model_file is not None:
                out[MODEL_FILE_HASH] = self.model_file_hash(value)
            elif name not in defaults or not _same(value, defaults[name]):
                out[name] = _jsonable(value)
        return out

    def missing_packages(self) -> list[str]:
        """Distributions of :attr:`packages` that are not installed (empty: usable)."""
        return [d for d, v in self.versions().items() if d in self.packages and v == "missing"]


@lru_cache(maxsize=64)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's content (cached per path, size and modification time: a weights file is read once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fd:
        for block in iter(lambda: fd.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same(value: Any, default: Any) -> bool:
    """Is a calculator option its default (8 and 8.0, (0,) and [0] are)?"""
    return _jsonable(value) == _jsonable(default)


def _jsonable(value: Any) -> Any:
    """A calculator option as stable JSON: numbers, text, lists; anything else by its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


# --- cards -----------------------------------------------------------------------------------------------------

#: the folder of the built-in cards (package data)
CARDS_DIR = Path(__file__).with_name("cards")

#: card key -> (type(s), required, what it holds)
CARD_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool, str]] = {
    "name": (str, True, "the registry name (the file's stem)"),
    "family": (str, True, f"one of {', '.join(FAMILY_EXTRAS)}"),
    "factory": (str, True, "a key of helpers.relax.potentials.factories.FACTORIES"),
    "factory_options": (dict, False, "keyword arguments of the factory (e.g. the tblite method)"),
    "description": (str, True, "what it is and what to expect, one paragraph"),
    "citation": (str, True, "references"),
    "licence": (str, True, "licence of the code and of the weights"),
    "source": (str, True, "where the code and the weights come from"),
    "elements": (list, True, "chemical symbols, or ranges such as 'H-Rn'"),
    "steps_per_atom": (int, True, "x of the step cap 300 + x * n_atoms"),
    "cost": (str, True, "measured cost per call, one line"),
    "packages": (list, False, "distributions whose versions are in the settings hash"),
    "answer_settings": (dict, False, "fixed choices that change the answers (text values; in the settings hash)"),
    "supercell_min_width": ((int, float), False, "codes evaluated on a supercell (tblite, gfnff): minimum width, Å"),
    "hessian_seed": (str, False, "a cheap potential whose Hessian may seed BFGS"),
}


class CardError(ValueError):
    """A potential card that does not follow :data:`CARD_SCHEMA`."""


def expand_elements(entries: list[str]) -> frozenset[str]:
    """Chemical symbols of a card's ``elements``: symbols and inclusive ranges ``"H-Rn"`` (by atomic number)."""
    out: set[str] = set()
    for entry in entries:
        first, _, last = str(entry).partition("-")
        for symbol in (first, last) if last else (first,):
            if symbol not in atomic_numbers or symbol == "X":
                raise CardError(f"{symbol!r} (in {entry!r}) is not a chemical symbol")
        lo, hi = atomic_numbers[first], atomic_numbers[last or first]
        if hi < lo:
            raise CardError(f"element range {entry!r} runs backwards")
        out.update(chemical_symbols[lo:hi + 1])
    return frozenset(out)


def check_card(card: Mapping[str, Any], where: str, factories: Mapping[str, Callable] | None = None, *,
               built_in: bool = True) -> None:
    """Raise :class:`CardError` (with ``where`` and the key) unless ``card`` follows :data:`CARD_SCHEMA`.

    ``factories``: the known factory names (unchecked when None). ``built_in=False``: the card of a plugin's
    potential (:meth:`Potential.card`), which has no factory name and may have no family.
    """
    unknown = sorted(set(card) - set(CARD_SCHEMA))
    if unknown:
        raise CardError(f"{where}: unknown key(s) {', '.join(unknown)}; a card holds only {', '.join(CARD_SCHEMA)}")
    for key, (kind, required, what) in CARD_SCHEMA.items():
        if key not in card:
            if required and (built_in or key != "factory"):
                raise CardError(f"{where}: missing required key {key!r} ({what})")
            continue
        value = card[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CardError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, not {value!r}")
    if card["family"] not in FAMILY_EXTRAS and (built_in or card["family"]):
        raise CardError(f"{where}: unknown family {card['family']!r}; known: {', '.join(FAMILY_EXTRAS)}")
    if factories is not None and built_in and card["factory"] not in factories:
        raise CardError(f"{where}: unknown factory {card['factory']!r}; known: {', '.join(sorted(factories))}")
    if card["steps_per_atom"] <= 0:
        raise CardError(f"{where}: steps_per_atom must be positive")
    for key in ("packages", "elements"):
        if not all(isinstance(v, str) and v for v in card.get(key, [])):
            raise CardError(f"{where}: {key!r} must be a list of non-empty strings")
    if not card["elements"]:
        raise CardError(f"{where}: 'elements' is empty")
    if not all(isinstance(v, str) for v in card.get("answer_settings", {}).values()):
        raise CardError(f"{where}: 'answer_settings' values must be strings (they are hashed as text)")
    try:
        expand_elements(card["elements"])
    except CardError as err:
        raise CardError(f"{where}: {err}") from None


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """A card file's content, checked against the schema (factory names are checked when it is built)."""
    path = Path(path)
    with open(path, "rb") as fd:
        card = tomllib.load(fd)
    check_card(card, str(path))
    if card["name"] != path.stem:
        raise CardError(f"{path}: name {card['name']!r} differs from the file name {path.stem!r}")
    return card


def card_paths(folder: str | os.PathLike = CARDS_DIR) -> list[Path]:
    """The card files of ``folder`` in registry order, the order of the names in ``folder/ORDER`` (a card
    missing from it is an error: it would silently not be registered)."""
    folder = Path(folder)
    order = [line.strip() for line in (folder / "ORDER").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    paths = sorted(folder.glob("*.toml"))
    stray = sorted({p.stem for p in paths} - set(order))
    if stray:
        raise CardError(f"{folder}: cards {', '.join(stray)} are not listed in {folder / 'ORDER'}")
    return [folder / f"{name}.toml" for name in order]


def potential_from_card(card: Mapping[str, Any], factories: Mapping[str, Callable[..., Callable[..., Calculator]]],
                        where: str = "card") -> Potential:
    """The :class:`Potential` of a checked card: its factory resolved once through ``factories``."""
    check_card(card, where, factories)
    return Potential(
        card["name"], factories[card["factory"]](**card.get("factory_options", {})),
        expand_elements(card["elements"]), card["steps_per_atom"], card["citation"], card["description"],
        licence=card["licence"], source=card["source"], cost=card["cost"], packages=tuple(card.get("packages", ())),
        answer_settings=tuple(card.get("answer_settings", {}).items()),
        supercell_min_width=float(card.get("supercell_min_width", 0.0)), family=card["family"],
        hessian_seed=card.get("hessian_seed"))
