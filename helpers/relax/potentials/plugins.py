"""Bring your own potential: any ASE calculator, without editing this package.

Two forms, usable together:

1. **Entry points.** A package of yours declares, in its ``pyproject.toml``::

       [project.entry-points."codani.potentials"]
       my-potential = "my_package.codani_plugin:POTENTIAL"

   where ``POTENTIAL`` is a :class:`~helpers.relax.potentials.card.Potential`, a list of them, or a
   function returning either. After ``pip install`` of that package, ``python -m helpers.cli potentials``
   lists it and ``03_relax`` runs it by name. Entry points load lazily: on the first lookup of a name
   the registry does not know, or when the table of potentials is shown. A plugin that fails to load
   in any way (an exception, even ``sys.exit``; only Ctrl-C stops the load) or reuses a taken name is
   reported (warning) and left out; the built-in potentials always win.

2. **Model files.** Potentials whose weights a user downloads (MACE-OFF ``.model``, newer AIMNet2 ``.pt``,
   ...) are declared with :func:`model_file_potential`: the calculator is built from a file looked for
   in ``calculator_options={"model_file": ...}``, then ``$CODANI_MODEL_DIR``, then ``data/models/`` of
   the project; when it is missing the error says which file, where it was looked for and where to
   download it. The file's content hash (sha256), not its path, is part of the settings hash and is kept
   on every row (``model_file_sha256``): rows of other weights never count as done.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

from helpers import vocabulary
from helpers.relax.potentials.card import Potential

ENTRY_POINT_GROUP = "codani.potentials"
MODEL_DIR_ENV = vocabulary.MODEL_DIR_ENV

_loaded: set[str] = set()  # entry points already loaded (by "name = value")


class PluginWarning(UserWarning):
    """A ``codani.potentials`` entry point could not be used."""


def _as_potentials(obj: Any, source: str) -> list[Potential]:
    if callable(obj) and not isinstance(obj, Potential):
        obj = obj()
    items = [obj] if isinstance(obj, Potential) else list(obj) if isinstance(obj, Iterable) else [obj]
    bad = [type(o).__name__ for o in items if not isinstance(o, Potential)]
    if bad:
        raise TypeError(f"{source} gave {', '.join(bad)}, expected Potential objects")
    return items


def entry_point_potentials(group: str = ENTRY_POINT_GROUP) -> list[tuple[str, Potential]]:
    """(where it came from, potential) of every installed ``group`` entry point not yet loaded; one that fails
    to load becomes a :class:`PluginWarning`. Registering them is the registry's job
    (:func:`helpers.relax.potentials.registry.load_plugins`)."""
    out: list[tuple[str, Potential]] = []
    for ep in entry_points(group=group):
        key = f"{ep.name} = {ep.value}"
        if key in _loaded:
            continue
        _loaded.add(key)
        out.extend(_load_entry_point(ep, group))
    return out


def _load_entry_point(ep: EntryPoint, group: str) -> list[tuple[str, Potential]]:
    where = f"entry point {ep.name!r} ({ep.value}) of group {group!r}"
    dist = getattr(getattr(ep, "dist", None), "name", None)
    if dist:
        where += f" from {dist}"
    try:
        potentials = _as_potentials(ep.load(), where)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not break the registry
        warnings.warn(f"{where} failed to load: {type(err).__name__}: {err}", PluginWarning, stacklevel=4)
        return []
    return [(where, potential) for potential in potentials]


class ModelFileMissing(FileNotFoundError):
    """A potential's weights file is not where it was looked for."""


def model_file_search_path(filename: str) -> list[Path]:
    """Where a model file called ``filename`` is looked for, in order."""
    from helpers.store.paths import project_root

    places = []
    if os.environ.get(MODEL_DIR_ENV):
        places.append(Path(os.environ[MODEL_DIR_ENV]).expanduser() / filename)
    places.append(project_root() / "data" / "models" / filename)
    return places


def find_model_file(name: str, filename: str, url: str, model_file: str | os.PathLike | None = None) -> Path:
    """The weights file of potential ``name``: ``model_file`` if given, else the first hit of the search path.

    Raises :class:`ModelFileMissing` naming the file, every place looked at and where to get it.
    """
    places = [Path(model_file).expanduser()] if model_file else model_file_search_path(filename)
    for place in places:
        if place.is_file():
            return place
    looked = "\n  ".join(str(p) for p in places)
    raise ModelFileMissing(
        f"potential {name!r} needs its weights file {filename!r}, not found at:\n  {looked}\n"
        f"Download it from {url} and put it in ${MODEL_DIR_ENV} (now "
        f"{os.environ.get(MODEL_DIR_ENV) or 'unset'}) or data/models/, or pass "
        f"calculator_options={{'model_file': '/path/to/{filename}'}} to helpers.relax.stage.run_batch.")


def model_file_potential(name: str, load: Callable[..., Calculator], filename: str, url: str, *,
                         elements: Iterable[str], steps_per_atom: int, citation: str, description: str = "",
                         licence: str = "", cost: str = "", packages: tuple[str, ...] = ()) -> Potential:
    """A :class:`Potential` whose calculator is ``load(path, **options)`` on a user-downloaded weights file.

    Example (MACE-OFF; ``mace-torch`` cannot share an environment with ``sevenn``, see README)::

        from mace.calculators import MACECalculator
        POTENTIAL = model_file_potential(
            "mace-off23-small", lambda path, **kw: MACECalculator(model_paths=str(path), default_dtype="float64"),
            "MACE-OFF23_small.model",
            "https://github.com/ACEsuit/mace-off/raw/main/mace_off23/MACE-OFF23_small.model",
            elements="H C N O F P S Cl Br I".split(), steps_per_atom=6, citation="Kovacs et al. (2025)",
            licence="ASL (academic)", packages=("mace-torch",))
    """

    def locate(model_file: str | os.PathLike | None = None) -> Path:
        return find_model_file(name, filename, url, model_file)

    def make(model_file: str | os.PathLike | None = None, **options: Any) -> Calculator:
        return load(locate(model_file), **options)

    return Potential(name, make, frozenset(elements), steps_per_atom, citation, description, licence=licence,
                     source=f"model file {filename} (download: {url})", cost=cost, packages=packages,
                     model_file=locate)
