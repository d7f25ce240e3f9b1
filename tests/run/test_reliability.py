"""``make results`` as a careful user runs it (issue 32, items 6-10): an interrupted analysis never feeds the
report, two runs never share a work dir, coverage and statistics are of the targets, and the report never
deletes a file it did not write (a symlinked figures folder included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers.analysis.report import IncompleteAnalysis, write_report
from helpers.analysis.stage import ANALYSIS_COMPLETE, analyse_errors, collect_errors
from helpers.run import campaign
from helpers.run.campaign import coverage, run_campaign, settings_hashes
from helpers.run.config import CampaignConfig
from helpers.run.lock import WorkDirBusy, WorkDirLock
from helpers.store import db as dbmod

ERRORS = Path(__file__).parents[1] / "data" / "results_errors.csv"
PLAN = SimpleNamespace(sources=["/x/cod", "/x/cod-sample"], max_atoms={})


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("analysis") / "analysis"
    analyse_errors(pd.read_csv(ERRORS), folder, n_boot=100, quantities=("volume", "a1"))
    return folder


def test_the_report_replaces_only_its_own_figures(analysis, tmp_path):
    """``--docs-dir D`` with the user's ``D/figures/mine.png`` and another potential's committed figure: both
    stay, byte for byte; the report's own figures are replaced."""
    figures = tmp_path / "docs" / "figures"
    figures.mkdir(parents=True)
    mine = figures / "mine.png"
    shutil.copy(analysis / "median_ci_volume.png", mine)
    other = figures / "hist_gfn2-xtb_volume.png"  # a potential this run did not include
    other.write_bytes(b"committed figure of another campaign")
    stale = figures / "dv_vs_temperature.png"
    stale.write_bytes(b"last run's")
    before = mine.read_bytes()
    write_report(analysis, PLAN, tmp_path / "docs")
    assert mine.read_bytes() == before  # neither deleted nor re-encoded
    assert other.read_bytes() == b"committed figure of another campaign"
    assert stale.read_bytes() != b"last run's" and stale.read_bytes()[:4] == b"\x89PNG"


def test_the_report_writes_into_a_symlinked_figures_folder(analysis, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.png").write_bytes(b"mine")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "figures").symlink_to(elsewhere, target_is_directory=True)
    path = write_report(analysis, PLAN, docs)
    assert (docs / "figures").is_symlink() and (elsewhere / "mine.png").read_bytes() == b"mine"
    linked = [line.split("(")[1].rstrip(")") for line in path.read_text().splitlines() if line.startswith("![")]
    assert linked and all((docs / name).is_file() for name in linked)  # every linked figure exists


def test_the_report_refuses_an_analysis_that_did_not_finish(analysis, tmp_path):
    half = tmp_path / "analysis"
    half.mkdir()
    shutil.copy(analysis / "summary.csv", half)  # stopped before its figures and its marker
    with pytest.raises(IncompleteAnalysis, match="run the analysis stage again"):
        write_report(half, PLAN, tmp_path / "docs")
    assert not (tmp_path / "docs" / "results.md").exists()


def _plan(work: Path, max_atoms: dict | None = None, stages=("relax",)) -> CampaignConfig:
    return CampaignConfig(work_dir=str(work), potentials=["ani1x"], max_atoms=max_atoms or {}, n_batches=1,
                          relax_parameters={"fmax": 0.05}, stages=list(stages), docs_dir=str(work.parent / "docs"))


def test_an_interrupted_analysis_leaves_the_last_whole_one_in_place(analysis, tmp_path, monkeypatch):
    """The analysis stage stopped half-way (SIGTERM during 04): the previous analysis is untouched and still
    complete; the stopped one's files never mix into it."""
    work = tmp_path / "work"
    shutil.copytree(analysis, work / "analysis")
    before = {p.name: p.read_bytes() for p in (work / "analysis").iterdir()}

    def stopped(notebook, parameters, *args, **kwargs):
        out = Path(parameters["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.csv").write_text("half,written\n")
        raise KeyboardInterrupt  # as SIGTERM turns into one in the stage

    monkeypatch.setattr(campaign, "execute", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_campaign(_plan(work, stages=("analysis",)))
    assert {p.name: p.read_bytes() for p in (work / "analysis").iterdir()} == before
    assert (work / "analysis" / ANALYSIS_COMPLETE).is_file()

    def finished(notebook, parameters, *args, **kwargs):
        analyse_errors(pd.read_csv(ERRORS), parameters["out_dir"], n_boot=50, quantities=("volume",), plots=False)

    (work / "analysis" / "notes.txt").write_text("the user's")
    monkeypatch.setattr(campaign, "execute", finished)
    run_campaign(_plan(work, stages=("analysis",)))
    assert (work / "analysis" / ANALYSIS_COMPLETE).is_file() and not (work / "analysis.partial").exists()
    assert not (work / "analysis" / "median_ci_volume.png").exists()  # the last run's figures do not outlive it
    assert (work / "analysis" / "notes.txt").read_text() == "the user's"


HOLD = """
import sys, time
from helpers.run.lock import WorkDirLock
with WorkDirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_says_who_holds_the_work_dir_and_a_dead_holder_is_taken_over(tmp_path):
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkDirBusy, match=f"pid {holder.pid}"):
            run_campaign(_plan(work, stages=("report",)))
        assert not (work / campaign.TIMINGS_FILE).exists()  # no stage ran
    finally:
        holder.kill()  # kill -9: the lock file stays behind, the lock does not
        holder.wait()
    assert (work / ".results.lock").exists()
    with WorkDirLock(work) as lock:
        assert f"pid {__import__('os').getpid()}" in lock.holder()


def test_wait_waits_for_the_run_holding_the_work_dir(tmp_path):
    work = tmp_path / "work"
    first = WorkDirLock(work)
    first.acquire()
    threading.Timer(1.0, first.release).start()
    started = time.monotonic()
    with WorkDirLock(work, wait=True, poll_seconds=0.1):
        assert time.monotonic() - started >= 0.9


def _row_for(clean, sid: str, settings_hash: str) -> tuple:
    row = clean.get(structure_id=sid)
    kvp = {k: v for k, v in row.key_value_pairs.items()}
    kvp.update(potential="ani1x", status="converged", converged=True, settings_hash=settings_hash, steps=10,
               V_relaxed=row.toatoms().get_volume() * 1.02)
    return row.toatoms(), kvp


def test_coverage_and_statistics_are_of_the_targets_not_of_an_earlier_wider_run(small_clean_db, tmp_path):
    """A wide run relaxed the two larger crystals; ``--max-atoms ani1x=26`` leaves only the 24-atom one, never
    relaxed: coverage says 0 of 1 (not "complete"), and the analysis keeps none of the wide run's rows."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_clean_db, work / "clean.db")
    plan = _plan(work, {"ani1x": 26})
    clean = dbmod.connect(str(work / "clean.db"))
    sizes = {row.structure_id: row.natoms for row in clean.select()}
    small = [sid for sid, n in sizes.items() if n <= 26]
    large = [sid for sid, n in sizes.items() if n > 26]
    assert len(small) == 1 and len(large) >= 2
    relaxed = str(work / "relaxed_ani1x.db")
    out = dbmod.connect(relaxed)
    for sid in large[:2]:
        atoms, kvp = _row_for(clean, sid, settings_hashes(plan)["ani1x"])
        out.write(atoms, key_value_pairs=kvp)
    assert coverage(plan) == {"ani1x": (1, 0)}
    errors = collect_errors(relaxed, str(work / "clean.db"), max_atoms={"ani1x": 26})
    assert errors.empty
    assert sorted(r["structure_id"] for r in errors.attrs["left_out"]) == sorted(large[:2])
    assert "subset" in errors.attrs["left_out"][0]["reason"]
    assert len(collect_errors(relaxed, str(work / "clean.db"))) == 2  # without the subset: both rows
