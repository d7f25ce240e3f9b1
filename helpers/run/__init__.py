"""Running the pipeline: the notebooks as papermill jobs (demo, relax campaigns), Dask for clusters
(:mod:`helpers.run.distributed`), a process pool and time guards for per-file work."""

from helpers.run.notebooks import CampaignPlan, run_campaign, run_pipeline

__all__ = ["CampaignPlan", "run_campaign", "run_pipeline"]
