"""Registry of potentials: a name -> a :class:`~helpers.relax.potentials.card.Potential` (a ready float64 ASE
calculator and the study's defaults).

Built in: one card per potential (``cards/<name>.toml``, registry order in ``cards/ORDER``), its factory
resolved once through :data:`~helpers.relax.potentials.factories.FACTORIES`. Adding a potential is one card
(and, for new code, one factory). ``steps_per_atom`` is the study's x in the step cap ``300 + x * n_atoms``
(6 for ANI-1x, 10 for ANI-1ccx). Potentials of other packages arrive through the ``codani.potentials`` entry
point group, loaded on first need (:mod:`helpers.relax.potentials.plugins`).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from helpers.relax.potentials.card import (
    FAMILY_EXTRAS,
    MODEL_FILE_HASH,
    CardError,
    Potential,
    card_paths,
    file_sha256,
    potential_from_card,
    read_card,
)
from helpers.relax.potentials.dispersion import d3_answer_settings
from helpers.relax.potentials.factories import FACTORIES
from helpers.relax.potentials.plugins import ENTRY_POINT_GROUP, PluginWarning, entry_point_potentials

__all__ = ["FAMILY_EXTRAS", "MODEL_FILE_HASH", "REGISTRY", "Potential", "file_sha256", "get_potential",
           "elements_text", "load_plugins", "potentials_table", "register"]

REGISTRY: dict[str, Potential] = {}


def register(potential: Potential) -> Potential:
    """Add a potential to the registry (name must be new)."""
    if potential.name in REGISTRY:
        raise ValueError(f"potential {potential.name!r} is already registered")
    REGISTRY[potential.name] = potential
    return potential


def built_in_potential(path: str | Path) -> Potential:
    """The potential of one card file, checked against the code it names: its D3 cutoffs are the ones
    :mod:`~helpers.relax.potentials.dispersion` computes with, its supercell width the factory's default."""
    card = read_card(path)
    potential = potential_from_card(card, FACTORIES, str(path))
    d3 = dict(d3_answer_settings(draft=True))
    for key, value in potential.answer_settings:
        if key in d3 and value != d3[key]:
            raise CardError(f"{path}: {key} = {value!r}, but the code computes with {d3[key]!r}: "
                            "update the card (the settings hash must name what is computed)")
    width = inspect.signature(potential.make_calculator).parameters.get("min_width")
    if width is not None and float(width.default) != potential.supercell_min_width:
        raise CardError(f"{path}: supercell_min_width = {potential.supercell_min_width:g}, but its factory "
                        f"builds the {width.default:g} Å supercell")
    return potential


for _path in card_paths():
    register(built_in_potential(_path))


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register the potentials of every installed ``codani.potentials`` entry point not yet loaded.

    Returns the names newly registered. Idempotent; failures and taken names become :class:`PluginWarning`
    (the built-in potentials always win).
    """
    names = []
    for where, potential in entry_point_potentials(group):
        if potential.name in REGISTRY:
            warnings.warn(f"{where}: potential {potential.name!r} is already registered; the plugin's is ignored",
                          PluginWarning, stacklevel=2)
            continue
        register(potential)
        names.append(potential.name)
    return names


def elements_text(elements: frozenset[str]) -> str:
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
        load_plugins()
    return [{"name": p.name, "description": p.description, "source": p.source, "licence": p.licence,
             "cost": p.cost, "elements": elements_text(p.elements), "steps_per_atom": str(p.steps_per_atom),
             "installed": "no: " + p.install_command() if p.missing_packages() else "yes",
             "citation": p.citation} for p in REGISTRY.values()]


def get_potential(name: str) -> Potential:
    """The registered potential ``name`` (entry-point potentials load on a miss); a clear error otherwise."""
    if name not in REGISTRY:
        load_plugins()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown potential {name!r}; registered: {', '.join(sorted(REGISTRY))} (more can be "
                       f"added through the 'codani.potentials' entry point group, see README)") from None
