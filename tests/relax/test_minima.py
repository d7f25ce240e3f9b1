"""The minimum check of a relaxed database (helpers.relax.minima, 06_minimum_check, the report's section), on real
dry ice (COD 1010060 of the unaltered sample) relaxed the study's way by the real relax stage with real ANI
models: ANI-1ccx stops on a saddle there, ANI-1x on a minimum."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers.relax.engine import RelaxSettings
from helpers.relax.minima import check_minima, minima_path, minima_summary, minima_table
from helpers.relax.stage import run_batch
from helpers.store import db as dbmod

DRY_ICE = "cod-1010060"


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory, shared_data, model_dir):
    """relaxed_ani1ccx.db and relaxed_ani1x.db of dry ice, each relaxed with the study's method."""
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    folder = tmp_path_factory.mktemp("minima")
    fetch(source=str(shared_data / "cod-sample"), raw_db=str(folder / "raw.db"), cod_ids=[1010060], progress=False)
    run_filter(str(folder / "raw.db"), str(folder / "clean.db"), str(folder / "rejects.db"), progress=False)
    out = str(folder / "relaxed_{potential}.db")
    for potential in ("ani1ccx", "ani1x"):
        report = run_batch(str(folder / "clean.db"), out, potential, n_threads=1, progress=False,
                           settings=RelaxSettings(potential=potential, strategy="study"))
        assert list(report.table()["status"]) == ["converged"]
    return folder


def test_a_saddle_is_found_recorded_and_not_checked_twice(relaxed):
    minima = minima_path(relaxed / "minima", "ani1ccx")
    counts = check_minima(str(relaxed / "relaxed_ani1ccx.db"), minima)
    assert counts == {"checked": 1, "not_minima": 1, "failed": 0, "already": 0}
    line = minima_table(minima).iloc[0]
    assert line.structure_id == DRY_ICE and line.potential == "ani1ccx" and line.status == "converged"
    assert not line.is_minimum and line.energy_drop_mev > 50  # ~97 meV/atom lower after the kick
    assert line.dv_end == pytest.approx(14.78, abs=0.05) and line.dv_kicked > line.dv_end + 20
    row = next(dbmod.connect(str(relaxed / "relaxed_ani1ccx.db")).select())
    assert line.relaxed_hash == row.settings_hash
    kicked = next(dbmod.connect(minima).select()).toatoms()  # the kicked end point is kept, not the saddle
    assert 100 * (kicked.get_volume() / row.V_exp - 1) == pytest.approx(line.dv_kicked)
    assert check_minima(str(relaxed / "relaxed_ani1ccx.db"), minima) == {"checked": 0, "not_minima": 0,
                                                                          "failed": 0, "already": 1}
    assert check_minima(str(relaxed / "relaxed_ani1ccx.db"), minima_path(relaxed, "none"), sample="altered") == \
        {"checked": 0, "not_minima": 0, "failed": 0, "already": 0}  # dry ice is of the science sample


def test_a_minimum_passes_and_a_failed_check_is_recorded_and_retried(relaxed, tmp_path):
    minima = minima_path(relaxed / "minima", "ani1x")
    assert check_minima(str(relaxed / "relaxed_ani1x.db"), minima)["not_minima"] == 0
    assert bool(minima_table(minima).iloc[0].is_minimum)
    broken = str(tmp_path / "relaxed_broken.db")  # a row whose potential is not registered (a plug-in gone)
    source = next(dbmod.connect(str(relaxed / "relaxed_ani1x.db")).select())
    dbmod.connect(broken).write(source.toatoms(), key_value_pairs={**source.key_value_pairs, "potential": "gone"},
                                data=source.data)
    out = str(tmp_path / "minima_gone.db")
    assert check_minima(broken, out) == {"checked": 0, "not_minima": 0, "failed": 1, "already": 0}
    line = minima_table(out).iloc[0]
    assert line.status == "error" and "gone" in line.message
    assert check_minima(broken, out)["failed"] == 1  # a failure is tried again, not taken as checked
    assert len(minima_table(out)) == 1  # ... in its own row's place
    summary = minima_summary(pd.concat([minima_table(minima), minima_table(out)])).set_index("potential")
    assert summary.loc["ani1x", "checked"] == 1 and summary.loc["ani1x", "not_minima"] == 0
    assert summary.loc["gone", "checked"] == 0 and summary.loc["gone", "failed"] == 1


def test_the_report_section_counts_the_checked_rows(relaxed, tmp_path):
    """After both checks above: ANI-1ccx's dry ice is named, ANI-1x's is a minimum, a potential without a check
    is named as not checked, and results.json carries the counts."""
    from helpers.analysis.minima_section import HEADING, minima_section, verdict_sentence
    from helpers.analysis.report_sections import ReportInputs

    for potential in ("ani1ccx", "ani1x"):
        check_minima(str(relaxed / f"relaxed_{potential}.db"), minima_path(relaxed / "minima", potential))
    rows = [{"potential": r.potential, "structure_id": r.structure_id, "settings_hash": r.settings_hash,
             "status": r.status, "source": r.source} for p in ("ani1ccx", "ani1x")
            for r in dbmod.connect(str(relaxed / f"relaxed_{p}.db")).select()]
    rows.append({**rows[1], "potential": "ani2x"})
    science = pd.DataFrame(rows).assign(sample_set="science")

    def report_inputs(work):
        return ReportInputs(tables={"errors": science}, plan=SimpleNamespace(work_path=str(work)), info={},
                            docs=tmp_path, figures=tmp_path)

    inputs = report_inputs(relaxed)
    lines = minima_section(inputs)
    assert lines[0] == HEADING
    text = " ".join("\n".join(lines).split(" "))  # the table's cells without their padding
    text = " ".join(part for part in text.split(" ") if part)
    assert "| ANI-1ccx | 1 / 1 | 1 | 0 | +14.78 → +" in text and f"| {DRY_ICE} |" in text
    assert "| ANI-1x | 1 / 1 | 0 | 0 |" in text and "Not checked: ANI-2x" in text
    published = json.loads((tmp_path / "results.json").read_text())["minima"]
    assert published["ani1ccx"]["structure_ids"] == [DRY_ICE] and published["ani1x"]["not_minima"] == 0
    assert published["ani1ccx"]["median_dv_kicked"] > published["ani1ccx"]["median_dv"] + 20
    assert verdict_sentence(inputs, ["ani1ccx", "ani1x", "ani2x"]).endswith(
        ": ANI-1ccx 1 of 1, ANI-1x 0 of 1; not checked: ANI-2x.")
    unchecked = report_inputs(tmp_path)
    assert "Not run for this report" in "\n".join(minima_section(unchecked))
    assert verdict_sentence(unchecked, ["ani1ccx"]) == ""  # the verdict says nothing of a check not run


def test_the_notebook_runs_on_command_line_strings(relaxed, tmp_path):
    from helpers.run.notebooks import execute

    out = str(tmp_path / "minima_{potential}.db")
    execute("06_minimum_check", {"potential": "ani1x", "relaxed_db": str(relaxed / "relaxed_{potential}.db"),
                                 "minima_db": out, "sample": "science", "limit": "1", "seed": "3", "n_batches": "1",
                                 "settings_hash": "None"}, tmp_path / "executed")
    line = minima_table(out.format(potential="ani1x")).iloc[0]
    assert line.seed == 3 and bool(line.is_minimum) and line.structure_id == DRY_ICE
