"""Registry of potentials: a name -> a ready ASE calculator (float64) and the study's defaults.

Adding a potential is one :data:`REGISTRY` entry. ``steps_per_atom`` is the study's x in the
step cap ``300 + x * n_atoms`` (6 for ANI-1x, 10 for ANI-1ccx).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ase.calculators.calculator import Calculator

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

    def uncovered(self, symbols) -> set[str]:
        """Elements in ``symbols`` this potential does not cover (empty set: all covered)."""
        return set(symbols) - self.elements

    def calculator(self, **kwargs) -> Calculator:
        return self.make_calculator(**kwargs)


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


for _name, _elements, _x, _what in [
    ("ani1x", HCNO, 6, "ANI-1x, 8-network ensemble, wB97X/6-31G(d) active learning"),
    ("ani1ccx", HCNO, 10, "ANI-1ccx, 8-network ensemble, transfer-learned to CCSD(T)*/CBS"),
    ("ani2x", ANI2X_ELEMENTS, 6, "ANI-2x, 8-network ensemble, wB97X/6-31G(d), adds S, F, Cl"),
]:
    register(Potential(_name, _ani_factory(_name), _elements, _x, _CITE[_name], _what))
    register(Potential(f"{_name}-d3", _ani_factory(_name, "d3bj"), _elements, _x,
                       _CITE[_name] + _D3_CITE, _what + " + D3(BJ) dispersion"))


def potentials_table() -> list[dict[str, str]]:
    """One row per registered potential: name, elements, the study's x, what it is, citation."""
    return [{"name": p.name, "elements": " ".join(sorted(p.elements)), "steps_per_atom": str(p.steps_per_atom),
             "description": p.description, "citation": p.citation} for p in REGISTRY.values()]


def get_potential(name: str) -> Potential:
    """The registered potential ``name``; a clear error listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown potential {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
