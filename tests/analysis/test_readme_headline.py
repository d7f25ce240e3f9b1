"""The README's headline is the report's own block (issue 33): generated, never a hand copy."""

from pathlib import Path

import pandas as pd
import pytest

from helpers.analysis.readme_headline import BEGIN, END, headline_of, sync_readme, with_headline
from helpers.analysis.report_sections import ReportInputs, verdict_section

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_readme_shows_the_committed_reports_headline():
    report = headline_of((ROOT / "docs" / "results.md").read_text())
    assert report is not None and "ANI-1x" in report  # the report marks a real table
    assert headline_of((ROOT / "README.md").read_text()) == report


def test_a_new_report_rewrites_the_readme_block_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# project\n\nintro\n\n{BEGIN}\nold numbers\n{END}\n\n## More\ntext\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text(f"# Results\n\n{BEGIN}\n**ANI-2x comes first.**\n{END}\n\n## Rest\n")
    assert sync_readme(readme, docs / "results.md")
    text = readme.read_text()
    assert "old numbers" not in text and "**ANI-2x comes first.**" in text
    assert text.startswith("# project\n\nintro\n\n") and text.endswith(f"{END}\n\n## More\ntext\n")
    assert sync_readme(readme, docs / "results.md") and readme.read_text() == text  # idempotent
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers here\n")
    assert not sync_readme(plain, docs / "results.md") and plain.read_text() == "no markers here\n"
    with pytest.raises(ValueError, match="no headline markers"):
        with_headline("no markers", "x")


def test_the_verdict_is_what_the_report_marks(tmp_path):
    inputs = ReportInputs(tables={"errors": pd.DataFrame()}, plan=None, info={}, docs=tmp_path, figures=tmp_path)
    lines = verdict_section(inputs)
    assert lines[0] == "## Verdict" and BEGIN in lines and END in lines
    assert headline_of("\n".join(lines)).startswith("No verdict")


def test_the_verdict_names_the_potentials_it_cannot_speak_for(tmp_path):
    """A campaign still running: the verdict says which potentials are not in it yet, with their counts."""
    from helpers.analysis.report_sections import unfinished_text

    coverage = {"ani1x": (167, 167), "sevennet0-d3": (150, 12), "chgnet-d3": (150, 0)}
    text = unfinished_text(coverage)
    assert "SevenNet-0-d3 (12 of 150)" in text and "CHGNet-d3 (0 of 150)" in text and "ANI-1x" not in text
    assert unfinished_text({"ani1x": (167, 167)}) == "" and unfinished_text(None) == ""
    # ranked on the science sample, the rest of its clean set still to come (science first): in the verdict
    assert "SevenNet" not in unfinished_text(coverage, ranked={"ani1x", "sevennet0-d3"})
    # never ranked (unfit for crystals): named with that reason, not as waiting for the campaign
    text = unfinished_text({**coverage, "aimnet2": (150, 126)}, ranked={"ani1x", "sevennet0-d3"})
    assert "AIMNet2 (126 of 150)" not in text and "AIMNet2 is listed, not ranked: unfit for crystals" in text
    assert "not finished them: CHGNet-d3 (0 of 150)" in text
    assert unfinished_text({"ani1x": (167, 167), "aimnet2": (150, 150)}).strip().startswith("AIMNet2 is listed")
    inputs = ReportInputs(tables={"errors": pd.DataFrame()}, plan=None, info={"coverage": coverage}, docs=tmp_path,
                          figures=tmp_path)
    assert "SevenNet-0-d3 (12 of 150)" in headline_of("\n".join(verdict_section(inputs)))
