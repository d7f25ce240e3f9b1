"""Every relaxation ends with a status, never an exception; the study's settings converge."""

import math

import ase.io
import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from helpers.relax.engine import RelaxSettings, relax
from helpers.relax.potentials.registry import REGISTRY, get_potential


class Faulty(Calculator):
    """Wraps a real calculator and breaks it after ``after`` calls: NaN forces or an exception."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, inner, after: int, mode: str):
        super().__init__()
        self.inner, self.after, self.mode, self.calls = inner, after, mode, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        self.inner.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = dict(self.inner.results)
        if self.calls > self.after:
            if self.mode == "nan":
                self.results["forces"] = np.full_like(self.results["forces"], np.nan)
            else:
                raise RuntimeError("model server went away")


def ani1x_calc():
    return get_potential("ani1x").calculator()


def test_step_cap_status(crystal, model_dir):
    settings = RelaxSettings(max_steps_base=3, steps_per_atom=0)
    result = relax(crystal, ani1x_calc(), settings)
    assert result.status == "step_cap" and not result.converged
    assert result.steps == 3 == result.max_steps
    assert result.fmax_final > settings.fmax
    assert math.isfinite(result.e_final) and result.e_final < result.e_initial


def test_nan_forces_are_exploded_not_a_crash(crystal, model_dir):
    settings = RelaxSettings(steps_per_atom=6)
    result = relax(crystal, Faulty(ani1x_calc(), after=3, mode="nan"), settings)
    assert result.status == "exploded"
    assert "non-finite" in result.message
    assert result.steps < 10


def test_calculator_exception_is_error_with_message(crystal, model_dir):
    result = relax(crystal, Faulty(ani1x_calc(), after=2, mode="raise"), RelaxSettings(steps_per_atom=6))
    assert result.status == "error"
    assert "model server went away" in result.message


def test_fused_atoms_stop_early(crystal, model_dir):
    atoms = crystal.copy()
    atoms.positions[1] = atoms.positions[0] + [0.2, 0.0, 0.0]  # two atoms on top of each other
    result = relax(atoms, ani1x_calc(), RelaxSettings(steps_per_atom=6))
    assert result.status == "exploded"
    assert "fused" in result.message


def test_wall_time_limit(crystal, model_dir):
    result = relax(crystal, ani1x_calc(), RelaxSettings(steps_per_atom=6), max_wall_time=0.0)
    assert result.status == "timeout" and result.steps <= 2


def test_settings_validation_and_cap():
    with pytest.raises(ValueError, match="optimizer"):
        RelaxSettings(optimizer="SteepestHope")
    s = RelaxSettings(potential="ani1ccx").resolved(get_potential("ani1ccx").steps_per_atom)
    assert s.max_steps(30) == 300 + 10 * 30  # the study's cap for ANI-1ccx
    assert RelaxSettings().resolved(6).hash() != RelaxSettings(fmax=0.001).resolved(6).hash()


def test_registry_knows_the_study_defaults():
    assert get_potential("ani1x").steps_per_atom == 6
    assert get_potential("ani1ccx").steps_per_atom == 10
    assert {"ani1x", "ani1ccx", "ani2x", "ani1x-d3", "ani1ccx-d3", "ani2x-d3"} <= set(REGISTRY)
    assert get_potential("ani1x").uncovered(["C", "S"]) == {"S"}
    assert get_potential("ani2x").uncovered(["C", "S", "Cl"]) == set()
    with pytest.raises(KeyError, match="registered: .*ani1ccx"):
        get_potential("ani3x")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if n.startswith("ani")))  # others: test_beyond_ani.py
def test_every_potential_relaxes_real_crystals_at_study_settings(cod_dir, model_dir, name):
    """Study settings (BFGS, atoms + cell, fmax 5e-4, cap 300 + x n) on small real COD crystals (one for a -d3
    variant: its network is the plain model's, tested on three; what D3 adds is tested in test_dispersion)."""
    potential = get_potential(name)
    settings = RelaxSettings(potential=name).resolved(potential.steps_per_atom)
    calc = potential.calculator()
    for cod_id in (2007300,) if name.endswith("-d3") else (2007300, 4021477, 2000642):
        atoms = ase.io.read(cod_dir / f"{cod_id}.cif")
        result = relax(atoms, calc, settings)
        dv = result.atoms.get_volume() / atoms.get_volume() - 1
        print(f"{name} {cod_id}: {result.status} steps={result.steps} dV={100 * dv:+.2f}%")
        assert result.status == "converged", (cod_id, result.status, result.message)
        assert result.fmax_final <= settings.fmax
        assert abs(dv) < 0.3
        assert result.atoms.calc.results["stress"].shape == (6,)
