"""The adapters to other libraries' internals (helpers/internals.py) still fit the installed releases.

A failure here means a release moved a private name this project relies on: update helpers/internals.py
(and WRITTEN_FOR, and the caps in pyproject.toml) together, after checking the results do not change.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from ase.build import bulk

from helpers import internals


def test_written_for_matches_installed_release_series():
    """The installed release is the one the adapters were written for (same major.minor)."""
    installed = {name: version(name) for name in internals.WRITTEN_FOR}
    for name, written in internals.WRITTEN_FOR.items():
        assert installed[name].split(".")[:2] == written.split(".")[:2], (
            f"{name} {installed[name]} installed, helpers/internals.py was written for {written}")


def test_bfgs_method_has_the_step_we_override():
    from ase.optimize import BFGS

    method = internals.bfgs_method_class()
    assert callable(getattr(method, "compute_step", None)), "ase BFGSMethod.compute_step moved"
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=0.05, steps=2)
    assert isinstance(opt.state, method), "ase BFGS no longer keeps its step in a BFGSMethod"


@pytest.mark.parametrize("name", ["BFGS", "LBFGS", "FIRE", "PreconLBFGS"])
def test_optimizer_state_goes_out_through_dump_and_back_through_read(name):
    """Checkpoints take an optimizer's state from its ``dump`` and give it back through ``read``;
    for BFGS and LBFGS the restored optimizer then steps exactly as the one that saved it."""
    import copy

    import numpy as np
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter

    from helpers.relax.engine import make_optimizer

    def crystal():
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.rattle(0.05, seed=1)
        atoms.calc = EMT()
        return atoms

    first = crystal()
    opt = make_optimizer(name, FrechetCellFilter(first))
    state = internals.capture_optimizer_state(opt)
    assert state() is None
    opt.run(fmax=1e-6, steps=4)
    saved = copy.deepcopy(state())  # as a checkpoint writes it, before the next step changes it in place
    assert saved is not None, f"ase {name}.step no longer hands its state to dump"
    positions, cell = first.get_positions(), first.cell.array.copy()
    opt.run(fmax=1e-6, steps=3)

    second = crystal()
    target = FrechetCellFilter(second)
    second.set_cell(cell, scale_atoms=False)
    second.set_positions(positions)
    again = make_optimizer(name, target)
    internals.restore_optimizer_state(again, saved)
    again.run(fmax=1e-6, steps=3)
    if name in ("BFGS", "LBFGS"):
        np.testing.assert_allclose(second.get_positions(), first.get_positions(), atol=1e-10)


def test_cell_filter_algebra_is_replaceable():
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from scipy.linalg import expm_frechet, logm

    atoms = bulk("Cu", cubic=True)
    atoms.calc = EMT()
    calls = []

    def counting_logm(m):
        calls.append(1)
        return logm(m)

    filt = FrechetCellFilter(atoms)
    internals.set_cell_filter_algebra(filt, counting_logm, expm_frechet)
    filt.get_positions()
    assert calls, "FrechetCellFilter no longer calls its _utility.logm"


def test_ase_db_initialize(tmp_path):
    import sqlite3

    import ase.db

    db = ase.db.connect(str(tmp_path / "x.db"), type="db")
    con = sqlite3.connect(db.filename)
    internals.initialize_ase_db(db, con)
    con.commit()
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"systems", "information", "keys"} <= tables


def test_postgres_backend_patch_targets_exist():
    pg = pytest.importorskip("ase_db_backends.postgresql")
    assert hasattr(pg, "Connection") and hasattr(pg.PostgreSQLDatabase, "get_last_id")
    internals.patch_postgres_backend()
    assert pg.PostgreSQLDatabase.get_last_id is internals._session_last_id
    assert hasattr(pg.Connection, "rollback")


def test_torchani_neighborlist_by_name():
    from torchani.neighbors import AllPairs, CellList

    assert isinstance(internals.torchani_neighborlist("all_pairs"), AllPairs)
    assert isinstance(internals.torchani_neighborlist("cell_list"), CellList)


def test_ngl_component_ids():
    nglview = pytest.importorskip("nglview")
    from ase.build import molecule

    view = nglview.show_ase(molecule("H2O"))
    ids = internals.ngl_component_ids(view)
    assert len(ids) == 1 and all(isinstance(i, str) for i in ids)


def test_gfnff_still_has_the_topology_check_we_override():
    from gfnff.ase_calculator import GFNFF

    cls = internals.gfnff_topology_per_structure()
    assert issubclass(cls, GFNFF) and callable(GFNFF._needs_reinit)


def test_aimnet_loader_and_old_ensemble_layout_still_fit():
    """load_v1_model is importable and an old ensemble member still exposes ``module.aev.rc_s``."""
    import torch
    from aimnet.models.utils import load_v1_model

    from helpers.relax.potentials.factories import aimnet2_weights_path

    assert callable(load_v1_model)
    ensemble = torch.jit.load(str(aimnet2_weights_path()), map_location="cpu")
    member = next(m for _, m in ensemble.models.named_children())
    assert float(member.module.aev.rc_s) == 5.0


def test_sevennet_model_still_has_the_layers_we_compile(co2):
    """Every layer type we compile is still in SevenNet-0's model, compiled it gives sevenn's own numbers to
    float32 rounding on dry ice (whose heap a wholly compiled convolution corrupted), and anything but a SevenNet
    calculator is refused by name."""
    import numpy as np
    from ase.calculators.emt import EMT

    from helpers.relax.potentials.factories import make_sevennet0_d3

    eager = make_sevennet0_d3(dispersion=False, compiled=False)
    kinds = [type(layer).__name__ for _, layer in eager.model.named_children()]
    assert set(internals.SEVENNET_COMPILED_LAYERS) <= set(kinds) and kinds.count("IrrepsConvolution") == 5
    wanted = sum(kind in internals.SEVENNET_COMPILED_LAYERS for kind in kinds) + 5 * len(
        internals.SEVENNET_CONVOLUTION_PARTS)
    compiled = make_sevennet0_d3(dispersion=False, compiled=False)
    assert internals.sevennet_compile_layers(compiled) == wanted == 39  # 5 interaction blocks
    results = []
    for calc in (eager, compiled):
        atoms = co2.copy()
        atoms.rattle(0.02, seed=4)
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    (e0, f0, s0), (e1, f1, s1) = results
    assert abs(e1 - e0) < 1e-4 * len(co2) and np.abs(f1 - f0).max() < 1e-4 and np.abs(s1 - s0).max() < 1e-6
    assert np.abs(f0).max() > 0.1  # rattled: the forces compared are not zero
    with pytest.raises(AttributeError, match="AtomGraphSequential"):
        internals.sevennet_compile_layers(EMT())
