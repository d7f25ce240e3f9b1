"""``benchmarks/relax_throughput.py --small``'s comparison: 03_relax run twice by ``python -m papermill`` as fresh
processes (the study's method, then the defaults) on one clean database, compared crystal by crystal."""

from __future__ import annotations

import json

import pytest

#: two tiny clean crystals of the unaltered COD sample (12 and 16 atoms)
TINY_IDS = (1010060, 2019369)


@pytest.fixture(scope="module")
def tiny_clean_db(tmp_path_factory, shared_data) -> str:
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    folder = tmp_path_factory.mktemp("tiny")
    fetch(source=str(shared_data / "cod-sample"), raw_db=str(folder / "raw.db"), cod_ids=TINY_IDS, progress=False)
    report = run_filter(str(folder / "raw.db"), str(folder / "clean.db"), str(folder / "rejects.db"), progress=False)
    assert report.counts().loc["passed", "n"] == len(TINY_IDS)
    return str(folder / "clean.db")


@pytest.mark.slow
def test_study_and_defaults_through_papermill_processes_compared(tmp_path, tiny_clean_db, model_dir):
    from helpers.relax.stage import job_settings
    from helpers.run.throughput import compare_through_notebooks, parse_closing_line, pass_lines

    run = compare_through_notebooks(tiny_clean_db, tmp_path, {"fmax": 0.05, "n_threads": 1})
    ids = {f"cod-{i:07d}" for i in TINY_IDS}
    for side, strategy in ((run.study, "study"), (run.fast, "fast")):
        assert set(side.rows.index) == ids
        assert set(side.rows.status) == {"converged"}
        assert set(side.rows.strategy) == {strategy}
        book = json.loads(side.executed.read_text())  # what papermill's command line passed
        assert book["metadata"]["papermill"]["parameters"]["fmax"] == 0.05
    # the study side is 03_relax's study settings exactly; the fast side its defaults
    assert set(run.study.rows.settings_hash) == {job_settings("ani1x", {"strategy": "study", "fmax": 0.05}).hash()}
    assert set(run.fast.rows.settings_hash) == {job_settings("ani1x", {"fmax": 0.05}).hash()}
    table = run.table.set_index("structure_id")
    assert set(table.index) == ids
    assert (table.dV_diff_pct < 0.5).all()  # measured 0.00004 % and 0.016 % at this loose fmax
    assert (table.steps_study > 0).all() and (table.fast_draft_calls > 0).all()

    speedup, dv = parse_closing_line("noise\n" + run.line() + "\n")
    assert speedup == pytest.approx(run.study.wall / run.fast.wall, abs=0.05)
    assert dv == pytest.approx(table.dV_diff_pct.max(), abs=0.005)

    split = run.fast.time_split()  # printed by the fast path into the executed notebook
    rows = run.fast.rows
    exact_calls = rows.force_calls - rows.draft_calls
    assert rows.draft_calls.max() <= split["draft_passes"] <= rows.draft_calls.sum()
    assert exact_calls.max() <= split["exact_passes"] <= exact_calls.sum()
    assert 0 < split["draft_s"] + split["exact_s"] + split["pairs_s"] < split["wall_s"]
    assert run.fast.relaxing_s() == split["wall_s"]
    assert run.study.relaxing_s() == pytest.approx(run.study.rows.cost_time.sum())
    for side in (run.study, run.fast):
        assert 0 < side.relaxing_s() < side.wall  # the rest is start-up
        assert "start-up" in side.startup_line()
    assert pass_lines(split, rows, 1000.0)[0].startswith(f"draft passes {split['draft_passes']}: ")
