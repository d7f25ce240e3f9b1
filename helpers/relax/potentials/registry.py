"""Registry of potentials: a name -> a ready ASE calculator (float64) and the study's defaults.

Adding a potential is one :data:`REGISTRY` entry. ``steps_per_atom`` is the study's x in the
step cap ``300 + x * n_atoms`` (6 for ANI-1x, 10 for ANI-1ccx).

Built in: the ANI family (here) and the potentials beyond ANI (tight binding, universal MLIPs,
AIMNet2: :mod:`helpers.relax.potentials.beyond_ani`). Potentials of other packages arrive through
the ``codani.potentials`` entry point group, loaded on first need
(:mod:`helpers.relax.potentials.plugins`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from helpers.relax.potentials.dispersion import d3_answer_settings
from helpers.vocabulary import STUDY_ELEMENTS


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
    #: measured cost on this project's machine, one line (README, "Potentials")
    cost: str = ""
    #: distributions whose versions change this potential's answers (recorded in the settings hash)
    packages: tuple[str, ...] = ()
    #: fixed choices inside the calculator that change its answers (e.g. the D3 cutoffs), by name:
    #: recorded in the settings hash beside the versions, so changing one never mixes old and new rows
    answer_settings: tuple[tuple[str, str], ...] = ()
    #: Γ-point-only codes (tblite) evaluate a crystal on the supercell whose perpendicular widths are all at
    #: least this (Å; :mod:`helpers.relax.potentials.supercell`); 0: the cell itself
    supercell_min_width: float = 0.0
    #: a potential built from a user-downloaded weights file: ``model_file(given)`` is the file its calculator
    #: loads (``given``: the ``model_file`` calculator option, or None for the default search path). The
    #: file's content hash, never its path, is part of its settings hash and of its rows
    model_file: Callable[[str | os.PathLike | None], Path] | None = None
    #: a cheap registered potential whose Hessian seeds this one's BFGS by default in 03_relax and the
    #: campaigns (:mod:`helpers.relax.hessian_seed`; fewer steps to the same minimum); None: ASE's start
    hessian_seed: str | None = None

    def atoms_evaluated(self, atoms) -> int:
        """Atoms in one evaluation of this crystal (``Atoms`` or a database row): its own, or its supercell's
        for a Γ-point code — what a relaxation's cost grows with, and what ``max_atoms`` subsets bound."""
        from helpers.relax.potentials.supercell import supercell_repeats

        natoms = len(atoms) if isinstance(atoms, Atoms) else atoms.natoms
        return natoms * math.prod(supercell_repeats(atoms, self.supercell_min_width))

    def uncovered(self, symbols) -> set[str]:
        """Elements in ``symbols`` this potential does not cover (empty set: all covered)."""
        return set(symbols) - self.elements

    def calculator(self, **kwargs) -> Calculator:
        """A new calculator; a clear ImportError naming what to install when a declared package is missing."""
        missing = self.missing_packages()
        if missing:
            raise ImportError(f"potential {self.name!r} needs {', '.join(missing)}, not installed: "
                              f"pip install torch==2.13.0 {' '.join(missing)} (or `make env`)")
        return self.make_calculator(**kwargs)

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
        if self.supercell_min_width:  # the supercell changes a Γ-point code's answers: part of its hash
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


#: the key of a model file's content hash (sha256) in a settings hash and on a relaxed row
MODEL_FILE_HASH = "model_file_sha256"


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


def _ani_factory(model_name: str, dispersion: str | None = None) -> Callable[..., Calculator]:
    def make(dtype=None, neighborlist: str = "per_cell", model_index: int | None = None) -> Calculator:
        import torch

        from helpers.relax.potentials.ani import load_ani
        from helpers.relax.potentials.calculators import OnePassANICalculator

        model = load_ani(model_name, dtype=dtype or torch.float64, neighborlist=neighborlist,
                         model_index=model_index)
        calc = OnePassANICalculator(model)
        if dispersion is None:
            return calc
        from helpers.relax.potentials.dispersion import with_model_dispersion

        return with_model_dispersion(calc, model_name)

    return make


HCNO = frozenset(STUDY_ELEMENTS)
ANI2X_ELEMENTS = frozenset({"H", "C", "N", "O", "S", "F", "Cl"})
_CITE = {
    "ani1x": "Smith et al., J. Chem. Phys. 148, 241733 (2018), doi:10.1063/1.5023802",
    "ani1ccx": "Smith et al., Nat. Commun. 10, 2903 (2019), doi:10.1038/s41467-019-10827-4",
    "ani2x": "Devereux et al., J. Chem. Theory Comput. 16, 4192 (2020), doi:10.1021/acs.jctc.0c00121",
}
_D3_CITE = "; D3(BJ): Grimme et al., J. Comput. Chem. 32, 1456 (2011), via simple-dftd3"

REGISTRY: dict[str, Potential] = {}


def register(potential: Potential) -> Potential:
    """Add a potential to the registry (name must be new)."""
    if potential.name in REGISTRY:
        raise ValueError(f"potential {potential.name!r} is already registered")
    REGISTRY[potential.name] = potential
    return potential


_ANI_LICENCE = "MIT (torchani and weights)"
_ANI_COST = {"ani1x": "0.13 s/call at 84 atoms (1.5 ms/atom; 8 networks, float64); side by side 0.5-0.7 ms/atom",
             "ani2x": "0.13 s/call at 84 atoms (1.5 ms/atom; 8 networks, float64); side by side 0.5-0.7 ms/atom"}
_ANI_COST["ani1ccx"] = _ANI_COST["ani1x"]

for _name, _elements, _x, _what in [
    ("ani1x", HCNO, 6, "ANI-1x, 8-network ensemble, wB97X/6-31G(d) active learning"),
    ("ani1ccx", HCNO, 10, "ANI-1ccx, 8-network ensemble, transfer-learned to CCSD(T)*/CBS"),
    ("ani2x", ANI2X_ELEMENTS, 6, "ANI-2x, 8-network ensemble, wB97X/6-31G(d), adds S, F, Cl"),
]:
    register(Potential(_name, _ani_factory(_name), _elements, _x, _CITE[_name], _what, licence=_ANI_LICENCE,
                       source="torchani + ANI_MODEL_DIR", cost=_ANI_COST[_name]))
    register(Potential(f"{_name}-d3", _ani_factory(_name, "d3bj"), _elements, _x,
                       _CITE[_name] + _D3_CITE, _what + " + D3(BJ) dispersion",
                       licence=_ANI_LICENCE + "; dftd3 LGPL-3.0-or-later", source="torchani + dftd3",
                       cost=_ANI_COST[_name].split(";")[0] + ") + D3 0.015-0.06 s per crystal; side by side",
                       packages=("dftd3",), answer_settings=d3_answer_settings(draft=True)))

from helpers.relax.potentials import beyond_ani as _beyond_ani  # noqa: E402  (registers its potentials)

for _potential in _beyond_ani.POTENTIALS:
    register(_potential)


def _elements_text(elements: frozenset[str]) -> str:
    """Short text for an element set: the list when short, a count and a range when long."""
    from ase.data import atomic_numbers

    if len(elements) <= 14:
        return " ".join(sorted(elements, key=lambda e: atomic_numbers[e]))
    zs = sorted(atomic_numbers[e] for e in elements)
    return f"{len(zs)} elements (Z {zs[0]}-{zs[-1]})"


def potentials_table(plugins: bool = True) -> list[dict[str, str]]:
    """One row per registered potential: name, what it is, source, licence, cost, elements, x, installed.

    ``plugins``: load the ``codani.potentials`` entry points first (their potentials are listed too).
    """
    if plugins:
        from helpers.relax.potentials.plugins import load_plugins

        load_plugins()
    return [{"name": p.name, "description": p.description, "source": p.source, "licence": p.licence,
             "cost": p.cost, "elements": _elements_text(p.elements), "steps_per_atom": str(p.steps_per_atom),
             "installed": "yes" if not p.missing_packages() else "no: pip install " + " ".join(p.missing_packages()),
             "citation": p.citation} for p in REGISTRY.values()]


def get_potential(name: str) -> Potential:
    """The registered potential ``name`` (entry-point potentials load on a miss); a clear error otherwise."""
    if name not in REGISTRY:
        from helpers.relax.potentials.plugins import load_plugins

        load_plugins()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown potential {name!r}; registered: {', '.join(sorted(REGISTRY))} (more can be "
                       f"added through the 'codani.potentials' entry point group, see README)") from None
