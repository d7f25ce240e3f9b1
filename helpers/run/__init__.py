"""Running the pipeline, orchestration only: one campaign runner for the demo, relax campaigns and
``make results`` — a :class:`CampaignConfig` (presets :func:`demo_config`, :func:`campaign_config`,
:func:`results_config`; a YAML file) run by :func:`run_campaign`, its relax jobs on a :class:`LocalExecutor`
or a :class:`DaskExecutor`. The stages never import this package; the process tools they share (time
guards, process pools, atomic writes) are in :mod:`helpers.process`."""

from helpers.run.campaign import run_campaign
from helpers.run.config import CampaignConfig, campaign_config, demo_config, results_config
from helpers.run.executor import DaskExecutor, Executor, LocalExecutor
from helpers.run.status import campaign_status, status_text

__all__ = ["CampaignConfig", "DaskExecutor", "Executor", "LocalExecutor", "campaign_config", "campaign_status",
           "demo_config", "results_config", "run_campaign", "status_text"]
