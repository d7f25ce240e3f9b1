"""The potential contract (helpers.relax.potentials.contract) over every registered potential, on CO2 (COD
1010060, 12 atoms, the smallest real clean crystal; every potential covers C and O): elements, float64,
forces and stress against finite differences, versions and options in the settings hash. And the contract
catches a potential that breaks it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from helpers.relax.potentials.card import Potential
from helpers.relax.potentials.contract import ContractError, check_contract, check_settings_hash
from helpers.relax.potentials.registry import REGISTRY, get_potential

torch.set_num_threads(1)

#: float32 networks: their energies carry ~1e-5 relative noise, so larger steps and looser tolerances
FLOAT32_FAMILIES = {"sevennet", "chgnet", "aimnet2"}
#: model loading and per-call cost of these families (tens of seconds each here)
SLOW_FAMILIES = {"sevennet", "chgnet", "aimnet2"}
SLOW = {"gfn2-xtb"}  # ~40 s for the contract's 16 calls on CO2's bare cell, loaded machine
#: the contract is about each code's own arithmetic: tblite on CO2's bare 12-atom cell (its 8 Å supercell is
#: 96 atoms, 8-30x the cost; tested exact against the explicit supercell in tests/test_supercell.py)
OPTIONS = {"xtb": {"min_width": 0}}


def _params():
    return [pytest.param(name, marks=pytest.mark.slow) if p.family in SLOW_FAMILIES or name in SLOW else name
            for name, p in REGISTRY.items()]


@pytest.mark.parametrize("name", _params())
def test_every_registered_potential_keeps_the_contract_on_a_real_crystal(name, co2, require_potential):
    potential = require_potential(name)
    loose = potential.family in FLOAT32_FAMILIES
    report = check_contract(potential, co2, OPTIONS.get(potential.family),
                            force_step=2e-3 if loose else 1e-3, strain_step=1e-3 if loose else 1e-4,
                            rtol=2e-3 if loose else 1e-4, atol=1e-2 if loose else 1e-4)
    assert report.natoms == 12 and set(potential.packages) <= set(report.hashed)


class _ScaledStress(Calculator):
    """Lennard-Jones whose stress is 10 % off: what the contract must catch."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, scale: float = 1.1, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.lj = scale, LennardJones(sigma=1.0, epsilon=0.01, rc=4.0, smooth=True)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.lj.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = {**self.lj.results, "stress": np.asarray(self.lj.results["stress"]) * self.scale}


def _toy(make, name="toy-contract") -> Potential:
    return Potential(name, make, frozenset({"C", "O"}), 6, "none", "a Lennard-Jones toy")


def test_the_contract_accepts_an_exact_plugin_and_names_a_wrong_stress(co2, monkeypatch):
    """A plugin author's use: an exact potential passes, a 10 % wrong stress fails with the component named."""
    exact = _toy(lambda scale=1.0: _ScaledStress(scale))
    monkeypatch.setitem(REGISTRY, exact.name, exact)
    report = check_contract(exact, co2)
    assert report.stress_error < 1e-6 and report.force_error < 1e-5 and report.hashed == ["scale"]
    with pytest.raises(ContractError, match=r"stress\[0,0\]"):
        check_contract(_toy(lambda scale=1.1: _ScaledStress(scale)), co2)


def test_the_contract_names_uncovered_elements_and_unhashed_packages(co2, monkeypatch):
    hydrogen_only = Potential("toy-h", lambda: LennardJones(), frozenset({"H"}), 6, "none")
    with pytest.raises(ContractError, match=r"does not cover \['C', 'O'\]"):
        check_contract(hydrogen_only, co2)
    unregistered = Potential("toy-unregistered", lambda: LennardJones(), frozenset({"C", "O"}), 6, "none",
                             packages=("numpy",))
    with pytest.raises(ContractError, match="missing from the settings hash"):
        check_settings_hash(unregistered)  # not registered: its versions never reach a hash
    monkeypatch.setitem(REGISTRY, unregistered.name, unregistered)
    assert check_settings_hash(get_potential("toy-unregistered")) == ["numpy"]
