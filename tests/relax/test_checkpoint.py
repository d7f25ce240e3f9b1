"""A relaxation stopped in the middle continues from its checkpoint and takes exactly the steps the
uninterrupted one takes: same answer, same step count, time counted over both runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.relax import engine, stage
from helpers.relax.checkpoint import Checkpoint, CheckpointWarning, structure_fingerprint
from helpers.relax.engine import RelaxSettings, relax
from helpers.relax.inflight import InFlight
from helpers.relax.potentials.registry import get_potential
from helpers.store import db as dbmod

#: the study's fmax with a cap of 30 steps (a few seconds of real ANI-1x on 24-30 atoms): the cap counts
#: the steps of both runs, and the 20 steps after the stop land where they would have without it only if
#: the optimizer's Hessian came back exactly
SETTINGS = RelaxSettings(potential="ani1x", max_steps_base=30, steps_per_atom=0, strategy="study")
STOP_AT = 10


def stop_at(step: int):
    """An ``on_optimizer`` hook that stops the relaxation after ``step`` steps, as Ctrl-C would."""
    def hook(opt):
        def stop():
            if opt.nsteps == step:
                raise KeyboardInterrupt
        opt.attach(stop, interval=1)
    return hook


@pytest.fixture(scope="module")
def uninterrupted(crystal, model_dir):
    return relax(crystal, get_potential("ani1x").calculator(), SETTINGS)


def test_a_stopped_relaxation_continues_exactly_where_it_stopped(crystal, uninterrupted, tmp_path):
    calc = get_potential("ani1x").calculator()
    checkpoint = Checkpoint(tmp_path / "job.inflight.npz", key="2007300 abc", every=0)
    with pytest.raises(KeyboardInterrupt):
        relax(crystal, calc, SETTINGS, checkpoint=checkpoint, on_optimizer=stop_at(STOP_AT))
    saved = checkpoint.load()
    assert saved["nsteps"] == STOP_AT and saved["wall_time"] > 0

    resumed = relax(crystal, get_potential("ani1x").calculator(), SETTINGS, checkpoint=checkpoint)
    assert uninterrupted.status == "step_cap" and uninterrupted.steps == 30
    assert resumed.status == uninterrupted.status and resumed.steps == uninterrupted.steps
    assert resumed.extra["resumed_at_step"] == STOP_AT and "resumed_at_step" not in uninterrupted.extra
    np.testing.assert_allclose(resumed.atoms.cell.array, uninterrupted.atoms.cell.array, atol=1e-8)
    np.testing.assert_allclose(resumed.atoms.positions, uninterrupted.atoms.positions, atol=1e-8)
    assert resumed.e_final == pytest.approx(uninterrupted.e_final, abs=1e-8)
    assert resumed.e_initial == uninterrupted.e_initial
    assert resumed.wall_time > saved["wall_time"] and resumed.extra["cpu_time"] > saved["cpu_time"]


def test_a_checkpoint_of_another_relaxation_is_ignored(crystal, tmp_path):
    path = tmp_path / "job.inflight.npz"
    with pytest.raises(KeyboardInterrupt):
        relax(crystal, get_potential("ani1x").calculator(), SETTINGS,
              checkpoint=Checkpoint(path, key="2007300 abc", every=0), on_optimizer=stop_at(3))
    other = Checkpoint(path, key="2007300 another-settings-hash", every=0)
    assert other.load() is None
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointWarning, match="unreadable"):
        assert Checkpoint(path, key="2007300 abc").load() is None
    assert Checkpoint(tmp_path / "missing.npz", key="x").load() is None


def test_a_rerun_of_a_stopped_job_continues_its_crystal(small_clean_db, tmp_path, monkeypatch):
    def job(out: str):
        return stage.run_batch(small_clean_db, out, "ani1x", settings=SETTINGS, limit=1, progress=False,
                               checkpoint_every=0)

    reference = dbmod.connect(job(str(tmp_path / "reference.db")).out_db).get(id=1)
    out = str(tmp_path / "relaxed_{potential}.db")
    marker = InFlight.for_job(out, "ani1x", 0, 1)
    stop = stop_at(STOP_AT)

    def stopped_relax(*args, on_optimizer=None, **kwargs):  # run_batch's own observer (its core share) stays
        def both(opt):
            if on_optimizer is not None:
                on_optimizer(opt)
            stop(opt)
        return engine.relax(*args, on_optimizer=both, **kwargs)

    monkeypatch.setattr(stage, "relax", stopped_relax)
    with pytest.raises(KeyboardInterrupt):
        job(out)
    monkeypatch.undo()
    checkpoint = marker.checkpoint(reference.structure_id, SETTINGS.resolved(6).hash())
    assert not marker.path.exists() and checkpoint.load()["nsteps"] == STOP_AT

    row = dbmod.connect(job(out).out_db).get(structure_id=reference.structure_id)
    assert reference.status == row.status == "step_cap" and reference.steps == 30
    assert row.resumed_at_step == STOP_AT and row.steps == reference.steps
    assert row.V_relaxed == pytest.approx(reference.V_relaxed, abs=1e-6)
    assert not checkpoint.path.exists()  # a finished crystal leaves no checkpoint


@pytest.mark.slow
def test_a_job_killed_mid_relaxation_continues_on_rerun(small_clean_db, tmp_path):
    """kill -9 of a real job process (a node lost): the rerun continues the crystal from its last checkpoint."""
    driver = Path(__file__).with_name("inflight_driver.py")

    def job(out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(driver), "--clean", small_clean_db, "--out", out,
                                 "--potential", "ani1x", "--strategy", "study", "--fmax", str(SETTINGS.fmax),
                                 "--max-steps-base", "60", "--steps-per-atom", "0", "--checkpoint-every", "0",
                                 "--limit", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference_out = str(tmp_path / "reference.db")
    assert job(reference_out).wait(timeout=600) == 0
    reference = dbmod.connect(reference_out).get(id=1)
    assert reference.steps == 60 and reference.get("resumed_at_step") is None

    out = str(tmp_path / "relaxed_{potential}.db")
    checkpoint = InFlight.for_job(out, "ani1x", 0, 1).checkpoint(reference.structure_id, reference.settings_hash)
    proc = job(out)
    deadline = time.monotonic() + 600
    while (checkpoint.load() or {}).get("nsteps", 0) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before its 20th step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = checkpoint.load()["nsteps"]
    assert 20 <= stopped_at < 60 and dbmod.connect(str(tmp_path / "relaxed_ani1x.db")).count() == 0

    assert job(out).wait(timeout=600) == 0
    row = dbmod.connect(str(tmp_path / "relaxed_ani1x.db")).get(structure_id=reference.structure_id)
    assert row.resumed_at_step == stopped_at and row.steps == reference.steps == 60
    assert row.V_relaxed == pytest.approx(reference.V_relaxed, abs=1e-6)
    assert row.e_final == pytest.approx(reference.e_final, abs=1e-8)


#: what issue 32 wrote into a checkpoint: a pickle that runs a shell command, one whose load raises TypeError
#: (an unhashable dict key), and one announcing 2**62 bytes (OverflowError/MemoryError)
def hostile_pickles(marker: Path) -> list[bytes]:
    return [b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
            b"\x80\x05}]\x94]\x94s.",
            b"\x80\x05\x8e" + (2**62).to_bytes(8, "little") + b"abc."]


@pytest.mark.parametrize("which", range(3))
def test_a_hostile_or_corrupt_checkpoint_is_ignored_with_a_warning_and_runs_nothing(which, small_clean_db,
                                                                                   tmp_path, model_dir):
    """The file beside the job (old ``.pkl`` name and the new one) holds a hostile or corrupt pickle: the
    job warns, relaxes the crystal afresh, records it and runs no code from the file; a rerun works too."""
    pwned = tmp_path / "PWNED"
    out = str(tmp_path / "relaxed_{potential}.db")
    marker = InFlight.for_job(out, "ani1x", 0, 1)
    settings = RelaxSettings(potential="ani1x", fmax=0.05, max_steps_base=3, steps_per_atom=0, strategy="study")
    payload = hostile_pickles(pwned)[which]
    for path in (marker.path.with_suffix(".pkl"), marker.path.with_suffix(".npz")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    for _ in range(2):
        with pytest.warns(CheckpointWarning, match="unreadable"):
            report = stage.run_batch(small_clean_db, out, "ani1x", settings=settings, limit=1, progress=False,
                                     checkpoint_every=3600)
        (row,) = report.rows
        assert row["status"] == "step_cap" and row["steps"] == 3
        assert not pwned.exists()
        marker.path.with_suffix(".npz").write_bytes(payload)
        dbmod.connect(report.out_db).delete([r.id for r in dbmod.connect(report.out_db).select()])


def test_a_checkpoint_of_another_starting_structure_is_not_continued(crystal, tmp_path):
    """Same id, same atom count, same settings, but the cell x1.15 (a corrected CIF): B starts afresh."""
    path = tmp_path / "job.inflight.npz"
    settings = RelaxSettings(potential="ani1x", fmax=0.05, max_steps_base=5, steps_per_atom=0, strategy="study")
    a = Checkpoint(path, key="cod-2007300 H", every=0)
    relax(crystal, get_potential("ani1x").calculator(), settings, checkpoint=a)
    assert a.load()["nsteps"] == 5
    b = crystal.copy()
    b.set_cell(crystal.cell * 1.15, scale_atoms=True)
    assert structure_fingerprint(b) != structure_fingerprint(crystal)
    assert Checkpoint(path, key="cod-2007300 H").load(start=structure_fingerprint(b)) is None
    fresh = relax(b, get_potential("ani1x").calculator(), settings, checkpoint=Checkpoint(path, key="cod-2007300 H"))
    assert "resumed_at_step" not in fresh.extra and fresh.steps == 5


def test_an_lbfgs_relaxation_continues_exactly_from_its_npz_checkpoint(crystal, tmp_path):
    """LBFGS keeps lists of history vectors: they come back from the .npz (numbers only) and the resumed
    relaxation lands where the uninterrupted one does."""
    settings = RelaxSettings(potential="ani1x", max_steps_base=12, steps_per_atom=0, optimizer="LBFGS",
                             strategy="study")
    whole = relax(crystal, get_potential("ani1x").calculator(), settings)
    checkpoint = Checkpoint(tmp_path / "lbfgs.npz", key="k", every=0)
    with pytest.raises(KeyboardInterrupt):
        relax(crystal, get_potential("ani1x").calculator(), settings, checkpoint=checkpoint,
              on_optimizer=stop_at(5))
    state = checkpoint.load(start=structure_fingerprint(crystal))["optimizer"]
    assert isinstance(state[1], list) and all(isinstance(v, np.ndarray) for v in state[1])
    with np.load(checkpoint.path, allow_pickle=False) as npz:
        assert all(npz[name].dtype.kind in "biuf" for name in npz.files if name != "meta")
    resumed = relax(crystal, get_potential("ani1x").calculator(), settings, checkpoint=checkpoint)
    assert resumed.extra["resumed_at_step"] == 5 and resumed.steps == whole.steps == 12
    np.testing.assert_allclose(resumed.atoms.positions, whole.atoms.positions, atol=1e-8)
    np.testing.assert_allclose(resumed.atoms.cell.array, whole.atoms.cell.array, atol=1e-8)
