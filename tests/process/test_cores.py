"""Cores left idle by finished jobs go to the jobs still running (helpers.process.cores)."""

import os
import subprocess
import sys

import pytest

from helpers.process import cores
from helpers.process.cores import CORE_SHARE_ENV, CoreShare


def _other_job(folder):
    """A real process registered in ``folder`` as a running job (it sleeps until killed)."""
    code = (f"import time; from helpers.process.cores import CoreShare\n"
            f"with CoreShare({str(folder)!r}, cores=2, set_threads=lambda n: None):\n"
            f"    print('registered', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "registered"
    return proc


def test_share_follows_the_jobs_alive(tmp_path):
    taken = []
    share = CoreShare(tmp_path, cores=2, look_every=0.0, set_threads=taken.append)
    other = _other_job(tmp_path)
    try:
        with share:
            assert share.running() == 2 and share.refresh() == 1 and taken == []  # two jobs, one core each
            other.kill()
            other.wait()
            assert share.refresh() == 2 and taken == [2]  # the killed job's core comes to this one
            assert [p.name.split(".")[-2] for p in tmp_path.glob("*.running")] == [str(os.getpid())]
        assert taken == [2, 1] and not list(tmp_path.glob("*.running"))  # back to its own thread, marker gone
    finally:
        other.kill()


def test_looks_at_the_folder_at_most_every_look_every_seconds(tmp_path):
    taken = []
    share = CoreShare(tmp_path, cores=2, look_every=60.0, set_threads=taken.append)
    with share:
        assert taken == [2]  # alone: both cores, decided on entry
        other = _other_job(tmp_path)
        try:
            assert share.refresh() == 2  # not looked again yet
            share._looked -= 61
            assert share.refresh() == 1 and taken == [2, 1]
        finally:
            other.kill()


def test_never_fewer_threads_than_given(tmp_path):
    other = _other_job(tmp_path)
    try:
        with CoreShare(tmp_path, minimum=2, cores=2, set_threads=pytest.fail) as share:
            assert share.refresh() == 2
    finally:
        other.kill()


def test_without_a_folder_threads_stay(monkeypatch):
    monkeypatch.delenv(CORE_SHARE_ENV, raising=False)
    with cores.core_share(1) as share:
        assert share.refresh() == 0  # 0: leaves the threads as configured


@pytest.mark.parametrize("strategy", ["study", "fast"])
def test_a_batch_takes_the_idle_core_and_gives_it_back(monkeypatch, tmp_path, small_clean_db, strategy):
    """run_batch registers while it relaxes (one crystal at a time or side by side): alone on two cores it takes
    both, between optimizer steps (passes) too,
    and returns to its one thread when it ends; beside another job it keeps its one thread."""
    from helpers.relax.engine import RelaxSettings
    from helpers.relax.stage import run_batch

    taken = []
    monkeypatch.setattr(cores, "_set_torch_threads", taken.append)
    monkeypatch.setattr(cores, "worker_count", lambda: 2)
    monkeypatch.setattr(cores, "LOOK_EVERY", 0.0)
    folder = tmp_path / "cores"
    monkeypatch.setenv(CORE_SHARE_ENV, str(folder))
    settings = RelaxSettings(fmax=0.05, strategy=strategy)
    run_batch(small_clean_db, str(tmp_path / "alone_{potential}.db"), "ani1x", settings=settings, limit=1,
              progress=False, n_threads=1)
    assert taken == [2, 1] and not list(folder.glob("*.running"))
    taken.clear()
    other = _other_job(folder)
    try:
        seen = []
        original = CoreShare.running
        monkeypatch.setattr(CoreShare, "running", lambda self: seen.append(original(self)) or seen[-1])
        run_batch(small_clean_db, str(tmp_path / "beside_{potential}.db"), "ani1x", settings=settings, limit=1,
                  progress=False, n_threads=1)
        assert taken == [] and len(seen) > 5 and set(seen) == {2}  # looked every step, shared, kept 1 thread
    finally:
        other.kill()


def test_a_niced_job_gives_its_scheduler_group_its_niceness():
    """A kernel in a session of its own (as papermill starts them) at nice 19: its autogroup gets nice 19 too."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("no autogroups on this kernel")
    code = ("import os, sys; os.setsid(); from helpers.process.cores import keep_niceness\n"
            "applied = keep_niceness(); print(applied, open('/proc/self/autogroup').read().split()[-1])")
    out = subprocess.run(["nice", "-n", "19", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    applied, group_nice = out.stdout.split()
    if applied == "False":
        pytest.skip("writing /proc/self/autogroup is not permitted here")
    assert group_nice == "19"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert plain[0] == "False"  # not niced: nothing changed
