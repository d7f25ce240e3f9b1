"""The README's headline is the report's: a block between two markers, copied from ``docs/results.md``.

The report writes its bottom line between :data:`BEGIN` and :data:`END`; after each report, the README beside
``docs/`` gets the same block (:func:`sync_readme`), so the headline a newcomer reads is never a hand copy
that drifts from the numbers.
"""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- headline: generated from docs/results.md, do not edit -->"
END = "<!-- /headline -->"


def marked(lines: list[str]) -> list[str]:
    """``lines`` between the headline markers (what :func:`headline_of` finds again)."""
    return [BEGIN, *lines, END]


def headline_of(markdown: str) -> str | None:
    """The text between the markers of ``markdown`` (stripped), or None when it has none."""
    start, end = markdown.find(BEGIN), markdown.find(END)
    if start < 0 or end < start:
        return None
    return markdown[start + len(BEGIN):end].strip("\n")


def with_headline(text: str, headline: str) -> str:
    """``text`` with the block between its markers replaced by ``headline``; ValueError without markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no headline markers ({BEGIN} ... {END}) to replace")
    return text[:start + len(BEGIN)] + "\n" + headline + "\n" + text[end:]


def sync_readme(readme: str | Path, results_md: str | Path) -> bool:
    """Copy the report's headline into ``readme`` when both carry the markers; True when it was written."""
    readme, results_md = Path(readme), Path(results_md)
    if not readme.is_file() or not results_md.is_file():
        return False
    headline = headline_of(results_md.read_text())
    text = readme.read_text()
    if headline is None or headline_of(text) is None:
        return False
    new = with_headline(text, headline)
    if new != text:
        readme.write_text(new)
    return True
