"""Stage 2 (02_filter): the study's named checks on every raw entry; clean entries into one database,
rejects with every reason into another, and a viewer for the rejects."""

from helpers.filter.checks import CHECKS, Thresholds
from helpers.filter.stage import FilterReport, run_filter

__all__ = ["CHECKS", "FilterReport", "Thresholds", "run_filter"]
