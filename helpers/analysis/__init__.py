"""Stage 4 (04_analysis): relative errors of the relaxed cells against experiment, their distributions
(the study's Gaussian fit beside robust statistics), tables and figures."""

from helpers.analysis.stage import collect_errors, run_analysis, summarize

__all__ = ["collect_errors", "run_analysis", "summarize"]
