"""Running the pipeline, orchestration only: the notebooks as papermill jobs (demo, relax campaigns,
``make results``), Dask for clusters (:mod:`helpers.run.distributed`). The stages never import this
package; the process tools they share (time guards, process pools, atomic writes) are in :mod:`helpers.process`."""

from helpers.run.notebooks import CampaignPlan, run_campaign, run_pipeline

__all__ = ["CampaignPlan", "run_campaign", "run_pipeline"]
