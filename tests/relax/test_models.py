"""Offline ANI models built from the NeuroChem files reproduce torchani's published references."""

import pytest
import torch

from helpers.relax.potentials.ani import ModelFilesError, PerCellNeighborlist, load_ani

# torchani's own test (tests/test_active_learning.py): fully symmetric methane, ANI-1x
METHANE = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5]], dtype=torch.double)
METHANE_SPECIES = torch.tensor([[1, 1, 1, 1, 6]])
REF_MEMBER0 = -40.277153758433975  # Ha, ensemble member 0
REF_H_ATOMIC_MEAN = -0.54853380570289400620  # Ha, ensemble-averaged atomic energy of each H
REF_H_ATOMIC_MEMBER0 = -0.54562734428531045605  # Ha


def test_ani1x_reproduces_torchani_reference_energies(model_dir):
    model = load_ani("ani1x", dtype=torch.float64)
    coords = METHANE.unsqueeze(0)
    members = model((METHANE_SPECIES, coords), ensemble_values=True).energies
    assert members.shape == (8, 1)
    # torchani's assertEqual for float64: rtol 1e-7, atol 1e-7 (NeuroChem files hold float32 weights)
    torch.testing.assert_close(members[0], torch.tensor([REF_MEMBER0], dtype=torch.double))
    atomic = model.atomic_energies((METHANE_SPECIES, coords)).energies
    torch.testing.assert_close(atomic[0, :-1], torch.full((4,), REF_H_ATOMIC_MEAN, dtype=torch.double))
    atomic_members = model.atomic_energies((METHANE_SPECIES, coords), ensemble_values=True).energies
    torch.testing.assert_close(atomic_members[0, 0, 0], torch.tensor(REF_H_ATOMIC_MEMBER0, dtype=torch.double))


def test_single_member_equals_ensemble_member(model_dir):
    ensemble = load_ani("ani1x")
    member = load_ani("ani1x", model_index=3)
    coords = METHANE.unsqueeze(0)
    e_members = ensemble((METHANE_SPECIES, coords), ensemble_values=True).energies
    torch.testing.assert_close(member((METHANE_SPECIES, coords)).energies, e_members[3])


@pytest.mark.parametrize("name", ["ani1ccx", "ani2x"])
def test_other_models_load_and_differ(model_dir, name):
    coords = METHANE.unsqueeze(0)
    e = load_ani(name)((METHANE_SPECIES, coords)).energies
    e1x = load_ani("ani1x")((METHANE_SPECIES, coords)).energies
    assert torch.isfinite(e).all()
    assert -41.0 < float(e) < -40.0  # methane is about -40.5 Ha at every level of theory here
    assert abs(float(e - e1x)) > 1e-4  # a different model, not ANI-1x again


def test_model_dir_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANI_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelFilesError, match="ani-1x_8x.info"):
        load_ani("ani1x")


def test_unknown_model_name():
    with pytest.raises(KeyError, match="known: ani1x"):
        load_ani("ani3z")


@pytest.mark.slow
def test_per_cell_neighborlist_matches_all_pairs_on_thin_and_large_cells(model_dir, cod_dir):
    """Cell list where safe, all pairs elsewhere: same energy as all pairs in both regimes."""
    import ase.io

    atoms = ase.io.read(cod_dir / "2100348.cif") * (2, 2, 2)  # 384 atoms, widths > 2 * 5.2 Å
    species = torch.tensor(atoms.numbers).unsqueeze(0)
    coords = torch.tensor(atoms.positions).unsqueeze(0)
    cell = torch.tensor(atoms.cell.array)
    pbc = torch.tensor([True] * 3)
    ref = load_ani("ani1x", neighborlist="all_pairs")((species, coords), cell, pbc).energies
    fast = load_ani("ani1x", neighborlist="per_cell")((species, coords), cell, pbc).energies
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-9)
    assert isinstance(load_ani("ani1x").neighborlist, PerCellNeighborlist)
    thin = ase.io.read(cod_dir / "2100348.cif")  # 48 atoms, cell 6.7 Å: all pairs path
    s = torch.tensor(thin.numbers).unsqueeze(0)
    c = torch.tensor(thin.positions).unsqueeze(0)
    e_thin = load_ani("ani1x")((s, c), torch.tensor(thin.cell.array), pbc).energies
    e_ref = load_ani("ani1x", neighborlist="all_pairs")((s, c), torch.tensor(thin.cell.array), pbc).energies
    torch.testing.assert_close(e_thin, e_ref, rtol=0, atol=1e-9)
