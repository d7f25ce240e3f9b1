"""Markdown tables for the report's sections (one formatting rule for every table of ``docs/results.md``)."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame) -> str:
    """A markdown table; ``|`` inside cells (Δ|a1|) escaped so the table keeps its columns."""
    if not len(frame):
        return "_(no data)_"
    escape = lambda value: value.replace("|", "\\|") if isinstance(value, str) else value  # noqa: E731
    frame = frame.rename(columns=escape).apply(lambda column: column.map(escape))
    return frame.to_markdown(index=False, disable_numparse=True)
