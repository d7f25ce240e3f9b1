"""The fast relax path: same numbers as the one-crystal calculator, same trajectories as relax()."""

import time

import ase.io
import numpy as np
import pytest
from ase.filters import FrechetCellFilter
from scipy.linalg import expm_frechet, logm

from helpers.relax.engine import RelaxSettings, relax
from helpers.relax.potentials.ani import load_ani
from helpers.relax.potentials.ani_side_by_side import SideBySideANI, build_pairs, pairs_still_valid
from helpers.relax.potentials.calculators import OnePassANICalculator
from helpers.relax.potentials.registry import get_potential
from helpers.relax.side_by_side import expm_frechet_block, logm_near_identity, relax_many
from helpers.relax.stage import run_batch
from helpers.relax.time_split import format_time_split, read_time_split
from helpers.store import db as dbmod

IDS = (2007300, 4021477, 2000642, 1011063)  # 30, 29, 36, 24 atoms; 2007300 is 4.75 Å thin (< cutoff)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_ani("ani1x")


@pytest.fixture(scope="module")
def crystals(cod_dir):
    return {f"cod-{i}": ase.io.read(cod_dir / f"{i}.cif") for i in IDS}


def distorted(atoms, seed):
    """A copy rattled by 0.05 Å with its cell sheared by ~1 % (a geometry away from any minimum)."""
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    out.rattle(0.05, seed=seed)
    out.set_cell(out.cell @ (np.eye(3) + 0.01 * rng.standard_normal((3, 3))), scale_atoms=True)
    return out


def reference(atoms, model):
    probe = atoms.copy()
    probe.calc = OnePassANICalculator(model)
    return probe.get_potential_energy(), probe.get_forces(), probe.get_stress()


def test_batched_pass_equals_one_crystal_calculator(model, crystals):
    batch = [distorted(a, seed) for seed, a in enumerate(crystals.values())]
    results = SideBySideANI(model).compute(batch)
    for atoms, res in zip(batch, results):
        e, f, s = reference(atoms, model)
        assert res["energy"] == pytest.approx(e, abs=1e-8)
        assert np.abs(res["forces"] - f).max() < 1e-8
        assert np.abs(res["stress"] - s).max() < 1e-10
    alone = SideBySideANI(model).compute(batch[:1])[0]
    assert alone["energy"] == pytest.approx(results[0]["energy"], abs=1e-8)


def test_pair_lists_are_reused_only_while_exact(model, crystals):
    atoms = crystals["cod-2007300"].copy()
    evaluator = SideBySideANI(model, skin=1.0)
    evaluator.compute([atoms], keys=["x"])
    assert evaluator.n_rebuilds == 1
    rng = np.random.default_rng(3)
    for _ in range(4):  # small moves and strains: the old list stays valid and the numbers exact
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.002 * rng.standard_normal((3, 3))), scale_atoms=True)
        res = evaluator.compute([atoms], keys=["x"])[0]
        e, f, _ = reference(atoms, model)
        assert res["energy"] == pytest.approx(e, abs=1e-8) and np.abs(res["forces"] - f).max() < 1e-8
    assert evaluator.n_rebuilds == 1
    atoms.positions[0] += 0.6  # more than half the skin: the list must be rebuilt
    res = evaluator.compute([atoms], keys=["x"])[0]
    assert evaluator.n_rebuilds == 2
    assert res["energy"] == pytest.approx(reference(atoms, model)[0], abs=1e-8)


def test_validity_check_is_the_skin_bound():
    """Listed up to cutoff + skin = 6.2 Å: a uniform squeeze by 0.9 keeps every pair > 5.58 Å apart
    (list still exact), by 0.8 it does not (4.96 Å < 5.2 Å); moving one atom by 0.4 Å is fine, 0.6 Å not."""
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    atoms = bulk("Cu", cubic=True) * 2
    pairs = build_pairs(atoms, 5.2, 1.0)
    assert pairs_still_valid(pairs, atoms, 5.2, 1.0)
    for factor, valid in ((0.9, True), (0.8, False)):
        squeezed = atoms.copy()
        squeezed.set_cell(atoms.cell * factor, scale_atoms=True)
        assert pairs_still_valid(pairs, squeezed, 5.2, 1.0) is valid
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.9, scale_atoms=True)
    listed = {(i, j, tuple(s)) for i, j, s in zip(pairs.first, pairs.second, pairs.shifts)}
    i, j, shifts = neighbor_list("ijS", squeezed, 5.2)
    assert all((a, b, tuple(s)) in listed or (b, a, tuple(-s)) in listed for a, b, s in zip(i, j, shifts))
    for move, valid in ((0.4, True), (0.6, False)):
        moved = atoms.copy()
        moved.positions[3] += [move, 0, 0]
        assert pairs_still_valid(pairs, moved, 5.2, 1.0) is valid


@pytest.mark.parametrize("scale", [1.0, 30.0, 116.0])
def test_fast_cell_algebra_matches_scipy(scale):
    rng = np.random.default_rng(0)
    for size in (0.0, 1e-3, 0.05, 0.2, 0.6):
        matrix = scale * (np.eye(3) + size * rng.standard_normal((3, 3)))
        assert np.abs(logm_near_identity(matrix) - logm(matrix)).max() < 1e-12  # far from I: scipy itself
        direction = np.zeros((3, 3))
        direction[rng.integers(3), rng.integers(3)] = 1.0
        log = logm(matrix / scale).real
        assert np.abs(expm_frechet_block(log, direction) - expm_frechet(log, direction, compute_expm=False)
                      ).max() < 1e-13


def test_cholesky_bfgs_step_is_ases_step():
    from helpers.internals import bfgs_method_class
    from helpers.relax.side_by_side import CholeskyBFGSMethod

    BFGSMethod = bfgs_method_class()

    rng = np.random.default_rng(1)
    a = rng.standard_normal((60, 60))
    gradient = rng.standard_normal(60)
    for hessian in (a @ a.T + 60 * np.eye(60), a + a.T):  # positive definite, then indefinite
        ours = CholeskyBFGSMethod(hessian.copy()).compute_step(gradient)
        ase_step = BFGSMethod(hessian.copy()).compute_step(gradient)
        assert np.abs(ours - ase_step).max() < 1e-10 * np.abs(ase_step).max()


def test_relax_many_follows_relax_step_by_step(model, crystals):
    settings = RelaxSettings(max_steps_base=25, steps_per_atom=0, draft=None)
    items = [(sid, crystals[sid]) for sid in ("cod-2007300", "cod-4021477", "cod-1011063")]
    started, cpu_started = time.perf_counter(), time.process_time()
    many = dict(relax_many(items, SideBySideANI(model), settings, max_atoms_in_flight=60))  # 2 in flight, then refill
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # each crystal's cost is its share of the passes: the shares add up to the time spent, and a crystal
    # that shared every pass costs less than its time in flight
    costs = [r.extra["cost_time"] for r in many.values()]
    assert 0.7 * elapsed < sum(costs) <= elapsed
    assert all(0 < r.extra["cost_time"] < r.wall_time for r in many.values())
    # the same shares of this process's CPU time: core-seconds, whatever else ran on the machine
    assert 0.7 * cpu < sum(r.extra["cpu_time"] for r in many.values()) <= cpu
    calc = OnePassANICalculator(model)
    for sid, atoms in items:
        single = relax(atoms, calc, settings)
        fast = many[sid]
        assert (fast.status, fast.steps, fast.force_calls) == (single.status, single.steps, 26) == ("step_cap", 25, 26)
        assert np.abs(fast.atoms.positions - single.atoms.positions).max() < 1e-7
        assert np.abs(fast.atoms.cell - single.atoms.cell).max() < 1e-7
        assert fast.e_final == pytest.approx(single.e_final, abs=1e-7)
        assert fast.fmax_final == pytest.approx(single.fmax_final, rel=1e-5)


@pytest.fixture(scope="module")
def study_result(crystals, model):
    """relax() on cod-2007300 at the study's settings: one crystal, float64 throughout (234 steps)."""
    return relax(crystals["cod-2007300"], OnePassANICalculator(model), RelaxSettings(strategy="study").resolved(6))


def test_draft_moves_the_crystal_and_the_exact_model_finishes(model, crystals, study_result):
    """float32 draft steps, then float64 to the study's fmax: reported numbers are the exact model's."""
    import torch

    settings = RelaxSettings().resolved(6)
    sid = "cod-2007300"
    atoms = crystals[sid]
    exact, draft = SideBySideANI(model), SideBySideANI(model, dtype=torch.float32)
    fast = dict(relax_many([(sid, atoms)], exact, settings, draft=draft))[sid]
    assert fast.status == "converged" and fast.fmax_final < settings.fmax
    assert 0 < fast.extra["draft_calls"] < fast.force_calls - 1  # first and last evaluations are exact
    assert fast.e_initial == pytest.approx(reference(atoms, model)[0], abs=1e-8)
    e, f, s = reference(fast.atoms, model)  # from scratch, float64
    assert fast.e_final == pytest.approx(e, abs=1e-8)
    filtered = fast.atoms.copy()
    filtered.calc = OnePassANICalculator(model)
    forces = FrechetCellFilter(filtered).get_forces()
    assert np.sqrt((forces**2).sum(axis=1).max()) < settings.fmax
    study_volume = study_result.atoms.get_volume()
    assert abs(fast.atoms.get_volume() - study_volume) / study_volume < 1e-3


class Poisoned(SideBySideANI):
    """Returns NaN forces for one crystal from the third pass on (a structure that blows up)."""

    def __init__(self, model, victim):
        super().__init__(model)
        self.victim = victim

    def compute(self, atoms_list, keys=None):
        results = super().compute(atoms_list, keys)
        if self.n_calls >= 3:
            for key, res in zip(keys, results):
                if key == self.victim:
                    res["forces"] = res["forces"] * np.nan
        return results


def test_one_bad_crystal_never_stops_the_others(model, crystals):
    molecule = crystals["cod-2007300"].copy()
    molecule.pbc = False  # the batched pass refuses it: recorded as an error
    fused = crystals["cod-4021477"].copy()
    fused.positions[1] = fused.positions[0] + [0.2, 0.0, 0.0]
    items = [("molecule", molecule), ("fused", fused), ("nan", crystals["cod-2000642"]),
             ("fine", crystals["cod-1011063"])]
    settings = RelaxSettings(max_steps_base=5, steps_per_atom=0)
    out = dict(relax_many(items, Poisoned(model, "nan"), settings))
    assert out["molecule"].status == "error" and "periodic" in out["molecule"].message
    assert out["fused"].status == "exploded" and "fused" in out["fused"].message
    assert out["nan"].status == "exploded" and "non-finite" in out["nan"].message
    assert out["fine"].status == "step_cap" and out["fine"].steps == 5
    timed = dict(relax_many(items[3:], SideBySideANI(model), settings, max_wall_time=0.0))
    assert timed["fine"].status == "timeout" and timed["fine"].steps == 0


def test_relax_many_rejects_line_search_optimizers(model, crystals):
    with pytest.raises(ValueError, match="PreconLBFGS"):
        list(relax_many([], SideBySideANI(model), RelaxSettings(optimizer="PreconLBFGS", steps_per_atom=0)))


def test_strategy_is_validated_and_study_hash_unchanged():
    with pytest.raises(ValueError, match="strategy"):
        RelaxSettings(strategy="turbo")
    study, fast = RelaxSettings(strategy="study").resolved(6), RelaxSettings().resolved(6)
    assert fast.strategy == "fast"  # the default
    assert study.hash() != fast.hash()
    # finished work recorded before the strategy field existed keeps its hash
    from dataclasses import asdict

    assert "strategy" not in __import__("json").dumps({k: v for k, v in asdict(study).items() if k != "strategy"})


def test_run_batch_relaxes_side_by_side(small_clean_db, tmp_path, model_dir, fast_rows_only):
    """The fast pass's own rows (the study's-method fallback that would redo these capped crystals, and its
    resume, are tests/relax/test_fallback.py's)."""
    out = str(tmp_path / "relaxed.db")
    settings = RelaxSettings(max_steps_base=3, steps_per_atom=0)
    report = run_batch(small_clean_db, out, settings=settings, progress=False, n_threads=1)
    rows = list(dbmod.connect(out).select())
    assert len(rows) == 4 and {r.strategy for r in rows} == {"fast"}
    assert {r.status for r in rows} == {"step_cap"} and {r.steps for r in rows} == {3}
    # exact start, 3 float32 draft steps, the capped geometry re-evaluated exactly
    assert {r.force_calls for r in rows} == {5} and {r.draft_calls for r in rows} == {3}
    assert all(0 < r.cost_time <= r.wall_time for r in rows)  # its share of the passes, not time in flight
    assert all(0 < r.cpu_time <= 1.1 * r.cost_time + 0.05 for r in rows)  # one thread: CPU ≈ its wall share
    assert report.skipped_done == 0
    # where the time went: the four crystals share every pass (one exact start, 3 drafts, one exact finish)
    split = report.time_split
    assert (split["draft_passes"], split["exact_passes"]) == (3, 2)
    assert split["pair_builds"] >= 8 and 0 < split["draft_s"] + split["exact_s"] + split["pairs_s"] < split["wall_s"]
    assert read_time_split("tqdm noise\n" + format_time_split(split)) == pytest.approx(split, abs=1e-3)


def test_exact_fast_path_converges_to_the_study_answer(crystals, model, study_result):
    """Full study settings, no draft: same steps and volume as relax(), fmax re-checked from scratch."""
    settings = RelaxSettings(draft=None).resolved(6)
    sid = "cod-2007300"
    fast = dict(relax_many([(sid, crystals[sid])], SideBySideANI(model), settings))[sid]
    assert fast.status == study_result.status == "converged"
    assert fast.steps == study_result.steps
    probe = fast.atoms.copy()
    probe.calc = get_potential("ani1x").calculator()
    forces = FrechetCellFilter(probe).get_forces()
    assert np.sqrt((forces**2).sum(axis=1).max()) <= settings.fmax * 1.001
    v_fast, v_study = fast.atoms.get_volume(), study_result.atoms.get_volume()
    assert abs(v_fast - v_study) / v_study < 1e-5


def test_d3_variant_side_by_side_follows_relax_step_by_step(model, crystals):
    """ANI + D3 on the fast path: one ANI pass for all, D3 added per crystal; same steps as relax()."""
    from helpers.relax.potentials.dispersion import SideBySideDispersion, with_model_dispersion

    settings = RelaxSettings(max_steps_base=15, steps_per_atom=0, draft=None)
    items = [(sid, crystals[sid]) for sid in ("cod-2007300", "cod-1011063")]
    calc = with_model_dispersion(OnePassANICalculator(model), "ani1x")
    evaluator = SideBySideDispersion(SideBySideANI(model), calc.dispersion)
    many = dict(relax_many(items, evaluator, settings))
    assert evaluator.time_dispersion > 0 and not evaluator._per_crystal  # finished crystals forgotten
    for sid, atoms in items:
        single = relax(atoms, calc, settings)
        fast = many[sid]
        assert (fast.status, fast.steps) == (single.status, single.steps) == ("step_cap", 15)
        assert np.abs(fast.atoms.positions - single.atoms.positions).max() < 1e-7
        assert np.abs(fast.atoms.cell - single.atoms.cell).max() < 1e-7
        assert fast.e_final == pytest.approx(single.e_final, abs=1e-7)
        # the D3 part is recorded as on the one-crystal path, and it binds (a few eV for these cells)
        assert fast.extra["e_dispersion"] == pytest.approx(single.extra["e_dispersion"], abs=1e-7)
        assert fast.extra["e_dispersion_initial"] == pytest.approx(single.extra["e_dispersion_initial"], abs=1e-9)
        assert fast.extra["e_dispersion"] < -0.5


def test_run_batch_takes_d3_variants_side_by_side(small_clean_db, tmp_path, model_dir, monkeypatch, fast_rows_only):
    from helpers.relax.potentials import dispersion

    drafts = []
    real = dispersion.draft_dispersion
    monkeypatch.setattr(dispersion, "draft_dispersion", lambda calc: drafts.append(real(calc)) or drafts[-1])
    out = str(tmp_path / "relaxed_d3.db")
    settings = RelaxSettings(potential="ani1x-d3", max_steps_base=3, steps_per_atom=0)
    report = run_batch(small_clean_db, out, potential="ani1x-d3", settings=settings, progress=False, n_threads=1)
    rows = list(dbmod.connect(out).select())
    assert len(rows) == 4 and {r.status for r in rows} == {"step_cap"}
    assert report.time_split["dispersion_s"] > 0 and report.time_split["draft_passes"] == 3
    assert {r.force_calls for r in rows} == {5} and {r.draft_calls for r in rows} == {3}  # the fast path
    assert all(r.e_dispersion < 0 and r.e_dispersion_initial < 0 for r in rows)
    # the float32 draft got the cheaper D3 (one copy for the batch; each crystal clones it)
    assert len(drafts) == 1 and drafts[0].parameters["realspace_cutoff"] == dispersion.DRAFT_REALSPACE_CUTOFF


@pytest.mark.slow
def test_d3_fast_path_with_its_cheap_draft_reaches_the_one_crystal_answer(small_clean_db, tmp_path, model_dir):
    """Study settings, ANI-1x + D3: the fast path (float32 ANI + cheaper D3 in the draft, exact finish) ends
    within 0.02 % in volume of relax() one crystal at a time (measured: 0.001-0.007 percentage points)."""
    from helpers.relax.potentials.dispersion import DRAFT_REALSPACE_CUTOFF, draft_dispersion

    clean = dbmod.connect(small_clean_db)
    subset = dbmod.connect(tmp_path / "clean.db")
    for sid in ("cod-2007300", "cod-4021477"):  # ice II (cod-1011063) sits on a flat surface: left out
        row = clean.get(structure_id=sid)
        subset.write(row.toatoms(), data=row.data, **row.key_value_pairs)
    out = str(tmp_path / "relaxed.db")
    run_batch(str(tmp_path / "clean.db"), out, potential="ani1x-d3", progress=False, n_threads=1)
    pot = get_potential("ani1x-d3")
    calc = pot.calculator()
    assert draft_dispersion(calc.dispersion).parameters["realspace_cutoff"] == DRAFT_REALSPACE_CUTOFF
    settings = RelaxSettings(potential="ani1x-d3", strategy="study").resolved(pot.steps_per_atom)
    for row in dbmod.connect(out).select():
        assert row.status == "converged" and row.draft_calls > 0 and row.strategy == "fast"
        single = relax(subset.get(structure_id=row.structure_id).toatoms(), calc, settings)
        assert single.status == "converged"
        v_fast, v_single = row.toatoms().get_volume(), single.atoms.get_volume()
        assert abs(v_fast / v_single - 1) < 2e-4
        assert row.e_dispersion == pytest.approx(single.extra["e_dispersion"], abs=2e-3)  # same D3 at the end
